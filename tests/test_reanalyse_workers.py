"""Reanalyse workers: policy reanalyse's searches in Ray actors, batches ahead of the learner (issue #12)."""

import time

import numpy as np
import pytest

from rllib_muzero import MuZero
from rllib_muzero.acting import policy_targets
from rllib_muzero.columns import TRAIN_POLICY_MASK, TRAIN_TARGET_POLICY
from rllib_muzero.reanalyse_workers import _NOISE_STREAM, ReanalysePipeline, ReanalyseWorker

pytestmark = pytest.mark.integration


def worker_config(**training):
    from tests.test_algorithm import tiny_config

    options = dict(reanalyse_policy_fraction=0.5, training_intensity=4.0, num_reanalyse_workers=1,
                   num_cpus_per_reanalyse_worker=0.5, target_update_interval=3)
    options.update(training)
    return tiny_config(**options)


def specs_of(algo):
    policy = algo.get_policy()
    return {"default_policy": (type(policy), policy.observation_space, policy.action_space, dict(policy.config))}


def test_a_worker_searches_as_the_learner_would_with_the_target_network(ray_session):
    """Same weights, same noise stream: the worker's targets equal the learner's own search with its target network,
    bit for bit; a new version reloads the weights, the same version does not."""
    algo = worker_config(num_reanalyse_workers=0).build_algo()
    try:
        for _ in range(3):
            algo.train()
        policy = algo.get_policy()
        policy.model.load_state_dict({k: v + 0.01 for k, v in policy.model.state_dict().items()})  # != target
        obs = np.random.default_rng(3).uniform(-0.2, 0.2, (6, 4)).astype(np.float32)
        worker = ReanalyseWorker(specs_of(algo), worker_index=2, seed=0)
        got = worker.reanalyse("default_policy", 7, [policy.target_network_weights()], obs)
        rng = np.random.default_rng(np.random.SeedSequence([0, 2, _NOISE_STREAM]))
        want = policy_targets(policy.search(obs, explore=True, rng=rng, model=policy.target_model()))
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, policy_targets(policy.search(
            obs, explore=True, rng=np.random.default_rng(np.random.SeedSequence([0, 2, _NOISE_STREAM])))))
        # The same version is not reloaded: weights handed with it are ignored.
        zeros = {k: np.zeros_like(v) for k, v in policy.target_network_weights().items()}
        worker.reanalyse("default_policy", 7, [zeros], obs)
        assert worker.stats() == {"num_searched": 12, "versions": {"default_policy": 7}}
        worker.reanalyse("default_policy", 8, [zeros], obs)
        assert all(np.all(p.detach().numpy() == 0) for p in worker._policies["default_policy"].model.parameters())
    finally:
        algo.stop()


def test_training_with_a_worker_moves_the_searches_out_of_the_learner(ray_session):
    import ray

    algo = worker_config().build_algo()
    try:
        policy = algo.get_policy()
        policy.reanalyse_policies = lambda obs: pytest.fail("the learner searched in line")
        results = [algo.train() for _ in range(5)]
        metrics = results[-1]["info"]["learner"]["default_policy"]["muzero"]
        assert metrics["reanalyse_worker_fallbacks"] == 0
        assert metrics["reanalyse_batches_in_flight"] == 1  # depth 2 per worker, one popped per update
        assert 0 <= metrics["reanalyse_target_lag"] <= 3  # versions change every 3 updates; a batch waits 1 update
        stats = ray.get(algo._reanalyse.workers[0].stats.remote())
        assert stats["num_searched"] > 0
        assert stats["versions"]["default_policy"] > 0  # refreshed target weights reached the worker
        assert policy.num_grad_updates > 10
        workers = list(algo._reanalyse.workers)
    finally:
        algo.stop()
    # stop() ends the workers. ray.kill takes effect asynchronously: a call sent right after it may still be served
    # (seen once under load), so the worker must be gone within 30 s, not at the first call.
    deadline = time.monotonic() + 30
    with pytest.raises(ray.exceptions.RayActorError):
        while time.monotonic() < deadline:
            ray.get(workers[0].stats.remote(), timeout=30)
            time.sleep(0.2)


def test_a_killed_worker_is_restarted_and_training_goes_on(ray_session):
    import ray

    algo = worker_config().build_algo()
    try:
        for _ in range(3):
            algo.train()
        updates = algo.get_policy().num_grad_updates
        ray.kill(algo._reanalyse.workers[0], no_restart=False)  # Ray restarts it (max_restarts=-1)
        for _ in range(3):
            algo.train()
        assert algo.get_policy().num_grad_updates > updates
        stats = ray.get(algo._reanalyse.workers[0].stats.remote(), timeout=60)
        assert stats["num_searched"] > 0  # the restarted worker serves requests again
    finally:
        algo.stop()


class _Failing:
    def reanalyse(self, pid, version, weights_box, obs):
        raise RuntimeError("this worker cannot search")


def test_a_request_that_fails_is_searched_by_the_learner_and_no_batch_is_lost(ray_session, caplog):
    import ray

    from tests.test_reanalyse import A, B, K, make_batch

    pipeline = ReanalysePipeline([ray.remote(_Failing).remote()], depth=2, fraction=1.0)
    sent = []

    def sample():
        sent.append(make_batch())
        return sent[-1]

    def local(obs):
        return np.tile(np.array([[0.9, 0.1]], np.float32), (len(obs), 1))

    try:
        batch = pipeline.next_batch("p", sample, np.random.default_rng(0), 0, lambda: {"w": np.zeros(1)}, local)
        assert batch is sent[0] and len(sent) == 2  # the first of two batches in flight
        mask = batch[TRAIN_POLICY_MASK] > 0
        np.testing.assert_allclose(batch[TRAIN_TARGET_POLICY][mask], np.tile([0.9, 0.1], (int(mask.sum()), 1)))
        assert batch[TRAIN_TARGET_POLICY].shape == (B, K + 1, A)
        assert pipeline.num_fallbacks == 1
        assert "searches this batch itself" in caplog.text
    finally:
        pipeline.stop()


def test_tune_reserves_the_workers_cpus():
    config = worker_config(num_reanalyse_workers=3, num_cpus_per_reanalyse_worker=1.5)
    bundles = MuZero.default_resource_request(config).bundles
    assert bundles[-3:] == [{"CPU": 1.5}] * 3
    without = MuZero.default_resource_request(worker_config(num_reanalyse_workers=0)).bundles
    assert len(bundles) == len(without) + 3
    assert config.reanalyse_depth == 6 and worker_config(reanalyse_batches_in_flight=1).reanalyse_depth == 1
    # A main process of 0 CPUs stays the (empty) head bundle.
    request = MuZero.default_resource_request(
        worker_config().resources(num_cpus_for_main_process=0).env_runners(num_env_runners=1))
    assert request.head_bundle_is_empty and request.bundles[-1] == {"CPU": 0.5}


def test_the_asynchronous_pipeline_trains_with_a_worker(ray_session):
    """Issue #17: the learner thread of the asynchronous pipeline takes its batches from the reanalyse workers too."""
    import ray

    from tests.test_async import async_config

    config = async_config(num_env_runners=1, reanalyse_policy_fraction=0.5, num_reanalyse_workers=1,
                          num_cpus_per_reanalyse_worker=0.5, target_update_interval=3)
    algo = config.build_algo()
    try:
        assert algo._async_sampling and algo._reanalyse is not None
        algo.get_policy().reanalyse_policies = lambda obs: pytest.fail("the learner searched in line")
        while algo.get_policy().num_grad_updates < 6:
            algo.train()
        assert algo._reanalyse.num_fallbacks == 0
        assert ray.get(algo._reanalyse.workers[0].stats.remote())["num_searched"] > 0
    finally:
        algo.stop()
