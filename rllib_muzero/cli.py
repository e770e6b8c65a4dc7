"""The ``rllib-muzero`` command (Ray removed its ``rllib`` command in 2.44).

``rllib-muzero train FILE.yaml`` takes the classic RLlib tuned-example format::

    experiment-name:
        run: MuZero
        env: CartPole-v1
        stop: {env_runners/episode_return_mean: 475, num_env_steps_sampled_lifetime: 30000}
        checkpoint_config: {checkpoint_frequency: 5, checkpoint_at_end: true}
        config: {...MuZeroConfig keys...}

and hands each experiment to Ray Tune. User mistakes (missing file, bad YAML, unknown or invalid config keys, stop
criteria naming no metric MuZero reports, resources the machine cannot give) end with a one-line error and exit code
2, before Ray starts.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import yaml

EXPERIMENT_KEYS = {"run", "env", "stop", "config", "checkpoint_config", "checkpoint_freq", "checkpoint_at_end",
                   "num_samples", "storage_path", "local_dir"}


class UserError(Exception):
    """A mistake in what the user typed: reported as one line, without a traceback."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is a :class:`UserError` (one line, exit code 2) instead of argparse's usage block
    plus error line; ``--help`` still shows the usage. Abbreviated flags are refused (argparse's ``allow_abbrev``
    would read ``--num-sample 2`` as ``--num-samples 2``: a silent guess)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


# ------------------------------------------------------------------------------------------------ stop criteria
# What a MuZero trial reports, flattened with "/" as Tune flattens results before it compares them with the stop
# criteria. Read from a 1-iteration run (num_env_runners=0, with evaluation) of Ray 2.60's old API stack plus Tune's
# own keys. A key Tune never sees only gets a warning from Tune and the trial trains until something else stops it,
# so a stop key must be one of these names, or lie under one of the open prefixes below, whose names depend on the
# policy ids, the user's callbacks and RLlib's timers. tests/test_bad_inputs.py trains one iteration and checks that
# every numeric key it reports is accepted (a Ray upgrade that renames a metric fails there).
TUNE_METRICS = ("training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore",
                "iterations_since_restore", "timesteps_total", "timestamp")
RLLIB_METRICS = (
    "num_env_steps_sampled_lifetime", "num_agent_steps_sampled_lifetime", "num_env_steps_sampled",
    "num_env_steps_trained", "num_agent_steps_sampled", "num_agent_steps_trained", "num_env_steps_sampled_this_iter",
    "num_env_steps_trained_this_iter", "num_steps_trained_this_iter", "num_env_steps_sampled_throughput_per_sec",
    "num_env_steps_trained_throughput_per_sec", "agent_timesteps_total", "num_healthy_workers",
    "num_remote_worker_restarts", "num_env_runners_dropped_lifetime", "actor_manager_num_outstanding_async_reqs",
)
ENV_RUNNER_METRICS = (  # under env_runners/ (training) and evaluation/env_runners/ (evaluation)
    "episode_return_mean", "episode_return_min", "episode_return_max", "episode_reward_mean", "episode_reward_min",
    "episode_reward_max", "episode_len_mean", "episodes_this_iter", "episodes_timesteps_total", "num_episodes",
    "num_faulty_episodes",
)
EVALUATION_METRICS = (  # under evaluation/
    "num_env_steps_sampled_this_iter", "num_agent_steps_sampled_this_iter", "timesteps_this_iter",
    "num_healthy_workers", "num_remote_worker_restarts", "num_env_runners_dropped_lifetime",
    "actor_manager_num_outstanding_async_reqs",
)
OPEN_METRIC_PREFIXES = (
    "info/",  # info/learner/<policy id>/learner_stats/<loss, ...> and .../muzero/<replay and search metrics>
    "custom_metrics/", "timers/", "counters/", "perf/", "config/",
    *(f"{group}{sub}/" for group in ("env_runners/", "evaluation/env_runners/")
      for sub in ("hist_stats", "policy_reward_mean", "policy_reward_min", "policy_reward_max", "custom_metrics",
                  "connector_metrics", "sampler_perf")),
)
REPORTED_METRICS = frozenset(
    (*TUNE_METRICS, *RLLIB_METRICS, *(f"env_runners/{m}" for m in ENV_RUNNER_METRICS),
     *(f"evaluation/env_runners/{m}" for m in ENV_RUNNER_METRICS), *(f"evaluation/{m}" for m in EVALUATION_METRICS))
)
"""The exact stop keys accepted (besides :data:`OPEN_METRIC_PREFIXES`)."""


def check_stop_criteria(stop: Any, where: str, config: dict) -> dict | None:
    """Checks a ``stop`` mapping before Tune gets it: every key a metric a MuZero trial reports, every value a finite
    number. A misspelled key is refused with the closest reported names (Tune would only warn and train forever);
    an ``evaluation/...`` key needs evaluation switched on (``evaluation_interval``)."""
    if stop is None:
        return None
    if not isinstance(stop, dict):
        raise UserError(f"{where} must map metric names to numbers, e.g. {{training_iteration: 10}}; got {stop!r}")
    for key, value in stop.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            nested = " written as one key joined by '/', e.g. env_runners/episode_return_mean" if isinstance(
                value, dict) else ""
            raise UserError(f"Invalid stop criterion `{key}`={value!r} ({where}): expected a finite number (the "
                            f"trial stops once the metric reaches it){nested}.")
        if not isinstance(key, str) or not (key in REPORTED_METRICS or key.startswith(OPEN_METRIC_PREFIXES)):
            raise UserError(f"Invalid stop criterion `{key}`={value!r} ({where}): expected a metric MuZero reports"
                            f"{_closest_metrics(str(key))}, e.g. training_iteration, num_env_steps_sampled_lifetime, "
                            "env_runners/episode_return_mean, time_total_s (nested keys joined by '/').")
        if key.startswith("evaluation/") and not config.get("evaluation_interval"):
            raise UserError(f"Invalid stop criterion `{key}`={value!r} ({where}): evaluation metrics are reported only "
                            "with evaluation on; expected `evaluation_interval` >= 1 in the config, or a training "
                            "metric such as env_runners/episode_return_mean.")
    return stop


def _closest_metrics(key: str) -> str:
    names = sorted(REPORTED_METRICS)
    close = [name for name in names if name.endswith("/" + key)]
    close += [name for name in difflib.get_close_matches(key, names, n=3, cutoff=0.6) if name not in close]
    return f" (did you mean {', '.join(repr(c) for c in close[:3])}?)" if close else ""


def load_experiments(path: str) -> dict[str, dict]:
    """Reads a classic RLlib tuned-example YAML file: ``{name: {run, env, stop, config, ...}}``."""
    if not os.path.isfile(path):
        raise UserError(f"experiment file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            experiments = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(experiments, dict) or not experiments:
        raise UserError(f"{path} must map experiment names to {{run, env, stop, config}} blocks")
    for name, spec in experiments.items():
        if not isinstance(spec, dict):
            raise UserError(f"experiment `{name}` in {path} must be a mapping with keys {sorted(EXPERIMENT_KEYS)}")
        unknown = sorted(set(spec) - EXPERIMENT_KEYS)
        if unknown:
            raise UserError(f"experiment `{name}`: unknown key `{unknown[0]}`; accepted: {sorted(EXPERIMENT_KEYS)}")
        if spec.get("run", "MuZero") != "MuZero":
            raise UserError(f"experiment `{name}`: `run` must be MuZero, got {spec['run']!r}")
        _check_experiment_values(name, spec)
    return experiments


def _check_experiment_values(name: str, spec: dict) -> None:
    """The experiment-level settings Tune takes as given (a bad one fails only once Ray and Tune run, or never)."""
    if "num_samples" in spec and not _is_int_at_least(spec["num_samples"], 1):
        raise UserError(f"experiment `{name}`: `num_samples`={spec['num_samples']!r}: expected an integer >= 1 "
                        "(trials to run)")
    if "checkpoint_freq" in spec and not _is_int_at_least(spec["checkpoint_freq"], 0):
        raise UserError(f"experiment `{name}`: `checkpoint_freq`={spec['checkpoint_freq']!r}: expected an integer "
                        ">= 0 (iterations between checkpoints; 0 = none)")
    if "checkpoint_at_end" in spec and not isinstance(spec["checkpoint_at_end"], bool):
        raise UserError(f"experiment `{name}`: `checkpoint_at_end`={spec['checkpoint_at_end']!r}: expected true or "
                        "false")
    checkpoint = spec.get("checkpoint_config")
    if checkpoint is not None:
        if not isinstance(checkpoint, dict):
            raise UserError(f"experiment `{name}`: `checkpoint_config` must be a mapping of tune.CheckpointConfig "
                            f"fields, got {checkpoint!r}")
        from ray import tune

        try:
            tune.CheckpointConfig(**checkpoint)
        except (TypeError, ValueError) as e:
            raise UserError(f"experiment `{name}`: invalid `checkpoint_config` {checkpoint!r}: "
                            f"{' '.join(str(e).split())}") from None
        frequency = checkpoint.get("checkpoint_frequency", 0)
        if not _is_int_at_least(frequency, 0):
            raise UserError(f"experiment `{name}`: `checkpoint_config.checkpoint_frequency`={frequency!r}: expected "
                            "an integer >= 0 (iterations between checkpoints; 0 = none)")
    for key in ("storage_path", "local_dir"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise UserError(f"experiment `{name}`: `{key}`={spec[key]!r}: expected a directory path")


def _is_int_at_least(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _first_variant(value: Any) -> Any:
    """Replaces Tune search-space markers ({grid_search: [...]}) by their first value, for validation only."""
    if isinstance(value, dict):
        if set(value) == {"grid_search"} and isinstance(value["grid_search"], list) and value["grid_search"]:
            return _first_variant(value["grid_search"][0])
        return {k: _first_variant(v) for k, v in value.items()}
    return value


def build_param_space(name: str, spec: dict, overrides: dict | None) -> dict:
    """Merges env and ``--config`` overrides into the experiment's config and validates it with MuZeroConfig."""
    from rllib_muzero.algorithm import MuZeroConfig

    config = copy.deepcopy(spec.get("config") or {})
    if not isinstance(config, dict):
        raise UserError(f"experiment `{name}`: `config` must be a mapping")
    if "env" in spec:
        config["env"] = spec["env"]
    config.update(overrides or {})
    if "env" not in config:
        raise UserError(f"experiment `{name}`: no `env` given (top level or in `config`)")
    from ray.rllib.utils.error import EnvError

    from rllib_muzero.algorithm import check_env_spaces

    try:
        muzero_config = MuZeroConfig().update_from_dict(_first_variant(config))
        muzero_config.validate()
        check_env_spaces(muzero_config)
    except (ValueError, TypeError, KeyError, EnvError) as e:
        raise UserError(f"experiment `{name}`: {str(e).strip().splitlines()[0]}") from None
    return config


def check_resources(name: str, config: dict, num_cpus: int | None) -> None:
    """Refuses a trial that asks for more CPUs or GPUs than the local Ray instance will have: Tune would keep it
    PENDING forever. One trial's request is RLlib's placement group for the config (main process + env runners +
    evaluation env runners); Ray gets ``--num-cpus`` or, by default, every CPU Ray detects. Skipped when connecting
    to an existing cluster (``RAY_ADDRESS``), whose nodes are not known here."""
    import ray

    from rllib_muzero.algorithm import MuZero

    if os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        return
    try:
        request = MuZero.default_resource_request(_first_variant(config)).required_resources
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"experiment `{name}`: {' '.join(str(e).split())}") from None
    if ray.is_initialized():
        available = ray.cluster_resources()
        cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
        cpu_source = gpu_source = "the running Ray instance"
    else:
        cpus = float(num_cpus) if num_cpus is not None else float(_detected_cpus())
        cpu_source = "--num-cpus" if num_cpus is not None else "this machine; --num-cpus sets it"
        gpus, gpu_source = float(_detected_gpus()), "this machine"
    c = MuZero.get_default_config().update_from_dict(_first_variant(config))
    if request.get("CPU", 0.0) > cpus:
        breakdown = (f"`num_cpus_for_main_process`={c.num_cpus_for_main_process:g} + `num_env_runners`="
                     f"{c.num_env_runners} x `num_cpus_per_env_runner`={c.num_cpus_per_env_runner:g}")
        if request["CPU"] > c.num_cpus_for_main_process + c.num_env_runners * c.num_cpus_per_env_runner:
            breakdown += f" + {c.evaluation_num_env_runners} evaluation env runner(s)"
        raise UserError(f"experiment `{name}`: one trial needs {request['CPU']:g} CPUs ({breakdown}) but Ray has "
                        f"{cpus:g} ({cpu_source}): the trial would wait for resources forever. Use fewer or fractional "
                        "CPUs (e.g. `num_cpus_per_env_runner`: 0.5) or give Ray more.")
    if request.get("GPU", 0.0) > gpus:
        raise UserError(f"experiment `{name}`: one trial needs {request['GPU']:g} GPUs (`num_gpus`={c.num_gpus:g}, "
                        f"`num_gpus_per_env_runner`={c.num_gpus_per_env_runner:g}) but {gpu_source} has {gpus:g}: the "
                        "trial would wait for resources forever. Set them to 0 to train on the CPU.")


def _detected_cpus() -> int:
    """The CPUs a local ``ray.init()`` would register (Ray's own count, which respects container limits)."""
    try:
        from ray._private.utils import get_num_cpus  # private, so with a fallback

        return int(get_num_cpus())
    except Exception:
        return os.cpu_count() or 1


def _detected_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _parse_json(text: str | None, option: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{option} is not valid JSON ({e.msg}): {text}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object, got {text}")
    return value


def train(args: argparse.Namespace) -> int:
    """Runs every experiment of the file through Ray Tune; returns the process exit code."""
    # Class paths (e.g. `env: examples.custom_env.CorridorEnv`) resolve from the working directory here, as they do
    # in Ray's workers, which get the driver's working directory on their sys.path.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for flag, value, minimum, meaning in (("--checkpoint-freq", args.checkpoint_freq, 0, "iterations between "
                                           "checkpoints; 0 = none"), ("--num-samples", args.num_samples, 1, "trials"),
                                          ("--num-cpus", args.num_cpus, 1, "CPUs for Ray")):
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be an integer >= {minimum} ({meaning}), got {value}")
    experiments = load_experiments(args.file)
    overrides = _parse_json(args.config, "--config")
    stop_override = _parse_json(args.stop, "--stop")
    prepared = []
    for name, spec in experiments.items():
        param_space = build_param_space(name, spec, overrides)
        if stop_override is not None:
            check_stop_criteria(stop_override, "--stop", _first_variant(param_space))
        else:
            check_stop_criteria(spec.get("stop"), f"`stop` of experiment `{name}`", _first_variant(param_space))
        check_resources(name, param_space, args.num_cpus)
        prepared.append((name, spec, param_space))

    import ray
    from ray import tune

    # "MuZero" is registered with Tune: importing this module ran rllib_muzero/__init__.py first.
    from rllib_muzero.progress import ProgressLines, status_table

    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=not args.quiet)
    failed = 0
    for name, spec, param_space in prepared:
        checkpoint = dict(spec.get("checkpoint_config") or {})
        if "checkpoint_freq" in spec:
            checkpoint["checkpoint_frequency"] = spec["checkpoint_freq"]
        if "checkpoint_at_end" in spec:
            checkpoint["checkpoint_at_end"] = spec["checkpoint_at_end"]
        if args.checkpoint_freq is not None:
            checkpoint["checkpoint_frequency"] = args.checkpoint_freq
        if args.checkpoint_at_end:
            checkpoint["checkpoint_at_end"] = True
        storage = args.storage_path or spec.get("storage_path") or spec.get("local_dir")
        storage = os.path.abspath(os.path.expanduser(storage)) if storage else None
        run_config = tune.RunConfig(
            name=name,
            stop=stop_override if stop_override is not None else spec.get("stop"),
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(**checkpoint),
            verbose=0 if args.quiet else 1,
            callbacks=[] if args.quiet else [ProgressLines()],
        )
        experiment_path = os.path.join(storage or os.path.expanduser("~/ray_results"), name)
        if args.resume and tune.Tuner.can_restore(experiment_path):
            tuner = tune.Tuner.restore(experiment_path, trainable="MuZero", resume_errored=True)
        else:
            if args.resume:
                print(f"rllib-muzero: nothing to resume at {experiment_path}; starting fresh", file=sys.stderr)
            tuner = tune.Tuner(
                "MuZero",
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    num_samples=args.num_samples if args.num_samples is not None else spec.get("num_samples", 1)),
                run_config=run_config,
            )
        with status_table():  # Tune's table with return, env steps, learner updates (rllib_muzero/progress.py)
            results = tuner.fit()
        failed += len(results.errors)
        for result in results:
            metrics = result.metrics or {}
            ret = metrics.get("env_runners", {}).get("episode_return_mean")
            print(f"{name}: {result.path}  iterations={metrics.get('training_iteration')}  "
                  f"episode_return_mean={ret}  checkpoint={result.checkpoint.path if result.checkpoint else None}")
    return 1 if failed else 0


def evaluate(args: argparse.Namespace) -> int:
    """Plays games with one or more checkpoints and reports what the agent did and believed; returns the exit code.

    Checks everything the user typed before Ray starts, evaluates (:mod:`rllib_muzero.evaluate`), prints the table
    and writes the requested files. User mistakes end as a :class:`UserError` (one line, exit code 2).
    """
    from rllib_muzero.play import EvaluationError

    try:
        return _evaluate(args)
    except EvaluationError as e:
        raise UserError(str(e)) from None


def _require_module(module: str, flag: str) -> None:
    from rllib_muzero.play import EvaluationError

    try:
        importlib.import_module(module)
    except ImportError:
        raise EvaluationError(f"{flag} needs the Python package `{module}`: pip install 'rllib-muzero[viz]'") from None


def _resolve_checkpoints(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The checkpoints to evaluate, ``[(label, path)]``; a directory given without ``--checkpoints`` stands for its
    latest checkpoint (each trial's, in an experiment directory), and the command says which one it took."""
    from rllib_muzero.checkpoints import find_checkpoints, is_checkpoint_dir, latest_checkpoints

    checkpoints = find_checkpoints(args.checkpoint_paths, args.checkpoints)
    if args.checkpoints is None:
        for path in args.checkpoint_paths:
            if not is_checkpoint_dir(path):
                for latest in latest_checkpoints(path):
                    print(f"rllib-muzero: no --checkpoints given: evaluating the latest checkpoint in {path}: "
                          f"{os.path.relpath(latest, os.path.abspath(path))}", file=sys.stderr)
    return checkpoints


def _evaluate(args: argparse.Namespace, out: Any = None) -> int:
    from rllib_muzero.checkpoints import check_muzero_checkpoint
    from rllib_muzero.evaluate import evaluate_checkpoints, summary_table, write_gifs, write_trees
    from rllib_muzero.play import EvaluationError, EvaluationOptions, EvaluationResult

    out = out or sys.stdout
    modes = [flag for flag, on in (("--only-prior", args.only_prior), ("--only-value", args.only_value),
                                   ("--random-agent", args.random_agent)) if on]
    if len(modes) > 1:
        raise EvaluationError(f"{' and '.join(modes)} exclude each other: pick one")
    mode = "prior" if args.only_prior else "value" if args.only_value else "random" if args.random_agent else "mcts"
    if args.beside_random and not (args.render or args.save_gif_as):
        raise EvaluationError("--beside-random puts a random agent's game beside each rendered game: add "
                              "--save-gif-as or --render")
    if args.beside_random and args.random_agent:
        raise EvaluationError("--beside-random and --random-agent exclude each other: --random-agent already plays "
                              "at random")
    if args.gif_every < 1:
        raise EvaluationError(f"--gif-every must be an integer >= 1 (keep every N-th frame), got {args.gif_every}")
    if not 0.0 < args.gif_scale <= 4.0:
        raise EvaluationError(f"--gif-scale must be a number in (0, 4] (1 = the env's frame size), got "
                              f"{args.gif_scale}")
    if (args.gif_every != 1 or args.gif_scale != 1.0) and not (args.render or args.save_gif_as):
        raise EvaluationError("--gif-every / --gif-scale shape the GIFs: add --save-gif-as or --render")
    for flag, value in (("--include-policy", args.include_policy), ("--include-bounds", args.include_bounds),
                        ("--smooth", args.smooth), ("--detailed-label", args.detailed_label)):
        if value and not args.plot_summary:
            raise EvaluationError(f"{flag} shapes the --plot-summary figure: add --plot-summary")
    if args.smooth is not None and args.smooth < 0:
        raise EvaluationError(f"--smooth must be >= 0 steps, got {args.smooth}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise EvaluationError(f"--num-cpus must be an integer >= 1 (CPUs for Ray), got {args.num_cpus}")
    if args.sleep is not None and not args.sleep >= 0:
        raise EvaluationError(f"--sleep must be >= 0 seconds, got {args.sleep}")
    if args.sleep and not (args.render or args.save_gif_as):
        raise EvaluationError("--sleep sets the frame duration of rendered games: add --render or --save-gif-as")
    env_config = _parse_json(args.env_config, "--env-config")
    gif_name = args.save_gif_as or ("render" if args.render else None)
    save_mcts_after = args.save_mcts_after_step if args.save_mcts_after_step is not None else (
        0 if args.save_mcts else None)
    temperatures = args.eval_temperatures if args.eval_temperatures else [0.0]
    option_kwargs = dict(num_games=args.games_per_evaluation, mode=mode, num_simulations=args.num_simulations,
                         use_exploration_noise=args.use_exploration_noise, apply_mcts_steps=args.apply_mcts_steps,
                         seed=args.seed, max_steps=args.max_steps, render=gif_name is not None,
                         save_mcts_after_step=save_mcts_after, games_per_batch=args.games_per_batch,
                         parallel=args.parallel)
    for t in temperatures:
        EvaluationOptions(**option_kwargs, temperature=t)
    if args.plot_summary:
        _require_module("matplotlib", "--plot-summary")
    if gif_name is not None:
        _require_module("PIL", "--render / --save-gif-as")
    checkpoints = _resolve_checkpoints(args)
    for _, path in checkpoints:
        check_muzero_checkpoint(path)

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    output_dir = os.path.abspath(args.output_dir or "rllib-muzero-evaluation")
    written: list[str] = []
    trees = {"dot": 0, "png": 0}
    single_gif = len(checkpoints) * len(temperatures) * args.games_per_evaluation == 1

    def on_result(result: EvaluationResult) -> None:
        s = result.summary()
        print(f"rllib-muzero: {result.label} T={s['temperature']:g}: {s['num_games']} games, return "
              f"{s['return_mean']:.2f} ± {s['return_std']:.2f}", file=sys.stderr)
        if gif_name is not None:
            written.extend(write_gifs(result, output_dir, gif_name, frame_duration_s=args.sleep or None,
                                      single=single_gif, every=args.gif_every, scale=args.gif_scale))
        if save_mcts_after is not None:
            dots, pngs = write_trees(result, output_dir)
            trees["dot"] += len(dots)
            trees["png"] += len(pngs)
        for game in result.games:  # written: free the frames and trees before the next evaluation
            game.frames = None
            game.trees_dot = {}

    results = evaluate_checkpoints(checkpoints, temperatures, env=args.env, env_config=env_config,
                                   on_result=on_result, beside_random=args.beside_random, **option_kwargs)
    print(summary_table(results), file=out)
    if args.plot_summary:
        from rllib_muzero.visualize import plot_summary

        os.makedirs(output_dir, exist_ok=True)
        written.append(plot_summary(results, os.path.join(output_dir, "summary.png"),
                                    include_policy=args.include_policy, include_bounds=args.include_bounds,
                                    smooth=args.smooth or 0, detailed_label=args.detailed_label))
    if args.output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "summary.json")
        rows = [dict(r.summary(), checkpoint=p) for r, p in
                zip(results, [p for _, p in checkpoints for _ in temperatures])]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
        written.append(path)
    print("", file=out)
    for path in written:
        print(f"wrote {path}", file=out)
    if save_mcts_after is not None:
        png_note = f" + {trees['png']} PNG" if shutil.which("dot") else " (no PNG: Graphviz `dot` not found)"
        print(f"wrote {trees['dot']} search trees as DOT{png_note} under {os.path.join(output_dir, 'mcts')}",
              file=out)
    return 0


def _add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="play games with checkpoints; compare them; plot, render (GIF) and draw search trees (DOT), headless",
        description="Plays --games-per-evaluation games with each checkpoint at each temperature and prints a "
                    "table (return, length, predicted first value vs actual discounted return). Files go to "
                    "--output-dir.")
    p.add_argument("checkpoint_paths", nargs="+", metavar="PATH",
                   help="checkpoint directories (algo.save()), or Tune trial/experiment directories: their latest "
                        "checkpoint (each trial's), or those named by --checkpoints")
    p.add_argument("--checkpoints", nargs="+", metavar="NAME",
                   help="checkpoint names inside the PATH directories, e.g. checkpoint_000003 (or just 3)")
    p.add_argument("--games-per-evaluation", type=int, default=1, metavar="N", help="games per checkpoint and "
                   "temperature (default 1); game i is reset with seed --seed + i")
    p.add_argument("--eval-temperatures", type=float, nargs="+", metavar="T",
                   help="temperatures to compare (default 0 = greedy: the most visited action); pUCT search "
                   "only: Gumbel search plays its own action")
    p.add_argument("--num-simulations", type=int, metavar="N", help="simulations per search (default: the "
                   "checkpoint's num_simulations)")
    p.add_argument("--only-prior", action="store_true", help="act on the network's prior alone (no search)")
    p.add_argument("--only-value", action="store_true",
                   help="act by one-step lookahead: argmax_a r(s,a) + gamma * v(s') (no search)")
    p.add_argument("--random-agent", action="store_true",
                   help="act uniformly at random over the legal actions (the baseline; the checkpoint gives the env)")
    p.add_argument("--use-exploration-noise", action="store_true", help="the search's training-time root noise: "
                   "Dirichlet noise on the root prior (pUCT, --only-prior) or Gumbel noise (Gumbel search)")
    p.add_argument("--apply-mcts-steps", type=int, default=1, metavar="N",
                   help="actions played from one search: the chosen one, then open-loop along the most visited path")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop each game after N steps")
    p.add_argument("--seed", type=int, default=0, help="base seed of env resets and action sampling (default 0)")
    p.add_argument("--parallel", action="store_true",
                   help="play games as Ray tasks (same results as without, for the same seed)")
    p.add_argument("--games-per-batch", type=int, default=1, metavar="N",
                   help="games played in lockstep with batched searches (default 1); results depend on it")
    p.add_argument("--render", action="store_true",
                   help="render every step (rgb_array) and save each game as a GIF (named as --save-gif-as render)")
    p.add_argument("--save-gif-as", metavar="NAME", help="save rendered games as GIFs: NAME.gif for a single game, "
                   "else NAME-<checkpoint>-T<temperature>-game<i>.gif (implies --render)")
    p.add_argument("--beside-random", action="store_true",
                   help="each GIF shows a random agent's game (same reset seed) on the left, the checkpoint's on "
                        "the right")
    p.add_argument("--gif-every", type=int, default=1, metavar="N",
                   help="keep every N-th frame in the GIFs (and the last), each shown N times as long (default 1)")
    p.add_argument("--gif-scale", type=float, default=1.0, metavar="F",
                   help="resize the GIF frames by F (default 1: the env's frame size), for smaller files")
    p.add_argument("--sleep", type=float, metavar="S",
                   help="seconds each frame shows in the GIFs (default: the env's 1/render_fps)")
    p.add_argument("--plot-summary", action="store_true",
                   help="per-step plot (summary.png): return, predicted return, value to go, predicted and search "
                        "values, search depth")
    p.add_argument("--include-policy", action="store_true", help="add the visit shares per action to the plot")
    p.add_argument("--include-bounds", action="store_true", help="add the 25-75%% band across games to the plot")
    p.add_argument("--smooth", type=int, metavar="N", help="moving average over N steps in the plot")
    p.add_argument("--detailed-label", action="store_true", help="more information in the plot's legend")
    p.add_argument("--save-mcts", action="store_true",
                   help="write every step's search tree as Graphviz DOT (and PNG where `dot` is installed)")
    p.add_argument("--save-mcts-after-step", type=int, metavar="K",
                   help="write search trees from step K on (implies --save-mcts)")
    p.add_argument("--env", help="play in another env (gym id or registered name) with the same spaces")
    p.add_argument("--env-config", help="JSON object of env_config keys set over the checkpoint's env_config (with "
                   "--env: that env's whole env_config)")
    p.add_argument("--output-dir", help="where files go (default ./rllib-muzero-evaluation); also writes "
                   "summary.json when given")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    p.set_defaults(func=evaluate)


def make_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="rllib-muzero", description="MuZero for Ray RLlib")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the experiments of a classic RLlib tuned-example YAML file with Tune")
    p.add_argument("file", help="YAML file: {name: {run: MuZero, env, stop, config}}")
    p.add_argument("--stop", help='JSON stop criteria replacing the file\'s, e.g. \'{"training_iteration": 2}\'')
    p.add_argument("--config", help="JSON object merged into each experiment's config")
    p.add_argument("--checkpoint-freq", type=int, help="checkpoint every N iterations")
    p.add_argument("--checkpoint-at-end", action="store_true", help="checkpoint when the trial stops")
    p.add_argument("--storage-path", help="where Tune writes results and checkpoints (default ~/ray_results)")
    p.add_argument("--resume", action="store_true", help="resume an interrupted experiment of the same name")
    p.add_argument("--num-samples", type=int, help="trials per experiment (Tune num_samples)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    p.add_argument("--quiet", action="store_true", help="less output (no progress table or progress lines)")
    p.set_defaults(func=train)
    _add_evaluate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        return args.func(args)
    except UserError as e:
        print(f"rllib-muzero: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
