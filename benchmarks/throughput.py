"""Throughput of the training loop: env steps/s and learner updates/s together, synchronous vs asynchronous.

Two benchmarks (issue 17):

1. ``--compare`` (default): the same config and replay ratio (``training_intensity``) run once with the synchronous
   loop (``async_sampling=False``: sample, store, learn, sync) and once with the asynchronous pipeline (remote
   runners sample while the learner thread learns). One remote env runner on a 2-core machine; the CartPole tuned
   example's network and search, ``training_intensity`` 4 by default so that sampling and learning each take a
   sizeable share of the synchronous loop (at the tuned example's 64 learning takes ~94% and only learner speed
   counts). After ``--warmup`` iterations past ``num_steps_sampled_before_learning_starts`` the script measures
   ``--seconds`` of wall clock: env steps/s, learner updates/s, the replay ratio over the window, and (synchronous)
   the share of the loop spent learning.
2. ``--scaling``: a virtual multi-node cluster (``ray.cluster_utils.Cluster``, ``--nodes`` nodes of
   ``--cpus-per-node`` virtual CPUs) and an env that sleeps ``--step-sleep-ms`` per step (a stand-in for an expensive
   simulator, so that scaling shows on 2 real cores): env steps/s of the asynchronous pipeline with 1, 2, 4, 8 env
   runners (``--runners``), one virtual CPU each, against linear scaling from one runner.

Figures on a shared machine move with its load: run both modes back to back, and read ratios rather than absolutes.

Reproduce::

    python benchmarks/throughput.py                                   # sync vs async, 1 remote runner
    python benchmarks/throughput.py --training-intensity 8 --seconds 60
    python benchmarks/throughput.py --compare-step-sleep-ms 1 --training-intensity 16   # sampling costs no CPU
    python benchmarks/throughput.py --scaling                         # 4 virtual nodes, 1/2/4/8 runners
    python benchmarks/throughput.py --scaling --runners 1 2 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import gymnasium as gym  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from rllib_muzero import MuZeroConfig  # noqa: E402

SLEEPY_ENV = "SleepyCartPole"


class SleepyCartPole(gym.Wrapper):
    """CartPole-v1 that sleeps ``step_sleep_s`` per step: an expensive simulator that costs no CPU."""

    def __init__(self, step_sleep_s: float):
        super().__init__(gym.make("CartPole-v1"))
        self.step_sleep_s = step_sleep_s

    def step(self, action: Any):
        time.sleep(self.step_sleep_s)
        return self.env.step(action)


def cartpole_config(*, num_env_runners: int, async_sampling: bool, training_intensity: float,
                    num_cpus_per_env_runner: float, seed: int, step_sleep_ms: float = 0.0) -> MuZeroConfig:
    """The CartPole tuned example's search and network (tuned_examples/cartpole-muzero.yaml) on remote runners;
    with ``step_sleep_ms`` each env step also sleeps (a simulator that costs time but no CPU)."""
    env = (SLEEPY_ENV, {"step_sleep_ms": step_sleep_ms}) if step_sleep_ms > 0 else ("CartPole-v1", {})
    return (
        MuZeroConfig()
        .environment(env[0], env_config=env[1])
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=16, rollout_fragment_length=25,
                     num_cpus_per_env_runner=num_cpus_per_env_runner)
        .resources(num_cpus_for_main_process=0)
        .training(num_simulations=50, num_unroll_steps=5, td_steps=500, value_loss_weight=0.5,
                  value_support=(-25, 25), reward_support=(-5, 5), train_batch_size=128, lr=3e-3,
                  training_intensity=training_intensity, num_steps_sampled_before_learning_starts=1000,
                  replay_capacity=30_000, visit_softmax_steps=[2000, 4000], async_sampling=async_sampling,
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 64}})
        .debugging(seed=seed)
    )


def measure(algo: Any, *, warmup: int, seconds: float) -> dict[str, float]:
    """Trains ``warmup`` iterations past the start of learning, then measures ``seconds`` of wall clock."""
    start_learning = algo.config.num_steps_sampled_before_learning_starts
    while algo._counters["num_env_steps_sampled"] < start_learning:
        algo.train()
    for _ in range(warmup):
        algo.train()
    policy = algo.get_policy()
    sampled0, updates0 = algo._counters["num_env_steps_sampled"], policy.num_grad_updates
    learn_seconds = 0.0
    start = time.perf_counter()
    iterations = 0
    while time.perf_counter() - start < seconds:
        result = algo.train()
        iterations += 1
        metrics = result["info"]["learner"]["default_policy"]["muzero"]
        if not algo._async_sampling and metrics["learner_updates_per_s"] > 0:
            learn_seconds += metrics["num_updates_this_iter"] / metrics["learner_updates_per_s"]
    wall = time.perf_counter() - start
    env_steps = algo._counters["num_env_steps_sampled"] - sampled0
    updates = policy.num_grad_updates - updates0
    out = {
        "env_steps_per_s": env_steps / wall,
        "updates_per_s": updates / wall,
        "replay_ratio": updates * algo.config.train_batch_size / max(env_steps, 1),
        "iterations": iterations,
        "seconds": wall,
    }
    if not algo._async_sampling:
        out["learn_share"] = learn_seconds / wall
    else:
        out["staleness_mean"] = metrics["weights_staleness_mean"]
    return out


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 2**20)
    tune.register_env(SLEEPY_ENV, lambda cfg: SleepyCartPole(cfg.get("step_sleep_ms", 5) / 1000.0))
    rows = []
    try:
        for mode in args.modes:
            algo = cartpole_config(num_env_runners=args.num_env_runners, async_sampling=mode == "async",
                                   training_intensity=args.training_intensity,
                                   num_cpus_per_env_runner=args.num_cpus_per_env_runner, seed=args.seed,
                                   step_sleep_ms=args.compare_step_sleep_ms).build_algo()
            try:
                row = {"mode": mode, **measure(algo, warmup=args.warmup, seconds=args.seconds)}
            finally:
                algo.stop()
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    print(f"\nsync vs async, {args.num_env_runners} remote env runner(s), training_intensity "
          f"{args.training_intensity}, {args.seconds:.0f} s windows, env step sleep {args.compare_step_sleep_ms} ms")
    print(f"{'mode':6} {'env steps/s':>12} {'updates/s':>10} {'replay ratio':>13} {'learn share':>12}")
    for row in rows:
        share = f"{row['learn_share']:.0%}" if "learn_share" in row else "overlapped"
        print(f"{row['mode']:6} {row['env_steps_per_s']:12.1f} {row['updates_per_s']:10.2f} "
              f"{row['replay_ratio']:13.2f} {share:>12}")
    if len(rows) == 2 and rows[0]["env_steps_per_s"] > 0:
        print(f"async / sync env steps/s: {rows[1]['env_steps_per_s'] / rows[0]['env_steps_per_s']:.2f}x")
    return rows


def scaling_config(num_env_runners: int, args: argparse.Namespace) -> MuZeroConfig:
    """A tiny network and search on the sleeping env: the runners' time is the simulator's."""
    return (
        MuZeroConfig()
        .environment(SLEEPY_ENV, env_config={"step_sleep_ms": args.step_sleep_ms})
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=args.envs_per_runner,
                     rollout_fragment_length=args.fragment, num_cpus_per_env_runner=1)
        .resources(num_cpus_for_main_process=0)
        .training(num_simulations=2, num_unroll_steps=3, td_steps=5, train_batch_size=16, training_intensity=0.5,
                  num_steps_sampled_before_learning_starts=100, replay_capacity=20_000,
                  value_support=(-10, 10), reward_support=(-3, 3),
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        .debugging(seed=args.seed)
    )


def scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": args.cpus_per_node, "object_store_memory": 100 * 2**20, "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus_per_node, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    tune.register_env(SLEEPY_ENV, lambda cfg: SleepyCartPole(cfg.get("step_sleep_ms", 5) / 1000.0))
    rows = []
    try:
        for n in args.runners:
            algo = scaling_config(n, args).build_algo()
            try:
                nodes = algo.env_runner_group.foreach_env_runner(
                    lambda w: ray.get_runtime_context().get_node_id(), local_env_runner=False)
                row = {"runners": n, "nodes_used": len(set(nodes)),
                       **measure(algo, warmup=args.warmup, seconds=args.seconds)}
            finally:
                algo.stop()
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    base = rows[0]["env_steps_per_s"] / rows[0]["runners"]
    print(f"\nscaling on a virtual cluster of {args.nodes} nodes x {args.cpus_per_node} CPUs, "
          f"{args.step_sleep_ms} ms per env step, {args.envs_per_runner} envs per runner")
    print(f"{'runners':>7} {'nodes':>5} {'env steps/s':>12} {'x linear':>9} {'updates/s':>10}")
    for row in rows:
        print(f"{row['runners']:7d} {row['nodes_used']:5d} {row['env_steps_per_s']:12.1f} "
              f"{row['env_steps_per_s'] / (base * row['runners']):9.2f} {row['updates_per_s']:10.2f}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scaling", action="store_true", help="the virtual-cluster scaling benchmark")
    parser.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    parser.add_argument("--num-env-runners", type=int, default=1)
    parser.add_argument("--num-cpus-per-env-runner", type=float, default=1.0)
    parser.add_argument("--training-intensity", type=float, default=4.0)
    parser.add_argument("--seconds", type=float, default=40.0, help="measured wall clock per setting")
    parser.add_argument("--warmup", type=int, default=2, help="iterations after learning starts, not measured")
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--step-sleep-ms", type=float, default=5.0, help="--scaling: sleep per env step")
    parser.add_argument("--compare-step-sleep-ms", type=float, default=0.0,
                        help="sync vs async: sleep per env step too (sampling that costs time, not CPU)")
    parser.add_argument("--envs-per-runner", type=int, default=4)
    parser.add_argument("--fragment", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the driver (the learner)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.scaling:
        scaling(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
