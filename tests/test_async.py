"""The asynchronous pipeline (``async_sampling``): runners sample while a learner thread learns.

Every assertion is on counters and states, never on wall-clock speed: a correct pipeline passes however loaded the
machine is (the throughput figures are benchmarks/throughput.py's business).
"""

import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.test_utils import check_train_results

from rllib_muzero import MuZeroConfig
from rllib_muzero.learner_thread import MuZeroLearnerThread
from tests.test_algorithm import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def async_config(num_env_runners=2, **training):
    """tiny_config on remote env runners at fractional CPUs (fits a 2-core machine next to the driver)."""
    options = dict(training_intensity=4.0)
    options.update(training)
    return (tiny_config(**options)
            .env_runners(num_env_runners=num_env_runners, num_cpus_per_env_runner=0.5, num_envs_per_env_runner=2)
            .resources(num_cpus_for_main_process=0.5))


def _fragment_updates(config) -> int:
    """Learner updates one fragment can owe at most (rounded up)."""
    steps = config.rollout_fragment_length * config.num_envs_per_env_runner
    return math.ceil(steps * config.training_intensity / config.train_batch_size)


# ------------------------------------------------------------------------------------------- config (no Ray)
@pytest.mark.parametrize("field,value", [("async_sampling", "yes"), ("async_sampling", 1), ("max_learner_lag", 0),
                                         ("max_learner_lag", 2.5), ("max_learner_lag", True)])
def test_bad_async_options_are_refused(field, value):
    config = MuZeroConfig().environment("CartPole-v1").env_runners(num_env_runners=1)
    setattr(config, field, value)
    with pytest.raises(ValueError, match=f"`{field}`") as err:
        config.validate()
    assert "\n" not in str(err.value) and "expected" in str(err.value)


def test_async_sampling_needs_remote_env_runners():
    config = MuZeroConfig().environment("CartPole-v1").training(async_sampling=True)
    with pytest.raises(ValueError, match="`async_sampling`=True.*num_env_runners"):
        config.validate()


def test_async_is_the_default_exactly_with_remote_env_runners():
    assert not MuZeroConfig().env_runners(num_env_runners=0).uses_async_sampling
    assert MuZeroConfig().env_runners(num_env_runners=1).uses_async_sampling
    assert not MuZeroConfig().env_runners(num_env_runners=2).training(async_sampling=False).uses_async_sampling
    MuZeroConfig().environment("CartPole-v1").env_runners(num_env_runners=1).training(
        async_sampling=True, max_learner_lag=5).validate()


# ------------------------------------------------------------------------------------ learner thread (no Ray)
def _run_until(thread, predicate, limit_s=60.0):
    deadline = time.monotonic() + limit_s  # a generous bound against a hang, not a speed requirement
    while not predicate() and time.monotonic() < deadline:
        thread.wait_for_progress(0.05)


def test_learner_thread_runs_exactly_the_credited_updates():
    calls = []
    thread = MuZeroLearnerThread(lambda: calls.append(1) or {"p": {"learner_stats": {"n": len(calls)}}})
    thread.start()
    try:
        thread.credit(4)
        _run_until(thread, lambda: thread.num_updates == 4)
        thread.wait_for_progress(0.2)
        assert (thread.num_updates, len(calls), thread.owed) == (4, 4, 0)  # never ahead of the credit
        assert thread.last_results == {"p": {"learner_stats": {"n": 4}}}
    finally:
        thread.stop()
    assert not thread.is_alive()


def test_no_update_runs_while_the_learner_is_paused():
    inside = threading.Event()
    overlaps = []
    thread = MuZeroLearnerThread(lambda: overlaps.append(inside.is_set()) or {})
    thread.start()
    try:
        thread.credit(3)
        _run_until(thread, lambda: thread.num_updates == 3)
        with thread.paused():
            inside.set()
            thread.credit(5)
            thread.wait_for_progress(0.3)
            done_while_paused = thread.num_updates
            inside.clear()
        _run_until(thread, lambda: thread.num_updates == 8)
        assert done_while_paused == 3 and thread.num_updates == 8
        assert not any(overlaps)
    finally:
        thread.stop()


def test_an_error_in_the_learner_reaches_the_driver():
    def fail():
        raise FloatingPointError("10 learner updates in a row ... `max_nonfinite_updates_in_a_row`")

    thread = MuZeroLearnerThread(fail)
    thread.start()
    thread.credit(1)
    thread.join(60)
    with pytest.raises(FloatingPointError, match="max_nonfinite_updates_in_a_row"):
        thread.raise_if_failed()
    with thread.paused():  # pausing a dead learner does not hang
        pass


# ---------------------------------------------------------------------------------------- Ray: end to end
@pytest.fixture(scope="module")
def async_run(ray_session):
    """Two remote runners, async by default; per-iteration snapshots of the pipeline's counters."""
    config = async_config(num_env_runners=2)
    algo = config.build_algo()
    snapshots = []
    try:
        for _ in range(5):
            result = algo.train()
            snapshots.append({
                "result": result,
                "credited": algo._counters["num_learner_updates_credited"],
                "done": algo._learner.num_updates,
                "owed": algo._learner.owed,
                "sampled": algo._counters["num_env_steps_sampled"],
                "trained": algo._counters["num_env_steps_trained"],
                "added": algo.replays["default_policy"].num_added,
            })
        yield algo, snapshots
    finally:
        algo.stop()


@pytest.mark.integration
def test_async_training_runs_end_to_end(async_run):
    algo, snapshots = async_run
    assert algo._async_sampling and algo._learner is not None
    result = snapshots[-1]["result"]
    check_train_results(result)
    stats = result["info"]["learner"]["default_policy"]["learner_stats"]
    assert np.isfinite(stats["total_loss"])
    metrics = result["info"]["learner"]["default_policy"]["muzero"]
    for key in ("weights_staleness_mean", "weights_staleness_max", "learner_updates_owed", "max_learner_lag"):
        assert key in metrics, key
    assert metrics["weights_staleness_max"] >= metrics["weights_staleness_mean"] >= 0
    # Nothing sampled is lost: every fetched env step is in the replay, from both runners.
    for snap in snapshots:
        assert snap["added"] == snap["sampled"] == snap["result"]["num_env_steps_sampled_lifetime"]
    assert set(algo._async_fragments_per_runner) == {1, 2}
    assert snapshots[-1]["done"] > 0
    assert snapshots[-1]["trained"] == snapshots[-1]["done"] * algo.config.train_batch_size


@pytest.mark.integration
def test_async_replay_ratio_is_held_by_throttling(async_run):
    """The learner never runs ahead of the replay ratio and never owes more than the bound plus the fragments that
    were already in flight when it reached the bound; over the run the ratio approaches training_intensity."""
    algo, snapshots = async_run
    config = algo.config
    bound = algo.max_learner_lag() + config.num_env_runners * _fragment_updates(config)
    for snap in snapshots:
        assert snap["done"] + snap["owed"] == snap["credited"]  # updates run + owed = updates due
        assert 0 <= snap["owed"] <= bound
        assert snap["trained"] <= snap["sampled"] * config.training_intensity  # never ahead of the ratio
    last = snapshots[-1]
    due = (last["sampled"] - config.num_steps_sampled_before_learning_starts) * config.training_intensity
    # Behind the ratio by at most the owed updates (+1 for the rounding of fractional updates, +1 fragment that can
    # arrive before learning starts).
    slack = (bound + 1) * config.train_batch_size + config.rollout_fragment_length * 2 * config.training_intensity
    assert due - slack <= last["trained"] <= last["sampled"] * config.training_intensity


@pytest.mark.integration
def test_async_weights_reach_the_runners(async_run):
    algo, snapshots = async_run
    assert algo._counters["num_weight_snapshots"] > 0
    updates = algo.env_runner_group.foreach_env_runner(
        lambda runner: runner.get_policy().num_grad_updates, local_env_runner=False)
    assert len(updates) == 2 and min(updates) > 0  # the runners act with weights the learner trained
    assert max(updates) <= algo.get_policy().num_grad_updates


@pytest.mark.integration
def test_killed_runner_is_replaced_and_async_training_continues(ray_session):
    config = async_config(num_env_runners=2).fault_tolerance(restart_failed_env_runners=True)
    algo = config.build_algo()
    try:
        for _ in range(2):
            algo.train()

        def pid_of_runner_1():
            return algo.env_runner_group.foreach_env_runner(lambda w: os.getpid(), local_env_runner=False,
                                                            remote_worker_ids=[1])[0]

        pid_before = pid_of_runner_1()
        fragments_before = algo._async_fragments_per_runner[1]
        ray.kill(algo.env_runner_group._worker_manager._actors[1], no_restart=False)
        for _ in range(100):  # a bound on iterations (each one waits for the restart probe), not on time
            algo.train()
            if algo._async_fragments_per_runner[1] > fragments_before + 1:
                break
        assert algo._async_fragments_per_runner[1] > fragments_before + 1, "runner 1 never came back"
        assert pid_of_runner_1() != pid_before  # a new process
        replay = algo.replays["default_policy"]
        assert replay.num_added == algo._counters["num_env_steps_sampled"]  # nothing stored was lost
        assert len(replay) == min(replay.num_added, replay.capacity)
        assert algo._learner.num_updates > 0 and algo._learner.error is None
    finally:
        algo.stop()


def _optimizer_steps(policy_state) -> set:
    """The distinct Adam(W) step counts over all parameters of a saved policy state."""
    steps = set()
    for optimizer_state in policy_state["_optimizer_variables"]:
        for param_state in optimizer_state["state"].values():
            steps.add(int(param_state["step"]))
    return steps


@pytest.mark.integration
def test_async_save_while_learning_and_restore(ray_session, tmp_path):
    algo = async_config(num_env_runners=1).build_algo()
    try:
        for _ in range(3):
            algo.train()
        # Save while the learner thread is busy (resumed with plenty of owed updates): the save must quiesce it.
        algo._start_learner()
        algo._learner.credit(200)
        _run_until(algo._learner, lambda: algo._learner.num_updates > 0)
        path = algo.save(str(tmp_path / "ckpt")).checkpoint.path
        algo._hold_learner()
        with open(os.path.join(path, "algorithm_state.pkl"), "rb") as f:
            state = pickle.load(f)
        with open(os.path.join(path, "policies", "default_policy", "policy_state.pkl"), "rb") as f:
            policy_state = pickle.load(f)
        updates = policy_state["muzero"]["num_grad_updates"]  # applied updates (undone ones do not count)
        assert _optimizer_steps(policy_state) == {updates}  # no half-applied update in the checkpoint
        owed_at_save = state["muzero"]["updates_due"]
        assert owed_at_save >= 0
        restored = Algorithm.from_checkpoint(path)
        try:
            assert restored._async_sampling
            policy = restored.get_policy()
            assert policy.num_grad_updates == policy_state["muzero"]["num_grad_updates"]
            for name, value in policy.get_weights().items():
                np.testing.assert_array_equal(value, policy_state["weights"][name])
            assert restored._updates_due == pytest.approx(owed_at_save)
            added = restored.replays["default_policy"].num_added
            assert added == state["counters"]["num_env_steps_sampled"]
            for _ in range(2):
                restored.train()
            assert restored.get_policy().num_grad_updates > policy_state["muzero"]["num_grad_updates"]
            assert restored.replays["default_policy"].num_added > added
        finally:
            restored.stop()
    finally:
        algo.stop()


@pytest.mark.integration
def test_sync_mode_with_remote_runners_has_no_learner_thread(ray_session):
    algo = async_config(num_env_runners=1, async_sampling=False).build_algo()
    try:
        algo.train()
        assert not algo._async_sampling and algo._learner is None
        assert algo._counters["num_env_steps_sampled"] == 2 * 10  # one fragment of 2 envs x 10 steps
    finally:
        algo.stop()


# ------------------------------------------------------------------------------- virtual multi-node cluster
MULTI_NODE_SCRIPT = textwrap.dedent("""
    import json, os
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray, torch
    from ray.cluster_utils import Cluster
    torch.set_num_threads(1)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20,
                                                             "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    from tests.test_algorithm import tiny_config
    config = (tiny_config(training_intensity=4.0)
              .env_runners(num_env_runners=2, num_cpus_per_env_runner=1, num_envs_per_env_runner=2)
              .resources(num_cpus_for_main_process=0))
    algo = config.build_algo()
    nodes = algo.env_runner_group.foreach_env_runner(
        lambda w: ray.get_runtime_context().get_node_id(), local_env_runner=False)
    for _ in range(4):
        result = algo.train()
    print("RESULT", json.dumps({
        "async": algo._async_sampling, "nodes": nodes, "num_nodes": len(ray.nodes()),
        "fragments": {str(k): v for k, v in algo._async_fragments_per_runner.items()},
        "sampled": result["num_env_steps_sampled_lifetime"], "added": algo.replays["default_policy"].num_added,
        "updates": algo.get_policy().num_grad_updates,
        "runner_updates": algo.env_runner_group.foreach_env_runner(
            lambda w: w.get_policy().num_grad_updates, local_env_runner=False),
    }))
    algo.stop()
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.integration
def test_async_training_across_virtual_nodes():
    """Two env runners on two different (virtual) nodes of a ray.cluster_utils.Cluster, one CPU each, train end to
    end. Own process: the session's Ray instance cannot host a cluster."""
    import json

    out = subprocess.run([sys.executable, "-c", MULTI_NODE_SCRIPT], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")).split(" ", 1)[1])
    assert got["async"] and got["num_nodes"] == 3
    assert len(set(got["nodes"])) == 2  # one runner per node: each node has one CPU
    assert set(got["fragments"]) == {"1", "2"}  # both nodes' runners fed the replay
    assert got["added"] == got["sampled"] > 0
    assert got["updates"] > 0 and min(got["runner_updates"]) > 0  # weights crossed the nodes
