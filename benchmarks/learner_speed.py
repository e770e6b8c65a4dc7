"""Learner speed: MuZero updates per second on CPU, and where each update's time goes.

A :class:`~rllib_muzero.replay.SequenceReplayBuffer` (capacity ``--capacity``, default 100k) is filled with synthetic
CartPole-like episodes (4 float32 observations, 2 actions, reward 1 per step, lengths 10..500, mostly terminated,
truncated at 500) that arrive as interleaved 50-step fragments of 16 envs, as RLlib's ``truncate_episodes`` sampler
delivers them. A :class:`~rllib_muzero.policy.MuZeroTorchPolicy` with the default CartPole network (``muzero_fc``
defaults, value and reward supports -300..300 or ``--support``, AdamW) then runs updates of batch ``--batch-size``
(256) with ``--unroll`` (K = 5) unroll steps and ``--td-steps`` (n = 10), exactly as ``MuZero._learn_once`` does
them::

    batch = replay.sample(B, num_unroll_steps=K, td_steps=n, discount=gamma, rng=rng)
    out = policy.learn_on_replay_batch(batch)
    replay.update_priorities(batch[TRAIN_INDICES], batch[TRAIN_GENERATIONS], out["priorities"])

The headline (updates/s) times that real path, by wall clock and by the CPU time of the (only) working thread
(``time.thread_time``; one torch thread): on a shared, loaded machine the wall-clock figure drops when other processes
take the cores, the CPU-time figure much less, so prefer it when comparing runs made under different load (it counts
the thread's system time too: the page faults that ``keep_freed_host_memory`` removes). A second,
interleaved series runs the same real path with the functions it calls wrapped by the thread's CPU clock (no copy of
the policy's code, so the split cannot drift from it; the wrapping costs well under 1%, and that series' rate is
printed too), and splits each update into:

- replay sampling: ``replay.sample`` minus target building (stratified draws in the sum tree, chain gathering, IS
  weights, observation gather);
- target building: :func:`rllib_muzero.targets.make_unroll_targets` (vectorised over the batch);
- host->device: ``torch.as_tensor`` of the batch (CPU: no copy);
- forward: the policy's ``loss``, i.e. :func:`rllib_muzero.losses.muzero_loss` (network unroll, two-hot targets,
  cross-entropies);
- backward: ``total.backward()``;
- grad clip + optimizer step: ``clip_grad_norm_`` and ``optimizer.step()``;
- learner other: the rest of ``learn_on_replay_batch`` (learning-rate schedule, ``zero_grad``, finiteness checks,
  learner stats, priorities to numpy);
- update_priorities: the replay's priority update.

"outside fwd/bwd" is everything but forward and backward. One thread by default (``--threads``), CPU. Timings on a
shared machine are noisy: medians over ``--repeats`` rounds of ``--updates`` updates, after ``--warmup`` updates.

Reproduce::

    python benchmarks/learner_speed.py                    # batch 256, K = 5, n = 10, 100k transitions
    python benchmarks/learner_speed.py --repeats 9 --updates 30
    python benchmarks/learner_speed.py --precision bf16-mixed   # learner_precision "bf16-mixed"
    python benchmarks/learner_speed.py --precision bf16-mixed --compile   # + torch_compile_learner
    python benchmarks/learner_speed.py --no-keep-freed-host-memory   # glibc malloc's defaults (page faults)
    python benchmarks/learner_speed.py --support 15       # value and reward supports -15..15 (the tuned examples')
    PYTHONPATH=/tmp/ref python benchmarks/learner_speed.py   # an older checkout (git worktree), its default options
    python benchmarks/learner_speed.py --profile          # cProfile of 30 real-path updates instead of the table
    python benchmarks/learner_speed.py --num-gpus 1       # the learner on a GPU (wall-clock rate)
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

OBS_DIM, NUM_ACTIONS, MAX_EPISODE_STEPS = 4, 2, 500


def fill_replay(replay: Any, num_transitions: int, *, num_envs: int, fragment: int, seed: int) -> None:
    """Adds ``num_transitions`` steps of synthetic CartPole-like episodes, as interleaved fragments of ``num_envs``."""
    rng = np.random.default_rng(seed)
    next_episode_id = 0

    def new_episode() -> dict[str, Any]:
        nonlocal next_episode_id
        next_episode_id += 1
        length = int(min(MAX_EPISODE_STEPS, rng.integers(10, 2 * MAX_EPISODE_STEPS)))
        return {"id": next_episode_id, "length": length, "t": 0}

    envs = [new_episode() for _ in range(num_envs)]
    added = 0
    while added < num_transitions:
        for env in envs:
            T = min(fragment, env["length"] - env["t"], num_transitions - added)
            if T <= 0:
                break
            steps = env["t"] + np.arange(T)
            obs = (rng.standard_normal((T, OBS_DIM)) * 0.1).astype(np.float32)
            obs[:, 0] = steps / MAX_EPISODE_STEPS
            left = env["length"] - steps  # steps until the episode ends
            root_values = (1.0 - 0.997**left) / (1.0 - 0.997) + rng.normal(0.0, 2.0, T)
            env["t"] += T
            ended = env["t"] == env["length"]
            replay.add_fragment(
                env["id"],
                obs,
                rng.integers(0, NUM_ACTIONS, T),
                np.ones(T, np.float32),
                root_values.astype(np.float32),
                rng.dirichlet(np.ones(NUM_ACTIONS), T).astype(np.float32),
                terminated=ended and env["length"] < MAX_EPISODE_STEPS,
                truncated=ended and env["length"] == MAX_EPISODE_STEPS,
            )
            added += T
            if ended:
                env.update(new_episode())


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """The policy (default CartPole network, AdamW) and a filled replay buffer, as ``MuZero.setup`` builds them.

    Options at their defaults are not passed to ``MuZeroConfig.training``, so that the script also measures an older
    checkout of the package (``PYTHONPATH=<worktree>``, e.g. issue #17's reference) that lacks them."""
    import gymnasium as gym

    from rllib_muzero import MuZeroConfig
    from rllib_muzero.algorithm import make_replay
    from rllib_muzero.policy import MuZeroTorchPolicy

    training: dict[str, Any] = {
        "train_batch_size": args.batch_size,
        "num_unroll_steps": args.unroll,
        "td_steps": args.td_steps,
        "replay_capacity": args.capacity,
    }
    if args.support is not None:
        training["value_support"] = training["reward_support"] = (-args.support, args.support)
    if args.precision != "float32":
        training["learner_precision"] = args.precision
    if not args.keep_freed_host_memory:
        training["keep_freed_host_memory"] = False
    config = (
        MuZeroConfig()
        .environment("CartPole-v1")
        .training(**training)
        .resources(num_gpus=args.num_gpus)
        .debugging(seed=args.seed)
    )
    if args.compile:
        config.framework(torch_compile_learner=True)
    if not hasattr(config, "keep_freed_host_memory"):  # an older checkout: malloc's defaults (said in the header)
        args.keep_freed_host_memory = False
    elif config.keep_freed_host_memory:  # as MuZero.setup does, in the learner's process
        from rllib_muzero.host_memory import keep_freed_host_memory

        keep_freed_host_memory()
    env = gym.make("CartPole-v1")
    policy = MuZeroTorchPolicy(env.observation_space, env.action_space, config.to_dict())
    replay = make_replay(config, env.observation_space, env.action_space)
    fill_replay(replay, args.fill or args.capacity, num_envs=16, fragment=50, seed=args.seed)
    return policy, replay


def real_update(policy: Any, replay: Any, args: argparse.Namespace, rng: np.random.Generator) -> None:
    """One update exactly as ``MuZero._learn_once`` does it."""
    from rllib_muzero import columns

    batch = replay.sample(
        args.batch_size, num_unroll_steps=args.unroll, td_steps=args.td_steps, discount=policy.config["gamma"], rng=rng
    )
    out = policy.learn_on_replay_batch(batch)
    if out["finite"]:
        replay.update_priorities(batch[columns.TRAIN_INDICES], batch[columns.TRAIN_GENERATIONS], out["priorities"])


class _PhaseClock:
    """Times the phases of the REAL update path by wrapping what it calls (no copy of ``learn_on_replay_batch``).

    While active, it wraps ``make_unroll_targets`` in the replay module, ``torch.as_tensor`` (the batch's host->device
    conversion; not under ``--compile``, where it counts as "learner other"), the policy's ``loss``,
    ``torch.Tensor.backward``, ``torch.nn.utils.clip_grad_norm_`` and the optimizer's ``step``, each with the thread's
    CPU clock.
    """

    def __init__(self, policy: Any, *, host_to_device: bool = True) -> None:
        self.policy = policy
        self.host_to_device = host_to_device
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, phase: str) -> None:
        real = getattr(owner, name)
        seconds, clock = self.seconds, time.thread_time

        def timed(*a: Any, **kw: Any) -> Any:
            start = clock()
            try:
                return real(*a, **kw)
            finally:
                seconds[phase] += clock() - start

        setattr(owner, name, timed)
        self._undo.append((owner, name, real))

    def __enter__(self) -> _PhaseClock:
        import rllib_muzero.replay as replay_module

        self._wrap(replay_module, "make_unroll_targets", "target building")
        if self.host_to_device:  # not under --compile: the compiled unroll calls torch.as_tensor, and must not see a
            self._wrap(torch, "as_tensor", "host->device")  # Python wrapper (a graph break, and a recompile per swap)
        self._wrap(self.policy, "loss", "forward (loss)")
        self._wrap(torch.Tensor, "backward", "backward")
        self._wrap(torch.nn.utils, "clip_grad_norm_", "grad clip + optimizer step")
        self._wrap(self.policy._optimizers[0], "step", "grad clip + optimizer step")
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, real in reversed(self._undo):
            if owner is self.policy or owner is self.policy._optimizers[0]:
                delattr(owner, name)  # back to the class's method
            else:
                setattr(owner, name, real)
        self._undo.clear()


def timed_update(
    policy: Any, replay: Any, args: argparse.Namespace, rng: np.random.Generator, clock: _PhaseClock
) -> None:
    """:func:`real_update` with the replay call and the learner call timed as wholes (phases inside: ``clock``)."""
    from rllib_muzero import columns

    seconds, now = clock.seconds, time.thread_time
    t0 = now()
    batch = replay.sample(
        args.batch_size, num_unroll_steps=args.unroll, td_steps=args.td_steps, discount=policy.config["gamma"], rng=rng
    )
    t1 = now()
    out = policy.learn_on_replay_batch(batch)
    t2 = now()
    if out["finite"]:
        replay.update_priorities(batch[columns.TRAIN_INDICES], batch[columns.TRAIN_GENERATIONS], out["priorities"])
    t3 = now()
    seconds["replay.sample"] += t1 - t0
    seconds["learn_on_replay_batch"] += t2 - t1
    seconds["update_priorities"] += t3 - t2


def breakdown(seconds: dict[str, float]) -> dict[str, float]:
    """The phases of the module docstring from :class:`_PhaseClock`'s and :func:`timed_update`'s sums."""
    inner = ("host->device", "forward (loss)", "backward", "grad clip + optimizer step")
    return {
        "replay sampling": seconds["replay.sample"] - seconds["target building"],
        "target building": seconds["target building"],
        "host->device": seconds["host->device"],
        "forward (loss)": seconds["forward (loss)"],
        "backward": seconds["backward"],
        "grad clip + optimizer step": seconds["grad clip + optimizer step"],
        "learner other": seconds["learn_on_replay_batch"] - sum(seconds[k] for k in inner),
        "update_priorities": seconds["update_priorities"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--unroll", type=int, default=5, help="K, num_unroll_steps")
    parser.add_argument("--td-steps", type=int, default=10, help="n of the n-step return")
    parser.add_argument("--capacity", type=int, default=100_000, help="replay capacity (transitions)")
    parser.add_argument("--fill", type=int, default=None, help="transitions added (default: the capacity)")
    parser.add_argument("--updates", type=int, default=20, help="updates per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per series (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--num-gpus", type=float, default=0,
                        help="the learner's num_gpus (RLlib places the policy on cuda:0 when a GPU is visible; on a "
                             "GPU compare the wall-clock rate: the thread's CPU time misses the device's work)")
    parser.add_argument("--precision", default="float32", choices=["float32", "bf16-mixed"],
                        help="the learner's learner_precision (bf16-mixed: autocast to bfloat16)")
    parser.add_argument("--compile", action="store_true",
                        help="torch_compile_learner: the loss's unroll compiled by torch.compile (inductor; compiled "
                             "during the warm-up updates, whose time is printed)")
    parser.add_argument("--keep-freed-host-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="the option keep_freed_host_memory (glibc's malloc keeps what an update frees; "
                             "--no-keep-freed-host-memory: malloc's defaults, as before 2026-12-01)")
    parser.add_argument("--support", type=int, default=None, metavar="N",
                        help="value and reward supports -N..N (default: MuZeroConfig's, -300..300, the paper's 601 "
                             "atoms; the tuned examples use 15-25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile 30 updates instead of the table")
    args = parser.parse_args()
    if args.support is not None and args.support < 1:
        parser.error(f"--support must be a positive integer (atoms -N..N), got {args.support}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    policy, replay = build(args)
    setup_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for _ in range(args.warmup):
        real_update(policy, replay, args, rng)
    warmup_s = time.perf_counter() - start

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(30):
            real_update(policy, replay, args, rng)
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(25)
        return

    real_rates, cpu_rates, timed_rates = [], [], []
    shares: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):  # interleaved, so both series see the same machine state
        start, start_cpu = time.perf_counter(), time.thread_time()
        for _ in range(args.updates):
            real_update(policy, replay, args, rng)
        real_rates.append(args.updates / (time.perf_counter() - start))
        cpu_rates.append(args.updates / (time.thread_time() - start_cpu))
        with _PhaseClock(policy, host_to_device=not args.compile) as clock:
            start = time.thread_time()
            for _ in range(args.updates):
                timed_update(policy, replay, args, rng, clock)
            elapsed = time.thread_time() - start
        timed_rates.append(args.updates / elapsed)
        phases = breakdown(clock.seconds)
        for name, value in phases.items():
            shares[name].append(value / elapsed)
        shares["outside fwd/bwd"].append(1.0 - (phases["forward (loss)"] + phases["backward"]) / elapsed)

    import rllib_muzero  # imported by build(); its path tells which checkout ran (PYTHONPATH=<worktree>)

    print(
        f"learner, batch {args.batch_size}, K = {args.unroll}, n = {args.td_steps}, replay {len(replay):,} / "
        f"{replay.capacity:,} transitions, {args.threads} thread(s), device {policy.device}, {args.precision}"
        f"{', torch_compile_learner' if args.compile else ''}"
        f"{'' if args.keep_freed_host_memory else ', malloc defaults'}"
        f"{'' if args.support is None else f', supports -{args.support}..{args.support}'}, torch {torch.__version__}, "
        f"package {Path(rllib_muzero.__file__).parent.parent} "
        f"(setup {setup_s:.1f} s, "
        f"{args.warmup} warm-up updates {warmup_s:.1f} s)"
    )
    print(f"{'':<38}{'median':>8}{'min':>8}{'max':>8}   ({args.repeats} rounds x {args.updates} updates)")
    for name, values in (
        ("updates/s, real path (wall clock)", real_rates),
        ("updates/s, real path (thread CPU)", cpu_rates),
        ("updates/s, instrumented (thread CPU)", timed_rates),
    ):
        print(f"{name:<38}{np.median(values):>8.1f}{min(values):>8.1f}{max(values):>8.1f}")
    print(f"{'ms per update (real path, thread CPU)':<38}{1e3 / np.median(cpu_rates):>8.2f}")
    print("share of the instrumented update's thread CPU time (median over rounds):")
    for name, values in shares.items():
        print(f"  {name:<28}{100 * np.median(values):>6.1f} %")


if __name__ == "__main__":
    main()
