"""MuZero inside RLlib pipelines: action masks (RLlib's Dict convention) and multi-agent policies."""

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.multi_agent_env import make_multi_agent

from rllib_muzero import columns
from tests.test_algorithm import tiny_config

pytestmark = pytest.mark.integration


class MaskedEnv(gym.Env):
    """Four actions, a random half of them illegal each step; an illegal action costs -10 and ends the episode."""

    def __init__(self, config=None):
        config = config or {}
        self.mask_size = int(config.get("mask_size", 4))
        self.all_illegal = bool(config.get("all_illegal", False))
        self.action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Dict({
            "action_mask": gym.spaces.Box(0.0, 1.0, (self.mask_size,), np.float32),
            "observations": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
        })
        self.t = 0

    def _obs(self):
        mask = np.zeros(self.mask_size, np.float32)
        if not self.all_illegal:
            legal = self.np_random.choice(4, size=2, replace=False)
            mask[legal] = 1.0
        self.mask = mask
        return {"action_mask": mask, "observations": self.np_random.uniform(-1, 1, 3).astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        if self.mask[action] == 0:
            return self._obs(), -10.0, True, False, {}
        return self._obs(), 1.0, False, self.t >= 20, {}


def _masked_config(**env_config):
    return (tiny_config().environment(MaskedEnv, env_config=env_config)
            .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10))


def test_search_never_plays_or_targets_an_illegal_action(ray_session):
    algo = _masked_config().build_algo()
    try:
        for _ in range(3):
            algo.train()
        assert algo.get_policy().num_grad_updates > 0
        batch = algo.env_runner.sample().as_multi_agent().policy_batches["default_policy"]
        policy = algo.get_policy()
        import torch

        _, invalid = policy.split_observations(torch.as_tensor(batch["obs"]))
        actions = batch["actions"]
        assert not invalid[np.arange(len(actions)), actions].any()  # never an illegal move
        assert (batch[columns.SEARCH_POLICY][invalid] == 0).all()  # policy targets only cover legal actions
        assert (batch["rewards"] != -10).all()
        # The network sees the observations without the mask.
        assert policy.model_observation_space.shape == (3,)
    finally:
        algo.stop()


def test_action_mask_of_the_wrong_shape_is_refused(ray_session):
    with pytest.raises(ValueError, match="action mask `action_mask` has shape \\(3,\\); expected \\(4,\\)"):
        _masked_config(mask_size=3).build_algo()


def test_no_legal_action_is_a_clear_error(ray_session):
    algo = _masked_config(all_illegal=True).build_algo()
    try:
        with pytest.raises(Exception, match="legal"):
            algo.train()
    finally:
        algo.stop()


MultiAgentCartPole = make_multi_agent("CartPole-v1")


def _multi_agent_config(policies_to_train):
    return (tiny_config().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"},
                         policy_mapping_fn=lambda agent_id, episode, **kwargs: f"p{agent_id}",
                         policies_to_train=policies_to_train))


def test_each_agent_trains_its_own_policy_with_its_own_replay(ray_session):
    algo = _multi_agent_config(["p0"]).build_algo()
    try:
        p1_before = algo.get_policy("p1").get_weights()
        for _ in range(3):
            result = algo.train()
        assert set(algo.replays) == {"p0", "p1"}
        assert len(algo.replays["p0"]) > 0 and len(algo.replays["p1"]) > 0
        assert algo.get_policy("p0").num_grad_updates > 0
        assert algo.get_policy("p1").num_grad_updates == 0  # policies_to_train respected
        after = algo.get_policy("p1").get_weights()
        assert all(np.array_equal(after[k], p1_before[k]) for k in after)
        assert "p0" in result["info"]["learner"] and "p1" not in result["info"]["learner"]
    finally:
        algo.stop()


def test_mapping_to_an_unknown_policy_is_refused(ray_session):
    config = (tiny_config().environment(MultiAgentCartPole, env_config={"num_agents": 2})
              .multi_agent(policies={"p0"}, policy_mapping_fn=lambda agent_id, episode, **kwargs: "nobody"))
    with pytest.raises(Exception, match="nobody"):
        algo = config.build_algo()
        try:
            algo.train()
        finally:
            algo.stop()
