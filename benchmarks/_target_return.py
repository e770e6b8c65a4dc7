"""Train a tuned example per seed until a greedy evaluation reaches a target return (shared by the benchmarks).

Used by ``benchmarks/cartpole.py``, ``benchmarks/lunarlander.py``, ``benchmarks/pong_ram.py`` and the multi-seed
``benchmarks/learning.py``. For every seed: build the tuned example's config (``--config`` JSON overrides and the
seed merged in, validated like ``rllib-muzero train`` does), call ``algo.train()`` until ``max_env_steps`` env steps
or ``max_minutes`` minutes of training, and every ``eval_every`` env steps play ``eval_games`` whole games with
:func:`rllib_muzero.evaluation.play_games` (greedy search: no root noise, temperature 0; game ``i`` of seed ``s`` is
reset with seed ``10_000 + s + i``). A seed stops as soon as the greedy mean reaches the target (unless
``stop_at_target=False``, ``learning.py --full-curve``). Evaluation time is excluded from the training wall time
(``train_s``) and reported separately (``eval_s``).

Printed: one progress line per evaluation (env steps, learner updates, training seconds, greedy mean) and, at the
end, one table row per seed. With ``csv_path`` every evaluation is also appended to a CSV file as it happens
(columns :data:`CSV_COLUMNS`), so a long run that is stopped early still leaves its curve behind.

Resuming (``checkpoint_dir``): after every evaluation the seed's algorithm is saved (weights, optimizer, replay,
counters) and the loop's own state committed beside it (:class:`SeedCheckpoints`); a later run with the same
directory restores the latest checkpoint and goes on from that evaluation, saying so. The best evaluation's
checkpoint is kept too (the agent to show). The curve's rows after the last committed evaluation are dropped on
resume (:func:`trim_curve`), so an interrupted run and its resumed part make one curve without duplicates.

The caller initialises Ray (:func:`init_ray`); :func:`run_benchmark` itself only builds and stops algorithms.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_muzero import MuZeroConfig
from rllib_muzero.cli import build_param_space, load_experiments
from rllib_muzero.envs import make_env_creator
from rllib_muzero.play import play_games

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tuned_examples")
EVAL_SEED_BASE = 10_000
CONFIRM_SEED_BASE = 20_000  # the confirmation games' reset seeds: other starts than the evaluation's
CSV_COLUMNS = ("seed", "env_steps", "updates", "train_s", "eval_s", "games", "greedy_mean", "greedy_min",
               "greedy_max", "reached")

# Given the merged config dict of one seed (``env``, ``env_config``, ... after overrides), returns the factory of
# one evaluation env (called once per evaluation game).
EvalEnvFactory = Callable[[Mapping[str, Any]], Callable[[], gym.Env]]


def example_path(file_name: str) -> str:
    """The path of a file in ``tuned_examples/``."""
    return os.path.normpath(os.path.join(EXAMPLES, file_name))


def creator_eval_env(**env_config_overrides: Any) -> EvalEnvFactory:
    """An :data:`EvalEnvFactory` that builds the training env with the package's env creator
    (:func:`rllib_muzero.envs.make_env_creator`: legacy ids, the MuZero env options as wrappers) from the seed's
    ``env`` and ``env_config``, with ``env_config_overrides`` on top (e.g. ``episode_life=False`` for whole games)."""

    def factory(config: Mapping[str, Any]) -> Callable[[], gym.Env]:
        _, creator = make_env_creator(config["env"])
        env_config = {**(config.get("env_config") or {}), **env_config_overrides}
        return lambda: creator(dict(env_config))

    return factory


class SeedCheckpoints:
    """The checkpoints of one seed's run, so an interrupted long run resumes where it was.

    Layout of ``directory``: ``ckpt-<env steps>/`` directories (``algo.save``: weights, optimizer, replay, counters)
    and ``progress.json``, the commit point: written atomically (a temporary file, then ``os.replace``) only after
    the checkpoint it names is complete. It holds the loop's state at that evaluation and the names of the latest
    and the best checkpoint. A crash at any instant therefore leaves ``progress.json`` naming complete checkpoints
    (or no ``progress.json``: a fresh start); directories it does not name are leftovers of an interrupted save,
    removed at the next commit. Two checkpoints at most stay on disk (latest and best).
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.progress_path = os.path.join(self.directory, "progress.json")

    def load(self) -> dict | None:
        """The committed progress (``{"state", "latest", "best"}``), or None when nothing was committed."""
        if not os.path.exists(self.progress_path):
            return None
        with open(self.progress_path, encoding="utf-8") as f:
            progress = json.load(f)
        for key in ("latest", "best"):
            if progress.get(key) and not os.path.isdir(self.path(progress[key])):
                raise FileNotFoundError(f"{self.progress_path} names the checkpoint {progress[key]!r}, which is "
                                        "missing: remove the directory to start this seed over")
        return progress

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def commit(self, algo: Any, state: Mapping[str, Any], *, improved: bool) -> str:
        """Saves ``algo`` after an evaluation and commits ``state`` with it; ``improved``: the best evaluation so far
        (its checkpoint is kept as ``best``). Returns the checkpoint's path."""
        os.makedirs(self.directory, exist_ok=True)
        previous = self.load() or {}
        name = f"ckpt-{int(state['env_steps']):09d}"
        algo.save(self.path(name))
        progress = {"state": dict(state), "latest": name, "best": name if improved else previous.get("best")}
        tmp = self.progress_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(progress, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.progress_path)
        keep = {progress["latest"], progress["best"]}
        for entry in os.listdir(self.directory):
            if entry.startswith("ckpt-") and entry not in keep:
                shutil.rmtree(self.path(entry), ignore_errors=True)
        return self.path(name)


def trim_curve(path: str, seed: int, env_steps: int) -> int:
    """Drops the CSV rows of ``seed`` past ``env_steps`` (evaluations whose checkpoint was never committed), keeping
    every other row; returns how many were dropped. Rows are matched on the ``seed`` and ``env_steps`` columns."""
    if not os.path.exists(path):
        return 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept = [r for r in rows if not (int(r["seed"]) == seed and r.get("env_steps") and int(r["env_steps"]) > env_steps)]
    if len(kept) != len(rows) and fields:
        tmp = path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)
    return len(rows) - len(kept)


def run_seed(
    seed: int,
    *,
    example: str,
    eval_env: EvalEnvFactory,
    target: float,
    eval_games: int,
    eval_every: int,
    max_env_steps: int,
    max_minutes: float,
    overrides: Mapping[str, Any] | None = None,
    eval_max_steps: int | None = None,
    on_eval: Callable[[dict], None] | None = None,
    stop_at_target: bool = True,
    checkpoint_dir: str | None = None,
    confirm_games: int = 0,
) -> dict:
    """Trains one seed until the target, ``max_env_steps`` or ``max_minutes``; returns its table row (a dict).

    With ``stop_at_target=False`` the seed trains on to the budget after reaching the target (whole learning curves);
    ``reached`` then says whether any evaluation reached it, and ``steps_to_target`` (in every row: the env steps of
    the first evaluation that reached the target, or None) where. With ``checkpoint_dir`` the seed is saved after
    every evaluation and resumes from its last committed evaluation if the directory has one
    (:class:`SeedCheckpoints`; the caller trims the curve with :func:`trim_curve`). The training and evaluation
    seconds of a resumed seed add up over its parts.

    With ``confirm_games`` > 0 an evaluation whose mean reaches the target counts only if ``confirm_games`` more
    greedy games (game ``i`` reset with ``CONFIRM_SEED_BASE + seed + i``) reach it too, on their mean: a benchmark
    that evaluates one Atari game at a time then does not stop on one lucky game. Their time is evaluation time; the
    evaluation's row says the outcome in ``note``.
    """
    (name, spec), = load_experiments(example).items()
    config_dict = build_param_space(name, spec, {**(overrides or {}), "seed": seed})
    make_env = eval_env(config_dict)
    algo = MuZeroConfig().update_from_dict(config_dict).build_algo()
    train_time = eval_time = 0.0
    env_steps = 0
    next_eval = eval_every
    best = -np.inf
    reached = False
    steps_to_target = None
    checkpoints = SeedCheckpoints(checkpoint_dir) if checkpoint_dir else None
    progress = checkpoints.load() if checkpoints else None
    if progress is not None:
        path = checkpoints.path(progress["latest"])
        algo.restore(path)
        state = progress["state"]
        train_time, eval_time, env_steps = state["train_s"], state["eval_s"], state["env_steps"]
        next_eval, reached, steps_to_target = state["next_eval"], state["reached"], state["steps_to_target"]
        best = state["best"] if state["best"] is not None else -np.inf
        print(f"  seed {seed}: resuming from {path}: {env_steps:,} env steps, {train_time:.0f} s of training, "
              f"best greedy mean {best:.1f}", flush=True)
    try:
        if reached and stop_at_target:
            max_env_steps = env_steps  # it had stopped at the target: nothing left to train
        while env_steps < max_env_steps and train_time < max_minutes * 60:
            t0 = time.perf_counter()
            result = algo.train()
            train_time += time.perf_counter() - t0
            env_steps = result["num_env_steps_sampled_lifetime"]
            if env_steps >= next_eval:
                while next_eval <= env_steps:  # one evaluation even if an iteration passed several marks
                    next_eval += eval_every
                t0 = time.perf_counter()
                returns = play_games(algo.get_policy(), make_env, eval_games, seed=EVAL_SEED_BASE + seed,
                                     max_steps=eval_max_steps)
                mean = float(returns.mean())
                hit, note = mean >= target, ""
                if hit and confirm_games > 0:
                    confirm = play_games(algo.get_policy(), make_env, confirm_games,
                                         seed=CONFIRM_SEED_BASE + seed, max_steps=eval_max_steps)
                    confirm_mean = float(confirm.mean())
                    hit = confirm_mean >= target
                    note = (f"{'confirmed' if hit else 'not confirmed'}: mean {confirm_mean:.2f} over "
                            f"{confirm_games} more games (min {float(confirm.min()):g}, max {float(confirm.max()):g})")
                eval_time += time.perf_counter() - t0
                improved = mean > best
                best = max(best, mean)
                updates = algo.get_policy().num_grad_updates
                reached = reached or hit
                if reached and steps_to_target is None:
                    steps_to_target = env_steps
                print(f"  seed {seed}: env_steps={env_steps:6d} updates={updates:5d} train_s={train_time:6.1f} "
                      f"greedy_mean={mean:6.1f}", flush=True)
                if on_eval is not None:
                    on_eval({"seed": seed, "env_steps": env_steps, "updates": updates, "train_s": train_time,
                             "eval_s": eval_time, "games": eval_games, "greedy_mean": mean,
                             "greedy_min": float(returns.min()), "greedy_max": float(returns.max()),
                             "reached": hit, "note": note})
                if checkpoints is not None:
                    checkpoints.commit(algo, {"env_steps": env_steps, "train_s": train_time, "eval_s": eval_time,
                                              "next_eval": next_eval, "reached": reached,
                                              "steps_to_target": steps_to_target, "best": best}, improved=improved)
                if reached and stop_at_target:
                    break
        return {"seed": seed, "reached": reached, "env_steps": env_steps,
                "updates": algo.get_policy().num_grad_updates, "train_s": train_time, "eval_s": eval_time,
                "best_greedy_mean": best, "steps_to_target": steps_to_target}
    finally:
        algo.stop()


class _CurveWriter:
    """Appends evaluation rows to a CSV file, flushed after each row (the header once, for a new or empty file)."""

    def __init__(self, path: str):
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS, extrasaction="ignore")  # e.g. no note
        if new:
            self._writer.writeheader()

    def __call__(self, row: dict) -> None:
        self._writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def print_table(rows: Sequence[dict]) -> None:
    print("\nseed  reached  env_steps  updates  train_s  eval_s  best_greedy_mean")
    for r in rows:
        print(f"{r['seed']:4d}  {str(r['reached']):7s}  {r['env_steps']:9d}  {r['updates']:7d}  {r['train_s']:7.1f}"
              f"  {r['eval_s']:6.1f}  {r['best_greedy_mean']:16.1f}")


def run_benchmark(
    *,
    example: str,
    eval_env: EvalEnvFactory,
    target: float,
    eval_games: int,
    eval_every: int,
    max_env_steps: int,
    max_minutes: float,
    seeds: Sequence[int],
    overrides: Mapping[str, Any] | str | None = None,
    eval_max_steps: int | None = None,
    csv_path: str | None = None,
    checkpoint_dir: str | None = None,
) -> list[dict]:
    """Runs :func:`run_seed` for every seed (Ray must be initialised), prints the table, returns its rows.

    ``overrides`` is a dict or the JSON text of ``--config``; ``csv_path`` appends the evaluation rows there;
    ``checkpoint_dir``: seed ``s`` is saved in (and resumed from) ``checkpoint_dir/seed<s>``.
    """
    if isinstance(overrides, str):
        overrides = json.loads(overrides)
    seed_dirs = {seed: os.path.join(checkpoint_dir, f"seed{seed}") if checkpoint_dir else None for seed in seeds}
    for seed, directory in seed_dirs.items():
        progress = SeedCheckpoints(directory).load() if directory else None
        if progress is not None and csv_path:
            dropped = trim_curve(csv_path, seed, progress["state"]["env_steps"])
            print(f"seed {seed}: resuming from {directory} ({progress['state']['env_steps']:,} env steps); "
                  f"{csv_path}: kept its rows up to there" + (f", dropped {dropped} after" if dropped else ""),
                  flush=True)
    writer = _CurveWriter(csv_path) if csv_path else None
    try:
        rows = [run_seed(seed, example=example, eval_env=eval_env, target=target, eval_games=eval_games,
                         eval_every=eval_every, max_env_steps=max_env_steps, max_minutes=max_minutes,
                         overrides=overrides, eval_max_steps=eval_max_steps, on_eval=writer,
                         checkpoint_dir=seed_dirs[seed])
                for seed in seeds]
    finally:
        if writer is not None:
            writer.close()
    print_table(rows)
    return rows


def init_ray(num_cpus: int | None, torch_threads: int = 1, **ray_init_kwargs: Any) -> None:
    """One torch thread in the driver (the learner's arithmetic, hence the trajectory, matches across machines) and
    a local Ray session with ``num_cpus`` CPUs (None: all cores), no dashboard, workers' logs not forwarded.
    ``ray_init_kwargs`` go to ``ray.init``. By default the session is private to this process (``address="local"``):
    a benchmark never joins another run's Ray cluster on the same machine (which would refuse ``num_cpus``)."""
    import ray
    import torch

    torch.set_num_threads(torch_threads)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray_init_kwargs.setdefault("address", "local")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **ray_init_kwargs)


def long_run_parser(doc: str, *, example: str, target: float, eval_games: int, eval_every: int,
                    max_env_steps: int, max_minutes: float) -> argparse.ArgumentParser:
    """The command line of the long-run benchmarks (LunarLander, Pong-RAM), with their defaults."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--example", default=example, help="tuned-example YAML (default: %(default)s)")
    parser.add_argument("--target", type=float, default=target, help="greedy mean to reach (default: %(default)s)")
    parser.add_argument("--eval-games", type=int, default=eval_games,
                        help="whole games per evaluation (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=eval_every,
                        help="env steps between evaluations (default: %(default)s)")
    parser.add_argument("--eval-max-steps", type=int, default=None,
                        help="cut every evaluation game after this many agent steps (default: play to the end; "
                             "only for smoke tests: a cut game is no whole game)")
    parser.add_argument("--max-env-steps", type=int, default=max_env_steps, help="default: %(default)s")
    parser.add_argument("--max-minutes", type=float, default=max_minutes,
                        help="training minutes per seed, evaluation excluded (default: %(default)s)")
    parser.add_argument("--config", help="JSON overrides of the example's config (for tuning)")
    parser.add_argument("--num-env-runners", type=int, default=None,
                        help="override the example's num_env_runners (remote env runners; 0: sample in the driver)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs given to Ray (default: all cores)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads of the driver (default: 1)")
    parser.add_argument("--csv", metavar="PATH", help="append every evaluation (the curve) to this CSV file")
    default_dir = os.path.join("runs", os.path.splitext(os.path.basename(example))[0])
    parser.add_argument("--checkpoint-dir", default=default_dir,
                        help="save each seed after every evaluation in DIR/seed<N> and resume from there when the "
                             "command is run again (default: %(default)s; git-ignored)")
    parser.add_argument("--no-checkpoints", action="store_true", help="no checkpoints, no resume")
    return parser


def long_run_main(args: argparse.Namespace, eval_env: EvalEnvFactory,
                  base_overrides: Mapping[str, Any] | None = None) -> list[dict]:
    """Runs a :func:`long_run_parser` command line: Ray up, :func:`run_benchmark`, Ray down.

    ``base_overrides`` change the example's config before ``--config`` and ``--num-env-runners`` do."""
    import ray

    overrides = {**(base_overrides or {}), **(json.loads(args.config) if args.config else {})}
    if args.num_env_runners is not None:
        overrides["num_env_runners"] = args.num_env_runners
    init_ray(args.num_cpus, args.torch_threads)
    try:
        return run_benchmark(example=args.example, eval_env=eval_env, target=args.target, eval_games=args.eval_games,
                             eval_every=args.eval_every, max_env_steps=args.max_env_steps,
                             max_minutes=args.max_minutes, seeds=args.seeds, overrides=overrides,
                             eval_max_steps=args.eval_max_steps, csv_path=args.csv,
                             checkpoint_dir=None if args.no_checkpoints else args.checkpoint_dir)
    finally:
        ray.shutdown()
