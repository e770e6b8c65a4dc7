"""Action masks: an env with illegal actions that MuZero never plays.

RLlib's convention: the observation is a ``Dict`` with an ``"action_mask"`` (1 = legal, 0 = illegal, one entry per
action) and the real ``"observations"``. MuZero reads the mask under ``action_mask_key`` (default
``"action_mask"``): illegal root actions are never expanded, the priors are renormalised over the legal ones, the
policy targets cover legal actions only, and the network sees ``observations`` alone.

The env here, ``HalfLegalEnv``: four actions, a random two of them legal at each step (the mask says which); a legal
action pays +1, an illegal one costs -10 and ends the episode; episodes last 20 steps. Because the search never
plays an illegal action, every episode returns 20 from the first iteration on, trained or not; the script checks
every step of a fresh sample and the greedy evaluation games (``.evaluation(...)``, no root noise).

Run it::

    python examples/action_masks.py --iterations 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_muzero import MuZeroConfig, columns

EPISODE_LENGTH = 20
ILLEGAL_REWARD = -10.0


class HalfLegalEnv(gym.Env):
    """Four actions, a random two legal at each step; an illegal action costs -10 and ends the episode."""

    def __init__(self, config: dict | None = None) -> None:
        self.action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Dict({
            "action_mask": gym.spaces.Box(0.0, 1.0, (4,), np.float32),
            "observations": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
        })
        self.t = 0
        self.mask = np.ones(4, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        self.mask = np.zeros(4, np.float32)
        self.mask[self.np_random.choice(4, size=2, replace=False)] = 1.0
        return {"action_mask": self.mask.copy(),
                "observations": self.np_random.uniform(-1, 1, 3).astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: int):
        self.t += 1
        if self.mask[action] == 0:
            return self._obs(), ILLEGAL_REWARD, True, False, {"illegal": True}
        return self._obs(), 1.0, False, self.t >= EPISODE_LENGTH, {"illegal": False}


def make_config(*, seed: int = 0) -> MuZeroConfig:
    """Small search and network, everything in the driver process."""
    return (
        MuZeroConfig()
        .environment(HalfLegalEnv)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(num_simulations=4, num_unroll_steps=3, td_steps=5, train_batch_size=16,
                  num_steps_sampled_before_learning_starts=20, replay_capacity=2000,
                  value_support=(-10, 10), reward_support=(-10, 10),
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        # Greedy games (most visited action, no root noise) after every iteration, in the driver process.
        .evaluation(evaluation_interval=1, evaluation_duration=3, evaluation_duration_unit="episodes",
                    evaluation_num_env_runners=0, evaluation_config=MuZeroConfig.overrides(explore=False))
        .debugging(seed=seed)
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray
    import torch

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    algo = make_config(seed=args.seed).build_algo()
    try:
        for _ in range(args.iterations):
            result = algo.train()
        policy = algo.get_policy()
        # One more sample, checked step by step: the mask each action was chosen under, the action, the visit
        # distribution (the policy target stored in the replay).
        batch = algo.env_runner.sample().as_multi_agent().policy_batches["default_policy"]
        _, illegal = policy.split_observations(torch.as_tensor(batch["obs"]))  # (T, 4) True where illegal
        illegal = np.asarray(illegal, dtype=bool)
        actions = np.asarray(batch["actions"])
        summary = {
            "iterations": args.iterations,
            "num_grad_updates": int(policy.num_grad_updates),
            "episode_return_mean": float(result["env_runners"]["episode_return_mean"]),
            "steps_checked": int(len(actions)),
            "illegal_actions_played": int(illegal[np.arange(len(actions)), actions].sum()),
            "illegal_visit_share": float(np.asarray(batch[columns.SEARCH_POLICY])[illegal].sum()),
            "network_observation_shape": list(policy.model_observation_space.shape),
            "greedy_returns": [float(r) for r in
                               result["evaluation"]["env_runners"]["hist_stats"]["episode_reward"]],
        }
    finally:
        algo.stop()
    for key, value in summary.items():
        print(f"{key}: {value}")
    return summary


if __name__ == "__main__":
    main()
