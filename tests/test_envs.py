"""Env creation and the MuZero env options (rllib_muzero.envs): each option's effect, legacy ids, validation.

Fast: scripted fake envs for exact semantics (a fake ALE with lives and action meanings), real ALE / Box2D / MinAtar
envs for the id mapping and a few end-to-end checks (skipped when ale-py / Box2D / minatar are not installed). No Ray
session.
"""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils import seeding
from ray import tune
from ray.rllib.env.env_context import EnvContext

import rllib_muzero.envs
from rllib_muzero.envs import (
    AVOID_REPEAT_PATIENCE,
    AVOID_REPEAT_PROBABILITY,
    ENV_OPTIONS,
    FIRE_ACTION,
    MINATAR_ENTRY_POINT,
    NOOP_ACTION,
    AvoidRepeat,
    EpisodicLife,
    MinAtarEnv,
    MuZeroEnvCreator,
    check_env_id,
    is_ale_env_id,
    make_env_creator,
    minatar_available,
    resolve_env_id,
    split_env_config,
    validate_env_options,
    wrap_env,
)

ATARI_MEANINGS = ("NOOP", "FIRE", "RIGHT", "LEFT")


# ---------------------------------------------------------------------------------------------------- fakes
class FakeAle:
    def __init__(self, lives: int):
        self._lives = lives

    def lives(self) -> int:
        return self._lives


class FakeEnv(gym.Env):
    """Scripted env: observation [t, t] (t = steps since the last base reset), reward ``rewards.get(t, 0)``.

    Records every action taken and every base reset. ``ale`` (when ``lives`` is not None) makes it look like an
    Atari env to the wrappers: ``lives`` at reset, one less at every step in ``life_loss_steps``; the base env
    terminates at ``terminate_at`` (game over) or when the last life is lost.
    """

    observation_space = gym.spaces.Box(0, 255, (2,), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def __init__(self, rewards=None, terminate_at=None, lives=None, life_loss_steps=(), meanings=ATARI_MEANINGS,
                 **kwargs):
        self.rewards = dict(rewards or {})
        self.terminate_at = terminate_at
        self.start_lives = lives
        self.life_loss_steps = set(life_loss_steps)
        self.meanings = list(meanings)
        self.kwargs = kwargs
        if lives is not None:
            self.ale = FakeAle(lives)
        self.t = 0
        self.actions: list[int] = []
        self.num_resets = 0

    def get_action_meanings(self):
        return self.meanings

    def _obs(self):
        return np.array([self.t, self.t], dtype=np.uint8) if self.t < 256 else np.full(2, 255, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.num_resets += 1
        if self.start_lives is not None:
            self.ale._lives = self.start_lives
        return self._obs(), {}

    def step(self, action):
        self.actions.append(int(action))
        self.t += 1
        terminated = self.t == self.terminate_at
        if self.t in self.life_loss_steps:
            self.ale._lives -= 1
            terminated = terminated or self.ale._lives == 0
        return self._obs(), float(self.rewards.get(self.t, 0.0)), terminated, False, {}


def fake_atari(**kwargs) -> FakeEnv:
    kwargs.setdefault("lives", 3)
    return FakeEnv(**kwargs)


# ---------------------------------------------------------------------------------------------------- options
def test_no_options_returns_the_env_itself():
    env = FakeEnv()
    assert wrap_env(env, {}) is env
    assert wrap_env(env, {name: option.default for name, option in ENV_OPTIONS.items()}) is env


def test_sticky_actions_repeat_the_action_and_sum_rewards():
    base = FakeEnv(rewards={1: 1.0, 2: 2.0, 3: 4.0, 5: 8.0}, terminate_at=5)
    env = wrap_env(base, {"sticky_actions": 3})
    env.reset(seed=0)
    obs, reward, terminated, truncated, _ = env.step(2)
    assert base.actions == [2, 2, 2]
    assert reward == 7.0
    assert obs.tolist() == [3, 3] and not terminated
    obs, reward, terminated, truncated, _ = env.step(1)  # terminates after 2 of the 3 repeats
    assert base.actions == [2, 2, 2, 1, 1]
    assert reward == 8.0 and terminated and not truncated


def test_episode_life_ends_the_trajectory_at_a_lost_life_but_not_the_game():
    base = fake_atari(lives=2, life_loss_steps=(3, 6))
    env = wrap_env(base, {"episode_life": True})
    env.reset(seed=0)
    for _ in range(2):
        _, _, terminated, _, info = env.step(3)
        assert not terminated and info["game_over"] is False
    obs, _, terminated, truncated, info = env.step(3)  # life 2 -> 1
    assert terminated and not truncated and info["game_over"] is False
    obs, _ = env.reset()  # continues the game with one NOOP, no base reset
    assert base.num_resets == 1
    assert base.actions[-1] == NOOP_ACTION
    assert obs.tolist() == [4, 4]
    for _ in range(2):
        _, _, terminated, _, info = env.step(3)
    assert terminated and info["game_over"] is True  # last life lost: the base env's own game over
    env.reset()
    assert base.num_resets == 2 and base.t == 0


def test_episode_life_resets_the_game_after_a_truncation():
    base = fake_atari(lives=3, life_loss_steps=(2,))
    env = wrap_env(base, {"episode_life": True, "max_episode_steps": 4})
    env.reset(seed=0)
    env.step(0)
    _, _, terminated, _, _ = env.step(0)
    assert terminated
    env.reset()
    assert base.num_resets == 1
    _, _, terminated, truncated, info = env.step(0)  # base step 4: the time limit
    assert truncated and not terminated and info["game_over"] is True
    env.reset()
    assert base.num_resets == 2


def test_episode_life_without_lives_counts_a_lost_point_as_a_lost_life():
    base = fake_atari(lives=0, rewards={2: 1.0, 4: -1.0})  # Pong: no lives counter
    env = wrap_env(base, {"episode_life": True})
    env.reset(seed=0)
    assert [env.step(0)[2] for _ in range(4)] == [False, False, False, True]
    env.reset()
    assert base.num_resets == 1
    assert EpisodicLife(fake_atari(lives=3)).negative_reward_as_life_loss is False


def test_fire_reset_presses_fire_after_reset():
    base = fake_atari()
    env = wrap_env(base, {"fire_reset": True})
    obs, _ = env.reset(seed=0)
    assert base.actions == [FIRE_ACTION, 2]
    assert obs.tolist() == [2, 2]


def test_fire_reset_after_a_lost_life_too():
    base = fake_atari(lives=3, life_loss_steps=(3,))
    env = wrap_env(base, {"episode_life": True, "fire_reset": True})
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(3)  # base step 3: a life is lost
    assert terminated
    env.reset()
    assert base.num_resets == 1
    assert base.actions == [FIRE_ACTION, 2, 3, NOOP_ACTION, FIRE_ACTION, 2]


def test_noop_reset_takes_k_noops_from_the_seeded_env_rng():
    noop_max = 7
    counts = []
    for seed in range(12):
        base = fake_atari()
        env = wrap_env(base, {"noop_reset": True, "noop_max": noop_max})
        obs, _ = env.reset(seed=seed)
        expected = int(seeding.np_random(seed)[0].integers(0, noop_max + 1))
        assert base.actions == [NOOP_ACTION] * expected
        assert obs.tolist() == [expected, expected]
        counts.append(expected)
    assert len(set(counts)) > 3 and max(counts) <= noop_max


def test_noop_max_defaults_to_30():
    assert ENV_OPTIONS["noop_max"].default == 30
    env = wrap_env(fake_atari(), {"noop_reset": True})
    assert env.noop_max == 30


def test_stack_states_flattens_1d_observations_oldest_first():
    class OffsetEnv(FakeEnv):
        def _obs(self):
            return np.array([self.t + 10, self.t + 20], dtype=np.uint8)

    env = wrap_env(OffsetEnv(), {"stack_states": 3})
    assert env.observation_space.shape == (6,)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [10, 20] * 3  # the reset observation pads the stack
    env.step(0)
    obs, *_ = env.step(0)
    assert obs.tolist() == [10, 20, 11, 21, 12, 22]
    assert env.observation_space.contains(obs)


def test_stack_states_keeps_image_observations_as_a_stack():
    class ImageEnv(FakeEnv):
        observation_space = gym.spaces.Box(0, 255, (4, 5), np.uint8)

        def _obs(self):
            return np.full((4, 5), self.t, dtype=np.uint8)

    env = wrap_env(ImageEnv(), {"stack_states": 2})
    assert env.observation_space.shape == (2, 4, 5)
    env.reset(seed=0)
    obs, *_ = env.step(0)
    assert obs.shape == (2, 4, 5) and obs[0].max() == 0 and obs[1].min() == 1


def test_norm_states_maps_state_range_to_unit_interval():
    class WideEnv(FakeEnv):
        observation_space = gym.spaces.Box(-1000, 1000, (4,), np.float32)

        def _obs(self):
            return np.array([10.0, 60.0, 110.0, 500.0], dtype=np.float32)

    env = wrap_env(WideEnv(), {"norm_states": True, "state_range": [10, 110]})
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32
    np.testing.assert_allclose(obs, [0.0, 0.5, 1.0, 1.0])  # 500 is outside the range: clipped
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (4,), np.float32)


def test_clip_rewards_clips_to_unit_interval():
    env = wrap_env(FakeEnv(rewards={1: 5.0, 2: -3.0, 3: 0.5}), {"clip_rewards": True})
    env.reset(seed=0)
    assert [float(env.step(0)[1]) for _ in range(4)] == [1.0, -1.0, 0.5, 0.0]


def test_max_episode_steps_truncates_a_gym_id():
    _, creator = make_env_creator("CartPole-v1", None)
    env = creator({"max_episode_steps": 5})
    env.reset(seed=0)
    flags = [env.step(i % 2)[2:4] for i in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_max_episode_steps_truncates_a_registered_creator():
    tune.register_env("muzero_test_fake", lambda ctx: FakeEnv(**ctx))
    _, creator = make_env_creator("muzero_test_fake", None)
    env = creator({"max_episode_steps": 3})
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags == [(False, False)] * 2 + [(False, True)]


def test_avoid_repeat_acts_randomly_only_after_500_rewardless_steps():
    seed, n_steps = 3, AVOID_REPEAT_PATIENCE + 400
    base = FakeEnv(rewards={10: 1.0})
    env = wrap_env(base, {"avoid_repeat": True})
    assert isinstance(env, AvoidRepeat)
    env.reset(seed=seed)
    replaced = {}
    for step in range(1, n_steps + 1):
        _, _, _, _, info = env.step(2)
        if "executed_action" in info:
            replaced[step] = info["executed_action"]
    # Replay the env's own rng: the counter restarts after the reward at step 10, so draws begin at step 511.
    rng = seeding.np_random(seed)[0]
    expected = {}
    for step in range(10 + AVOID_REPEAT_PATIENCE + 1, n_steps + 1):
        if rng.random() < AVOID_REPEAT_PROBABILITY:
            expected[step] = int(rng.integers(4))
    assert replaced == expected and len(expected) > 5
    assert [base.actions[s - 1] for s in expected] == list(expected.values())
    assert all(base.actions[s - 1] == 2 for s in range(1, n_steps + 1) if s not in expected)


def test_avoid_repeat_counter_restarts_at_reset():
    env = wrap_env(FakeEnv(), {"avoid_repeat": True})
    env.reset(seed=0)
    for _ in range(AVOID_REPEAT_PATIENCE):
        env.step(0)
    assert env.steps_without_reward == AVOID_REPEAT_PATIENCE
    env.reset()
    assert env.steps_without_reward == 0


# ---------------------------------------------------------------------------------------------------- the creator
class RecorderEnv(FakeEnv):
    """Refuses unknown kwargs like gym.make's env constructors do."""

    def __init__(self, my_kwarg=None):
        super().__init__()
        self.kwargs = {"my_kwarg": my_kwarg}


gym.register("MuZeroTestRecorder-v0", entry_point=RecorderEnv)


def test_creator_strips_muzero_options_before_gym_make():
    _, creator = make_env_creator("MuZeroTestRecorder-v0", None)
    env = creator(EnvContext({"my_kwarg": 7, "clip_rewards": True, "max_episode_steps": 9, "noop_max": 4},
                             worker_index=2, vector_index=1))
    assert env.unwrapped.kwargs == {"my_kwarg": 7}
    assert env.spec.max_episode_steps == 9


def test_creator_strips_muzero_options_for_registered_creators_and_keeps_the_context():
    def make(ctx):
        env = FakeEnv()
        env.ctx = ctx
        return env

    tune.register_env("muzero_test_recorder", make)
    env_id, creator = make_env_creator("muzero_test_recorder", None)
    assert env_id == "muzero_test_recorder"
    env = creator(EnvContext({"clip_rewards": True, "sticky_actions": 2, "user_key": 1}, worker_index=3,
                             vector_index=2, num_workers=4))
    ctx = env.unwrapped.ctx
    assert isinstance(ctx, EnvContext) and dict(ctx) == {"user_key": 1}
    assert (ctx.worker_index, ctx.vector_index, ctx.num_workers) == (3, 2, 4)


class ConfigEnv(FakeEnv):
    """RLlib's convention for env classes: the constructor takes the env config."""

    def __init__(self, config):
        super().__init__(terminate_at=config.get("terminate_at"))
        self.config = config


def test_env_classes_and_none_go_through_rllib():
    env_id, creator = make_env_creator(ConfigEnv, None)
    assert env_id is ConfigEnv
    env = creator(EnvContext({"clip_rewards": True, "terminate_at": 3}, worker_index=0))
    assert dict(env.unwrapped.config) == {"terminate_at": 3}
    assert isinstance(env, gym.wrappers.ClipReward)
    env_id, creator = make_env_creator(None, None)
    assert env_id is None and creator({}) is None


def test_creator_pickles_for_remote_env_runners():
    import pickle

    env_id, creator = make_env_creator("CartPole-v1", None)
    assert isinstance(creator, MuZeroEnvCreator)
    clone = pickle.loads(pickle.dumps(creator))
    env = clone({"stack_states": 2})
    assert env.observation_space.shape == (8,)


def test_split_env_config():
    options, rest = split_env_config({"clip_rewards": True, "frameskip": 1})
    assert options == {"clip_rewards": True} and rest == {"frameskip": 1}


# ---------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("option, value", [
    ("clip_rewards", 1), ("stack_states", 0), ("stack_states", 2.0), ("state_range", [0]),
    ("state_range", [5, 1]), ("state_range", [0, float("inf")]), ("norm_states", "yes"),
    ("max_episode_steps", 0), ("sticky_actions", 0), ("sticky_actions", True), ("episode_life", "true"),
    ("fire_reset", None), ("noop_reset", 1), ("noop_max", -1), ("avoid_repeat", 0.05),
])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(ValueError, match=f"`{option}`"):
        validate_env_options("CartPole-v1", {option: value})
    with pytest.raises(ValueError, match=f"`{option}`"):  # the creator checks too (a creator used on its own)
        make_env_creator("CartPole-v1", None)[1]({option: value})


def test_norm_states_needs_state_range():
    with pytest.raises(ValueError, match="`norm_states`.*`state_range`"):
        validate_env_options("CartPole-v1", {"norm_states": True})
    validate_env_options("CartPole-v1", {"norm_states": True, "state_range": [0, 1]})


@pytest.mark.parametrize("option", ["episode_life", "fire_reset", "noop_reset"])
def test_ale_only_options_refused_on_cartpole_without_building_it(option, monkeypatch):
    monkeypatch.setattr(gym, "make", lambda *a, **k: pytest.fail("validation must not build the env"))
    with pytest.raises(ValueError, match=f"`{option}`.*not an Atari"):
        validate_env_options("CartPole-v1", {option: True})


@pytest.mark.parametrize("option", ["episode_life", "fire_reset", "noop_reset"])
def test_ale_only_options_refused_at_creation_when_the_id_cannot_tell(option):
    tune.register_env("muzero_test_cartpole", lambda ctx: gym.make("CartPole-v1"))
    validate_env_options("muzero_test_cartpole", {option: True})  # can't know from a registered name
    _, creator = make_env_creator("muzero_test_cartpole", None)
    with pytest.raises(ValueError, match=f"`{option}`.*not an Atari"):
        creator({option: True})


@pytest.mark.parametrize("option", ["episode_life", "fire_reset", "noop_reset"])
def test_ale_only_wrappers_refuse_envs_without_an_ale(option):
    with pytest.raises(ValueError, match=f"`{option}`.*not an Atari"):
        wrap_env(FakeEnv(), {option: True})


def test_fire_reset_needs_fire_at_action_1():
    with pytest.raises(ValueError, match="`fire_reset`"):
        wrap_env(fake_atari(meanings=("NOOP", "UP", "DOWN")), {"fire_reset": True})


def test_options_on_a_non_gym_env_are_refused():
    with pytest.raises(ValueError, match="`clip_rewards`.*not a gymnasium.Env"):
        wrap_env(object(), {"clip_rewards": True})


def test_unknown_keys_and_defaults_are_accepted():
    validate_env_options("CartPole-v1", {"my_own_kwarg": [1, 2], "render_mode": None})
    validate_env_options(None, {name: option.default for name, option in ENV_OPTIONS.items()})
    validate_env_options("CartPole-v1", None)
    with pytest.raises(ValueError, match="`env_config`"):
        validate_env_options("CartPole-v1", [("clip_rewards", True)])


def test_every_option_is_documented():
    for name, option in ENV_OPTIONS.items():
        assert option.accepted and option.meaning, name
        assert option.check(option.default), name


# ---------------------------------------------------------------------------------------------------- env ids
@pytest.mark.parametrize("legacy, modern", [
    ("Pong-ramNoFrameskip-v4", "PongNoFrameskip-v4"),
    ("Breakout-ramNoFrameskip-v4", "BreakoutNoFrameskip-v4"),
    ("Breakout-ram-v4", "Breakout-v4"),
    ("SpaceInvaders-ramDeterministic-v4", "SpaceInvadersDeterministic-v4"),
    ("Pong-ram-v0", "Pong-v0"),
    ("ALE/Pong-ram-v5", "ALE/Pong-v5"),
])
def test_legacy_ram_ids_map_to_obs_type_ram(legacy, modern):
    assert resolve_env_id(legacy) == (modern, {"obs_type": "ram"})


def test_modern_ids_are_unchanged():
    assert resolve_env_id("CartPole-v1") == ("CartPole-v1", {})
    assert resolve_env_id("LunarLander-v2") == ("LunarLander-v3", {})


@pytest.mark.parametrize("legacy", ["Pong-ramNoFrameskip-v4", "Breakout-ramNoFrameskip-v4"])
def test_legacy_ram_ids_build_128_byte_ram_envs(legacy):
    pytest.importorskip("ale_py", reason="Atari needs ale-py: pip install 'gymnasium[atari]'")
    env_id, creator = make_env_creator(legacy, None)
    assert env_id == legacy
    env = creator({})
    assert env.observation_space == gym.spaces.Box(0, 255, (128,), np.uint8)
    assert env.spec.id == resolve_env_id(legacy)[0]
    obs, _ = env.reset(seed=0)
    assert obs.shape == (128,) and obs.dtype == np.uint8
    assert is_ale_env_id(legacy) is True
    env.close()


def test_legacy_id_refuses_a_conflicting_obs_type():
    with pytest.raises(ValueError, match="`obs_type`"):
        validate_env_options("Pong-ramNoFrameskip-v4", {"obs_type": "rgb"})


def test_lunarlander_v2_builds_v3():
    pytest.importorskip("Box2D", reason="LunarLander needs Box2D: pip install box2d==2.3.10 pygame")
    _, creator = make_env_creator("LunarLander-v2", None)
    env = creator({"max_episode_steps": 50})
    assert env.spec.id == "LunarLander-v3" and env.spec.max_episode_steps == 50
    assert env.action_space == gym.spaces.Discrete(4)
    assert is_ale_env_id("LunarLander-v2") is False
    env.close()


def test_lunarlander_observations_above_the_declared_bounds_pass_rllibs_check():
    """LunarLander-v3 declares |y| <= 2.5, yet a lander that flies up reports y = 3.6 (seen in training: RLlib's
    preprocessor raised on it and killed the env runner). The creator declares the space unbounded, values as is."""
    pytest.importorskip("Box2D", reason="LunarLander needs Box2D: pip install box2d==2.3.10 pygame")
    from ray.rllib.models.preprocessors import get_preprocessor

    from rllib_muzero.envs import UnboundedObservations

    seen = np.array([0.33, 3.62, 1.84, 1.51, -0.82, -0.25, 0.0, 0.0], dtype=np.float32)  # from the crash
    declared = gym.make("LunarLander-v3").observation_space
    assert not declared.contains(seen)
    _, creator = make_env_creator("LunarLander-v2", None)
    env = creator({})
    assert isinstance(env, UnboundedObservations) and env.observation_space.contains(seen)
    preprocessor = get_preprocessor(env.observation_space)(env.observation_space)
    for _ in range(101):  # RLlib checks every 100th observation
        np.testing.assert_array_equal(preprocessor.transform(seen), seen)
    obs, _ = env.reset(seed=3)
    raw, _ = gym.make("LunarLander-v3").reset(seed=3)
    np.testing.assert_array_equal(obs, raw)  # the observations themselves are untouched
    env.close()


def test_is_ale_env_id():
    assert is_ale_env_id("CartPole-v1") is False
    assert is_ale_env_id("NoSuchEnv-v0") is None
    assert is_ale_env_id("some.module.EnvClass") is None


# ---------------------------------------------------------------------------------------------------- real Atari
def test_breakout_reference_recipe_end_to_end():
    pytest.importorskip("ale_py", reason="Atari needs ale-py: pip install 'gymnasium[atari]'")
    options = {"state_range": [0, 255], "norm_states": True, "sticky_actions": 4, "noop_reset": True,
               "episode_life": True, "fire_reset": True, "clip_rewards": True, "avoid_repeat": True}
    validate_env_options("Breakout-ramNoFrameskip-v4", options)
    env = make_env_creator("Breakout-ramNoFrameskip-v4", None)[1](options)
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (128,), np.float32)
    obs, info = env.reset(seed=5)
    first_frame = info["episode_frame_number"]
    assert 4 * 2 <= first_frame <= 4 * 2 + 30  # FIRE + action 2 with sticky 4, after 0..30 raw NOOPs
    assert 0.0 <= obs.min() and obs.max() <= 1.0
    rng = np.random.default_rng(0)
    for _ in range(5000):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(4)))
        assert -1.0 <= reward <= 1.0
        if terminated or truncated:
            break
    assert terminated and not info["game_over"] and info["lives"] == 4  # a lost life, not the game
    frame = info["episode_frame_number"]
    _, info = env.reset()
    assert info["lives"] == 4 and info["episode_frame_number"] > frame  # the same game goes on
    # Same seed, same number of no-ops: the start frame is reproducible.
    _, info = env.reset(seed=5)
    assert info["episode_frame_number"] == first_frame
    env.close()


# ---------------------------------------------------------------------------------------------------- MinAtar
needs_minatar = pytest.mark.skipif(not minatar_available(), reason='MinAtar needs pip install "rllib-muzero[minatar]"')
MINATAR_CHANNELS = {"Asterix": 4, "Breakout": 4, "Freeway": 7, "Seaquest": 10, "SpaceInvaders": 6}
MINATAR_MINIMAL_ACTIONS = {"Asterix": 5, "Breakout": 3, "Freeway": 3, "Seaquest": 6, "SpaceInvaders": 4}


def _play(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs.copy()], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(int(action))
        frames.append(obs.copy())
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.stack(frames), rewards


def test_minatar_ids_are_registered_gymnasium_ids_that_are_not_atari():
    for name in MINATAR_CHANNELS:
        for version in ("v0", "v1"):
            assert gym.spec(f"MinAtar/{name}-{version}").entry_point == MINATAR_ENTRY_POINT
    assert is_ale_env_id("MinAtar/Breakout-v1") is False
    with pytest.raises(ValueError, match="`episode_life`=True"):
        validate_env_options("MinAtar/Breakout-v1", {"episode_life": True})


@needs_minatar
@pytest.mark.parametrize("name", list(MINATAR_CHANNELS))
def test_minatar_games_through_the_env_creator(name):
    check_env_id(f"MinAtar/{name}-v1")
    minimal = make_env_creator(f"MinAtar/{name}-v1", None)[1]({})
    full = make_env_creator(f"MinAtar/{name}-v0", None)[1]({})
    try:
        space = gym.spaces.Box(0, 1, (10, 10, MINATAR_CHANNELS[name]), np.uint8)
        assert minimal.observation_space == space and full.observation_space == space
        assert minimal.action_space == gym.spaces.Discrete(MINATAR_MINIMAL_ACTIONS[name])
        assert full.action_space == gym.spaces.Discrete(6)
        obs, info = minimal.reset(seed=0)
        assert obs.dtype == np.uint8 and obs.shape == space.shape and set(np.unique(obs)) <= {0, 1} and info == {}
        obs, reward, terminated, truncated, _ = minimal.step(minimal.action_space.n - 1)
        assert obs in space and isinstance(reward, float) and not truncated
    finally:
        minimal.close()
        full.close()


@needs_minatar
def test_minatar_breakout_minimal_actions_are_noop_left_right():
    env = MinAtarEnv("breakout")
    assert env.action_set == [0, 1, 3]  # MinAtar's action map: n, l, u, r, d, f
    env.reset(seed=0)
    paddle = lambda: int(np.flatnonzero(env.game.state()[9, :, 0])[0])  # noqa: E731 - channel 0, bottom row
    env.game.sticky_action_prob = 0.0
    start = paddle()
    env.step(1)
    assert paddle() == max(start - 1, 0)
    env.step(2)
    env.step(2)
    assert paddle() == min(max(start - 1, 0) + 2, 9)


@needs_minatar
def test_minatar_seeded_resets_replay_the_same_game():
    env = make_env_creator("MinAtar/Breakout-v1", None)[1]({})
    actions = np.random.default_rng(0).integers(0, 3, 300)
    first, rewards = _play(env, 7, actions)
    _play(env, 8, actions)  # another game in between must not leak into the next seeded one (sticky last action)
    again, rewards_again = _play(env, 7, actions)
    assert np.array_equal(first, again) and rewards == rewards_again
    # Different seeds give different games (ball start, sticky actions) for the same actions.
    games = {_play(env, seed, actions)[0].tobytes() for seed in range(5)}
    assert len(games) > 1
    env.close()


@needs_minatar
def test_minatar_sticky_actions_are_minatars_default_and_configurable():
    env = make_env_creator("MinAtar/Breakout-v1", None)[1]({})
    assert env.unwrapped.game.sticky_action_prob == 0.1
    env.close()
    env = make_env_creator("MinAtar/Seaquest-v1", None)[1]({"sticky_action_prob": 0.0, "difficulty_ramping": False})
    assert env.unwrapped.game.sticky_action_prob == 0.0 and env.unwrapped.game.env.ramping is False
    env.close()


@needs_minatar
def test_minatar_random_play_scores_about_half_a_brick_and_options_wrap_it():
    env = make_env_creator("MinAtar/Breakout-v1", None)[1]({"max_episode_steps": 5})
    rng = np.random.default_rng(0)
    returns, lengths = [], []
    for seed in range(3):
        _, rewards = _play(env, seed, rng.integers(0, 3, 100))
        lengths.append(len(rewards))
    assert lengths == [5, 5, 5]  # truncated by the time limit of the option
    env.close()
    env = MinAtarEnv("breakout")
    for seed in range(100):
        returns.append(sum(_play(env, seed, rng.integers(0, 3, 10_000))[1]))
    assert 0.2 < np.mean(returns) < 1.0  # MinAtar Breakout's random play: about 0.5


@needs_minatar
def test_minatar_renders_rgb_arrays():
    env = gym.make("MinAtar/Breakout-v1", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8 and frame.max() > 0
    env.close()
    with pytest.raises(ValueError, match="render_mode"):
        MinAtarEnv("breakout", render_mode="human")


@needs_minatar
@pytest.mark.parametrize("custom_model", ["muzero_resnet", "muzero_tiny"])
def test_minatar_observations_feed_the_conv_networks(custom_model):
    from rllib_muzero.conv_models import CONV_MODELS

    env = MinAtarEnv("breakout")
    cls = CONV_MODELS[custom_model]
    model = cls(env.observation_space, env.action_space, env.action_space.n,
                {"custom_model_config": {"downsample": False}}, "minatar", value_support_size=11,
                reward_support_size=5)
    assert model.obs_channels_last and model.input_shape == (4, 10, 10) and model.obs_scale is None
    obs = np.stack([env.reset(seed=s)[0] for s in range(3)])
    model.eval()
    out = model.initial_inference(torch.as_tensor(obs))
    assert out.policy_logits.shape == (3, 3) and out.value_logits.shape == (3, 11)


def test_minatar_ids_without_minatar_name_the_extra(monkeypatch):
    monkeypatch.setattr(rllib_muzero.envs, "minatar_available", lambda: False)
    with pytest.raises(ValueError, match=r'minatar is not installed: `pip install "rllib-muzero\[minatar\]"`'):
        check_env_id("MinAtar/Breakout-v1")
    monkeypatch.setitem(sys.modules, "minatar", None)  # import minatar -> ImportError
    with pytest.raises(ImportError, match=r'rllib-muzero\[minatar\]'):
        MinAtarEnv("breakout")
    with pytest.raises(ValueError, match="Unknown MinAtar game"):
        MinAtarEnv("pong")


@needs_minatar
@pytest.mark.parametrize("game", sorted(rllib_muzero.envs.MINATAR_GAMES.values()))
def test_a_pickled_minatar_game_continues_exactly(game):
    """MinAtarEnv declares ``muzero_pickles_state``: a pickled copy must play on exactly like the original (so
    checkpoints may carry MinAtar episodes in progress, rllib_muzero.runner_state)."""
    import pickle

    from rllib_muzero.envs import MinAtarEnv
    from rllib_muzero.runner_state import env_state_pickles

    env = MinAtarEnv(game)
    assert env_state_pickles(env)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(57):
        if env.step(int(rng.integers(env.action_space.n)))[2]:
            env.reset()
    copy = pickle.loads(pickle.dumps(env))
    for _ in range(300):
        action = int(rng.integers(env.action_space.n))
        (o1, r1, t1, _, _), (o2, r2, t2, _, _) = env.step(action), copy.step(action)
        np.testing.assert_array_equal(o1, o2)
        assert (r1, t1) == (r2, t2)
        if t1:
            np.testing.assert_array_equal(env.reset()[0], copy.reset()[0])
