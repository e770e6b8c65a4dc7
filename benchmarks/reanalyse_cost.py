"""What the learning options cost per learner update: value / policy reanalyse, the consistency loss, Gumbel.

    python benchmarks/reanalyse_cost.py                  # CartPole tuned example, 200 timed updates per option
    python benchmarks/reanalyse_cost.py --updates 100 --example tuned_examples/acrobot-muzero.yaml

For each option set, an algorithm is built from the tuned example (seed 0, the option set merged in) and trained in
the driver until its replay holds ``--fill`` env steps; then ``--updates`` learner updates (``MuZero._learn_once``:
replay sample with any reanalyse, loss, backward, optimizer step, priorities) are timed by the CPU time of the only
working thread (``time.thread_time``, one torch thread), which a loaded machine disturbs far less than the wall
clock. Printed: ms per update and the factor over the plain update, and the wall-clock ms per update. Policy reanalyse
searches ``fraction * batch * (K + 1)`` roots with ``num_simulations`` each per update, which is what it costs; with a
reanalyse worker (``num_reanalyse_workers`` 1, one CPU) those searches run in the worker, so the learner's CPU time
shows what stays on its critical path, and the wall clock (on an otherwise idle 2-core machine) whether the worker
keeps up.
"""

from __future__ import annotations

import argparse
import json
import time

import ray
import torch
from _target_return import example_path, init_ray

from rllib_muzero import MuZeroConfig
from rllib_muzero.cli import build_param_space, load_experiments

OPTION_SETS = {
    "plain (td_steps 50)": {"td_steps": 50},
    "+ reanalyse_value": {"td_steps": 50, "reanalyse_value": True},
    "+ consistency_loss_weight 2": {"td_steps": 50, "reanalyse_value": True, "consistency_loss_weight": 2.0},
    "+ off_policy_correction_age 2000": {"td_steps": 50, "reanalyse_value": True,
                                         "off_policy_correction_age": 2000},
    "+ reanalyse_policy_fraction 0.25": {"td_steps": 50, "reanalyse_value": True, "reanalyse_policy_fraction": 0.25},
    "+ reanalyse_policy_fraction 1.0": {"td_steps": 50, "reanalyse_value": True, "reanalyse_policy_fraction": 1.0},
    "+ policy reanalyse 1.0, gumbel 8 sims": {"td_steps": 50, "reanalyse_value": True,
                                              "reanalyse_policy_fraction": 1.0, "search_algorithm": "gumbel",
                                              "num_simulations": 8},
    "+ reanalyse_policy_fraction 1.0, 1 reanalyse worker": {"td_steps": 50, "reanalyse_value": True,
                                                           "reanalyse_policy_fraction": 1.0,
                                                           "num_reanalyse_workers": 1},
    "+ policy reanalyse 1.0, gumbel 8 sims, 1 reanalyse worker": {"td_steps": 50, "reanalyse_value": True,
                                                                 "reanalyse_policy_fraction": 1.0,
                                                                 "search_algorithm": "gumbel", "num_simulations": 8,
                                                                 "num_reanalyse_workers": 1},
}


def time_updates(example: str, overrides: dict, fill: int, updates: int) -> tuple[float, float]:
    """(CPU, wall-clock) milliseconds per learner update with ``overrides`` on top of the example. With reanalyse
    workers the CPU time is the learner's alone (the searches run in the workers, on their own cores)."""
    (name, spec), = load_experiments(example).items()
    config_dict = build_param_space(name, spec, {**overrides, "seed": 0})
    algo = MuZeroConfig().update_from_dict(config_dict).build_algo()
    try:
        while algo.train()["num_env_steps_sampled_lifetime"] < fill:
            pass
        pid = "default_policy"
        for _ in range(5):  # warm-up: first-use allocations, the target network copy
            algo._learn_once(pid)
        start, wall = time.thread_time(), time.perf_counter()
        for _ in range(updates):
            algo._learn_once(pid)
        return (time.thread_time() - start) / updates * 1e3, (time.perf_counter() - wall) / updates * 1e3
    finally:
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", default=example_path("cartpole-muzero.yaml"))
    parser.add_argument("--fill", type=int, default=3000, help="env steps sampled before timing (default: 3000)")
    parser.add_argument("--updates", type=int, default=200, help="timed learner updates per option set")
    parser.add_argument("--only", nargs="*", help="names (substrings) of the option sets to time")
    parser.add_argument("--config", help="JSON overrides applied to every option set")
    args = parser.parse_args()
    extra = json.loads(args.config) if args.config else {}
    init_ray(num_cpus=2)  # the driver, and a reanalyse worker where an option set has one
    torch.set_num_threads(1)
    rows = []
    try:
        for label, options in OPTION_SETS.items():
            if args.only and not any(s in label for s in args.only):
                continue
            ms, wall_ms = time_updates(args.example, {**options, **extra}, args.fill, args.updates)
            rows.append((label, ms, wall_ms))
            print(f"  {label:60s} {ms:8.2f} CPU ms/update {wall_ms:8.2f} wall ms", flush=True)
    finally:
        ray.shutdown()
    base = rows[0][1] if rows else 1.0
    print("\n| options | learner CPU ms per update | x plain | wall ms per update |\n|---|---:|---:|---:|")
    for label, ms, wall_ms in rows:
        print(f"| {label} | {ms:.1f} | {ms / base:.2f} | {wall_ms:.1f} |")


if __name__ == "__main__":
    main()
