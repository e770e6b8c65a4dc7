"""CartPole-v1 benchmark: env steps, learner updates and wall time until the greedy mean over 10 games >= 475.

    python benchmarks/cartpole.py                      # 3 seeds, the tuned example's config
    python benchmarks/cartpole.py --seeds 0 --max-env-steps 20000

Uses the config of tuned_examples/cartpole-muzero.yaml. Evaluation (greedy search, no noise, temperature 0, 10 games
with fixed reset seeds) runs every --eval-every env steps; its time is excluded from the training wall time and
reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gymnasium as gym
import numpy as np
import ray
import torch

from rllib_muzero import MuZeroConfig
from rllib_muzero.cli import build_param_space, load_experiments
from rllib_muzero.evaluation import play_games

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "tuned_examples", "cartpole-muzero.yaml")


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    (name, spec), = load_experiments(args.example).items()
    overrides = json.loads(args.config) if args.config else {}
    config_dict = build_param_space(name, spec, {**overrides, "seed": seed})
    config = MuZeroConfig().update_from_dict(config_dict)
    algo = config.build_algo()
    train_time = eval_time = 0.0
    env_steps = 0
    next_eval = args.eval_every
    best = -np.inf
    reached = False
    try:
        while env_steps < args.max_env_steps and train_time < args.max_minutes * 60:
            t0 = time.perf_counter()
            result = algo.train()
            train_time += time.perf_counter() - t0
            env_steps = result["num_env_steps_sampled_lifetime"]
            if env_steps >= next_eval:
                next_eval += args.eval_every
                t0 = time.perf_counter()
                returns = play_games(algo.get_policy(), lambda: gym.make("CartPole-v1"), 10, seed=10_000 + seed)
                eval_time += time.perf_counter() - t0
                best = max(best, returns.mean())
                updates = algo.get_policy().num_grad_updates
                print(f"  seed {seed}: env_steps={env_steps:6d} updates={updates:5d} train_s={train_time:6.1f} "
                      f"greedy_mean={returns.mean():6.1f}", flush=True)
                if returns.mean() >= args.target:
                    reached = True
                    break
        return {"seed": seed, "reached": reached, "env_steps": env_steps,
                "updates": algo.get_policy().num_grad_updates, "train_s": train_time, "eval_s": eval_time,
                "best_greedy_mean": best}
    finally:
        algo.stop()


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
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = [run_seed(seed, args) for seed in args.seeds]
    print("\nseed  reached  env_steps  updates  train_s  eval_s  best_greedy_mean")
    for r in rows:
        print(f"{r['seed']:4d}  {str(r['reached']):7s}  {r['env_steps']:9d}  {r['updates']:7d}  {r['train_s']:7.1f}"
              f"  {r['eval_s']:6.1f}  {r['best_greedy_mean']:16.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
