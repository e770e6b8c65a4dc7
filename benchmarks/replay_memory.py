"""Replay memory: bytes per stored transition of :class:`~rllib_muzero.replay.SequenceReplayBuffer`.

Counts every numpy array the buffer holds (observations, actions, rewards, root values, search policies, episode
links, end flags, write generations, open-tail flags and the sum tree's arrays), found by walking the buffer's and its
sum tree's attributes, and divides by the capacity. The buffer is first filled with ``--fill-factor`` times its
capacity of interleaved 50-step fragments of 16 envs (episode lengths 10..500; a few episodes are left open), so the
figure is the steady state after wrap-around. The Python dictionaries of open episodes (bounded by the number of
episodes running at once, not by the capacity) are reported separately.

Target (issue 7): at most the observation's own bytes + 64 bytes per transition, for CartPole (4 float32
observations, 2 actions) and Atari RAM (128 uint8 observations, 18 actions).

Reproduce::

    python benchmarks/replay_memory.py                         # capacities 10_001, 100_000, 131_072, 1_000_000
    python benchmarks/replay_memory.py --capacities 100000 --detail
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from rllib_muzero.replay import SequenceReplayBuffer

TARGET_OVERHEAD_BYTES = 64
CASES = {  # name: (obs_shape, obs_dtype, num_actions)
    "CartPole": ((4,), np.float32, 2),
    "Atari RAM": ((128,), np.uint8, 18),
}


def array_bytes(obj: Any, prefix: str = "", seen: set[int] | None = None) -> dict[str, int]:
    """``{attribute path: nbytes}`` of every numpy array reachable through ``obj``'s attributes (not through dicts)."""
    seen = set() if seen is None else seen
    found: dict[str, int] = {}
    for name, value in vars(obj).items():
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            base = value if value.base is None else value.base  # a view costs nothing extra
            if id(base) not in seen or base is value:
                seen.add(id(base))
                found[prefix + name] = base.nbytes
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("rllib_muzero"):
            found.update(array_bytes(value, prefix + name + ".", seen))
    return found


def dict_bytes(buffer: SequenceReplayBuffer) -> int:
    """Rough size of the buffer's Python dictionaries (open episodes), keys and values included."""
    total = 0
    for value in vars(buffer).values():
        if isinstance(value, dict):
            total += sys.getsizeof(value)
            for key, item in value.items():
                total += sys.getsizeof(key) + sys.getsizeof(item)
                if isinstance(item, tuple):
                    total += sum(sys.getsizeof(x) for x in item)
    return total


def fill(buffer: SequenceReplayBuffer, num_transitions: int, seed: int = 0) -> None:
    """Interleaved fragments of 16 envs; the envs' last episodes stay open."""
    rng = np.random.default_rng(seed)
    obs_shape, dtype, A = buffer.obs_shape, buffer.obs_dtype, buffer.num_actions
    envs = [[i, int(rng.integers(10, 500)), 0] for i in range(16)]  # [episode id, length, steps done]
    next_id, added = 16, 0
    while added < num_transitions:
        for env in envs:
            T = min(50, env[1] - env[2])
            if np.issubdtype(dtype, np.integer):
                obs = rng.integers(0, np.iinfo(dtype).max, size=(T, *obs_shape), dtype=dtype)
            else:
                obs = rng.standard_normal((T, *obs_shape)).astype(dtype)
            env[2] += T
            ended = env[2] == env[1]
            buffer.add_fragment(
                env[0],
                obs,
                rng.integers(0, A, T),
                rng.standard_normal(T).astype(np.float32),
                rng.standard_normal(T).astype(np.float32),
                rng.dirichlet(np.ones(A), T).astype(np.float32),
                terminated=ended,
                truncated=False,
            )
            added += T
            if ended:
                env[:] = [next_id, int(rng.integers(10, 500)), 0]
                next_id += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacities", type=int, nargs="+", default=[10_001, 100_000, 131_072, 1_000_000])
    parser.add_argument("--fill-factor", type=float, default=1.5, help="transitions added / capacity")
    parser.add_argument("--detail", action="store_true", help="bytes per transition of each array")
    args = parser.parse_args()

    print("replay memory, bytes per stored transition (all arrays / capacity), after filling "
          f"{args.fill_factor:g} x capacity")
    print(f"{'case':<10}{'capacity':>11}{'obs B':>7}{'total B':>9}{'overhead B':>11}{'target':>8}{'ok':>4}"
          f"{'dicts KiB':>11}")
    for name, (obs_shape, obs_dtype, A) in CASES.items():
        obs_bytes = int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
        for capacity in args.capacities:
            buffer = SequenceReplayBuffer(capacity, obs_shape, obs_dtype, A)
            before = array_bytes(buffer)
            fill(buffer, int(args.fill_factor * capacity))
            arrays = array_bytes(buffer)
            if sum(arrays.values()) != sum(before.values()):
                raise RuntimeError(f"array memory changed while filling: {before} -> {arrays}")
            if hasattr(buffer, "nbytes") and buffer.nbytes != sum(arrays.values()):
                raise RuntimeError(f"buffer.nbytes = {buffer.nbytes} but its arrays hold {sum(arrays.values())} bytes")
            per = sum(arrays.values()) / capacity
            overhead = per - obs_bytes
            ok = "yes" if overhead <= TARGET_OVERHEAD_BYTES else "NO"
            print(f"{name:<10}{capacity:>11,}{obs_bytes:>7}{per:>9.1f}{overhead:>11.1f}"
                  f"{TARGET_OVERHEAD_BYTES:>8}{ok:>4}{dict_bytes(buffer) / 1024:>11.1f}")
            if args.detail:
                for key, nbytes in sorted(arrays.items(), key=lambda kv: -kv[1]):
                    print(f"{'':<12}{key:<28}{nbytes / capacity:>8.2f} B")


if __name__ == "__main__":
    main()
