"""Environment creation for MuZero: env ids old and new, and the reference's env options as gymnasium wrappers.

Two entry points, both used by the algorithm:

- :func:`make_env_creator` ``(env_specifier, config) -> (env_id, creator)`` is what
  ``MuZero._get_env_id_and_creator`` returns. It resolves ``config.env`` like RLlib does (a Tune-registered name, a
  gymnasium id, a class or a class path), also accepts the legacy ids of the reference implementation
  (``Pong-ramNoFrameskip-v4``, ``LunarLander-v2``, ...; see :func:`resolve_env_id`), and returns a creator that strips
  the MuZero env options from RLlib's ``EnvContext``, builds the env from the rest and applies the wrappers.
- :func:`validate_env_options` ``(env, env_config)`` is what ``MuZeroConfig.validate()`` calls: type and range checks of
  the options, and ALE-only options refused on envs that are not Atari, without building an env.

The options live in ``env_config`` next to the user's own env kwargs; :data:`ENV_OPTIONS` lists them (type, default,
meaning). Unknown keys are never rejected: they are the env's own kwargs (``gym.make(id, **rest)``). The option names
are reserved: the base creator never sees them.

Wrappers, innermost first (the order of the reference's ``wrap_game``; each only when its option asks for it):

====================  =====================================  =====================================================
option                wrapper                                 note
====================  =====================================  =====================================================
``max_episode_steps`` ``gym.make(max_episode_steps=)`` /      counts base-env steps (frames for ``NoFrameskip`` ids)
                      gymnasium ``TimeLimit``
``noop_reset``        :class:`NoopReset` (own)                 raw NOOP steps after a real reset
``sticky_actions``    :class:`RepeatAction` (own)              one agent step = N base-env steps
``episode_life``      :class:`EpisodicLife` (own)              sees truncations from below: a time limit resets
``fire_reset``        :class:`FireReset` (own)                 also after a lost life (above ``episode_life``)
``norm_states``       gymnasium ``TransformObservation``      float32 in [0, 1]
``stack_states``      gymnasium ``FrameStackObservation``     + ``FlattenObservation`` for 1-D observations
``clip_rewards``      gymnasium ``ClipReward(-1, 1)``
``avoid_repeat``      :class:`AvoidRepeat` (own)               counts agent steps
====================  =====================================  =====================================================

The own wrappers exist because neither gymnasium 1.2 nor ale-py 0.12 has a standalone equivalent: gymnasium's
``AtariPreprocessing`` has no-op starts and life-loss termination but only inside its image pipeline (resize,
grayscale), unusable for RAM observations; ``StickyAction`` is ALE's *stochastic* stickiness and
``MaxAndSkipObservation`` max-pools the last two observations, meaningless for RAM bytes.

Randomness: :class:`NoopReset` and :class:`AvoidRepeat` draw from the env's own ``np_random``, which
``reset(seed=...)`` seeds; no wrapper touches a global RNG.

MinAtar (Young & Tian 2019, ``pip install "rllib-muzero[minatar]"``): importing this module registers the gymnasium
ids ``MinAtar/<Game>-v0`` (all 6 actions) and ``MinAtar/<Game>-v1`` (the game's minimal action set) for Asterix,
Breakout, Freeway, Seaquest and SpaceInvaders, built as :class:`MinAtarEnv` (minatar 1.0.15 registers no gymnasium
ids itself, and its own optional ``minatar.gym`` env observes ``bool`` arrays). ``config.env`` can name them like any
gymnasium id; without minatar installed, :func:`check_env_id` refuses them naming the extra to install.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import ClipReward, FlattenObservation, FrameStackObservation, TimeLimit, TransformObservation
from ray.rllib.env.env_context import EnvContext
from ray.tune.registry import ENV_CREATOR, _global_registry

from rllib_muzero.columns import INFO_EXECUTED_ACTION

logger = logging.getLogger(__name__)

EnvCreator = Callable[[EnvContext], Any]

NOOP_ACTION = 0  # ALE's minimal action sets always start with NOOP
FIRE_ACTION = 1  # ... and put FIRE second in games that have it
AVOID_REPEAT_PATIENCE = 500  # reference README: "if no reward is observed for 500 steps"
AVOID_REPEAT_PROBABILITY = 0.05  # reference README: "a 5% chance of random action"


# ---------------------------------------------------------------------------------------------------- the options
def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not _is_bool(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not _is_bool(value)


def _int_at_least(minimum: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and value >= minimum


def _none_or_int_at_least(minimum: int) -> Callable[[Any], bool]:
    return lambda value: value is None or (_is_int(value) and value >= minimum)


def _is_state_range(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value):
        return False
    low, high = (float(v) for v in value)
    return math.isfinite(low) and math.isfinite(high) and low < high


@dataclass(frozen=True)
class EnvOption:
    """One MuZero env option of ``env_config``: its default, what :func:`validate_env_options` accepts, its meaning."""

    default: Any
    accepted: str  # for messages: "expected <accepted>"
    meaning: str
    check: Callable[[Any], bool]
    needs_ale: bool = False  # only meaningful for Atari (ALE) envs


ENV_OPTIONS: dict[str, EnvOption] = {
    "clip_rewards": EnvOption(
        False, "a bool", "Clip every reward to [-1, 1] (gymnasium ClipReward; the reference takes the sign, the "
        "same for integer rewards).", _is_bool),
    "stack_states": EnvOption(
        1, "an integer >= 1", "Observe the last N observations stacked, oldest first; the first observation of an "
        "episode pads the stack. 1-D observations are flattened to (N * d,) so the FC network takes them.",
        _int_at_least(1)),
    "state_range": EnvOption(
        None, "None or [low, high], two finite numbers with low < high", "The value range of every observation "
        "feature, e.g. [0, 255] for Atari RAM; used by `norm_states`.", _is_state_range),
    "norm_states": EnvOption(
        False, "a bool (True needs `state_range`)", "Map features from `state_range` to [0, 1] as float32, "
        "clipping values outside the range.", _is_bool),
    "max_episode_steps": EnvOption(
        None, "None or an integer >= 1", "Override the env's time limit, in base-env steps (frames for "
        "NoFrameskip ids, before `sticky_actions`). Ends an episode by truncation, not termination. For a gym id "
        "it replaces the registered limit; around other creators it adds a TimeLimit (which can only shorten one the "
        "env already has).", _none_or_int_at_least(1)),
    "sticky_actions": EnvOption(
        1, "an integer >= 1", "Repeat every action N times, summing the rewards (the reference's meaning, a fixed "
        "frame skip; not ALE's random `repeat_action_probability`). Stops early at the end of an episode.",
        _int_at_least(1)),
    "episode_life": EnvOption(
        False, "a bool", "Atari: a lost life ends the trajectory for the learner (terminated=True, no bootstrap) "
        "but not the game: the next reset continues it with a NOOP. Games without a lives counter (Pong) count a "
        "negative reward as a lost life, as the reference does for Pong. A real game over or a truncation resets.",
        _is_bool, needs_ale=True),
    "fire_reset": EnvOption(
        False, "a bool", "Atari: press FIRE (then action 2, as the reference does) after every reset, including "
        "the pseudo-reset after a lost life; needs a game whose action 1 is FIRE.", _is_bool, needs_ale=True),
    "noop_reset": EnvOption(
        False, "a bool", "Atari: after a real reset take a random number of NOOPs in [0, `noop_max`], drawn from "
        "the env's np_random (seeded by reset(seed=...)).", _is_bool, needs_ale=True),
    "noop_max": EnvOption(
        30, "an integer >= 0", "Most NOOPs `noop_reset` takes.", _int_at_least(0)),
    "avoid_repeat": EnvOption(
        False, "a bool", f"After {AVOID_REPEAT_PATIENCE} agent steps without a nonzero reward, replace each action "
        f"by a uniformly random one with probability {AVOID_REPEAT_PROBABILITY} (env np_random) until a reward comes. "
        "Needs a Discrete action space.", _is_bool),
}
"""The MuZero env options of ``env_config`` (the reference's "Environment arguments"), by name."""


def env_options(env_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every MuZero env option's value in ``env_config``, defaults filled in (not validated)."""
    env_config = env_config or {}
    return {name: env_config.get(name, option.default) for name, option in ENV_OPTIONS.items()}


def split_env_config(env_config: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(muzero_options, rest)``: the MuZero env options given in ``env_config`` and the env's own kwargs."""
    env_config = dict(env_config or {})
    options = {k: v for k, v in env_config.items() if k in ENV_OPTIONS}
    rest = {k: v for k, v in env_config.items() if k not in ENV_OPTIONS}
    return options, rest


def _fail(option: str, value: Any, accepted: str) -> None:
    raise ValueError(f"Invalid MuZero env option `{option}`={value!r} (in `env_config`): expected {accepted}.")


def validate_env_options(env: Any, env_config: Mapping[str, Any] | None) -> None:
    """Checks the MuZero env options in ``env_config``; raises ``ValueError`` naming the option and what is accepted.

    Args:
        env: ``config.env``: a string id (Tune-registered, gymnasium or legacy), an env class, a callable or None.
            For a gymnasium or legacy id the ALE-only options (``episode_life``, ``fire_reset``, ``noop_reset``) are
            checked here from the id's registration, without building the env; for anything else the creator checks
            them when it builds the env (also a ``ValueError``).
        env_config: ``config.env_config``. Keys that are no MuZero option are left alone (the env's own kwargs).
    """
    if isinstance(env, str):
        check_env_id(env)
    if env_config is None:
        return
    if not isinstance(env_config, Mapping):
        raise ValueError(f"Invalid MuZero config `env_config`={env_config!r}: expected a dict of env options and "
                         "env kwargs.")
    for name, option in ENV_OPTIONS.items():
        if name in env_config and not option.check(env_config[name]):
            _fail(name, env_config[name], option.accepted)
    values = env_options(env_config)
    if values["norm_states"] and values["state_range"] is None:
        _fail("norm_states", True, "`state_range`=[low, high] as well: normalisation maps that range to [0, 1]")
    ale_options = [name for name, option in ENV_OPTIONS.items() if option.needs_ale and values[name]]
    if ale_options and isinstance(env, str) and is_ale_env_id(env) is False:
        name = ale_options[0]
        _fail(name, values[name], f"False for `{env}`, which is not an Atari (ALE) env: `{name}` needs the ALE's "
              "lives and action meanings")
    if isinstance(env, str):
        _, legacy_kwargs = resolve_env_id(env)
        for key, value in legacy_kwargs.items():
            if key in env_config and env_config[key] != value:
                raise ValueError(f"Invalid env kwarg `{key}`={env_config[key]!r} (in `env_config`): the legacy id "
                                 f"`{env}` means {key}={value!r}; drop `{key}` or use the modern id.")


# ---------------------------------------------------------------------------------------------------- env ids
_LEGACY_IDS = {"LunarLander-v2": "LunarLander-v3"}  # gymnasium 1.x removed v2 (it raises DeprecatedEnv)
# gym's `<Game>-ram[NoFrameskip|Deterministic]-v{0,4}` and ale-py 0.7/0.8's `ALE/<Game>-ram-v5`: the same game with
# obs_type="ram" in ale-py >= 0.9.
_RAM_ID = re.compile(r"^(?P<ns>ALE/)?(?P<game>[A-Za-z0-9]+)-ram(?P<variant>NoFrameskip|Deterministic)?-v(?P<v>\d+)$")


def resolve_env_id(env_id: str) -> tuple[str, dict[str, Any]]:
    """Maps a legacy gym id of the reference to ``(modern gymnasium id, kwargs for gym.make)``; others unchanged.

    >>> resolve_env_id("Pong-ramNoFrameskip-v4")
    ('PongNoFrameskip-v4', {'obs_type': 'ram'})
    >>> resolve_env_id("LunarLander-v2")
    ('LunarLander-v3', {})
    """
    if env_id in _LEGACY_IDS:
        return _LEGACY_IDS[env_id], {}
    match = _RAM_ID.match(env_id)
    if match:
        return f"{match['ns'] or ''}{match['game']}{match['variant'] or ''}-v{match['v']}", {"obs_type": "ram"}
    return env_id, {}


@functools.cache
def _register_ale_envs() -> bool:
    """Registers ale-py's Atari ids with gymnasium (every process that builds envs needs it); False without ale-py."""
    try:
        import ale_py
    except ImportError:
        return False
    gym.register_envs(ale_py)
    return True


def _gym_spec(env_id: str) -> gym.envs.registration.EnvSpec | None:
    module, _, name = env_id.rpartition(":")
    if module:  # gymnasium's "module:EnvId-v0" form: the module registers the id on import
        try:
            importlib.import_module(module)
        except ImportError:
            return None
    _register_ale_envs()
    try:
        return gym.spec(name)
    except gym.error.Error:
        return None


def _is_gym_id(env_id: str) -> bool:
    """RLlib's rule: a string with a dot is a class path, except gymnasium's ``module.sub:EnvId-v0`` form."""
    return ":" in env_id or "." not in env_id


def check_env_id(env_id: str) -> None:
    """Raises ``ValueError`` for a string env that is neither Tune-registered, an importable class path, nor a
    gymnasium id (legacy ids included), with the closest known ids, so a typo fails before any env runner starts."""
    if _global_registry.contains(ENV_CREATOR, env_id):
        return
    if not _is_gym_id(env_id):
        check_env_class_path(env_id)
        return
    modern = resolve_env_id(env_id)[0]
    spec = _gym_spec(modern)
    if spec is not None:
        if spec.entry_point == MINATAR_ENTRY_POINT and not minatar_available():
            raise ValueError(f"`{env_id}` is a MinAtar game and minatar is not installed: "
                             f"`{MINATAR_INSTALL}`.")
        return
    known = sorted(gym.registry.keys())
    close = difflib.get_close_matches(modern, known, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown env `{env_id}`: not registered with Tune (ray.tune.register_env), not a class path "
                     f"and not a gymnasium id.{hint} Atari ids need `pip install \"rllib-muzero[atari]\"`, "
                     "LunarLander `pip install \"rllib-muzero[box2d]\"`, MinAtar games (`MinAtar/Breakout-v1`, "
                     f"...) `{MINATAR_INSTALL}`.")


def check_env_class_path(path: str) -> None:
    """Imports a ``module.EnvClass`` path as RLlib will in every env runner; raises a one-line ``ValueError`` naming
    the module or attribute and the import error.

    RLlib only builds the class inside the env runners and reports a failure there as a multi-line "The env string
    you provided ... is:" message (a CLI showing its first line showed nothing useful); importing here costs what the
    driver's own env probe (``check_env_spaces``) costs anyway.
    """
    check_import_path("env", path, "a Tune-registered name, a gymnasium id or an importable `module.EnvClass` path")


def check_import_path(option: str, path: str, accepted: str) -> None:
    """Refuses a ``module.Name`` path (config option ``option``) that does not import, naming the module or the
    missing attribute and the import error in one line (``Invalid MuZero config `option`=path: expected ...``)."""
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while importing
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"Invalid MuZero config `{option}`={path!r}: expected {accepted}; importing module "
                         f"`{module_name}` failed: {type(error).__name__}: {detail}.") from None
    if not hasattr(module, attribute):
        raise ValueError(f"Invalid MuZero config `{option}`={path!r}: expected {accepted}; module `{module_name}` has "
                         f"no attribute `{attribute}`.")


def is_ale_env_id(env_id: str) -> bool | None:
    """Whether a string ``config.env`` names an Atari (ALE) env: True / False, or None when the id alone can't tell.

    None for Tune-registered names and class paths (the creator checks the built env instead) and for ids gymnasium
    does not know (building the env will fail with gymnasium's own error).
    """
    if _global_registry.contains(ENV_CREATOR, env_id) or not _is_gym_id(env_id):
        return None
    spec = _gym_spec(resolve_env_id(env_id)[0])
    if spec is None:
        return None
    entry_point = spec.entry_point
    where = entry_point if isinstance(entry_point, str) else getattr(entry_point, "__module__", "")
    return where.startswith("ale_py")


# ---------------------------------------------------------------------------------------------------- MinAtar
MINATAR_GAMES = {"Asterix": "asterix", "Breakout": "breakout", "Freeway": "freeway", "Seaquest": "seaquest",
                 "SpaceInvaders": "space_invaders"}
"""MinAtar's games: the name in the gymnasium id (``MinAtar/<name>-v1``) -> minatar's module name."""
MINATAR_ENTRY_POINT = "rllib_muzero.envs:MinAtarEnv"
MINATAR_INSTALL = 'pip install "rllib-muzero[minatar]"'
# One colour per channel (channel c is drawn where it is set, later channels on top), background black.
_MINATAR_PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)], dtype=np.uint8)


def minatar_available() -> bool:
    """Whether the ``minatar`` package can be imported (without importing it: it pulls in matplotlib and seaborn)."""
    return importlib.util.find_spec("minatar") is not None


def _import_minatar() -> Any:
    try:
        import minatar
    except ImportError as error:
        raise ImportError(f"MinAtar games need the minatar package: `{MINATAR_INSTALL}`.") from error
    return minatar


class MinAtarEnv(gym.Env):
    """A MinAtar game (Young & Tian 2019, arXiv 1903.03176) as a gymnasium env; ids ``MinAtar/<Game>-v0`` / ``-v1``.

    Wraps ``minatar.Environment`` (minatar 1.0.15) directly:

    - observation: ``Box(0, 1, (10, 10, C), uint8)``, the game's ``C`` boolean channels (4 for Breakout), channels
      last as the conv networks' ``channels_last="auto"`` reads it (``C <= 16``); uint8 keeps the replay 4x smaller than
      float32, and with ``high == 1`` the networks do not divide by 255;
    - actions: ``Discrete(len(action_set))`` over the game's minimal action set (``use_minimal_action_set=True``, the
      ``-v1`` ids; Breakout: no-op, left, right) or all 6 MinAtar actions (``-v0``);
    - reward and termination as the game gives them; no time limit (add one with the ``max_episode_steps`` option);
    - sticky actions as MinAtar's default: with probability ``sticky_action_prob`` (0.1) the previous action is
      repeated instead of the chosen one (this is MinAtar's own stochasticity, unrelated to the ``sticky_actions``
      option, a fixed frame skip); ``difficulty_ramping`` (True) as MinAtar (Asterix, Seaquest and Space Invaders
      speed up over a game; Breakout and Freeway ignore it);
    - randomness: MinAtar's ``RandomState`` (game and sticky actions) is seeded from the env's ``np_random`` at the
      first reset and at every ``reset(seed=...)``, and the previous action is forgotten at each reset, so a reset
      with a seed replays the same game for the same actions;
    - ``render_mode="rgb_array"``: an RGB image of the grid, ``render_scale`` (16) pixels per cell, one colour per
      channel.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    # Pickling captures the whole game (MinAtar's state and its RandomState are plain Python/numpy attributes;
    # tests/test_envs.py checks every game), so checkpoints carry episodes in progress (rllib_muzero.runner_state).
    muzero_pickles_state = True

    def __init__(self, game: str, *, use_minimal_action_set: bool = True, sticky_action_prob: float = 0.1,
                 difficulty_ramping: bool = True, render_mode: str | None = None, render_scale: int = 16):
        if game not in MINATAR_GAMES.values():
            raise ValueError(f"Unknown MinAtar game {game!r}: expected one of {sorted(MINATAR_GAMES.values())}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"MinAtar render_mode must be None or 'rgb_array', got {render_mode!r}.")
        minatar = _import_minatar()
        self.game_name = game
        self.game = minatar.Environment(game, sticky_action_prob=float(sticky_action_prob),
                                        difficulty_ramping=bool(difficulty_ramping))
        self.action_set = (list(self.game.minimal_action_set()) if use_minimal_action_set
                           else list(range(self.game.num_actions())))
        self.observation_space = gym.spaces.Box(0, 1, tuple(self.game.state_shape()), np.uint8)
        self.action_space = gym.spaces.Discrete(len(self.action_set))
        self.render_mode = render_mode
        self.render_scale = int(render_scale)
        self._seeded = False

    def _observation(self) -> np.ndarray:
        return self.game.state().astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            self.game.seed(int(self.np_random.integers(2**31 - 1)))
            self._seeded = True
        self.game.last_action = 0  # MinAtar keeps it across resets: a seeded game would depend on the last one
        self.game.reset()
        return self._observation(), {}

    def step(self, action):
        reward, terminal = self.game.act(self.action_set[int(action)])
        return self._observation(), float(reward), bool(terminal), False, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        state = self.game.state()
        index = np.zeros(state.shape[:2], dtype=np.int64)
        for channel in range(state.shape[2]):
            index[state[:, :, channel]] = channel + 1
        image = _MINATAR_PALETTE[index % len(_MINATAR_PALETTE)]
        return np.repeat(np.repeat(image, self.render_scale, axis=0), self.render_scale, axis=1)


def register_minatar_envs() -> None:
    """Registers ``MinAtar/<Game>-v0`` and ``-v1`` with gymnasium as :class:`MinAtarEnv` (done on import of this
    module; cheap, minatar itself is imported only when an env is built). Replaces other registrations of the same
    ids (minatar's optional ``minatar.gym.register_envs()`` observes ``bool`` arrays)."""
    for name, game in MINATAR_GAMES.items():
        for version, minimal in (("v0", False), ("v1", True)):
            env_id = f"MinAtar/{name}-{version}"
            existing = gym.registry.get(env_id)
            if existing is None or existing.entry_point != MINATAR_ENTRY_POINT:
                if existing is not None:
                    del gym.registry[env_id]
                gym.register(env_id, entry_point=MINATAR_ENTRY_POINT,
                             kwargs={"game": game, "use_minimal_action_set": minimal})


register_minatar_envs()


# ---------------------------------------------------------------------------------------------------- the creator
def make_env_creator(env_specifier: Any, config: Any = None) -> tuple[Any, EnvCreator]:
    """RLlib's ``(env_id, env_creator)`` for ``config.env``, with MuZero's env options applied by the creator.

    Meant as the body of ``MuZero._get_env_id_and_creator(env_specifier, config)``. Resolution, in order:

    1. a string registered with Tune (``tune.register_env``): that creator;
    2. any other string except a class path (a gymnasium id, ``module:EnvId`` form included, legacy ids mapped by
       :func:`resolve_env_id`): ``gym.make(id, **env kwargs)``, with ale-py's ids registered first;
    3. anything else (class path, env class, callable, None): RLlib's own ``Algorithm._get_env_id_and_creator``.

    Args:
        env_specifier: ``config.env``.
        config: the ``AlgorithmConfig`` (RLlib reads ``remote_worker_envs`` from it for env classes); may be None.

    Returns:
        ``(env_specifier, creator)``: the id is returned unchanged (RLlib writes it back into ``config.env``). The
        creator takes RLlib's ``EnvContext`` (or a plain dict) and returns the wrapped env; for ``env=None`` it returns
        None like RLlib's.
    """
    if isinstance(env_specifier, str) and _global_registry.contains(ENV_CREATOR, env_specifier):
        return env_specifier, MuZeroEnvCreator(env_specifier, _global_registry.get(ENV_CREATOR, env_specifier))
    if isinstance(env_specifier, str) and _is_gym_id(env_specifier):
        return env_specifier, MuZeroEnvCreator(env_specifier, None)
    from ray.rllib.algorithms.algorithm import Algorithm  # heavy import, only needed for this fallback

    env_id, base_creator = Algorithm._get_env_id_and_creator(
        env_specifier, config if config is not None else {"remote_worker_envs": False}
    )
    if env_specifier is None:
        return env_id, base_creator
    return env_id, MuZeroEnvCreator(env_specifier, base_creator)


class MuZeroEnvCreator:
    """Builds one env: strips the MuZero options from the ``EnvContext``, builds the base env, wraps it.

    A plain class rather than a closure so it pickles by reference to Ray's env runners.

    Args:
        env_specifier: ``config.env``, for messages and the ALE check.
        base_creator: the creator for the env's own kwargs (takes an ``EnvContext``), or None for a gymnasium id,
            which is built here with ``gym.make`` so ``max_episode_steps`` replaces the registered limit.
    """

    def __init__(self, env_specifier: Any, base_creator: EnvCreator | None):
        self.env_specifier = env_specifier
        self.base_creator = base_creator
        if base_creator is None:
            self.gym_id, self.gym_kwargs = resolve_env_id(env_specifier)
            if self.gym_id != env_specifier:
                logger.info("Legacy env id %r is built as gym.make(%r, **%r).", env_specifier, self.gym_id,
                            self.gym_kwargs)

    def __repr__(self) -> str:
        return f"MuZeroEnvCreator({self.env_specifier!r})"

    def __call__(self, env_context: Mapping[str, Any] | None = None) -> Any:
        if not isinstance(env_context, EnvContext):
            env_context = EnvContext(dict(env_context or {}), worker_index=0)
        options, rest = split_env_config(env_context)
        validate_env_options(self.env_specifier if self.base_creator is None else None, options)
        if self.base_creator is None:
            _register_ale_envs()
            max_steps = options.pop("max_episode_steps", None)
            env = gym.make(self.gym_id, max_episode_steps=max_steps, **{**self.gym_kwargs, **rest})
            if self.gym_id.split("/")[-1] in UNDERSTATED_BOUNDS:
                env = UnboundedObservations(env)
        else:
            env = self.base_creator(env_context.copy_with_overrides(env_config=rest))
        return wrap_env(env, options, env_name=str(self.env_specifier))


# ---------------------------------------------------------------------------------------------------- wrapping
def wrap_env(env: Any, env_config: Mapping[str, Any], env_name: str | None = None) -> Any:
    """Applies the MuZero env options in ``env_config`` to a built env (order: see the module docstring).

    Returns ``env`` itself when no option asks for a wrapper (so any env type passes through untouched); otherwise
    ``env`` must be a ``gymnasium.Env``. Raises ``ValueError`` for invalid options, for ALE-only options on a non-ALE
    env, and for options the env's spaces don't support.
    """
    validate_env_options(None, env_config)
    o = env_options(env_config)
    name = env_name or _env_name(env)
    wanted = [k for k in ("max_episode_steps", "noop_reset", "episode_life", "fire_reset", "norm_states",
                          "clip_rewards", "avoid_repeat") if o[k]]
    wanted += [k for k in ("sticky_actions", "stack_states") if o[k] > 1]
    if not wanted:
        return env
    if not isinstance(env, gym.Env):
        _fail(wanted[0], o[wanted[0]], f"its default: env `{name}` is a {type(env).__name__}, not a gymnasium.Env, "
              "and the MuZero env options wrap gymnasium envs only")

    if o["max_episode_steps"] is not None:
        env = TimeLimit(env, o["max_episode_steps"])
    if o["noop_reset"]:
        env = NoopReset(env, noop_max=o["noop_max"])
    if o["sticky_actions"] > 1:
        env = RepeatAction(env, o["sticky_actions"])
    if o["episode_life"]:
        env = EpisodicLife(env)
    if o["fire_reset"]:
        env = FireReset(env)
    if o["norm_states"]:
        env = _normalise_states(env, o["state_range"], name)
    if o["stack_states"] > 1:
        flat = isinstance(env.observation_space, gym.spaces.Box) and len(env.observation_space.shape) == 1
        env = FrameStackObservation(env, o["stack_states"], padding_type="reset")
        if flat:
            env = FlattenObservation(env)
    if o["clip_rewards"]:
        env = ClipReward(env, -1.0, 1.0)
    if o["avoid_repeat"]:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            _fail("avoid_repeat", True, f"False for `{name}`: it draws random actions from a Discrete action "
                  f"space, and this env has {env.action_space}")
        env = AvoidRepeat(env)
    return env


def _env_name(env: Any) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env).__name__


def _ale(env: gym.Env) -> Any:
    """The env's ``ale_py.ALEInterface``, or None if it is not an Atari env."""
    return getattr(env.unwrapped, "ale", None)


def _refuse_non_ale(option: str, env: gym.Env) -> None:
    _fail(option, True, f"False for `{_env_name(env)}`, which is not an Atari (ALE) env: `{option}` needs the ALE's "
          "lives and action meanings")


def _action_meanings(env: gym.Env) -> list[str]:
    return list(env.unwrapped.get_action_meanings())


def _normalise(obs: Any, low: float, high: float) -> np.ndarray:
    return np.clip((np.asarray(obs, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


def _normalise_states(env: gym.Env, state_range: Any, name: str) -> gym.Env:
    if not isinstance(env.observation_space, gym.spaces.Box):
        _fail("norm_states", True, f"False for `{name}`: it rescales Box observations and this env has "
              f"{env.observation_space}")
    low, high = (float(v) for v in state_range)
    space = gym.spaces.Box(0.0, 1.0, shape=env.observation_space.shape, dtype=np.float32)
    return TransformObservation(env, functools.partial(_normalise, low=low, high=high), space)


UNDERSTATED_BOUNDS = frozenset({"LunarLander-v3"})
"""Gymnasium ids whose observations leave their declared Box (LunarLander's lander flies above y = 2.5): built by
:class:`MuZeroEnvCreator` with :class:`UnboundedObservations`."""


class UnboundedObservations(gym.ObservationWrapper):
    """Declares the env's Box observation space without bounds (same shape and dtype); observations are unchanged.

    Why: RLlib's old-stack preprocessor checks every 100th observation against the declared space and raises when
    one is outside it, which kills the env runner (RLlib then restarts it, losing its episodes in flight). Some envs
    declare bounds their observations exceed: gymnasium's LunarLander-v3 declares |x|, |y| <= 2.5 and a lander that
    flies up passes y = 3.6. Clipping would hide where the lander is; MuZero's networks need no bounds, so the space
    is widened instead.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        box = env.observation_space
        if not isinstance(box, gym.spaces.Box):
            raise ValueError(f"UnboundedObservations needs a Box observation space, got {box}")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=box.shape, dtype=box.dtype)

    def observation(self, observation: Any) -> Any:
        return observation


class RepeatAction(gym.Wrapper):
    """``sticky_actions``: every action is taken ``repeat`` times and the rewards summed (the reference's meaning).

    Own wrapper: gymnasium's ``StickyAction`` is ALE's stochastic stickiness and ``MaxAndSkipObservation`` max-pools
    the last two observations (meaningless for RAM). Stops early when the episode terminates or is truncated; the
    observation and info are those of the last base step.
    """

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        if not _is_int(repeat) or repeat < 1:
            _fail("sticky_actions", repeat, ENV_OPTIONS["sticky_actions"].accepted)
        self.repeat = int(repeat)

    def step(self, action):
        total_reward = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        return obs, total_reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """``episode_life``: a lost life terminates the trajectory, but the game goes on at the next reset.

    Own wrapper (gymnasium has this only inside ``AtariPreprocessing``). After a lost life ``terminated`` is True, so
    value targets do not bootstrap across it; ``reset()`` then continues the same game with one NOOP step instead of
    restarting it. Only a real game over (the base env's own termination), a truncation, or a seeded reset resets the
    game. ``info["game_over"]`` says which kind of end a step was.

    Games without a lives counter (``ale.lives() == 0``, e.g. Pong) count a negative reward (a lost point) as a lost
    life, as the reference's ``EpisodicLifeEnvPong`` does; ``negative_reward_as_life_loss`` overrides that choice.
    """

    def __init__(self, env: gym.Env, *, negative_reward_as_life_loss: bool | None = None):
        super().__init__(env)
        if _ale(env) is None:
            _refuse_non_ale("episode_life", env)
        self._negative_reward_override = negative_reward_as_life_loss
        self.negative_reward_as_life_loss = bool(negative_reward_as_life_loss)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = bool(terminated or truncated)
        lives = _ale(self.env).lives()
        if self.negative_reward_as_life_loss:
            life_lost = reward < 0
        else:
            life_lost = 0 < lives < self.lives
        self.lives = lives
        info = dict(info, game_over=self.game_over)
        return obs, reward, bool(terminated or life_lost), truncated, info

    def reset(self, *, seed=None, options=None):
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
            self.lives = _ale(self.env).lives()
            if self._negative_reward_override is None:
                self.negative_reward_as_life_loss = self.lives == 0
        else:
            obs, _, terminated, truncated, info = self.env.step(NOOP_ACTION)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
            self.lives = _ale(self.env).lives()
        self.game_over = False
        return obs, info


class FireReset(gym.Wrapper):
    """``fire_reset``: after every reset press FIRE, then action 2, as the reference (and baselines) do.

    Own wrapper. Games like Breakout wait for FIRE to launch the ball; above :class:`EpisodicLife` this also happens
    after a lost life. Needs a game whose action 1 is FIRE and that has at least 3 actions.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if _ale(env) is None:
            _refuse_non_ale("fire_reset", env)
        meanings = _action_meanings(env)
        if len(meanings) < 3 or meanings[FIRE_ACTION] != "FIRE":
            _fail("fire_reset", True, f"False for `{_env_name(env)}`: its actions {meanings} have no FIRE at index 1")

    def reset(self, *, seed=None, options=None):
        self.env.reset(seed=seed, options=options)
        obs, info = None, {}
        for action in (FIRE_ACTION, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        return obs, info


class NoopReset(gym.Wrapper):
    """``noop_reset``: after a reset take k NOOP steps, k uniform in [0, ``noop_max``] from the env's ``np_random``.

    Own wrapper (gymnasium's no-op starts live inside ``AtariPreprocessing``). Varies the start state of the
    otherwise deterministic v4 Atari games. ``num_noops`` is the k of the last reset.
    """

    def __init__(self, env: gym.Env, noop_max: int = 30):
        super().__init__(env)
        if _ale(env) is None:
            _refuse_non_ale("noop_reset", env)
        if not _is_int(noop_max) or noop_max < 0:
            _fail("noop_max", noop_max, ENV_OPTIONS["noop_max"].accepted)
        meanings = _action_meanings(env)
        if meanings[NOOP_ACTION] != "NOOP":
            _fail("noop_reset", True, f"False for `{_env_name(env)}`: its action 0 is {meanings[0]}, not NOOP")
        self.noop_max = int(noop_max)
        self.num_noops = 0

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.num_noops = int(self.np_random.integers(0, self.noop_max + 1))
        for _ in range(self.num_noops):
            obs, _, terminated, truncated, info = self.env.step(NOOP_ACTION)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        return obs, info


class AvoidRepeat(gym.Wrapper):
    """``avoid_repeat``: after ``patience`` steps without reward, act at random with probability ``probability``.

    Own wrapper. Breaks the loops a deterministic policy can fall into in a deterministic game (e.g. Breakout with no
    ball in play). Steps are counted at this wrapper's level (agent steps); any nonzero reward and every reset set the
    count back to 0. Draws from the env's ``np_random`` only once the count reaches ``patience``. A replaced action
    is reported as ``info["executed_action"]`` (:data:`rllib_muzero.columns.INFO_EXECUTED_ACTION`); the policy's
    postprocessing records it in the trajectory instead of the agent's choice, so the learner's dynamics function is
    trained on the action the env executed. The search policy ``pi_t`` stays the target of that step.
    """

    def __init__(self, env: gym.Env, patience: int = AVOID_REPEAT_PATIENCE,
                 probability: float = AVOID_REPEAT_PROBABILITY):
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.Discrete):
            _fail("avoid_repeat", True, f"False for `{_env_name(env)}`: it needs a Discrete action space, not "
                  f"{env.action_space}")
        self.patience = int(patience)
        self.probability = float(probability)
        self.steps_without_reward = 0

    def reset(self, *, seed=None, options=None):
        self.steps_without_reward = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        replaced = None
        if self.steps_without_reward >= self.patience and self.np_random.random() < self.probability:
            space = self.env.action_space
            action = replaced = int(space.start + self.np_random.integers(space.n))
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps_without_reward = 0 if reward != 0 else self.steps_without_reward + 1
        if replaced is not None:
            info = dict(info, **{INFO_EXECUTED_ACTION: replaced})
        return obs, reward, terminated, truncated, info
