"""See what a trained MuZero agent does and what its model believes: the Python API behind ``rllib-muzero evaluate``.

Python::

    from rllib_muzero.evaluate import evaluate, summary_table
    from rllib_muzero.visualize import plot_summary

    results = [evaluate(algo, label="iter 20", num_games=5, temperature=t) for t in (0.0, 0.5)]
    print(summary_table(results))
    plot_summary(results, "summary.png", include_policy=True)

``evaluate`` takes an :class:`~ray.rllib.algorithms.algorithm.Algorithm` (a MuZero) or a
:class:`~rllib_muzero.policy.MuZeroTorchPolicy`; the env is made from the agent's config (``env``, ``env_config``)
unless ``env=`` / ``env_config=`` override it. Options are those of :class:`~rllib_muzero.play.EvaluationOptions`.
:func:`evaluate_checkpoints` restores and evaluates checkpoints one at a time (:mod:`rllib_muzero.checkpoints` finds,
checks and restores them; its functions are importable from here too).

Where the pieces live: :mod:`rllib_muzero.play` plays the games and records them, :mod:`rllib_muzero.checkpoints`
finds and restores checkpoints, this module is the API (agents, envs, tables, files), :mod:`rllib_muzero.visualize`
draws, and :mod:`rllib_muzero.cli` is the command line::

    rllib-muzero evaluate ~/ray_results/cartpole/MuZero_CartPole-v1_0_... --checkpoints 5 10 \\
        --games-per-evaluation 10 --eval-temperatures 0 0.5 --plot-summary --include-policy --save-gif-as cartpole

Every user mistake raises :class:`~rllib_muzero.play.EvaluationError` with a one-line message.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rllib_muzero.checkpoints import (
    _first_line,
    check_muzero_checkpoint,
    find_checkpoints,
    latest_checkpoints,
    load_algorithm,
)
from rllib_muzero.play import (
    EvaluationError,
    EvaluationOptions,
    EvaluationResult,
    ObservationPipeline,
    _frame,
    check_options_for,
    run_games,
)
from rllib_muzero.tree_dot import dot_to_png
from rllib_muzero.visualize import gif_captions, resize_frames, save_gif, side_by_side

__all__ = [
    "EvaluationError",
    "EvaluationOptions",
    "EvaluationResult",
    "check_muzero_checkpoint",
    "evaluate",
    "evaluate_checkpoints",
    "find_checkpoints",
    "latest_checkpoints",
    "load_algorithm",
    "summary_table",
    "write_gifs",
    "write_trees",
]

DEFAULT_POLICY_ID = "default_policy"


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
    if env_config is None:
        config = dict(base or {})
    elif env is None:  # the agent's own env: the given keys change its env_config (e.g. episode_life off)
        config = {**(base or {}), **env_config}
    else:  # another env: its own env_config
        config = dict(env_config)
    return functools.partial(_create_env, creator, config, "rgb_array" if render else None), _env_name(spec)


def _probe_env(make_env: Callable[[], gym.Env], name: str, policy: Any, render: bool) -> tuple[gym.Space, Any, float]:
    """Builds one env to check it before playing: a gymnasium env with the policy's action count, and rgb_array
    frames when rendering. Returns its observation space, a first observation and its render fps."""
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
        env_config: with the agent's own env, keys set over the agent's ``env_config`` (``{"episode_life": False}``
            for whole Atari games); with ``env``, that env's whole ``env_config``.
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
    beside_random: bool = False,
    **option_kwargs: Any,
) -> list[EvaluationResult]:
    """Evaluates each ``(label, path)`` checkpoint (see :func:`find_checkpoints`) at each temperature, restoring one
    checkpoint at a time (Ray must be initialised). ``on_result`` sees each result as soon as it exists (e.g. to
    write and drop its frames). Every option set is validated, and every checkpoint checked, before any restore.

    ``beside_random``: also play the same games (same reset seeds, same step limit and rendering) with a uniformly
    random agent, once per checkpoint, and attach them to each result as ``baseline``, so :func:`write_gifs` shows
    the random game beside the trained one (the reference's presentation of its agents)."""
    option_sets = [EvaluationOptions(**option_kwargs, temperature=t) for t in temperatures]
    random_options = None
    if beside_random:
        first = option_sets[0]
        random_options = EvaluationOptions(num_games=first.num_games, mode="random", seed=first.seed,
                                           max_steps=first.max_steps, render=first.render,
                                           games_per_batch=first.games_per_batch, parallel=first.parallel)
    for _, path in checkpoints:
        check_muzero_checkpoint(path)
    results = []
    for label, path in checkpoints:
        algo = load_algorithm(path)
        try:
            for options in option_sets:  # what depends on the checkpoint's config, before any game
                check_options_for(algo.get_policy(), options)
            baseline = None
            if random_options is not None:
                baseline = evaluate(algo, label="random", env=env, env_config=env_config, options=random_options)
            for options in option_sets:
                result = evaluate(algo, label=label, env=env, env_config=env_config, options=options)
                result.baseline = baseline
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
               single: bool = False, every: int = 1, scale: float = 1.0) -> list[str]:
    """Writes each rendered game of ``result`` as a GIF with ``len(frames) == length + 1`` frames (the reset frame,
    then one per step), captioned with step, return and action. ``single``: the only game of the whole command,
    written as ``NAME.gif``; otherwise ``NAME-LABEL-T<temperature>-game<i>.gif``. Returns the paths.

    With ``result.baseline`` (``evaluate_checkpoints(beside_random=True)``), each GIF shows the baseline's game with
    the same index on the left and ``result``'s on the right (:func:`~rllib_muzero.visualize.side_by_side`), as
    long as the longer of the two. ``every`` > 1 keeps every ``every``-th frame (and the last), each shown ``every``
    times as long, and ``scale`` resizes the frames: both for small files (README pictures)."""
    stem = name[:-4] if name.lower().endswith(".gif") else name
    duration = frame_duration_s or 1.0 / (result.render_fps or 30.0)
    baseline = {g.game_index: g for g in result.baseline.games} if result.baseline is not None else {}
    paths = []
    for game in result.games:
        if not game.frames:
            continue
        frames, captions = resize_frames(_thin(game.frames, every), scale), _thin(gif_captions(game), every)
        other = baseline.get(game.game_index)
        if other is not None and other.frames:
            length = max(len(game.frames), len(other.frames))  # thinned on the longer game's clock: in step
            panels = []
            for trace, agent in ((other, result.baseline.label), (game, result.label)):
                kept = _thin([min(k, trace.length) for k in range(length)], every)  # an ended game holds its end
                named = gif_captions(trace, f"{agent}: ")
                panels.append((resize_frames([trace.frames[k] for k in kept], scale), [named[k] for k in kept]))
            frames, captions = side_by_side(panels), None
        if single:
            path = os.path.join(output_dir, stem + ".gif")
        else:
            suffix = f"{_file_part(result.label)}-T{result.options.temperature:g}-game{game.game_index}"
            path = os.path.join(output_dir, f"{stem}-{suffix}.gif")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        paths.append(save_gif(frames, path, frame_duration_s=duration * every, captions=captions))
    return paths


def _thin(items: list, every: int) -> list:
    """Every ``every``-th item and the last (a game's final frame always shows)."""
    if every <= 1:
        return list(items)
    return [items[k] for k in sorted(set(range(0, len(items), every)) | {len(items) - 1})]


def write_trees(result: EvaluationResult, output_dir: str, *, png: bool = True) -> tuple[list[str], list[str]]:
    """Writes the recorded search trees as ``OUTPUT/mcts/LABEL-T<temperature>/game<i>-step<t>.dot`` and, with
    ``png`` where Graphviz ``dot`` is installed, a PNG beside each. Returns (DOT paths, PNG paths)."""
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
