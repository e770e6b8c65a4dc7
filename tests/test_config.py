"""MuZeroConfig builder and validation of good configs (bad values: tests/test_bad_inputs.py)."""

import pytest

from rllib_muzero.algorithm import MuZeroConfig


def cartpole_config(**fields) -> MuZeroConfig:
    """A CartPole MuZeroConfig with ``fields`` set as attributes (as a YAML/dict would set them)."""
    config = MuZeroConfig().environment("CartPole-v1")
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def test_defaults_validate():
    cartpole_config().validate()


def test_greedy_temperature_zero_is_accepted():
    cartpole_config(visit_softmax_temperatures=[1.0, 0.0], visit_softmax_steps=[10]).validate()


def test_temperature_steps_must_match_temperatures():
    with pytest.raises(ValueError, match="`visit_softmax_steps`"):
        cartpole_config(visit_softmax_temperatures=[1.0, 0.5], visit_softmax_steps=[]).validate()
    with pytest.raises(ValueError, match="`visit_softmax_steps`"):
        cartpole_config(visit_softmax_temperatures=[1.0, 0.5, 0.25], visit_softmax_steps=[20, 10]).validate()


def test_replay_capacity_must_hold_a_batch():
    with pytest.raises(ValueError, match="`replay_capacity`.*train_batch_size"):
        cartpole_config(replay_capacity=64, train_batch_size=128).validate()


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
