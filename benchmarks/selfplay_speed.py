"""Self-play speed: env steps per second of one env runner acting by MuZero search, through the real policy path.

Builds ``MuZeroConfig().environment("CartPole-v1").env_runners(num_env_runners=0, num_envs_per_env_runner=16,
rollout_fragment_length=50)`` with the default CartPole network (``muzero_fc`` defaults: hidden 64, one 64-wide layer
per MLP, value and reward supports -300..300) and 50 simulations, and times ``algo.env_runner.sample()`` (the local
``RolloutWorker``: env stepping, RLlib's connectors and collectors, and
``MuZeroTorchPolicy.compute_actions_from_input_dict`` with its batched search over the 16 envs). One thread
(``torch.set_num_threads(1)``), CPU, exploring (Dirichlet noise, temperature 1). The first ``--warmup`` samples are
not timed (numba compilation or cache load, allocator, workspace). The network is untrained, so CartPole episodes are
short and resets frequent: RLlib's per-episode work weighs more than it would late in training. ``--support M``
replaces both supports by ``(-M, M)`` (CartPole's returns need far fewer than 601 atoms after the transform ``h``).

The figures are medians over ``--repeats`` samples of ``env steps / sample time``, with the sample time measured two
ways: wall clock, and the CPU time of the sampling thread (``time.thread_time``; with ``num_env_runners=0`` and one
torch thread all the work runs on it). On a shared, loaded machine the wall-clock figure drops when other processes
take the cores, while the CPU-time figure stays close to what an idle core gives: compare like with like, and prefer
the CPU-time figure when comparing runs made under different load. A second series of samples, instrumented by
wrapping the policy's and the model's methods (about a microsecond per call), splits the thread's CPU time into:

- network: the forward passes: the numpy engine's ``initial_inference`` + ``recurrent_inference`` (the policy's CPU
  path for ``muzero_fc``, :mod:`rllib_muzero.numpy_inference`; they include the read-out of the value and reward heads
  to scalars), or the model's torch methods with ``--inference torch``;
- search glue: the conversion of network outputs for the tree (torch path: ``support_to_scalar``, ``h_inverse``,
  ``.cpu().numpy()``), building ``RootOutput`` / ``RecurrentOutput``, and the observation tensor;
- tree: :func:`rllib_muzero.mcts.muzero_search` minus the time spent inside its ``recurrent_fn``;
- policy other: ``compute_actions_from_input_dict`` outside the search (action selection, visit distributions);
- RLlib sampler: everything in ``sample()`` outside ``compute_actions_from_input_dict`` (env steps, connectors,
  collectors, episode bookkeeping, batch building).

Timings on a shared machine are noisy: use medians over several repeats and compare runs from the same session.

Reproduce::

    python benchmarks/selfplay_speed.py                  # 16 envs, 50 simulations, 7 timed samples
    python benchmarks/selfplay_speed.py --repeats 15 --envs 32
    python benchmarks/selfplay_speed.py --support 20     # supports (-20, 20): what CartPole's returns need
    python benchmarks/selfplay_speed.py --profile        # cProfile of 4 samples instead of the table
    python benchmarks/selfplay_speed.py --inference torch   # the network in eager torch instead of the numpy engine
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def build_algo(args: argparse.Namespace) -> Any:
    from rllib_muzero import MuZeroConfig

    config = (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(
            num_env_runners=0,
            num_envs_per_env_runner=args.envs,
            rollout_fragment_length=args.fragment,
        )
        .training(
            num_simulations=args.simulations,
            value_support=(-args.support, args.support),
            reward_support=(-args.support, args.support),
        )
        .debugging(seed=args.seed, log_level="ERROR")
        .reporting(metrics_num_episodes_for_smoothing=1)
    )
    return config.build_algo()


class _Timers:
    """Wraps callables so that their cumulative wall time is recorded under a name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        seconds = self.seconds

        def timed(*a: Any, **kw: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                seconds[name] += time.thread_time() - start

        return timed


def instrument(algo: Any) -> tuple[_Timers, Callable[[], None]]:
    """Wraps the policy's, the model's and the search's entry points with timers; returns (timers, undo)."""
    import rllib_muzero.acting as policy_module  # search_with_model calls muzero_search from there

    timers = _Timers()
    policy = algo.get_policy()
    model = policy.model
    real_search_fn = policy_module.muzero_search

    def search_fn(root: Any, recurrent_fn: Callable[..., Any], **kw: Any) -> Any:
        return real_search_fn(root, timers.wrap("recurrent_fn", recurrent_fn), **kw)

    policy_module.muzero_search = timers.wrap("muzero_search", search_fn)
    model.initial_inference = timers.wrap("network", model.initial_inference)
    model.recurrent_inference = timers.wrap("network_recurrent", model.recurrent_inference)
    real_numpy_inference = model.numpy_inference
    engines = []

    def numpy_inference() -> Any:
        engine = real_numpy_inference()
        if engine is not None and "recurrent_inference" not in engine.__dict__:
            engine.initial_inference = timers.wrap("network", engine.initial_inference)
            engine.recurrent_inference = timers.wrap("network_recurrent", engine.recurrent_inference)
            engines.append(engine)
        return engine

    model.numpy_inference = numpy_inference
    policy.search = timers.wrap("policy_search", policy.search)
    policy.compute_actions_from_input_dict = timers.wrap("compute_actions", policy.compute_actions_from_input_dict)

    def undo() -> None:
        policy_module.muzero_search = real_search_fn
        for name in ("initial_inference", "recurrent_inference", "numpy_inference"):
            model.__dict__.pop(name, None)
        for engine in engines:
            for name in ("initial_inference", "recurrent_inference"):
                engine.__dict__.pop(name, None)
        for name in ("search", "compute_actions_from_input_dict"):
            policy.__dict__.pop(name, None)

    return timers, undo


def breakdown(seconds: dict[str, float], total: float) -> dict[str, float]:
    """Splits one sample's wall time into the shares listed in the module docstring (seconds)."""
    network = seconds["network"] + seconds["network_recurrent"]
    tree = seconds["muzero_search"] - seconds["recurrent_fn"]
    glue = (seconds["recurrent_fn"] - seconds["network_recurrent"]) + (
        seconds["policy_search"] - seconds["muzero_search"] - seconds["network"]
    )
    return {
        "network": network,
        "search glue": glue,
        "tree": tree,
        "policy other": seconds["compute_actions"] - seconds["policy_search"],
        "RLlib sampler": total - seconds["compute_actions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", type=int, default=16, help="envs per runner (the search batch)")
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--fragment", type=int, default=50, help="rollout_fragment_length (steps per env per sample)")
    parser.add_argument("--support", type=int, default=300, metavar="M",
                        help="value and reward supports (-M, M); 300 is the default config (601 atoms)")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed samples first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inference", choices=("numpy", "torch"), default="numpy",
                        help="the policy's default numpy engine for muzero_fc on the CPU, or eager torch")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented series")
    parser.add_argument("--profile", action="store_true", help="cProfile 4 samples instead of the table")
    args = parser.parse_args()

    import ray

    torch.set_num_threads(args.threads)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024 * 1024)
    try:
        algo = build_algo(args)
        runner = algo.env_runner
        if args.inference == "torch":
            algo.get_policy().model.numpy_inference = lambda: None  # search_with_model then runs torch
        for _ in range(args.warmup):
            runner.sample()

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(4):
                runner.sample()
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(30)
            return

        rates, cpu_rates, steps = [], [], 0
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.thread_time()
            batch = runner.sample()
            elapsed, elapsed_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            steps = batch.env_steps()
            rates.append(steps / elapsed)
            cpu_rates.append(steps / elapsed_cpu)

        shares: dict[str, list[float]] = defaultdict(list)
        if not args.no_breakdown:
            timers, undo = instrument(algo)
            try:
                for _ in range(args.repeats):
                    timers.seconds.clear()
                    start = time.thread_time()
                    runner.sample()
                    total = time.thread_time() - start
                    for name, seconds in breakdown(timers.seconds, total).items():
                        shares[name].append(seconds / total)
            finally:
                undo()
        algo.stop()
    finally:
        ray.shutdown()

    print(
        f"self-play, CartPole-v1, {args.envs} envs/runner, {args.simulations} simulations, supports "
        f"[-{args.support}, {args.support}], {args.inference} inference, {args.threads} thread(s), {steps} env steps "
        f"per sample, torch {torch.__version__}"
    )
    print(f"{'':<30}{'median':>8}{'min':>8}{'max':>8}   ({args.repeats} samples)")
    for name, values in (("env steps/s (wall clock)", rates), ("env steps/s (thread CPU time)", cpu_rates)):
        print(f"{name:<30}{np.median(values):>8,.0f}{min(values):>8,.0f}{max(values):>8,.0f}")
    if shares:
        print("share of sample()'s thread CPU time (median over instrumented samples):")
        for name, values in shares.items():
            print(f"  {name:<22}{100 * np.median(values):>9.1f} %")


if __name__ == "__main__":
    main()
