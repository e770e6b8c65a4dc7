"""Playing whole games with a trained policy, outside RLlib's sampler (benchmarks, tests, later `evaluate`).

Games run in lockstep so each move is one batched search over all unfinished games.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from rllib_muzero.policy import MuZeroTorchPolicy, select_actions


def play_games(
    policy: MuZeroTorchPolicy,
    make_env: Callable[[], gym.Env],
    num_games: int,
    *,
    seed: int,
    explore: bool = False,
    temperature: float = 0.0,
    max_steps: int | None = None,
) -> np.ndarray:
    """Plays ``num_games`` games to their end and returns their undiscounted returns, shape [num_games].

    Game ``i`` is reset with seed ``seed + i``. With ``explore=False`` the search adds no root noise and, at
    ``temperature`` 0, the most visited action is played (the paper's evaluation).
    """
    envs = [make_env() for _ in range(num_games)]
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
        returns = np.zeros(num_games)
        steps = np.zeros(num_games, dtype=np.int64)
        alive = np.ones(num_games, dtype=bool)
        while alive.any():
            idx = np.flatnonzero(alive)
            result = policy.search(obs[idx], explore=explore)
            actions = select_actions(result.visit_counts, temperature, policy.rng)
            for j, i in enumerate(idx):
                next_obs, reward, terminated, truncated, _ = envs[i].step(int(actions[j]))
                returns[i] += reward
                steps[i] += 1
                obs[i] = next_obs
                if terminated or truncated or (max_steps is not None and steps[i] >= max_steps):
                    alive[i] = False
        return returns
    finally:
        for env in envs:
            env.close()
