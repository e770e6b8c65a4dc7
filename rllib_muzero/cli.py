"""The ``rllib-muzero`` command (Ray removed its ``rllib`` command in 2.44).

``rllib-muzero train FILE.yaml`` takes the classic RLlib tuned-example format::

    experiment-name:
        run: MuZero
        env: CartPole-v1
        stop: {env_runners/episode_return_mean: 475, num_env_steps_sampled_lifetime: 30000}
        checkpoint_config: {checkpoint_frequency: 5, checkpoint_at_end: true}
        config: {...MuZeroConfig keys...}

and hands each experiment to Ray Tune. User mistakes (missing file, bad YAML, unknown or invalid config keys) end
with a one-line error and exit code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

EXPERIMENT_KEYS = {"run", "env", "stop", "config", "checkpoint_config", "checkpoint_freq", "checkpoint_at_end",
                   "num_samples", "storage_path", "local_dir"}


class UserError(Exception):
    """A mistake in what the user typed: reported as one line, without a traceback."""


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
    return experiments


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
    try:
        MuZeroConfig().update_from_dict(_first_variant(config)).validate()
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"experiment `{name}`: {e}") from None
    return config


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
    experiments = load_experiments(args.file)
    overrides = _parse_json(args.config, "--config")
    stop_override = _parse_json(args.stop, "--stop")
    prepared = [(name, spec, build_param_space(name, spec, overrides)) for name, spec in experiments.items()]

    import ray
    from ray import tune

    import rllib_muzero  # noqa: F401  (registers "MuZero" with Tune)

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
                tune_config=tune.TuneConfig(num_samples=args.num_samples or spec.get("num_samples", 1)),
                run_config=run_config,
            )
        results = tuner.fit()
        failed += len(results.errors)
        for result in results:
            metrics = result.metrics or {}
            ret = metrics.get("env_runners", {}).get("episode_return_mean")
            print(f"{name}: {result.path}  iterations={metrics.get('training_iteration')}  "
                  f"episode_return_mean={ret}  checkpoint={result.checkpoint.path if result.checkpoint else None}")
    return 1 if failed else 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rllib-muzero", description="MuZero for Ray RLlib")
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
    p.add_argument("--quiet", action="store_true", help="less output (no progress table)")
    p.set_defaults(func=train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"rllib-muzero: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
