"""See what a trained MuZero agent does and what its model believes: the Python API behind ``rllib-muzero evaluate``.

Python::

    from rllib_muzero.evaluate import evaluate, summary_table
    from rllib_muzero.visualize import plot_summary

    results = [evaluate(algo, label="iter 20", num_games=5, temperature=t) for t in (0.0, 0.5)]
    print(summary_table(results))
    plot_summary(results, "summary.png", include_policy=True)

``evaluate`` takes an :class:`~ray.rllib.algorithms.algorithm.Algorithm` (a MuZero) or a
:class:`~rllib_muzero.policy.MuZeroTorchPolicy`; the env is made from the agent's config (``env``, ``env_config``)
unless ``env=`` / ``env_config=`` override it. Options are those of
:class:`~rllib_muzero.evaluation.EvaluationOptions`.

Command line (one row per checkpoint and temperature)::

    rllib-muzero evaluate ~/ray_results/cartpole/MuZero_CartPole-v1_0_... --checkpoints 5 10 \\
        --games-per-evaluation 10 --eval-temperatures 0 0.5 --plot-summary --include-policy --save-gif-as cartpole

Checkpoints are restored with RLlib (``Algorithm.from_state`` of the checkpoint's state) after checking that they
were written by MuZero; for evaluation the restored algorithm gets no remote env runners and an empty replay.
Every user mistake raises :class:`~rllib_muzero.evaluation.EvaluationError` with a one-line message.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import pickle
import pickletools
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_muzero.evaluation import (
    EvaluationError,
    EvaluationOptions,
    EvaluationResult,
    GameTrace,
    ObservationPipeline,
    run_games,
)

__all__ = [
    "EvaluationError",
    "EvaluationOptions",
    "EvaluationResult",
    "check_muzero_checkpoint",
    "evaluate",
    "evaluate_checkpoints",
    "find_checkpoints",
    "load_algorithm",
    "summary_table",
    "write_gifs",
    "write_trees",
]

DEFAULT_POLICY_ID = "default_policy"
_CHECKPOINT_FILES = ("rllib_checkpoint.json", "algorithm_state.pkl", "algorithm_state.msgpck",
                     "class_and_ctor_args.pkl", "policy_state.pkl")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------------------------
# Finding and checking checkpoints (file system only: no Ray needed).


def _is_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in _CHECKPOINT_FILES)


def _subdirs(path: str) -> list[str]:
    try:
        return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    except OSError:
        return []


def _checkpoint_names_under(path: str) -> list[str]:
    """Names of the checkpoints in ``path`` (a trial directory) or in its subdirectories (an experiment)."""
    names = {d for d in _subdirs(path) if _is_checkpoint_dir(os.path.join(path, d))}
    for trial in _trials(path):
        names.update(d for d in _subdirs(os.path.join(path, trial)) if _is_checkpoint_dir(os.path.join(path, trial, d)))
    return sorted(names)


def _trials(path: str) -> list[str]:
    """Subdirectories of ``path`` that may hold checkpoints (not checkpoints themselves: RLlib's new-stack
    checkpoints nest component checkpoints)."""
    return [d for d in _subdirs(path) if not _is_checkpoint_dir(os.path.join(path, d))]


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _unique_labels(paths: list[str]) -> list[str]:
    """Shortest trailing path parts that tell the checkpoints apart (``checkpoint_000003``, or ``trial/checkpoint_..``
    when two trials hold checkpoints of the same name)."""
    parts = [os.path.normpath(p).split(os.sep) for p in paths]
    depth = [1] * len(paths)
    for _ in range(max((len(p) for p in parts), default=1)):
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        duplicated = {x for x in labels if labels.count(x) > 1}
        if not duplicated:
            return labels
        depth = [d + 1 if lab in duplicated else d for lab, d in zip(labels, depth)]
    return [os.path.normpath(p) for p in paths]


def find_checkpoints(paths: Sequence[str], names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Resolves the command line's checkpoints to ``[(label, absolute path)]``.

    Without ``names`` every path must be a checkpoint directory (``algo.save()``). With ``names`` every path is a
    Tune experiment or trial directory and each name (``checkpoint_000003``, or just ``3``) is looked up in it and
    in its trial subdirectories (every trial holding it is evaluated).
    """
    if not paths:
        raise EvaluationError("no checkpoint given: pass checkpoint directories, or an experiment directory and "
                              "--checkpoints NAME...")
    found: list[str] = []
    for path in paths:
        if not os.path.exists(path):
            raise EvaluationError(f"no such checkpoint or directory: {path}")
        if names is None:
            if _is_checkpoint_dir(path):
                found.append(os.path.abspath(path))
                continue
            available = _checkpoint_names_under(path) if os.path.isdir(path) else []
            if available:
                raise EvaluationError(f"{path} is not a checkpoint but holds checkpoints ({_listing(available)}): "
                                      "name them with --checkpoints NAME...")
            raise EvaluationError(f"{path} is not an RLlib checkpoint (no rllib_checkpoint.json or "
                                  "algorithm_state.pkl in it)")
        if not os.path.isdir(path):
            raise EvaluationError(f"{path} is not a directory: --checkpoints looks up names in a Tune experiment or "
                                  "trial directory")
        for name in names:
            wanted = f"checkpoint_{int(name):06d}" if name.isdigit() else name
            direct = os.path.join(path, wanted)
            if _is_checkpoint_dir(direct):
                matches = [direct]
            else:
                matches = [os.path.join(path, trial, wanted) for trial in _trials(path)
                           if _is_checkpoint_dir(os.path.join(path, trial, wanted))]
            if not matches:
                available = _checkpoint_names_under(path)
                hint = f"available: {_listing(available)}" if available else "it holds no checkpoints"
                raise EvaluationError(f"checkpoint `{name}` not found in {path}; {hint}")
            found.extend(os.path.abspath(m) for m in matches)
    found = list(dict.fromkeys(found))
    return list(zip(_unique_labels(found), found))


def _peek_algorithm_class(state_file: str, max_ops: int = 5000) -> tuple[str, str] | None:
    """``(module, name)`` of the ``algorithm_class`` entry of a pickled old-stack algorithm state, read from the first
    pickle opcodes without loading the state (which holds the replay buffer); None when it cannot be told."""
    try:
        with open(state_file, "rb") as f:
            strings: list[str] = []
            after_key = False
            for k, (op, arg, _) in enumerate(pickletools.genops(f)):
                if k >= max_ops:
                    return None
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    if after_key:
                        strings.append(arg)
                    elif arg == "algorithm_class":
                        after_key = True
                elif after_key and op.name in ("STACK_GLOBAL", "GLOBAL"):
                    if op.name == "GLOBAL":
                        module, _, name = str(arg).partition(" ")
                    elif len(strings) >= 2:
                        module, name = strings[-2], strings[-1]
                    else:
                        return None
                    # A class pickled by value (cloudpickle rebuilds it, e.g. Tune's trainable wrapper) starts with
                    # cloudpickle's own helpers: tell at load time.
                    return None if "cloudpickle" in module else (module, name)
                elif after_key and op.name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET"):
                    return None  # pickled by value or in another layout: tell at load time
    except (OSError, ValueError, pickle.UnpicklingError):
        return None
    return None


def _require_muzero(cls: Any, path: str, name: str | None = None) -> None:
    from rllib_muzero.algorithm import MuZero

    if not (isinstance(cls, type) and issubclass(cls, MuZero)):
        name = name or getattr(cls, "__name__", repr(cls))
        raise EvaluationError(f"{path} is a checkpoint of {name}, not MuZero: evaluate plays MuZero checkpoints only")


def check_muzero_checkpoint(path: str) -> None:
    """Raises EvaluationError unless ``path`` is an RLlib Algorithm checkpoint written by MuZero (or a subclass).

    The algorithm class is read from the checkpoint's metadata (new API stack: ``class_and_ctor_args.pkl``; old
    stack: the first entry of ``algorithm_state.pkl``) without restoring anything.
    """
    ctor_file = os.path.join(path, "class_and_ctor_args.pkl")
    if os.path.exists(ctor_file):  # only RLlib's new API stack writes it; MuZero runs on the old stack
        try:
            with open(ctor_file, "rb") as f:
                cls = pickle.load(f).get("class")
        except Exception as e:  # a class that cannot be imported, a damaged file, ...
            raise EvaluationError(f"{path}: cannot read the checkpoint's algorithm class ({_first_line(e)})") from None
        _require_muzero(cls, path)
        return
    from ray.rllib.utils.checkpoints import get_checkpoint_info

    try:
        info = get_checkpoint_info(path)
    except Exception as e:
        raise EvaluationError(f"{path} is not a valid RLlib checkpoint: {_first_line(e)}") from None
    if info.get("type") != "Algorithm":
        raise EvaluationError(f"{path} is a {info.get('type')} checkpoint; evaluate needs an Algorithm checkpoint "
                              "(written by algo.save() or Tune)")
    if info.get("format") != "cloudpickle":
        return  # told at load time
    peeked = _peek_algorithm_class(str(info["state_file"]))
    if peeked is None:
        return
    module, name = peeked
    try:
        cls = getattr(importlib.import_module(module), name.split(".")[0])
        for part in name.split(".")[1:]:
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as e:
        raise EvaluationError(f"{path} is a checkpoint of {module}.{name}, which cannot be imported here: "
                              f"{_first_line(e)}") from None
    _require_muzero(cls, path, name)


def load_algorithm(path: str) -> Any:
    """Restores a MuZero checkpoint for evaluation (Ray must be initialised): checked first
    (:func:`check_muzero_checkpoint`), then built with no remote env runners, one env, no evaluation runners and an
    empty replay buffer (evaluation needs the networks, the env settings and the observation filters only)."""
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.utils.checkpoints import get_checkpoint_info

    check_muzero_checkpoint(path)
    try:
        state = Algorithm._checkpoint_info_to_algorithm_state(get_checkpoint_info(path))
    except Exception as e:
        raise EvaluationError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    _require_muzero(state.get("algorithm_class"), path)
    extra = state.get("muzero")
    if isinstance(extra, dict) and "replays" in extra:
        state["muzero"] = dict(extra, replays={})
    config = state.get("config")
    if isinstance(config, AlgorithmConfig):
        config = config.copy(copy_frozen=False)
        config.env_runners(num_env_runners=0, num_envs_per_env_runner=1, create_local_env_runner=True)
        config.evaluation(evaluation_num_env_runners=0)
    elif isinstance(config, dict):
        config = dict(config, num_env_runners=0, num_envs_per_env_runner=1, create_local_env_runner=True,
                      evaluation_num_env_runners=0)
    state["config"] = config
    return Algorithm.from_state(state)


# ----------------------------------------------------------------------------------------------------------------------
# Env and observations.


def _create_env(creator: Callable, env_config: dict, render_mode: str | None) -> gym.Env:
    """Module level (picklable for Ray tasks): RLlib's env creator with an EnvContext, plus ``render_mode``."""
    from ray.rllib.env.env_context import EnvContext

    config = dict(env_config)
    if render_mode is not None:
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame-rendered envs: no audio / display device needed
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        config["render_mode"] = render_mode
    return creator(EnvContext(config, worker_index=0, num_workers=0))


def _env_name(spec: Any) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))


def _env_factory(algo: Any, policy: Any, env: Any, env_config: dict | None,
                 render: bool) -> tuple[Callable[[], gym.Env], str]:
    from ray.rllib.algorithms.algorithm import Algorithm

    if env is None and algo is not None:
        spec, creator, base = algo.config.env, algo.env_creator, algo.config.env_config
    else:
        spec = env if env is not None else policy.config.get("env")
        if spec is None:
            raise EvaluationError("no env to play in: the agent's config names none; pass `env=` (--env)")
        _, creator = Algorithm._get_env_id_and_creator(spec, algo.config if algo is not None else policy.config)
        base = algo.config.env_config if algo is not None else policy.config.get("env_config")
    if creator is None:
        raise EvaluationError("no env to play in: the agent's config names none; pass `env=` (--env)")
    config = dict(base or {}) if env_config is None else dict(env_config)
    return functools.partial(_create_env, creator, config, "rgb_array" if render else None), _env_name(spec)


def _probe_env(make_env: Callable[[], gym.Env], name: str, policy: Any, render: bool) -> tuple[gym.Space, Any, float]:
    """Builds one env to check it before playing: a gymnasium env with the policy's action count, and rgb_array
    frames when rendering. Returns its observation space, a first observation and its render fps."""
    from rllib_muzero.evaluation import _frame

    try:
        env = make_env()
    except Exception as e:
        if render:
            raise EvaluationError(f"env {name!r} cannot be made with render_mode='rgb_array' ({_first_line(e)}); "
                                  "--render / --save-gif-as need an env that renders rgb_array frames") from None
        raise EvaluationError(f"cannot make env {name!r}: {_first_line(e)}") from None
    try:
        if not isinstance(env, gym.Env):
            raise EvaluationError(f"env {name!r} is a {type(env).__name__}; evaluate plays single-agent gymnasium "
                                  "envs")
        n = int(policy.action_space.n)
        if not isinstance(env.action_space, gym.spaces.Discrete) or int(env.action_space.n) != n:
            raise EvaluationError(f"env {name!r} has action space {env.action_space}; the policy acts in "
                                  f"Discrete({n})")
        if render:
            mode = getattr(env, "render_mode", None)
            if mode != "rgb_array":
                raise EvaluationError(f"env {name!r} cannot render rgb_array frames (its render_mode is {mode!r}); "
                                      "--render / --save-gif-as need an env that supports render_mode='rgb_array'")
        obs, _ = env.reset(seed=0)
        if render:
            try:
                _frame(env)
            except EvaluationError:
                raise
            except Exception as e:
                raise EvaluationError(f"env {name!r} cannot render rgb_array frames: {_first_line(e)}") from None
        fps = float((env.metadata or {}).get("render_fps") or 30.0)
        return env.observation_space, obs, fps
    finally:
        env.close()


def _observation_pipeline(algo: Any, policy: Any, policy_id: str, obs_space: gym.Space) -> ObservationPipeline | None:
    """The env runner's preprocessor and observation filter (an Algorithm's local runner), or RLlib's default
    preprocessor for the space (a bare policy: no filter state is known then)."""
    from ray.rllib.models import ModelCatalog
    from ray.rllib.models.preprocessors import NoPreprocessor
    from ray.rllib.utils.filter import NoFilter

    preprocessor = obs_filter = None
    runner = getattr(algo, "env_runner", None) if algo is not None else None
    if runner is not None:
        preprocessor = (getattr(runner, "preprocessors", None) or {}).get(policy_id)
        obs_filter = (getattr(runner, "filters", None) or {}).get(policy_id)
    elif not policy.config.get("_disable_preprocessor_api"):
        preprocessor = ModelCatalog.get_preprocessor_for_space(obs_space, policy.config.get("model"))
    if isinstance(preprocessor, NoPreprocessor):
        preprocessor = None
    if isinstance(obs_filter, NoFilter):
        obs_filter = None
    if preprocessor is None and obs_filter is None:
        return None
    return ObservationPipeline(preprocessor, obs_filter)


# ----------------------------------------------------------------------------------------------------------------------
# The API.


def _split_agent(agent: Any, policy_id: str) -> tuple[Any, Any]:
    from ray.rllib.algorithms.algorithm import Algorithm

    from rllib_muzero.policy import MuZeroTorchPolicy

    algo = agent if isinstance(agent, Algorithm) else None
    policy = agent.get_policy(policy_id) if algo is not None else agent
    if not isinstance(policy, MuZeroTorchPolicy):
        raise EvaluationError(f"evaluate needs a MuZero Algorithm or MuZeroTorchPolicy, got "
                              f"{type(agent).__name__} (policy {type(policy).__name__})")
    return algo, policy


def evaluate(
    agent: Any,
    *,
    label: str | None = None,
    env: Any = None,
    env_config: dict | None = None,
    policy_id: str = DEFAULT_POLICY_ID,
    options: EvaluationOptions | None = None,
    **option_kwargs: Any,
) -> EvaluationResult:
    """Plays games with a MuZero ``Algorithm`` or ``MuZeroTorchPolicy`` and records what happened and what the model
    believed at every step.

    Args:
        agent: a MuZero Algorithm (its policy ``policy_id``, env creator, env config, preprocessor and observation
            filter are used) or a MuZeroTorchPolicy (env and env config from its config).
        label: name of this evaluation in tables and plots (default: the agent's class name).
        env: another env (gym id, registered name or class) to play in; it must have the same spaces.
        env_config: replaces the agent's ``env_config``.
        policy_id: the policy of a (multi-agent) Algorithm to play with.
        options: an :class:`EvaluationOptions`; or give its fields as keyword arguments (``num_games=5,
            temperature=0.5, mode="prior", render=True, ...``).

    Returns:
        An :class:`EvaluationResult`: ``summary()`` numbers and one :class:`GameTrace` per game.

    Raises:
        EvaluationError: bad options, an env that cannot be made, has other spaces, or cannot render when asked to.
    """
    if options is None:
        options = EvaluationOptions(**option_kwargs)
    elif option_kwargs:
        raise TypeError("pass either `options` or option keyword arguments, not both")
    algo, policy = _split_agent(agent, policy_id)
    make_env, env_name = _env_factory(algo, policy, env, env_config, options.render)
    obs_space, first_obs, fps = _probe_env(make_env, env_name, policy, options.render)
    obs_fn = _observation_pipeline(algo, policy, policy_id, obs_space)
    expected = tuple(policy.observation_space.shape)
    got = tuple(np.shape(obs_fn(first_obs) if obs_fn else first_obs))
    if got != expected:
        raise EvaluationError(f"env {env_name!r} gives observations of shape {got}; the policy expects {expected}")
    label = label or type(agent).__name__
    title = f"{label} T={options.temperature:g}: "
    games = run_games(policy, make_env, options, obs_fn=obs_fn, title=title)
    sims = (options.num_simulations or int(policy.config["num_simulations"])) if options.mode == "mcts" else 0
    return EvaluationResult(label=label, options=options, discount=float(policy.config["gamma"]),
                            num_simulations=sims, games=games, render_fps=fps)


def evaluate_checkpoints(
    checkpoints: Sequence[tuple[str, str]],
    temperatures: Sequence[float] = (0.0,),
    *,
    env: Any = None,
    env_config: dict | None = None,
    on_result: Callable[[EvaluationResult], None] | None = None,
    **option_kwargs: Any,
) -> list[EvaluationResult]:
    """Evaluates each ``(label, path)`` checkpoint (see :func:`find_checkpoints`) at each temperature, restoring one
    checkpoint at a time (Ray must be initialised). ``on_result`` sees each result as soon as it exists (e.g. to
    write and drop its frames). Every option set is validated, and every checkpoint checked, before any restore."""
    option_sets = [EvaluationOptions(**option_kwargs, temperature=t) for t in temperatures]
    for _, path in checkpoints:
        check_muzero_checkpoint(path)
    results = []
    for label, path in checkpoints:
        algo = load_algorithm(path)
        try:
            for options in option_sets:
                result = evaluate(algo, label=label, env=env, env_config=env_config, options=options)
                if on_result is not None:
                    on_result(result)
                results.append(result)
        finally:
            algo.stop()
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Reporting.


def _mode_text(options: EvaluationOptions) -> str:
    text = options.mode
    if options.use_exploration_noise:
        text += "+noise"
    if options.apply_mcts_steps > 1:
        text += f" x{options.apply_mcts_steps}"
    return text


def _number(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_table(results: Sequence[EvaluationResult]) -> str:
    """The comparison table: one row per evaluation, with a legend line."""
    header = ["checkpoint", "T", "mode", "sims", "games", "return (mean ± std)", "length", "v(s0)", "search v(s0)",
              "G0"]
    rows = []
    for r in results:
        s = r.summary()
        rows.append([s["label"], f"{s['temperature']:g}", _mode_text(r.options), str(s["num_simulations"] or "-"),
                     str(s["num_games"]), f"{s['return_mean']:.2f} ± {s['return_std']:.2f}",
                     f"{s['length_mean']:.1f}", _number(s["network_value_s0_mean"]),
                     _number(s["search_value_s0_mean"]), _number(s["discounted_return_mean"])])
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    discounts = ", ".join(f"{d:g}" for d in sorted({r.discount for r in results}))
    lines.append("")
    lines.append(f"v(s0): network value of the first observation; search v(s0): search value at the first step; "
                 f"G0: actual discounted return from the start (gamma {discounts}); means over games.")
    return "\n".join(lines)


def _file_part(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "run"


def write_gifs(result: EvaluationResult, output_dir: str, name: str, *, frame_duration_s: float | None = None,
               single: bool = False) -> list[str]:
    """Writes each rendered game of ``result`` as a GIF with ``len(frames) == length + 1`` frames (the reset frame,
    then one per step), captioned with step, return and action. ``single``: the only game of the whole command,
    written as ``NAME.gif``; otherwise ``NAME-LABEL-T<temperature>-game<i>.gif``. Returns the paths."""
    from rllib_muzero.visualize import gif_captions, save_gif

    stem = name[:-4] if name.lower().endswith(".gif") else name
    duration = frame_duration_s or 1.0 / (result.render_fps or 30.0)
    paths = []
    for game in result.games:
        if not game.frames:
            continue
        if single:
            path = os.path.join(output_dir, stem + ".gif")
        else:
            suffix = f"{_file_part(result.label)}-T{result.options.temperature:g}-game{game.game_index}"
            path = os.path.join(output_dir, f"{stem}-{suffix}.gif")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        paths.append(save_gif(game.frames, path, frame_duration_s=duration, captions=gif_captions(game)))
    return paths


def write_trees(result: EvaluationResult, output_dir: str, *, png: bool = True) -> tuple[list[str], list[str]]:
    """Writes the recorded search trees as ``OUTPUT/mcts/LABEL-T<temperature>/game<i>-step<t>.dot`` and, with
    ``png`` where Graphviz ``dot`` is installed, a PNG beside each. Returns (DOT paths, PNG paths)."""
    from rllib_muzero.visualize import dot_to_png

    folder = os.path.join(output_dir, "mcts", f"{_file_part(result.label)}-T{result.options.temperature:g}")
    dots, pngs = [], []
    for game in result.games:
        for step, text in sorted(game.trees_dot.items()):
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"game{game.game_index}-step{step:04d}.dot")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            dots.append(path)
            if png:
                out = dot_to_png(path)
                if out is not None:
                    pngs.append(out)
    return dots, pngs


def _drop_frames(games: Sequence[GameTrace]) -> None:
    for game in games:
        game.frames = None
        game.trees_dot = {}


# ----------------------------------------------------------------------------------------------------------------------
# The command line (called by rllib_muzero.cli with the parsed arguments).


def _require_module(module: str, flag: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise EvaluationError(f"{flag} needs the Python package `{module}`: pip install 'rllib-muzero[viz]'") from None


def run_command(args: Any, out: Any = None) -> int:
    """``rllib-muzero evaluate``: checks everything the user typed before Ray starts, evaluates, prints the table
    and writes the requested files. Returns the exit code; raises EvaluationError for user mistakes."""
    out = out or sys.stdout
    if args.only_prior and args.only_value:
        raise EvaluationError("--only-prior and --only-value exclude each other: pick one")
    mode = "prior" if args.only_prior else "value" if args.only_value else "mcts"
    for flag, value in (("--include-policy", args.include_policy), ("--include-bounds", args.include_bounds),
                        ("--smooth", args.smooth), ("--detailed-label", args.detailed_label)):
        if value and not args.plot_summary:
            raise EvaluationError(f"{flag} shapes the --plot-summary figure: add --plot-summary")
    if args.smooth is not None and args.smooth < 0:
        raise EvaluationError(f"--smooth must be >= 0 steps, got {args.smooth}")
    if args.sleep is not None and not args.sleep >= 0:
        raise EvaluationError(f"--sleep must be >= 0 seconds, got {args.sleep}")
    if args.sleep and not (args.render or args.save_gif_as):
        raise EvaluationError("--sleep sets the frame duration of rendered games: add --render or --save-gif-as")
    from rllib_muzero.cli import _parse_json  # the command's own JSON-option parser

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
    checkpoints = find_checkpoints(args.checkpoint_paths, args.checkpoints)
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
                                      single=single_gif))
        if save_mcts_after is not None:
            dots, pngs = write_trees(result, output_dir)
            trees["dot"] += len(dots)
            trees["png"] += len(pngs)
        _drop_frames(result.games)

    results = evaluate_checkpoints(checkpoints, temperatures, env=args.env, env_config=env_config,
                                   on_result=on_result, **option_kwargs)
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
