"""End-to-end RLlib integration: training iteration, actions, checkpoints in a fresh process, Tune, bad envs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ray.rllib.utils.test_utils import check_compute_single_action, check_train_results

import rllib_muzero  # noqa: F401  (registers MuZero and its models)
from rllib_muzero import MuZeroConfig, columns
from rllib_muzero.acting import search_with_model

pytestmark = pytest.mark.integration


def tiny_config(**training):
    """A CartPole config small enough for CI: everything in the driver process, small search and network."""
    options = dict(num_simulations=4, num_unroll_steps=3, td_steps=5, train_batch_size=16,
                   num_steps_sampled_before_learning_starts=32, replay_capacity=2000,
                   value_support=(-10, 10), reward_support=(-3, 3))
    options.update(training)
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(**options, model={"custom_model": "muzero_fc",
                                    "custom_model_config": {"hidden_size": 16, "representation_layers": [16],
                                                            "dynamics_layers": [16], "reward_layers": [16],
                                                            "value_layers": [16], "policy_layers": [16]}})
        .debugging(seed=0)
    )


@pytest.fixture(scope="module")
def trained_algo(ray_session):
    algo = tiny_config().build_algo()
    results = [algo.train() for _ in range(3)]
    yield algo, results
    algo.stop()


def test_training_iteration_passes_rllib_result_checks(trained_algo):
    algo, results = trained_algo
    result = results[-1]
    check_train_results(result)
    stats = result["info"]["learner"]["default_policy"]["learner_stats"]
    for key in ("total_loss", "value_loss", "reward_loss", "policy_loss", "grad_gnorm"):
        assert np.isfinite(stats[key]), key
    metrics = result["info"]["learner"]["default_policy"]["muzero"]
    assert metrics["replay_size"] == min(metrics["replay_num_added"], metrics["replay_capacity"]) > 0
    assert result["num_env_steps_sampled_lifetime"] == 3 * 4 * 10


def test_compute_single_action_checks(trained_algo):
    algo, _ = trained_algo
    check_compute_single_action(algo, include_state=False, include_prev_action_reward=False)


def test_search_outputs_reach_the_sample_batch(trained_algo):
    algo, _ = trained_algo
    batch = algo.env_runner.sample()
    batch = batch.as_multi_agent().policy_batches["default_policy"]
    assert batch[columns.SEARCH_POLICY].shape == (40, 2)
    np.testing.assert_allclose(batch[columns.SEARCH_POLICY].sum(axis=1), 1.0, rtol=1e-5)
    assert batch[columns.SEARCH_ROOT_VALUE].shape == (40,)
    # 4 simulations from a root counted as visited: the root's children hold exactly 4 visits.
    np.testing.assert_allclose(batch[columns.SEARCH_POLICY] * 4, np.round(batch[columns.SEARCH_POLICY] * 4),
                               atol=1e-5)


def test_policy_searches_through_the_numpy_engine_on_the_cpu(trained_algo, monkeypatch):
    algo, _ = trained_algo
    policy = algo.get_policy()
    engines = []
    build_engine = policy.model.numpy_inference
    monkeypatch.setattr(policy.model, "numpy_inference", lambda: engines.append(build_engine()) or engines[-1],
                        raising=False)
    obs = np.random.default_rng(0).normal(0.0, 0.05, (5, 4)).astype(np.float32)
    result = policy.search(obs, explore=False)
    assert len(engines) == 1 and engines[0] is not None
    with_torch = search_with_model(
        policy.model, torch.from_numpy(obs), policy.config, value_support=policy.value_support,
        reward_support=policy.reward_support, use_target_transform=True, explore=False, rng=None,
        numpy_inference=False)
    np.testing.assert_array_equal(result.visit_counts, with_torch.visit_counts)
    np.testing.assert_allclose(result.root_value, with_torch.root_value, rtol=1e-5, atol=1e-5)


def test_greedy_actions_are_deterministic_and_noise_free(trained_algo):
    algo, _ = trained_algo
    policy = algo.get_policy()
    obs = np.array([[0.01, -0.02, 0.03, 0.04]] * 3, dtype=np.float32)
    first = policy.compute_actions_from_input_dict({"obs": obs}, explore=False)
    second = policy.compute_actions_from_input_dict({"obs": obs}, explore=False)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[2][columns.SEARCH_POLICY], second[2][columns.SEARCH_POLICY])


def test_checkpoint_restores_in_a_fresh_process(trained_algo, tmp_path):
    algo, _ = trained_algo
    path = algo.save(str(tmp_path / "ckpt")).checkpoint.path
    obs = [[0.02, 0.1, -0.03, -0.2], [-0.04, -0.3, 0.05, 0.4]]
    expected = [int(algo.compute_single_action(np.array(o, np.float32), explore=False)) for o in obs]
    script = textwrap.dedent(f"""
        import json, os
        import numpy as np, ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        from ray.rllib.algorithms.algorithm import Algorithm
        algo = Algorithm.from_checkpoint({path!r})
        obs = {obs!r}
        print("ACTIONS", json.dumps([int(algo.compute_single_action(np.array(o, np.float32), explore=False))
                                     for o in obs]))
        print("UPDATES", algo.get_policy().num_grad_updates, "REPLAY", len(algo.replays["default_policy"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ACTIONS"))
    assert json.loads(line.split(" ", 1)[1]) == expected
    updates_line = next(ln for ln in out.stdout.splitlines() if ln.startswith("UPDATES")).split()
    assert int(updates_line[1]) == algo.get_policy().num_grad_updates
    assert int(updates_line[3]) == len(algo.replays["default_policy"])


def test_a_relative_checkpoint_path_loads(trained_algo, tmp_path, monkeypatch):
    """``MuZero.from_checkpoint("ckpt")`` and ``restore("ckpt")`` read a relative path from the working directory
    (RLlib's own ``from_checkpoint`` takes it for a URI without a scheme and raises)."""
    from rllib_muzero import MuZero

    algo, _ = trained_algo
    algo.save(str(tmp_path / "ckpt_relative"))
    monkeypatch.chdir(tmp_path)
    restored = MuZero.from_checkpoint("ckpt_relative")
    try:
        assert restored.get_policy().num_grad_updates == algo.get_policy().num_grad_updates
        restored.train()
        restored.restore("ckpt_relative")
        assert restored.get_policy().num_grad_updates == algo.get_policy().num_grad_updates
    finally:
        restored.stop()


def test_continuous_actions_are_refused_before_workers_start(ray_session):
    config = MuZeroConfig().environment("Pendulum-v1")
    with pytest.raises(ValueError, match="Discrete action space"):
        config.build_algo()


def test_tune_runs_the_yaml_example_for_two_iterations(ray_session, tmp_path):
    from rllib_muzero import cli

    overrides = {"num_simulations": 3, "train_batch_size": 16, "num_steps_sampled_before_learning_starts": 50,
                 "num_envs_per_env_runner": 2, "rollout_fragment_length": 20, "training_intensity": 1.0,
                 "num_cpus_for_main_process": 0.5}
    code = cli.main(["train", "tuned_examples/cartpole-muzero.yaml", "--stop", '{"training_iteration": 2}',
                     "--config", json.dumps(overrides), "--storage-path", str(tmp_path), "--checkpoint-at-end",
                     "--quiet"])
    assert code == 0
    trial_dirs = [d for d in (tmp_path / "cartpole-muzero").iterdir() if d.is_dir()]
    assert len(trial_dirs) == 1
    progress = (trial_dirs[0] / "progress.csv").read_text().splitlines()
    assert len(progress) == 3  # header + 2 iterations
    assert any(p.name.startswith("checkpoint_") for p in trial_dirs[0].iterdir())


def test_tuner_accepts_the_registered_name(ray_session, tmp_path):
    from ray import tune

    config = tiny_config(num_steps_sampled_before_learning_starts=10)
    tuner = tune.Tuner("MuZero", param_space=config,
                       run_config=tune.RunConfig(stop={"training_iteration": 1}, storage_path=str(tmp_path),
                                                 verbose=0))
    results = tuner.fit()
    assert not results.errors
    assert results[0].metrics["training_iteration"] == 1



def test_value_reanalyse_trains_with_a_target_network_that_lags_by_the_interval(ray_session):
    """reanalyse_value: the learner reads bootstrap values from a target network refreshed every
    target_update_interval updates; between refreshes it keeps the old weights; a checkpoint restores it."""
    algo = tiny_config(reanalyse_value=True, target_update_interval=4, off_policy_correction_age=20,
                       training_intensity=8.0).build_algo()
    try:
        policy = algo.get_policy()
        calls = []
        original = policy.reanalyse_values

        def spy(obs):
            calls.append(len(obs))
            return original(obs)

        policy.reanalyse_values = spy
        for _ in range(4):
            algo.train()
        assert calls, "no reanalysed values were read"
        updates = policy.num_grad_updates
        assert updates >= 8
        target = policy.target_model()
        assert policy._target_updated_at == updates - updates % 4  # built at update 0, refreshed at 4, 8, ...
        online = dict(policy.model.named_parameters())
        lagging = [name for name, p in target.named_parameters() if not torch.equal(p, online[name])]
        assert bool(lagging) == (updates % 4 != 0), "the target network must lag between refreshes only"
        # The target's values are what reanalyse returns.
        obs = np.zeros((3, 4), np.float32)
        with torch.no_grad():
            want = policy.to_scalar(target.initial_inference(torch.as_tensor(obs)).value_logits, policy.value_support)
        np.testing.assert_allclose(original(obs), want)
        # Refresh: after target_update_interval more updates the target equals the network.
        state = policy.get_state()
        assert "target_model" in state["muzero"]
        policy._target_updated_at = -10**6
        policy._refresh_target_model()
        for name, p in target.named_parameters():
            assert torch.equal(p, online[name]), name
        # Restoring the saved state brings the old target weights back.
        policy.set_state(state)
        restored = dict(policy.target_model().named_parameters())
        for name, value in state["muzero"]["target_model"].items():
            if name in restored:
                assert torch.equal(restored[name], value), name
    finally:
        algo.stop()
