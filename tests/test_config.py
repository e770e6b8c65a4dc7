"""MuZeroConfig validation: every bad value is refused with a message naming the option, before any work starts."""

import pytest

from rllib_muzero.algorithm import MuZeroConfig

BAD_VALUES = [
    ("num_simulations", 0, "num_simulations"),
    ("num_simulations", -3, "num_simulations"),
    ("num_unroll_steps", 0, "num_unroll_steps"),
    ("td_steps", 0, "td_steps"),
    ("train_batch_size", 0, "train_batch_size"),
    ("gamma", 0.0, "gamma"),
    ("gamma", 1.5, "gamma"),
    ("value_support", (5, -5), "value_support"),
    ("value_support", (3, 3), "value_support"),
    ("reward_support", (1,), "reward_support"),
    ("reward_support", (0.5, 2), "reward_support"),
    ("visit_softmax_temperatures", [-1.0], "visit_softmax_temperatures"),
    ("visit_softmax_temperatures", [], "visit_softmax_temperatures"),
    ("root_exploration_fraction", 1.5, "root_exploration_fraction"),
    ("root_dirichlet_alpha", 0.0, "root_dirichlet_alpha"),
    ("pb_c_init", -1.0, "pb_c_init"),
    ("unvisited_value", "max", "unvisited_value"),
    ("optimizer_type", "lamb", "optimizer_type"),
    ("lr", 0.0, "lr"),
    ("prioritized_replay_eps", 0.0, "prioritized_replay_eps"),
    ("prioritized_replay_beta", 2.0, "prioritized_replay_beta"),
    ("training_intensity", -1.0, "training_intensity"),
    ("grad_clip", -1.0, "grad_clip"),
]


def _config(**fields):
    config = MuZeroConfig().environment("CartPole-v1")
    for key, value in fields.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("field,value,named", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_bad_value_is_refused_with_the_option_named(field, value, named):
    with pytest.raises(ValueError, match=f"`{named}`"):
        _config(**{field: value}).validate()


def test_defaults_validate():
    _config().validate()


def test_greedy_temperature_zero_is_accepted():
    _config(visit_softmax_temperatures=[1.0, 0.0], visit_softmax_steps=[10]).validate()


def test_temperature_steps_must_match_temperatures():
    with pytest.raises(ValueError, match="`visit_softmax_steps`"):
        _config(visit_softmax_temperatures=[1.0, 0.5], visit_softmax_steps=[]).validate()
    with pytest.raises(ValueError, match="`visit_softmax_steps`"):
        _config(visit_softmax_temperatures=[1.0, 0.5, 0.25], visit_softmax_steps=[20, 10]).validate()


def test_replay_capacity_must_hold_a_batch():
    with pytest.raises(ValueError, match="`replay_capacity`.*train_batch_size"):
        _config(replay_capacity=64, train_batch_size=128).validate()


def test_unknown_key_from_a_dict_is_refused_with_a_suggestion():
    config = MuZeroConfig().update_from_dict({"env": "CartPole-v1", "num_simulation": 10})
    with pytest.raises(ValueError, match="`num_simulation`.*num_simulations"):
        config.validate()


def test_builder_sets_fields_and_rllib_fields():
    config = MuZeroConfig().training(num_simulations=7, td_steps=3, lr=0.01, gamma=0.9, train_batch_size=32)
    assert (config.num_simulations, config.td_steps, config.lr, config.gamma, config.train_batch_size) == (
        7, 3, 0.01, 0.9, 32)
    assert config.enable_rl_module_and_learner is False
    assert config.enable_env_runner_and_connector_v2 is False


def test_dict_round_trip_keeps_muzero_fields():
    config = MuZeroConfig().training(num_simulations=11, value_support=(-10, 10))
    restored = MuZeroConfig().update_from_dict(config.to_dict())
    assert restored.num_simulations == 11
    assert tuple(restored.value_support) == (-10, 10)
    restored.validate()
