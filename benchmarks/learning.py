"""Multi-seed learning benchmark: train a tuned example on many seeds in parallel, record every greedy evaluation,
plot the median learning curve and summarise how reliably and how fast the target is reached.

    python benchmarks/learning.py --env cartpole --seeds 0-9
    python benchmarks/learning.py --env acrobot --seeds 0-4 --config '{"td_steps": 100}' --label td100
    python benchmarks/learning.py --env cartpole --seeds 0-9 --full-curve --label full
    python benchmarks/learning.py --env cartpole --seeds 0-9 --resume          # after an interruption

Environments (--env): name -> tuned example, target greedy mean, default env-step budget per seed:

    cartpole          tuned_examples/cartpole-muzero.yaml           475    15,000   (evaluation every 1,000)
    acrobot           tuned_examples/acrobot-muzero.yaml           -100    30,000   (every 2,000)
    lunarlander       tuned_examples/lunarlander-muzero.yaml        200   300,000   (every 10,000)
    minatar-breakout  tuned_examples/minatar-breakout-muzero.yaml  none   500,000   (every 25,000; the curve only)
    pong-ram          tuned_examples/pong-ram-muzero.yaml            18  1,000,000   (every 50,000; 1 whole game)
    breakout-ram      tuned_examples/breakout-ram-muzero.yaml        30  1,000,000   (every 50,000; 1 whole game)

The Atari games are evaluated on whole games (the example's env_config with its evaluation_config's env changes:
episode_life off, Breakout's clip_rewards off) and train without the example's own RLlib evaluation
(evaluation_interval off), as benchmarks/pong_ram.py does.

Each seed is trained by ``run_seed`` of benchmarks/_target_return.py: the example's config with --config and the
seed merged in, ``algo.train()`` until the budget (--max-env-steps, --max-minutes of training), and every
--eval-every env steps --eval-games whole games with greedy search (no root noise, temperature 0; game i of seed s
reset with seed 10000 + s + i), built by the package's env creator from the example's env and env_config. Evaluation
time is excluded from the training seconds (train_s). A seed stops at the first evaluation that reaches the target,
unless --full-curve (then every seed trains to the budget, so whole curves can be compared). With --confirm-games N
an evaluation reaches the target only if N more greedy games (reset seeds 20000 + s + i) do too, on their mean (its
row's note says how they went): one Atari game is a noisy measure (a Pong run scored +20 in its one game where 10
games gave +16.9).

Seeds run in parallel worker processes (--jobs, default 2): one process per seed, each with its own local Ray session
(--cpus-per-job CPUs, default 1) and one torch thread. Results are collected as they arrive; a seed whose process
raises or dies is recorded as failed with its error, and the others go on.

Outputs, in --out (default docs/learning/), named <env>-<label> (--label, default "tuned"; required with --config):

- <env>-<label>.csv: one row per evaluation as it happens (status "eval": seed, env_steps, updates, train_s, eval_s,
  games, greedy_mean, greedy_min, greedy_max, reached), and one final row per seed (status "done" with the seed's
  final counters, reached = any evaluation reached the target and note = why it stopped; or status "failed" with
  the error in note). --resume skips the seeds that have a final "done" row and continues the others from their
  last checkpoint (below), or reruns them from the start where they have none. --resume with a larger budget
  (--max-env-steps, --max-minutes; every other setting must be the same) also continues the seeds the old budget
  stopped, so a long run can be taken further in parts; --resume --full-curve on a run without it continues the
  seeds that stopped at the target (their curve goes on past it).
- <env>-<label>.png: the median greedy mean over seeds against env steps, with the min-max band over seeds, each
  seed faintly, the target dashed and uniform random play dotted. A seed that stopped at the target is carried
  forward at its last evaluation (the caption says how many).
- <env>-<label>.json: the settings of the run (checked by --resume) and random play's mean return.

Checkpoints (for long runs; --no-checkpoints turns them off): each seed is saved after every evaluation in
--checkpoint-dir/<env>-<label>/seed<N> (default runs/learning/..., git-ignored; the latest and the best evaluation's
checkpoint are kept). An interrupted seed (killed, machine gone) is continued by --resume from its last saved
evaluation, its curve rows past that point dropped; the seed's env steps and training seconds add up over the parts.
The best checkpoint is the agent to look at: rllib-muzero evaluate runs/learning/<env>-<label>/seed<N>/ckpt-...

Printed at the end: success rate (seeds that reached the target within the budget), median and worst env steps to
the target (a seed that did not reach it counts as infinitely slow, so "not reached" as soon as one seed fails for
the worst, half of them for the median), median training seconds to the target, the table of every seed (failures
included), and a markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import math
import multiprocessing as mp
import os
import queue as queue_module
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # spawned workers import this module by name
    sys.path.insert(0, HERE)

ROOT = os.path.normpath(os.path.join(HERE, ".."))
EXAMPLES = os.path.join(ROOT, "tuned_examples")
DEFAULT_OUT = os.path.join(ROOT, "docs", "learning")
DEFAULT_CHECKPOINTS = os.path.join(ROOT, "runs", "learning")
CSV_COLUMNS = ("seed", "status", "env_steps", "updates", "train_s", "eval_s", "games", "greedy_mean", "greedy_min",
               "greedy_max", "reached", "note")
RANDOM_SEED_BASE = 20_000  # reset seeds of the random-play baseline games
RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # per worker session: weights and sample batches only


@dataclass(frozen=True)
class LearningEnv:
    """One environment of the benchmark: its tuned example and default budget."""

    example: str  # file name in tuned_examples/
    target: float | None  # greedy mean to reach; None: no target, the curve only
    max_env_steps: int
    eval_every: int
    eval_games: int = 10
    max_minutes: float = 60.0  # training minutes per seed (evaluation excluded)
    # The evaluation env: the example's env_config with these changes, the example's own evaluation_config env_config
    # (Atari: whole games, not one life each; Breakout: raw points, not clipped ones).
    eval_env_config: Mapping[str, Any] = field(default_factory=dict)
    # Changes to the example's config under every --config (Atari: its own RLlib evaluation off, see pong_ram.py).
    base_overrides: Mapping[str, Any] = field(default_factory=dict)


_ATARI = dict(eval_games=1, eval_env_config={"episode_life": False}, base_overrides={"evaluation_interval": None})
ENVS: dict[str, LearningEnv] = {
    "cartpole": LearningEnv("cartpole-muzero.yaml", 475.0, 15_000, 1_000, max_minutes=20.0),
    "acrobot": LearningEnv("acrobot-muzero.yaml", -100.0, 30_000, 2_000, max_minutes=40.0),
    "lunarlander": LearningEnv("lunarlander-muzero.yaml", 200.0, 300_000, 10_000, max_minutes=8 * 60.0),
    "minatar-breakout": LearningEnv("minatar-breakout-muzero.yaml", None, 500_000, 25_000, max_minutes=12 * 60.0),
    "pong-ram": LearningEnv("pong-ram-muzero.yaml", 18.0, 1_000_000, 50_000, max_minutes=24 * 60.0, **_ATARI),
    "breakout-ram": LearningEnv("breakout-ram-muzero.yaml", 30.0, 1_000_000, 50_000, max_minutes=24 * 60.0,
                                **{**_ATARI, "eval_env_config": {"episode_life": False, "clip_rewards": False}}),
}


# ------------------------------------------------------------------------------------------------------- seed specs
_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_seeds(specs: str | Iterable[str]) -> list[int]:
    """Seeds from ``0-9`` (inclusive range), ``0 1 2`` (separate tokens), ``3,5`` or mixes (``0-3,7 9``); the order
    of first appearance, duplicates dropped. Raises ``ValueError`` naming a bad part."""
    if isinstance(specs, str):
        specs = [specs]
    seeds: list[int] = []
    for spec in specs:
        for part in re.split(r"[,\s]+", spec.strip()):
            if not part:
                continue
            match = _RANGE.match(part)
            if match:
                low, high = int(match[1]), int(match[2])
                if low > high:
                    raise ValueError(f"bad seed range {part!r}: the first seed must not exceed the last")
                new = range(low, high + 1)
            elif part.isdigit():
                new = [int(part)]
            else:
                raise ValueError(f"bad seed {part!r}: expected N, A-B (inclusive) or a comma-separated list")
            seeds += [s for s in new if s not in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


# ------------------------------------------------------------------------------------------------------- summary
@dataclass
class SeedResult:
    """One seed's outcome, read from its CSV rows (see :func:`seed_results`)."""

    seed: int
    status: str  # "reached", "not reached", "failed", "incomplete" (no final row: interrupted), "done" (no target)
    evals: list[dict] = field(default_factory=list)  # its "eval" rows, in order
    steps_to_target: float | None = None  # env steps of the first evaluation that reached the target
    updates_to_target: int | None = None
    train_s_to_target: float | None = None
    env_steps: int = 0  # at the end (or the last evaluation if there is no final row)
    updates: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    note: str = ""
    stopped_at_target: bool = False  # the run ended at that evaluation (its curve is carried forward in the plot)
    finished: bool = False  # it has a final row ("done" or "failed"); without one it was interrupted

    @property
    def best(self) -> float:
        return max((r["greedy_mean"] for r in self.evals), default=math.nan)

    @property
    def last(self) -> float:
        return self.evals[-1]["greedy_mean"] if self.evals else math.nan


def _num(value: Any, kind=float) -> Any:
    if value is None or value == "":
        return None
    return kind(float(value)) if kind is int else kind(value)


def _parse_row(row: Mapping[str, Any]) -> dict:
    """A CSV row (strings) or a row dict from a worker -> typed values."""
    out = dict(row)
    out["seed"] = int(row["seed"])
    for key in ("env_steps", "updates", "games"):
        out[key] = _num(row.get(key), int)
    for key in ("train_s", "eval_s", "greedy_mean", "greedy_min", "greedy_max"):
        out[key] = _num(row.get(key))
    reached = row.get("reached")
    out["reached"] = reached if isinstance(reached, bool) else str(reached) == "True"
    out["status"] = row.get("status") or "eval"
    out["note"] = row.get("note") or ""
    return out


def seed_results(rows: Iterable[Mapping[str, Any]], target: float | None) -> list[SeedResult]:
    """Groups CSV rows by seed (sorted) into :class:`SeedResult`; rows may be strings from the CSV or typed."""
    by_seed: dict[int, list[dict]] = {}
    for row in rows:
        parsed = _parse_row(row)
        by_seed.setdefault(parsed["seed"], []).append(parsed)
    results = []
    for seed in sorted(by_seed):
        rows_of_seed = by_seed[seed]
        evals = [r for r in rows_of_seed if r["status"] == "eval"]
        final = next((r for r in reversed(rows_of_seed) if r["status"] in ("done", "failed")), None)
        result = SeedResult(seed, "incomplete", evals)
        for source in (evals[-1] if evals else None, final):  # the final row's counters where it has them
            if source is None:
                continue
            for key in ("env_steps", "updates", "train_s", "eval_s"):
                if source[key] is not None:
                    setattr(result, key, source[key])
        # The row's `reached`: its mean reached the target (and, with --confirm-games, so did the confirmation games).
        first = next((r for r in evals if target is not None and r["reached"]), None)
        if first is not None:
            result.steps_to_target = first["env_steps"]
            result.updates_to_target = first["updates"]
            result.train_s_to_target = first["train_s"]
            result.stopped_at_target = first is evals[-1] and final is not None and final["status"] == "done" \
                and final["env_steps"] == first["env_steps"]
        result.finished = final is not None
        result.note = final["note"] if result.finished else "no final row (interrupted?)"
        if final is not None and final["status"] == "failed":
            result.status = "failed"
        elif final is not None:
            result.status = "done" if target is None else ("reached" if first is not None else "not reached")
        elif first is not None:
            result.status = "reached"  # interrupted after reaching it: it did reach the target
        results.append(result)
    return results


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float))) if len(values) else math.nan


def summarize(results: Sequence[SeedResult], target: float | None) -> dict:
    """Success rate and speed over seeds.

    ``successes`` / ``n``: seeds that reached the target. ``median_steps``, ``median_train_s``: medians over all
    seeds of the env steps / training seconds to the target, a seed that did not reach it (not reached, failed,
    incomplete) counting as ``inf`` (so the median is ``inf`` once half the seeds fail); ``worst_steps``: the largest,
    ``inf`` if any seed failed. Without a target: ``median_last`` / ``median_best`` greedy means over seeds with an
    evaluation instead. ``median_run_train_s``: median training seconds of whole runs.
    """
    n = len(results)
    out: dict[str, Any] = {"n": n, "target": target,
                           "median_run_train_s": _median([r.train_s for r in results])}
    if target is None:
        evaluated = [r for r in results if r.evals]
        out.update(successes=None, success_rate=None,
                   median_last=_median([r.last for r in evaluated]), median_best=_median([r.best for r in evaluated]))
        return out
    inf = math.inf
    steps = [r.steps_to_target if r.steps_to_target is not None else inf for r in results]
    seconds = [r.train_s_to_target if r.train_s_to_target is not None else inf for r in results]
    successes = sum(r.steps_to_target is not None for r in results)
    out.update(successes=successes, success_rate=successes / n if n else math.nan,
               median_steps=_median(steps), worst_steps=max(steps) if steps else math.nan,
               median_train_s=_median(seconds))
    return out


def _fmt_steps(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "not reached" if math.isinf(value) else f"{value:,.0f}"


def _fmt_s(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "not reached" if math.isinf(value) else f"{value:.1f}"


def _fmt_mean(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def format_summary(results: Sequence[SeedResult], summary: Mapping[str, Any], *, label: str, env: str,
                   max_env_steps: int, random_mean: float | None) -> str:
    """The printed summary: headline figures, the per-seed table (every seed), the markdown row."""
    target = summary["target"]
    lines = [f"\n{env} / {label}: {summary['n']} seed(s), budget {max_env_steps:,} env steps per seed"]
    if random_mean is not None:
        lines.append(f"  random play: {random_mean:.2f} mean return")
    if target is not None:
        lines.append(f"  success: {summary['successes']}/{summary['n']} seeds reached {target:g} "
                     f"({100 * summary['success_rate']:.0f}%)")
        lines.append(f"  env steps to the target: median {_fmt_steps(summary['median_steps'])}, "
                     f"worst {_fmt_steps(summary['worst_steps'])}")
        lines.append(f"  training seconds to the target: median {_fmt_s(summary['median_train_s'])} "
                     "(evaluation excluded; a seed that did not reach it counts as never)")
    else:
        lines.append(f"  no target: median over seeds of the last greedy mean {_fmt_mean(summary['median_last'])}, "
                     f"of the best {_fmt_mean(summary['median_best'])}")
    lines.append(f"  training seconds per seed (whole run): median {_fmt_s(summary['median_run_train_s'])}")
    lines.append("")
    header = ("seed", "result", "steps to target", "updates", "train s to target", "env steps", "train s", "eval s",
              "best", "last", "note")
    table = [header]
    for r in results:
        table.append((str(r.seed), r.status, _fmt_steps(r.steps_to_target),
                      "-" if r.updates_to_target is None else str(r.updates_to_target),
                      "-" if r.train_s_to_target is None else f"{r.train_s_to_target:.1f}",
                      f"{r.env_steps:,}", f"{r.train_s:.1f}", f"{r.eval_s:.1f}", _fmt_mean(r.best), _fmt_mean(r.last),
                      r.note))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.append("")
    lines.append("markdown row for docs/benchmarks.md: " + (
        "| label | success | median env steps to target | worst | median train s to target |" if target is not None
        else "| label | seeds | median last greedy mean | median best greedy mean | median train s per seed |"))
    lines.append(markdown_row(summary, label))
    return "\n".join(lines)


def markdown_row(summary: Mapping[str, Any], label: str) -> str:
    if summary["target"] is None:
        return (f"| {label} | {summary['n']} | {_fmt_mean(summary['median_last'])} | "
                f"{_fmt_mean(summary['median_best'])} | {_fmt_s(summary['median_run_train_s'])} |")
    return (f"| {label} | {summary['successes']}/{summary['n']} | {_fmt_steps(summary['median_steps'])} | "
            f"{_fmt_steps(summary['worst_steps'])} | {_fmt_s(summary['median_train_s'])} |")


# ------------------------------------------------------------------------------------------------------- the plot
def curve_grid(results: Sequence[SeedResult]) -> tuple[np.ndarray, np.ndarray]:
    """``(env_steps, values)``: the union of every seed's evaluation points and, per seed (rows), its latest greedy
    mean at each point (NaN before its first evaluation and after its last, except that a seed that stopped at the
    target is carried forward to the end)."""
    xs = np.array(sorted({r["env_steps"] for res in results for r in res.evals}), dtype=float)
    values = np.full((len(results), len(xs)), np.nan)
    for i, res in enumerate(results):
        if not res.evals:
            continue
        steps = np.array([r["env_steps"] for r in res.evals], dtype=float)
        means = np.array([r["greedy_mean"] for r in res.evals], dtype=float)
        idx = np.searchsorted(steps, xs, side="right") - 1
        valid = idx >= 0
        if not res.stopped_at_target:
            valid &= xs <= steps[-1]
        values[i, valid] = means[idx[valid]]
    return xs, values


def plot_curves(results: Sequence[SeedResult], path: str, *, title: str, target: float | None,
                random_mean: float | None, eval_games: int) -> None:
    """Writes the PNG: median over seeds, min-max band, faint seeds, target (dashed), random play (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, values = curve_grid(results)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    if len(xs):
        lo, med, hi = (np.full(len(xs), np.nan) for _ in range(3))
        for j in range(len(xs)):
            column = values[~np.isnan(values[:, j]), j]
            if len(column):
                lo[j], med[j], hi[j] = column.min(), np.median(column), column.max()
        for row in values:
            ax.plot(xs, row, color="tab:blue", alpha=0.3, linewidth=0.7)
        ax.fill_between(xs, lo, hi, color="tab:blue", alpha=0.2, linewidth=0, label="min-max over seeds")
        ax.plot(xs, med, color="tab:blue", linewidth=2.0, marker="o", markersize=2.5,
                label=f"median over {len(results)} seeds")
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", linewidth=1.2, label=f"target {target:g}")
    if random_mean is not None:
        ax.axhline(random_mean, color="0.4", linestyle=":", linewidth=1.2, label=f"random play {random_mean:.1f}")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"greedy mean of {eval_games} games")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    carried = sum(r.stopped_at_target for r in results)
    if carried:
        fig.text(0.01, 0.01, f"{carried} of {len(results)} seeds stopped at the target: each is carried forward at "
                 "its last evaluation.", fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.03 if carried else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- workers
def _worker(seed: int, job: dict, messages: Any) -> None:
    """Trains one seed in its own process and Ray session; sends ("eval", seed, row), then ("done", seed, row) or
    ("failed", seed, traceback). Runs in its own process group, which holds the Ray session's daemons too, so the
    parent can end all of it (:func:`_end_group`) if this process dies or is interrupted."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    try:
        import ray
        from _target_return import creator_eval_env, init_ray, run_seed

        init_ray(job["cpus_per_job"], 1, address="local", object_store_memory=RAY_OBJECT_STORE_BYTES,
                 logging_level=logging.WARNING)
        try:
            target = job["target"]
            row = run_seed(seed, example=job["example"], eval_env=creator_eval_env(**job["eval_env_config"]),
                           target=math.inf if target is None else target, eval_games=job["eval_games"],
                           eval_every=job["eval_every"], max_env_steps=job["max_env_steps"],
                           max_minutes=job["max_minutes"], overrides={**job["base_overrides"], **job["overrides"]},
                           eval_max_steps=job["eval_max_steps"], stop_at_target=not job["full_curve"],
                           confirm_games=job["confirm_games"],
                           checkpoint_dir=os.path.join(job["checkpoint_dir"], f"seed{seed}")
                           if job["checkpoint_dir"] else None,
                           on_eval=lambda r: messages.put(("eval", seed, r)))
        finally:
            ray.shutdown()
        messages.put(("done", seed, row))
    except BaseException:  # noqa: BLE001 - reported to the parent, which records the seed as failed
        messages.put(("failed", seed, traceback.format_exc()))


class _CsvAppender:
    def __init__(self, path: str):
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else ("" if v is None else v))
                               for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _final_row(seed: int, row: Mapping[str, Any], job: Mapping[str, Any]) -> dict:
    if row["reached"] and not job["full_curve"]:
        note = "stopped at the target"
    elif row["env_steps"] >= job["max_env_steps"]:
        note = "env-step budget"
    else:
        note = "time budget (--max-minutes)"
    return {"seed": seed, "status": "done", "env_steps": row["env_steps"], "updates": row["updates"],
            "train_s": row["train_s"], "eval_s": row["eval_s"], "reached": row["reached"], "note": note}


def _end_group(pid: int, sig: int = signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM) -> None:
    """Ends what is left of a worker's process group (its Ray daemons after a crash); nothing if it is empty."""
    if hasattr(os, "killpg"):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def run_seeds(seeds: Sequence[int], job: Mapping[str, Any], writer: _CsvAppender, jobs: int) -> None:
    """Runs every seed in its own spawned process, at most ``jobs`` at a time; writes the rows as they arrive."""
    context = mp.get_context("spawn")
    messages = context.Queue()
    pending = list(seeds)
    running: dict[int, Any] = {}  # seed -> Process
    dead_since: dict[int, float] = {}
    finished = 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                process = context.Process(target=_worker, args=(seed, dict(job), messages), name=f"seed-{seed}",
                                          daemon=False)
                process.start()
                running[seed] = process
                print(f"seed {seed}: started (process {process.pid})", flush=True)
            try:
                kind, seed, payload = messages.get(timeout=1.0)
            except queue_module.Empty:
                kind = None
            if kind == "eval" and seed in running:
                writer.write({"note": "", **payload, "status": "eval"})
            elif kind in ("done", "failed") and seed in running:
                if kind == "done":
                    writer.write(_final_row(seed, payload, job))
                    outcome = (f"reached the target at {payload['steps_to_target']:,} env steps"
                               if payload["reached"] else "did not reach the target") if job["target"] is not None \
                        else f"best greedy mean {payload['best_greedy_mean']:.1f}"
                else:
                    error = payload.strip().splitlines()[-1] if payload.strip() else "unknown error"
                    writer.write({"seed": seed, "status": "failed", "note": error})
                    print(f"seed {seed}: FAILED\n" + "\n".join("    " + line for line in payload.splitlines()),
                          flush=True)
                    outcome = f"failed ({error})"
                process = running.pop(seed)
                process.join(timeout=60)
                _end_group(process.pid)
                dead_since.pop(seed, None)
                finished += 1
                print(f"seed {seed}: {outcome} ({finished}/{len(seeds)} seeds finished)", flush=True)
            # A process that died without a final message (killed, out of memory): failed, after a grace period
            # for messages still in the pipe.
            now = time.monotonic()
            for seed, process in list(running.items()):
                if process.is_alive():
                    continue
                if now - dead_since.setdefault(seed, now) < 3.0:
                    continue
                error = f"worker process exited with code {process.exitcode} without a result"
                writer.write({"seed": seed, "status": "failed", "note": error})
                _end_group(running.pop(seed).pid)
                dead_since.pop(seed)
                finished += 1
                print(f"seed {seed}: FAILED: {error} ({finished}/{len(seeds)} seeds finished)", flush=True)
    finally:  # interrupted (Ctrl-C reaches only this process: the workers have their own process groups)
        for process in running.values():
            _end_group(process.pid, signal.SIGTERM)
        for process in running.values():
            process.join(timeout=30)
            _end_group(process.pid)


# ------------------------------------------------------------------------------------------------------- main
def random_play_mean(example: str, overrides: Mapping[str, Any], games: int, max_steps: int | None,
                     eval_env_config: Mapping[str, Any] | None = None) -> float:
    """Mean return of uniformly random actions over ``games`` games of the evaluation env (reset seeds 20000 + i)."""
    from _target_return import creator_eval_env

    from rllib_muzero.cli import build_param_space, load_experiments

    (name, spec), = load_experiments(example).items()
    config = build_param_space(name, spec, dict(overrides))
    make_env = creator_eval_env(**(eval_env_config or {}))(config)
    rng = np.random.default_rng(0)
    returns = []
    for i in range(games):
        env = make_env()
        try:
            env.reset(seed=RANDOM_SEED_BASE + i)
            total, steps, done = 0.0, 0, False
            while not done and (max_steps is None or steps < max_steps):
                _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
        finally:
            env.close()
    return float(np.mean(returns))


def read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_rows(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


SETTINGS_CHECKED_ON_RESUME = ("env", "example", "target", "overrides", "max_env_steps", "max_minutes", "eval_every",
                              "eval_games", "eval_max_steps", "full_curve", "confirm_games")
BUDGET_SETTINGS = ("max_env_steps", "max_minutes")  # may grow on --resume: the seeds they stopped train on
BUDGET_NOTES = ("env-step budget", "time budget (--max-minutes)")
TARGET_NOTE = "stopped at the target"  # --resume --full-curve trains these seeds on


def _show(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, choices=sorted(ENVS))
    parser.add_argument("--seeds", nargs="+", default=["0-9"],
                        help="seeds: 0-9 (inclusive), 0 1 2, 3,5 or a mix (default: 0-9)")
    parser.add_argument("--config", help="JSON overrides of the tuned example's config (needs --label)")
    parser.add_argument("--label", help="name of this configuration in the output files (default: tuned)")
    parser.add_argument("--jobs", type=int, default=2, help="seeds trained at the same time (default: 2)")
    parser.add_argument("--cpus-per-job", type=float, default=1.0,
                        help="CPUs of each seed's Ray session (default: 1; remote env runners ask Ray for theirs)")
    parser.add_argument("--max-env-steps", type=int, help="env-step budget per seed (default: the env's)")
    parser.add_argument("--max-minutes", type=float, help="training minutes per seed (default: the env's)")
    parser.add_argument("--eval-every", type=int, help="env steps between evaluations (default: the env's)")
    parser.add_argument("--eval-games", type=int, help="games per evaluation (default: 10)")
    parser.add_argument("--eval-max-steps", type=int,
                        help="cut every evaluation game after this many steps (smoke tests only; default: whole games)")
    parser.add_argument("--confirm-games", type=int, default=0, metavar="N",
                        help="an evaluation reaching the target counts only if N more greedy games (other reset "
                             "seeds) reach it on their mean too (default 0: no confirmation); for the Atari games, "
                             "whose evaluations are one game each")
    parser.add_argument("--full-curve", action="store_true",
                        help="train every seed to the budget instead of stopping at the target")
    parser.add_argument("--random-games", type=int, default=100,
                        help="games of uniform random play for the baseline (default: 100; 0: none)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: docs/learning)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the files of this env and label: seeds with a final row are not rerun")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files of this env and label")
    parser.add_argument("--checkpoint-dir", default=DEFAULT_CHECKPOINTS,
                        help="where each seed is saved after every evaluation, as <env>-<label>/seed<N> (default: "
                             "runs/learning, git-ignored); --resume continues interrupted seeds from there")
    parser.add_argument("--no-checkpoints", action="store_true", help="save nothing (an interrupted seed reruns)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        parser.error(f"--seeds: {error}")
    if args.config and not args.label:
        parser.error("--config needs --label NAME (the name of this configuration in the output files)")
    label = args.label or "tuned"
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", label):
        parser.error(f"--label {label!r}: use letters, digits and . _ + - only")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    try:
        overrides = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as error:
        parser.error(f"--config is no JSON: {error}")
    if not isinstance(overrides, dict):
        parser.error("--config must be a JSON object")
    if args.confirm_games < 0:
        parser.error(f"--confirm-games must be >= 0, got {args.confirm_games}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    spec = ENVS[args.env]
    example = os.path.join(EXAMPLES, spec.example)
    settings = {
        "env": args.env,
        "example": os.path.relpath(example, ROOT),
        "target": spec.target,
        "overrides": overrides,
        "max_env_steps": args.max_env_steps or spec.max_env_steps,
        "max_minutes": args.max_minutes or spec.max_minutes,
        "eval_every": args.eval_every or spec.eval_every,
        "eval_games": args.eval_games or spec.eval_games,
        "eval_max_steps": args.eval_max_steps,
        "full_curve": args.full_curve,
        "confirm_games": args.confirm_games,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{args.env}-{label}")
    csv_path, png_path, json_path = stem + ".csv", stem + ".png", stem + ".json"

    rows = read_rows(csv_path)
    meta: dict[str, Any] = {}
    if os.path.exists(json_path) and (args.resume or not args.overwrite):
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    if (rows or meta) and not args.resume and not args.overwrite:
        parser.error(f"{csv_path} exists: --resume continues it, --overwrite starts over")
    extended = full_curve_on = False
    if args.resume and meta:
        old = {"confirm_games": 0, **meta.get("settings", {})}  # runs from before --confirm-games: none
        grown = [k for k in BUDGET_SETTINGS if old.get(k) is not None and settings[k] > old[k]]
        full_curve_on = settings["full_curve"] and old.get("full_curve") is False
        differ = [k for k in SETTINGS_CHECKED_ON_RESUME if old.get(k) != settings[k] and k not in grown
                  and not (k == "full_curve" and full_curve_on)]
        if differ:
            parser.error("--resume with other settings than the existing run: "
                         + ", ".join(f"{k} {old.get(k)!r} there, {settings[k]!r} now" for k in differ)
                         + " (only the budgets, --max-env-steps and --max-minutes, may grow, and --full-curve be "
                           "turned on)")
        extended = bool(grown)
    if args.overwrite:
        rows = []
    previous = seed_results(rows, spec.target)
    # With a larger budget, the seeds the old budget stopped are not complete: they train on from their checkpoint.
    # With --full-curve turned on, so are the seeds that stopped at the target.
    continuable = (BUDGET_NOTES if extended else ()) + ((TARGET_NOTE,) if args.resume and full_curve_on else ())
    # An interrupted seed (no final row) is never complete, even where it reached the target before it stopped.
    complete = sorted(r.seed for r in previous if r.finished and r.status != "failed" and r.note not in continuable)
    to_run = [s for s in seeds if s not in complete]
    if to_run:  # a bad --config fails here, once, not in every worker (the heavy imports only when needed)
        from rllib_muzero.cli import UserError, build_param_space, load_experiments

        try:
            (name, experiment), = load_experiments(example).items()
            build_param_space(name, experiment, {**overrides, "seed": 0})
        except UserError as error:
            parser.error(str(error))
    checkpoint_root = None if args.no_checkpoints else os.path.join(args.checkpoint_dir, f"{args.env}-{label}")
    if args.overwrite:
        for path in (csv_path, png_path, json_path):
            if os.path.exists(path):
                os.remove(path)
        if checkpoint_root and os.path.isdir(checkpoint_root):
            shutil.rmtree(checkpoint_root)
    elif not args.resume and checkpoint_root and os.path.isdir(checkpoint_root) and os.listdir(checkpoint_root):
        parser.error(f"{checkpoint_root} holds checkpoints of an earlier run: --resume continues it, --overwrite "
                     "starts over")
    if args.resume:
        from _target_return import SeedCheckpoints

        skipped = [s for s in seeds if s in complete]
        saved = {s: SeedCheckpoints(os.path.join(checkpoint_root, f"seed{s}")).load() if checkpoint_root else None
                 for s in to_run}
        continued = sorted(s for s in to_run if saved[s] is not None)
        rerun = sorted({s for s in to_run if any(r.seed == s for r in previous)} - set(continued))
        print(f"resuming {csv_path}: seed(s) {' '.join(map(str, skipped)) or 'none'} already complete, not rerun"
              + "".join(f"; seed {s} continues from its checkpoint at {saved[s]['state']['env_steps']:,} env steps"
                        for s in continued)
              + (f"; rerunning {' '.join(map(str, rerun))} (failed or interrupted without a checkpoint: their rows "
                 "are replaced)" if rerun else ""), flush=True)
        if rerun or continued:
            def kept(r: Mapping[str, Any]) -> bool:
                seed = int(r["seed"])
                if seed in rerun:
                    return False
                if seed in continued:  # its evaluations up to the checkpoint, no final row
                    return r["status"] == "eval" and int(r["env_steps"]) <= saved[seed]["state"]["env_steps"]
                return True

            _write_rows(csv_path, [r for r in rows if kept(r)])

    if "random_mean" in meta:
        random_mean = meta["random_mean"]
    elif args.random_games > 0:
        random_mean = random_play_mean(example, {**spec.base_overrides, **overrides}, args.random_games,
                                       args.eval_max_steps, spec.eval_env_config)
    else:
        random_mean = None
    meta = {"settings": settings, "random_games": meta.get("random_games", args.random_games),
            "random_mean": random_mean, "runs": meta.get("runs", [])}
    if to_run:  # the parts that trained something: a --resume with every seed complete only re-summarises
        meta["runs"].append({"date": datetime.datetime.now().isoformat(timespec="seconds"), "seeds": to_run,
                             "jobs": args.jobs, "cpus_per_job": args.cpus_per_job, "commit": _git_commit()})
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)

    job = {**settings, "example": example, "cpus_per_job": args.cpus_per_job, "checkpoint_dir": checkpoint_root,
           "eval_env_config": dict(spec.eval_env_config), "base_overrides": dict(spec.base_overrides)}
    if to_run:
        print(f"{args.env} / {label}: training seed(s) {' '.join(map(str, to_run))}, {min(args.jobs, len(to_run))} "
              f"at a time, budget {settings['max_env_steps']:,} env steps / {settings['max_minutes']:g} min each"
              + (", full curves" if args.full_curve else ""), flush=True)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, "1")  # inherited by the spawned workers: one thread each
        writer = _CsvAppender(csv_path)
        try:
            run_seeds(to_run, job, writer, args.jobs)
        finally:
            writer.close()

    results = seed_results(read_rows(csv_path), spec.target)
    summary = summarize(results, spec.target)
    title = f"{args.env} / {label}: greedy evaluation, {len(results)} seed(s)" + (
        ", full curves" if args.full_curve else "")
    plot_curves(results, png_path, title=title, target=spec.target, random_mean=random_mean,
                eval_games=settings["eval_games"])
    print(format_summary(results, summary, label=label, env=args.env, max_env_steps=settings["max_env_steps"],
                         random_mean=random_mean))
    print(f"\nwrote {_show(csv_path)}, {_show(png_path)}, {_show(json_path)}")
    return {"summary": summary, "results": results, "csv": csv_path, "png": png_path, "json": json_path}


if __name__ == "__main__":
    main()
