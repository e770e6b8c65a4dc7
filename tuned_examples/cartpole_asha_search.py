"""A Ray Tune hyperparameter search for MuZero on CartPole-v1: ASHA over lr, td_steps and num_simulations.

    python tuned_examples/cartpole_asha_search.py                       # 8 trials, up to 30 iterations each
    python tuned_examples/cartpole_asha_search.py --num-samples 2 --max-iterations 2   # smoke run

Starts from the tuned example's config (cartpole-muzero.yaml) and lets ASHA stop weak trials early on
``env_runners/episode_return_mean``. Trials use fractional CPUs so several run at once on a small machine.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

import rllib_muzero  # noqa: F401  (registers "MuZero")
from rllib_muzero.cli import build_param_space, load_experiments

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cartpole-muzero.yaml")
METRIC = "env_runners/episode_return_mean"


def search_space(overrides: dict | None = None) -> dict:
    """The tuned example's config with lr, td_steps and num_simulations turned into search dimensions."""
    (name, spec), = load_experiments(EXAMPLE).items()
    config = build_param_space(name, spec, overrides)
    config.update({
        "lr": tune.loguniform(1e-3, 1e-2),
        "td_steps": tune.choice([10, 30, 50]),
        "num_simulations": tune.choice([10, 25, 50]),
        "num_cpus_for_main_process": 0.5,
    })
    return config


def main(argv: Sequence[str] | None = None) -> tune.ResultGrid:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-iterations", type=int, default=30)
    parser.add_argument("--storage-path", default=None)
    parser.add_argument("--config", default=None, help="JSON overrides of the base config (e.g. for smoke runs)")
    args = parser.parse_args(argv)
    import json

    overrides = json.loads(args.config) if args.config else None
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=args.max_iterations,
                              grace_period=min(5, args.max_iterations), reduction_factor=2)
    tuner = tune.Tuner(
        "MuZero",
        param_space=search_space(overrides),
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, num_samples=args.num_samples),
        run_config=tune.RunConfig(name="cartpole-muzero-asha", stop={"training_iteration": args.max_iterations},
                                  storage_path=os.path.abspath(args.storage_path) if args.storage_path else None),
    )
    results = tuner.fit()
    best = results.get_best_result(metric=METRIC, mode="max", filter_nan_and_inf=False)
    print("best config:", {k: best.config[k] for k in ("lr", "td_steps", "num_simulations")},
          "return:", best.metrics.get("env_runners", {}).get("episode_return_mean"))
    return results


if __name__ == "__main__":
    main()
