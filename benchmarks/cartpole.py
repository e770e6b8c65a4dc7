"""CartPole-v1 benchmark: env steps, learner updates and wall time until the greedy mean over 10 games >= 475.

    python benchmarks/cartpole.py                      # 3 seeds, the tuned example's config
    python benchmarks/cartpole.py --seeds 0 --max-env-steps 20000

Uses the config of tuned_examples/cartpole-muzero.yaml. Evaluation (greedy search, no noise, temperature 0, 10 games
with fixed reset seeds) runs every --eval-every env steps; its time is excluded from the training wall time and
reported separately. The train-evaluate loop is benchmarks/_target_return.py, shared with the LunarLander and
Pong-RAM benchmarks.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import ray
from _target_return import example_path, init_ray, run_benchmark

EXAMPLE = example_path("cartpole-muzero.yaml")
EVAL_GAMES = 10


def cartpole_eval_env(config: dict):
    return lambda: gym.make("CartPole-v1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--example", default=EXAMPLE)
    parser.add_argument("--target", type=float, default=475.0)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--max-env-steps", type=int, default=30_000)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--config", help="JSON overrides of the example's config (for tuning)")
    args = parser.parse_args()
    init_ray(num_cpus=2)
    run_benchmark(example=args.example, eval_env=cartpole_eval_env, target=args.target, eval_games=EVAL_GAMES,
                  eval_every=args.eval_every, max_env_steps=args.max_env_steps, max_minutes=args.max_minutes,
                  seeds=args.seeds, overrides=args.config)
    ray.shutdown()


if __name__ == "__main__":
    main()
