"""Self-play and training options change behaviour (not only parse): lr schedule, fixed temperatures, use_q_max,
weight-sync frequency, temperature schedule, scalar heads (no_support) and the growing replay window."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray import tune
from ray.rllib.policy.sample_batch import SampleBatch

from rllib_muzero import columns
from rllib_muzero.algorithm import add_sample_batch_to_replay
from rllib_muzero.replay import SequenceReplayBuffer
from rllib_muzero.serving import ServingAgent, export_for_serving
from rllib_muzero.support import h_inverse
from tests.test_algorithm import tiny_config
from tests.test_config import cartpole_config


def test_fixed_temperatures_must_match_the_runner_count():
    config = cartpole_config(fixed_temperatures=[1.0, 0.5, 0.25])
    config.num_env_runners = 2
    with pytest.raises(ValueError, match="one temperature per env runner: 2"):
        config.validate()
    config.fixed_temperatures = [1.0, 0.5]
    config.validate()


@pytest.mark.integration
def test_lr_schedule_produces_the_documented_values(ray_session):
    algo = tiny_config(lr=0.01, lr_decay_rate=0.5, lr_decay_steps=10, lr_warmup_steps=4).build_algo()
    try:
        policy = algo.get_policy()
        expected = {0: 0.01 * 0.25, 1: 0.01 * 0.5 * 0.5 ** 0.1, 3: 0.01 * 0.5 ** 0.3, 10: 0.01 * 0.5, 20: 0.01 * 0.25}
        for t, lr in expected.items():
            policy.num_grad_updates = t
            assert policy.current_lr() == pytest.approx(lr), t
        # The optimizer really uses it: after an update at t = 20 its lr is the schedule's.
        batch = None
        while batch is None:
            algo.train()
            if len(algo.replays["default_policy"]) >= 16:
                batch = algo.replays["default_policy"].sample(16, num_unroll_steps=3, td_steps=5, discount=0.997,
                                                              rng=np.random.default_rng(0))
        policy.num_grad_updates = 20
        stats = policy.learn_on_replay_batch(batch)["learner_stats"]
        assert stats["cur_lr"] == pytest.approx(0.01 * 0.25)
        assert policy._optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)
    finally:
        algo.stop()


@pytest.mark.integration
def test_temperature_schedule_follows_learner_updates(ray_session):
    algo = tiny_config(visit_softmax_temperatures=[1.0, 0.5, 0.0], visit_softmax_steps=[5, 10]).build_algo()
    try:
        policy = algo.get_policy()
        for t, temperature in [(0, 1.0), (4, 1.0), (5, 0.5), (9, 0.5), (10, 0.0), (1000, 0.0)]:
            policy.num_grad_updates = t
            assert policy.current_temperature() == temperature
    finally:
        algo.stop()


@pytest.mark.integration
def test_fixed_temperatures_reach_the_right_runners(ray_session):
    config = (tiny_config(fixed_temperatures=[1.0, 0.25])
              .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5)
              .resources(num_cpus_for_main_process=0.5))
    algo = config.build_algo()
    try:
        temps = algo.env_runner_group.foreach_env_runner(
            lambda w: (w.worker_index, w.get_policy().current_temperature()), local_env_runner=False)
        assert sorted(temps) == [(1, 1.0), (2, 0.25)]
        metrics = algo._muzero_metrics("default_policy", None, 0, 0.0, 0)
        assert (metrics["temperature_runner_1"], metrics["temperature_runner_2"]) == (1.0, 0.25)
    finally:
        algo.stop()


@pytest.mark.integration
def test_weights_reach_runners_only_at_the_configured_frequency(ray_session):
    def runner_weights(algo):
        return algo.env_runner_group.foreach_env_runner(
            lambda w: w.get_policy().get_weights(), local_env_runner=False)[0]

    for frequency, expect_synced in [(1, True), (10_000, False)]:
        # The synchronous broadcast (in async mode the learner goes on training after each send).
        config = (tiny_config(send_weights_frequency=frequency, num_steps_sampled_before_learning_starts=16,
                              async_sampling=False)
                  .env_runners(num_env_runners=1, num_cpus_per_env_runner=0.5)
                  .resources(num_cpus_for_main_process=0.5))
        algo = config.build_algo()
        try:
            initial = runner_weights(algo)
            for _ in range(3):
                algo.train()
            assert algo.get_policy().num_grad_updates > 0
            now = runner_weights(algo)
            learner = algo.get_policy().get_weights()
            same_as_learner = all(np.array_equal(now[k], learner[k]) for k in learner)
            same_as_initial = all(np.array_equal(now[k], initial[k]) for k in initial)
            assert (same_as_learner, same_as_initial) == (expect_synced, not expect_synced), frequency
        finally:
            algo.stop()


def test_use_q_max_stores_the_best_child_q_as_bootstrap_value():
    batch = SampleBatch({
        SampleBatch.EPS_ID: np.array([3, 3, 3]),
        SampleBatch.OBS: np.zeros((3, 4), np.float32),
        SampleBatch.ACTIONS: np.array([0, 1, 0]),
        SampleBatch.REWARDS: np.ones(3, np.float32),
        SampleBatch.TERMINATEDS: np.array([False, False, True]),
        SampleBatch.TRUNCATEDS: np.zeros(3, bool),
        columns.SEARCH_ROOT_VALUE: np.array([1.0, 2.0, 3.0], np.float32),
        columns.SEARCH_Q_MAX: np.array([10.0, 20.0, 30.0], np.float32),
        columns.SEARCH_POLICY: np.full((3, 2), 0.5, np.float32),
    })
    for use_q_max, expected in [(False, [1.0, 2.0, 3.0]), (True, [10.0, 20.0, 30.0])]:
        replay = SequenceReplayBuffer(8, (4,), np.float32, 2)
        add_sample_batch_to_replay(replay, batch, use_q_max=use_q_max)
        np.testing.assert_array_equal(replay.get_state()["root_values"][:3], expected)


@pytest.mark.integration
def test_no_support_trains_scalar_heads_that_search_and_serving_read_in_the_raw_scale(ray_session, tmp_path):
    algo = tiny_config(no_support=True, scalar_loss="huber", replay_window_step=40).build_algo()
    try:
        policy = algo.get_policy()
        assert policy.value_support is None and policy.reward_support is None
        assert policy.model.value_head[-1].out_features == 1 and policy.model.reward_head[-1].out_features == 1
        for _ in range(4):
            result = algo.train()
        stats = result["info"]["learner"]["default_policy"]["learner_stats"]
        assert policy.num_grad_updates > 0 and np.isfinite([stats["value_loss"], stats["reward_loss"]]).all()
        # The replay window grew from 40 (reference --window_step) as the ring wrapped.
        replay = algo.replays["default_policy"]
        assert 40 < replay.window <= replay.capacity
        assert result["info"]["learner"]["default_policy"]["muzero"]["replay_window"] == replay.window
        # The search reads h^-1 of the scalar head: the same number the network's output maps to.
        obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        with torch.no_grad():
            head = policy.model.initial_inference(torch.from_numpy(obs)).value_logits
        np.testing.assert_allclose(policy.to_scalar(head, None), h_inverse(head[:, 0]).numpy(), rtol=1e-6)
        search = policy.search(obs, explore=False)
        assert np.isfinite(search.root_value).all()
        # A served copy (no Ray) reads the same scalar heads and searches to the same values.
        path = export_for_serving(algo, tmp_path / "agent.pt")
        served = ServingAgent.load(path).search(obs)
        np.testing.assert_allclose(served.root_value, search.root_value, rtol=1e-5)
        np.testing.assert_array_equal(served.visit_counts, search.visit_counts)
    finally:
        algo.stop()


class _ReplacingEnv(gym.Env):
    """Executes the agent's action or, every other step, the next one (mod 3), reporting it as avoid_repeat does
    (``info["executed_action"]``). The observation is the one-hot of the action executed last, so the replay can be
    checked against what happened."""

    observation_space = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(3), {}

    def step(self, action):
        self.t += 1
        executed = (int(action) + 1) % 3 if self.t % 2 else int(action)
        info = {"executed_action": executed} if executed != action else {}
        return self._obs(executed), 0.0, self.t >= 12, False, info

    @staticmethod
    def _obs(index):
        obs = np.zeros(4, np.float32)
        obs[index] = 1.0
        return obs


@pytest.mark.integration
def test_replay_records_the_action_the_env_executed_not_the_replaced_one(ray_session):
    tune.register_env("muzero_test_replacing", lambda ctx: _ReplacingEnv())
    algo = tiny_config().environment("muzero_test_replacing").build_algo()
    try:
        for _ in range(2):
            algo.train()
        state = algo.replays["default_policy"].get_state()
        linked = np.flatnonzero((state["next_slot"] >= 0) & (state["generation"] > 0))
        assert linked.size > 20
        executed = state["obs"][state["next_slot"][linked]].argmax(axis=1)  # o_{t+1} shows a_t
        np.testing.assert_array_equal(state["actions"][linked], executed)
    finally:
        algo.stop()
