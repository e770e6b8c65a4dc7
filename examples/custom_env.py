"""A custom gymnasium env trained with MuZero, the RLlib way: ``tune.register_env`` + ``env_config``.

``CorridorEnv`` is a corridor of ``length`` cells: the agent starts in cell 0 and walks left (action 0) or right
(action 1); reaching the last cell ends the episode (terminated). Every step costs -1, so the optimal return is
``-(length - 1)`` (always walk right). After ``max_steps`` steps the episode is truncated (a time limit, not a
termination). Observations are the one-hot position, a 1-D ``Box`` as the built-in ``"muzero_fc"`` network expects.

An untrained MuZero network predicts uniform priors and zero values, and greedy play breaks ties towards the lowest
action (left), so a greedy agent that learned nothing never leaves cell 0: the greedy return tells plainly whether
the corridor was learned.

Run it (from the repository root)::

    python examples/custom_env.py                      # trains, then plays greedily and prints the returns
    python examples/custom_env.py --iterations 60 --length 7

The same env from a classic tuned-example YAML file (``examples/custom_env.yaml``)::

    python -m rllib_muzero.cli train examples/custom_env.yaml

The YAML names the env by its class path ``examples.custom_env.CorridorEnv``; RLlib imports the class in every
process that builds envs and calls ``CorridorEnv(env_config)``. That import works from the repository root because
Ray puts the driver's working directory on every worker's ``sys.path``; elsewhere, make the module importable
(``PYTHONPATH=/path/to/repo`` or package it). A ``tune.register_env`` name would not work there: the command
imports ``rllib_muzero`` only, so nothing would register it in that process.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.tune import register_env

from rllib_muzero import MuZeroConfig

ENV_NAME = "corridor"  # the Tune name `main` registers CorridorEnv under


class CorridorEnv(gym.Env):
    """Walk from cell 0 to cell ``length - 1``; -1 per step; optimal return ``-(length - 1)``.

    RLlib builds envs in two ways, and both work: a ``tune.register_env`` creator or an env class passes the
    ``EnvContext`` (a dict) positionally, ``CorridorEnv(env_context)``; a class path string (the YAML) passes the
    ``env_config`` entries as keyword arguments, ``CorridorEnv(length=5)``.

    Args:
        config: RLlib's ``EnvContext`` (a dict) or None.
        **kwargs: The same options as keywords (they win over ``config``): ``length`` (cells, >= 2, default 5) and
            ``max_steps`` (time limit in steps, default ``4 * length``).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict | None = None, **kwargs: Any):
        config = {**(config or {}), **kwargs}
        unknown = sorted(set(config) - {"length", "max_steps"})
        if unknown:
            raise ValueError(f"CorridorEnv: unknown option(s) {unknown}; known: ['length', 'max_steps']")
        self.length = int(config.get("length", 5))
        self.max_steps = int(config.get("max_steps", 4 * self.length))
        if self.length < 2 or self.max_steps < self.length - 1:
            raise ValueError(f"CorridorEnv needs length >= 2 and max_steps >= length - 1, got {config}")
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.length,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.position = 0
        self.steps = 0

    @property
    def optimal_return(self) -> float:
        """The best undiscounted return: ``length - 1`` steps to the right at -1 each."""
        return -float(self.length - 1)

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, np.float32)
        obs[self.position] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = 0
        self.steps = 0
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"CorridorEnv: invalid action {action!r}")
        self.position = max(0, self.position - 1) if int(action) == 0 else self.position + 1
        self.steps += 1
        terminated = self.position == self.length - 1
        truncated = not terminated and self.steps >= self.max_steps
        return self._obs(), -1.0, terminated, truncated, {}


def make_config(*, length: int = 5, seed: int = 0, num_simulations: int = 8) -> MuZeroConfig:
    """A MuZero config for the corridor, small enough for a 2-core machine (everything in the driver process)."""
    return (
        MuZeroConfig()
        .environment(ENV_NAME, env_config={"length": length})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(
            num_simulations=num_simulations,
            num_unroll_steps=3,
            td_steps=5,
            gamma=0.9,
            lr=3e-3,
            train_batch_size=32,
            training_intensity=8.0,
            num_steps_sampled_before_learning_starts=100,
            replay_capacity=5000,
            value_support=(-10, 10),
            reward_support=(-2, 2),
            model={"custom_model": "muzero_fc",
                   "custom_model_config": {"hidden_size": 16, "representation_layers": [32],
                                           "dynamics_layers": [32], "reward_layers": [16],
                                           "value_layers": [16], "policy_layers": [16]}},
        )
        .debugging(seed=seed)
    )


def register() -> None:
    """Registers ``CorridorEnv`` with Tune as ``"corridor"``; the creator gets RLlib's ``EnvContext``."""
    register_env(ENV_NAME, lambda env_context: CorridorEnv(env_context))


def greedy_returns(algo: Any, *, length: int, num_games: int = 3, seed: int = 123) -> np.ndarray:
    """Undiscounted returns of greedy play (most visited action, no root noise), one per game."""
    from rllib_muzero.play import play_games

    return play_games(algo.get_policy(), lambda: CorridorEnv({"length": length}), num_games, seed=seed,
                      explore=False)


def train(*, iterations: int, length: int, seed: int = 0) -> tuple[Any, list[dict]]:
    """Builds the algorithm on the registered env and trains it ``iterations`` times; returns (algo, results)."""
    register()
    algo = make_config(length=length, seed=seed).build_algo()
    results = [algo.train() for _ in range(iterations)]
    return algo, results


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40, help="training iterations (40 env steps each)")
    parser.add_argument("--length", type=int, default=5, help="corridor cells")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads of this process while it trains (restored afterwards)")
    args = parser.parse_args(argv)

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # With num_env_runners=0 this process searches and learns. Its networks are tiny: one torch thread is faster, and
    # on a busy machine more threads than free cores make every small op wait for a time slice. (Ray already gives
    # each remote env runner OMP_NUM_THREADS from its CPU share.)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    try:
        algo, results = train(iterations=args.iterations, length=args.length, seed=args.seed)
        try:
            returns = greedy_returns(algo, length=args.length)
        finally:
            algo.stop()
    finally:
        torch.set_num_threads(previous_threads)
    optimum = CorridorEnv({"length": args.length}).optimal_return
    summary = {
        "env_steps": results[-1]["num_env_steps_sampled_lifetime"],
        "episode_return_mean": results[-1]["env_runners"]["episode_return_mean"],
        "greedy_returns": returns.tolist(),
        "optimal_return": optimum,
        "solved": bool(np.all(returns == optimum)),
    }
    print(summary)
    return summary


if __name__ == "__main__":
    main()
