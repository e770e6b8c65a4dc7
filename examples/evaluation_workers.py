"""Evaluation during training, the RLlib way: ``.evaluation(...)`` with greedy, noise-free MuZero search.

``MuZeroConfig.overrides(explore=False)`` as the ``evaluation_config`` makes the evaluation policy play the most
visited action of each search (temperature 0) and add no Dirichlet noise at the root, the paper's evaluation; the
training env runners keep exploring. Results arrive under ``result["evaluation"]`` (e.g.
``result["evaluation"]["env_runners"]["episode_return_mean"]``), every ``evaluation_interval`` iterations.

Knobs (RLlib's own): ``evaluation_interval`` (iterations between evaluations), ``evaluation_duration`` with
``evaluation_duration_unit`` ("episodes" or "timesteps"), ``evaluation_num_env_runners`` (0: evaluate in the driver
process; N: N remote evaluation runners), ``evaluation_parallel_to_training``. ``algo.evaluate()`` runs one evaluation
on demand.

Run it::

    python examples/evaluation_workers.py --iterations 2 --episodes 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rllib_muzero import MuZeroConfig


def make_config(*, episodes: int = 2, seed: int = 0) -> MuZeroConfig:
    """CartPole, evaluated greedily every iteration for ``episodes`` episodes (everything in the driver process)."""
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(num_simulations=4, num_unroll_steps=3, td_steps=5, train_batch_size=16,
                  num_steps_sampled_before_learning_starts=20, replay_capacity=2000,
                  value_support=(-10, 10), reward_support=(-3, 3),
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        .evaluation(
            evaluation_interval=1,
            evaluation_duration=episodes,
            evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            evaluation_config=MuZeroConfig.overrides(explore=False),
        )
        .debugging(seed=seed)
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=2, help="evaluation episodes per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    algo = make_config(episodes=args.episodes, seed=args.seed).build_algo()
    try:
        results = [algo.train() for _ in range(args.iterations)]
    finally:
        algo.stop()
    for result in results:
        train_runners, eval_runners = result["env_runners"], result["evaluation"]["env_runners"]
        print(f"iteration {result['training_iteration']}: training return "
              f"{train_runners.get('episode_return_mean')}, greedy evaluation return "
              f"{eval_runners['episode_return_mean']} over {eval_runners['num_episodes']} episodes")
    return results


if __name__ == "__main__":
    main()
