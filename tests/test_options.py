"""Self-play and training options change behaviour (not only parse): lr schedule, fixed temperatures, use_q_max,
weight-sync frequency, temperature schedule, scalar heads (no_support) and the growing replay window."""

import copy

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
from tests.test_batched_prediction import CountingPrediction
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


@pytest.mark.integration
def test_bf16_mixed_learner_computes_in_bfloat16_close_to_float32_and_trains(ray_session):
    """``learner_precision`` "bf16-mixed": from the same state and batch, the learner's update computes its matrix
    products in bfloat16 (a Linear's output dtype), its loss differs from float32's only by bf16 rounding, the weights
    and optimizer state stay float32, and training end to end (value reanalyse and the consistency loss on) keeps
    every loss finite."""
    algo = tiny_config(reanalyse_value=True, consistency_loss_weight=1.0).build_algo()
    try:
        for _ in range(3):
            algo.train()
        policy = algo.get_policy()
        batch = algo.replays["default_policy"].sample(16, num_unroll_steps=3, td_steps=5, discount=0.997,
                                                      rng=np.random.default_rng(0), value_fn=policy.reanalyse_values,
                                                      with_unroll_obs=True)
        linear = next(m for m in policy.model.modules() if isinstance(m, torch.nn.Linear))
        seen: list[torch.dtype] = []
        forward = linear.forward  # the network calls each layer's forward directly (no hooks): wrap that

        def recording_forward(x):
            y = forward(x)
            seen.append(y.dtype)
            return y

        linear.forward = recording_forward
        prediction_calls = CountingPrediction(policy.model)
        state = copy.deepcopy(policy.get_state())  # on the CPU, get_state's arrays share the live weights
        out = {}
        for precision in ("float32", "bf16-mixed"):
            policy.set_state(copy.deepcopy(state))  # the optimizer keeps the tensors it is given
            policy.config["learner_precision"] = precision
            seen.clear()
            prediction_calls.rows.clear()
            out[precision] = policy.learn_on_replay_batch({k: v.copy() for k, v in batch.items()})
            assert out[precision]["finite"]
            assert set(seen) == {torch.float32 if precision == "float32" else torch.bfloat16}, precision
            # bf16: prediction once on the K + 1 = 4 stacked unroll steps (faster there); float32: once per step
            assert prediction_calls.rows == ([16] * 4 if precision == "float32" else [64]), (precision,
                                                                                          prediction_calls.rows)
        del linear.forward, policy.model.prediction
        loss32, loss16 = (out[p]["learner_stats"]["total_loss"] for p in ("float32", "bf16-mixed"))
        assert loss16 != loss32 and abs(loss16 - loss32) <= 0.02 * abs(loss32), (loss16, loss32)
        np.testing.assert_allclose(out["bf16-mixed"]["priorities"], out["float32"]["priorities"], rtol=0.05,
                                   atol=0.05)
        assert all(p.dtype == torch.float32 for p in policy.model.parameters())
        assert all(v.dtype == torch.float32 for s in policy._optimizers[0].state.values() for v in s.values())
    finally:
        algo.stop()

    algo = tiny_config(learner_precision="bf16-mixed", reanalyse_value=True, consistency_loss_weight=1.0).build_algo()
    try:
        results = [algo.train() for _ in range(4)]
        stats = results[-1]["info"]["learner"]["default_policy"]["learner_stats"]
        assert algo.get_policy().num_grad_updates > 0
        for name in ("total_loss", "value_loss", "reward_loss", "policy_loss", "consistency_loss"):
            assert np.isfinite(stats[name]), name
    finally:
        algo.stop()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_the_learner_optimizer_is_fused_where_torch_has_the_kernels(name):
    """Fused for SGD/Adam/AdamW on float CPU parameters, torch's default for RMSprop (no fused version) and for
    parameters the fused kernels refuse (which torch would only find at the first step); every one steps."""
    from rllib_muzero.policy import make_optimizer

    config = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    for dtype, fusable in ((torch.float32, name != "rmsprop"), (torch.complex64, False)):
        params = [torch.nn.Parameter(torch.ones(3, dtype=dtype))]
        optimizer = make_optimizer(name, params, config)
        assert bool(optimizer.defaults.get("fused")) is fusable, dtype
        params[0].grad = torch.ones_like(params[0])
        optimizer.step()
        assert not torch.equal(params[0].detach(), torch.ones(3, dtype=dtype))


@pytest.mark.integration
def test_optimizer_steps_refresh_the_acting_copy(ray_session):
    """Every learner step reaches the network's acting copy (numpy inference, keyed on the parameters' version
    counters). The learner uses torch's fused CPU optimizer (``fused=True``), which updates the parameters without
    bumping those counters: without the policy's own bump after each step, acting would go on with stale weights."""
    algo = tiny_config().build_algo()
    try:
        algo.train()
        policy = algo.get_policy()
        assert policy._optimizers[0].defaults["fused"] is True  # the trap this test guards is live
        engine_before = policy.model.numpy_inference()
        updates = policy.num_grad_updates
        algo.train()
        assert policy.num_grad_updates > updates
        engine = policy.model.numpy_inference()
        assert engine is not engine_before  # rebuilt from the new weights
        for dense, linear in zip(engine.representation, (m for m in policy.model.representation_net
                                                          if isinstance(m, torch.nn.Linear))):
            np.testing.assert_array_equal(dense.weight_t, linear.weight.detach().numpy().T)
    finally:
        algo.stop()
