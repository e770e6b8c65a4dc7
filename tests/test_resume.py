"""Exact resume (issue #15): a run restored from a checkpoint in a fresh process continues bit for bit like the run
that saved it and went on, and no replay episode is left open that no env runner continues.

Run A trains, saves, and trains 3 more iterations in this process; run B restores A's checkpoint in a fresh process
and trains 3 iterations. Weights, optimizer state, replay (contents, links, priorities, open episodes), generators
and counters must be equal, with ``torch.equal`` / ``np.array_equal``. Two paths (``rllib_muzero/runner_state.py``):
CartPole's state pickles, so the env runners' episodes in progress travel; ``NoPickleCartPole`` declares that its
state does not, so the checkpoint is an episode boundary in both runs.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.checkpoints import get_checkpoint_info

from rllib_muzero.replay import CONTINUES, TRUNCATED, SequenceReplayBuffer
from rllib_muzero.runner_state import PICKLES_STATE_ATTRIBUTE, active_episode_keys, env_state_pickles
from tests.test_algorithm import tiny_config

ROOT = Path(__file__).resolve().parents[1]
# Remote env runners cannot import this module (pytest imports it as `test_resume`): its functions and env class go
# to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
SAVE_AFTER = 2  # iterations of run A before the checkpoint
CONTINUE_FOR = 3  # iterations after it, in both runs


class NoPickleCartPole(CartPoleEnv):
    """CartPole (no time limit) declaring that pickling it does not capture its state: takes the boundary rule."""

    muzero_pickles_state = False

    def __init__(self, config: Any = None):
        super().__init__()


def resume_config(env: Any = "CartPole-v1", **overrides: Any):
    """``tiny_config`` with several learner updates per iteration, value and policy reanalyse (target network and
    reanalyse generator) and the consistency loss, so that everything the learner owns takes part."""
    training = dict(training_intensity=4.0, reanalyse_value=True, target_update_interval=3,
                    reanalyse_policy_fraction=0.25, consistency_loss_weight=1.0, consistency_projection_size=8)
    training.update(overrides)
    return tiny_config(**training).environment(env)


# ---------------------------------------------------------------------------------------------------- snapshots
def snapshot(algo: Algorithm) -> dict[str, Any]:
    """Everything that must be equal after an exact resume (read, not changed)."""
    runners = [algo.env_runner] if algo.env_runner_group.num_remote_env_runners() == 0 else []
    remote = algo.env_runner_group.foreach_env_runner(_runner_snapshot, local_env_runner=False)
    return {
        "policies": {pid: _policy_snapshot(algo.get_policy(pid)) for pid in algo.replays},
        "replays": {pid: replay.get_state() for pid, replay in algo.replays.items()},
        "replay_rng": algo.replay_rng.bit_generator.state,
        "counters": dict(algo._counters),
        "iteration": algo.iteration,
        "updates_due": algo._updates_due,
        "updates_since_sync": algo._updates_since_sync,
        "env_steps_since_sync": algo._env_steps_since_sync,
        "episode_boundary_at": algo._episode_boundary_at,
        "runners": [_runner_snapshot(r) for r in runners] + list(remote),
    }


def _policy_snapshot(policy: Any) -> dict[str, Any]:
    """The learner's side of one policy."""
    def tensors(module: Any) -> dict[str, torch.Tensor] | None:
        return None if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}

    return {
        "weights": tensors(policy.model),
        "consistency_heads": tensors(policy.consistency_heads),
        "target_model": tensors(policy._target_model),
        "optimizer": pickle.loads(pickle.dumps(policy._optimizers[0].state_dict())),
        "reanalyse_rng": policy._reanalyse_rng.bit_generator.state if policy._reanalyse_rng is not None else None,
        "num_grad_updates": policy.num_grad_updates,
        "num_nonfinite_updates": policy.num_nonfinite_updates,
    }


def _runner_snapshot(runner: Any) -> dict[str, Any]:
    """The acting side: each policy's weights and generator on the runner, and the episodes it is playing."""
    return {
        "worker_index": runner.worker_index,
        "policies": {pid: {"weights": policy.get_weights(), "num_grad_updates": policy.num_grad_updates,
                           "global_timestep": policy.global_timestep, "acting_rng": policy.rng.bit_generator.state}
                     for pid, policy in runner.policy_map.items()},
        "active_episodes": sorted(active_episode_keys(runner)),
    }


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested snapshots: tensors by ``torch.equal`` (and dtype), arrays by value and dtype."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(map(str, set(a) ^ set(b))))
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def run_restored(path: str, out: Path) -> dict[str, Any]:
    """Run B: restores ``path`` in a fresh process, snapshots it, trains ``CONTINUE_FOR`` iterations, snapshots."""
    script = textwrap.dedent(f"""
        import os, pickle, sys
        import ray, torch
        sys.path.insert(0, {str(ROOT / "tests")!r})  # pytest imports this module as `test_resume` (its env class)
        torch.set_num_threads(1)  # as the test process (conftest): torch's sums depend on the thread count
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 1024 * 1024)
        from ray.rllib.algorithms.algorithm import Algorithm
        from tests.test_resume import snapshot
        algo = Algorithm.from_checkpoint({path!r})
        restored = snapshot(algo)
        for _ in range({CONTINUE_FOR}):
            algo.train()
        with open({str(out)!r}, "wb") as f:
            pickle.dump({{"restored": restored, "final": snapshot(algo)}}, f)
        algo.stop()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out, "rb") as f:
        return pickle.load(f)


def run_saving(config: Any, tmp_path: Path) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run A: trains ``SAVE_AFTER`` iterations, saves, trains ``CONTINUE_FOR`` more. Returns the checkpoint path and
    snapshots just before and just after the save and at the end."""
    algo = config.build_algo()
    try:
        for _ in range(SAVE_AFTER):
            algo.train()
        before = snapshot(algo)
        path = algo.save(str(tmp_path / "ckpt")).checkpoint.path
        at_save = snapshot(algo)
        for _ in range(CONTINUE_FOR):
            algo.train()
        return path, before, at_save, snapshot(algo)
    finally:
        algo.stop()


def open_episodes(replay_state: dict[str, Any]) -> set[int]:
    return set(np.asarray(replay_state["open_episode_ids"]).tolist())


# ---------------------------------------------------------------------------------------------------- the two paths
@pytest.mark.integration
def test_episodes_in_progress_travel_and_the_resume_is_exact(ray_session, tmp_path):
    path, before, at_save, final = run_saving(resume_config(), tmp_path)
    assert_same(before, at_save)  # saving changed nothing in run A
    replay = at_save["replays"]["default_policy"]
    assert open_episodes(replay), "the test needs episodes in progress at the save"
    assert open_episodes(replay) == set(at_save["runners"][0]["active_episodes"])  # each one continued by a runner
    policy = at_save["policies"]["default_policy"]
    assert policy["num_grad_updates"] > 0 and policy["target_model"] is not None and policy["reanalyse_rng"]

    b = run_restored(path, tmp_path / "b.pkl")
    assert_same(at_save, b["restored"])
    assert_same(final, b["final"])
    assert final["policies"]["default_policy"]["num_grad_updates"] > policy["num_grad_updates"]
    # No dangling tail: every open episode of the replay is one a runner is playing.
    assert open_episodes(final["replays"]["default_policy"]) <= set(final["runners"][0]["active_episodes"])


@pytest.mark.integration
def test_runners_unlike_the_saved_ones_start_new_episodes(ray_session, tmp_path):
    """Restored with other runners (here 2 envs instead of 4, as when restoring for evaluation), the episodes stay
    behind and the replay's open episodes are closed as truncated instead of dangling."""
    algo = resume_config(training_intensity=None).build_algo()
    try:
        algo.train()
        assert algo.replays["default_policy"].num_open_episodes > 0
        path = algo.save(str(tmp_path / "ckpt")).checkpoint.path
    finally:
        algo.stop()
    state = Algorithm._checkpoint_info_to_algorithm_state(get_checkpoint_info(path))
    state["config"] = state["config"].copy(copy_frozen=False).env_runners(num_envs_per_env_runner=2)
    restored = Algorithm.from_state(state)
    try:
        assert restored.replays["default_policy"].num_open_episodes == 0
        assert len(restored.env_runner.async_env.get_sub_environments()) == 2
        assert not active_episode_keys(restored.env_runner)  # nothing was put back: new episodes at the first sample
        restored.train()
    finally:
        restored.stop()


@pytest.mark.integration
def test_an_env_whose_state_does_not_pickle_makes_the_checkpoint_an_episode_boundary(ray_session, tmp_path):
    path, before, at_save, final = run_saving(resume_config(NoPickleCartPole), tmp_path)
    replay_before, replay = before["replays"]["default_policy"], at_save["replays"]["default_policy"]
    tails = replay_before["open_tail_slots"]
    assert open_episodes(replay_before), "the test needs episodes in progress at the save"
    # The save closed them in run A's replay too, as truncated; nothing else changed.
    assert not open_episodes(replay)
    assert (replay["end_flag"][tails] == TRUNCATED).all() and (replay_before["end_flag"][tails] == CONTINUES).all()
    assert at_save["episode_boundary_at"] == at_save["counters"]["num_env_steps_sampled"]

    b = run_restored(path, tmp_path / "b.pkl")
    restored_replay = b["restored"]["replays"]["default_policy"]
    assert not open_episodes(restored_replay)  # no episode from before the save is left open
    assert_same(at_save["replays"], b["restored"]["replays"])
    assert_same(final, b["final"])
    assert final["episode_boundary_at"] is None
    # The runners started new episodes: none of the replay's open ones is from before the save.
    assert open_episodes(final["replays"]["default_policy"]) <= set(final["runners"][0]["active_episodes"])
    assert not set(final["runners"][0]["active_episodes"]) & set(before["runners"][0]["active_episodes"])


@pytest.mark.integration
def test_exact_resume_of_two_policies_at_an_episode_boundary(ray_session, tmp_path):
    """Multi-agent (``examples/multi_agent.py``, a ``MultiAgentEnvWrapper``; its env does not declare that its state
    pickles): the boundary resets every sub-environment, and the learner updates the policies in the same order in
    both processes (a set of policy ids iterates in a per-process order)."""
    from examples.multi_agent import make_config

    path, before, at_save, final = run_saving(make_config().training(training_intensity=2.0), tmp_path)
    assert list(at_save["policies"]) == ["p0", "p1"]  # the learner's order, whatever the set's order
    assert at_save["episode_boundary_at"] is not None
    assert any(open_episodes(r) for r in before["replays"].values())
    assert not any(open_episodes(r) for r in at_save["replays"].values())
    b = run_restored(path, tmp_path / "b.pkl")
    assert_same(at_save["replays"], b["restored"]["replays"])
    assert_same(final, b["final"])
    assert list(b["final"]["policies"]) == ["p0", "p1"]
    assert all(p["num_grad_updates"] > 0 for p in final["policies"].values())


@pytest.mark.integration
def test_exact_resume_with_a_remote_env_runner(ray_session, tmp_path):
    """num_env_runners=1 with async_sampling=False. One learner update per iteration and weights sent every 3: at
    the save the remote runner acts with weights 2 updates older than the learner's, and must go on with them."""
    config = resume_config(async_sampling=False, training_intensity=None, send_weights_frequency=3).env_runners(
        num_env_runners=1, num_cpus_per_env_runner=0.5).resources(num_cpus_for_main_process=0.5)
    path, before, at_save, final = run_saving(config, tmp_path)
    assert_same(before, at_save)
    assert [r["worker_index"] for r in at_save["runners"]] == [1]
    acting = at_save["runners"][0]["policies"]["default_policy"]
    assert acting["num_grad_updates"] < at_save["policies"]["default_policy"]["num_grad_updates"]  # lagging
    b = run_restored(path, tmp_path / "b.pkl")
    assert_same(at_save, b["restored"])  # the remote runner's (possibly lagging) weights and generators included
    assert_same(final, b["final"])


@pytest.mark.integration
def test_async_checkpoint_closes_open_episodes_and_keeps_counters(ray_session, tmp_path):
    """Asynchronous pipeline: not reproducible run to run (runners sample while the learner learns), so the rule is
    no dangling tail and exact counters: the saved replay has its open episodes closed as truncated (the saving run's
    replay keeps them open, its runners continue them), and the restored run starts new episodes."""
    config = (tiny_config(training_intensity=2.0)
              .env_runners(num_env_runners=1, num_cpus_per_env_runner=0.5, num_envs_per_env_runner=2)
              .resources(num_cpus_for_main_process=0.5))
    algo = config.build_algo()
    try:
        for _ in range(3):
            algo.train()
        assert algo._async_sampling
        live = algo.replays["default_policy"]
        open_before = live.num_open_episodes
        assert open_before > 0, "the test needs episodes in progress at the save"
        path = algo.save(str(tmp_path / "ckpt")).checkpoint.path
        assert live.num_open_episodes == open_before  # the saving run's replay is untouched
        with open(os.path.join(path, "algorithm_state.pkl"), "rb") as f:
            saved = pickle.load(f)["muzero"]
        replay_state = saved["replays"]["default_policy"]
        assert not open_episodes(replay_state) and saved["runners"] == []
        tails = [tail for tail, _ in live._open.values()]
        assert (replay_state["end_flag"][tails] == TRUNCATED).all()
        counters = dict(algo._counters)
        updates = algo.get_policy().num_grad_updates
        restored = Algorithm.from_checkpoint(path)
        try:
            replay = restored.replays["default_policy"]
            assert replay.num_open_episodes == 0
            assert dict(restored._counters) == counters
            assert restored.get_policy().num_grad_updates == updates
            assert restored._updates_due == pytest.approx(saved["updates_due"])
            assert replay.num_added == live.num_added and len(replay) == len(live)
            restored.train()
            old_ids = open_episodes(live.get_state())
            assert not open_episodes(replay.get_state()) & old_ids  # only episodes started after the restore
        finally:
            restored.stop()
    finally:
        algo.stop()


# ---------------------------------------------------------------------------------------------------- units
def test_which_envs_carry_their_state_through_pickle():
    cartpole = gym.make("CartPole-v1")
    assert env_state_pickles(cartpole)
    assert not env_state_pickles(NoPickleCartPole())

    class Unknown(gym.Env):  # a user's env: its pickle is not trusted unless it says so
        pass

    class Declared(gym.Env):
        muzero_pickles_state = True

    assert not env_state_pickles(Unknown())
    assert getattr(Declared(), PICKLES_STATE_ATTRIBUTE) and env_state_pickles(gym.wrappers.TimeLimit(Declared(), 10))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1"])
def test_a_pickled_classic_control_env_continues_exactly(env_id):
    env = gym.make(env_id)
    assert env_state_pickles(env)
    env.reset(seed=3)
    for action in [0, 1, 0, 1, 0]:
        env.step(action)
    copy = pickle.loads(pickle.dumps(env))
    for action in [0, 1, 1, 0, 1, 0, 0, 1]:
        step, copy_step = env.step(action), copy.step(action)
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(step, copy_step))
        if step[2] or step[3]:
            break
    assert np.array_equal(env.reset()[0], copy.reset()[0])  # the env's own generator travelled too


def _buffer_with_open_episodes() -> SequenceReplayBuffer:
    buf = SequenceReplayBuffer(50, obs_shape=(2,), obs_dtype=np.float32, num_actions=2)
    rng = np.random.default_rng(0)
    for episode, (T, terminated) in enumerate([(4, False), (3, True), (5, False)]):
        buf.add_fragment(episode, rng.normal(size=(T, 2)), rng.integers(0, 2, T), rng.normal(size=T),
                         rng.normal(size=T), np.full((T, 2), 0.5), terminated=terminated, truncated=False)
    return buf


def test_closing_open_episodes_truncates_their_tails_and_keeps_every_target():
    buf = _buffer_with_open_episodes()
    assert buf.num_open_episodes == 2
    tails = [tail for tail, _ in buf._open.values()]
    state = buf.get_state(close_open_episodes=True)
    assert buf.num_open_episodes == 2  # the state closes them, the buffer does not
    kwargs = dict(num_unroll_steps=3, td_steps=4, discount=0.9)
    before = buf.build_batch(np.arange(12), rng=np.random.default_rng(1), **kwargs)
    assert buf.close_open_episodes() == 2
    assert buf.num_open_episodes == 0 and (buf._end_flag[tails] == TRUNCATED).all()
    assert_same(buf.get_state(), state)
    after = buf.build_batch(np.arange(12), rng=np.random.default_rng(1), **kwargs)
    assert_same(before, after)  # a truncated tail reads as the live edge did: bootstrapped
    # A later fragment under a closed id starts a new chain instead of linking to the closed tail.
    buf.add_fragment(0, np.zeros((2, 2)), np.zeros(2, int), np.zeros(2), np.zeros(2), np.full((2, 2), 0.5),
                     terminated=False, truncated=False)
    assert buf._next_slot[tails[0]] == -1


def test_the_boundary_reseeds_pythons_random_reproducibly():
    """``EpisodeV2`` draws episode ids from ``random``: the boundary re-seeds it from the entropy it is given."""
    from rllib_muzero.runner_state import episode_boundary

    class Runner:  # the parts episode_boundary touches of a runner without envs
        worker_index = 1
        sampler = async_env = None
        policy_map: dict[str, Any] = {}

    draws = []
    for _ in range(2):
        random.seed(12345 + len(draws))  # a different state before each boundary
        episode_boundary(Runner(), entropy=[0, 1, 2])
        draws.append(random.random())
    assert draws[0] == draws[1]
