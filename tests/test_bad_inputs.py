"""Every place a user types, one table: each bad input gives a one-line error naming the problem and what is
accepted, before any Ray worker starts where possible; the CLI exits with code 2 and prints no traceback.

The parametrised ids make the count visible: ``pytest tests/test_bad_inputs.py -q`` (issue: at least 30).
"""

import json

import gymnasium as gym
import numpy as np
import pytest

from rllib_muzero import MuZeroConfig, cli

# --- config values (MuZeroConfig.validate, called by build_algo and by the CLI before Ray starts) -------------------
CONFIG_VALUES = [
    ("num_simulations", 0), ("num_simulations", -3), ("num_unroll_steps", 0), ("td_steps", 0),
    ("train_batch_size", 0), ("gamma", 0.0), ("gamma", 1.5), ("value_support", (5, -5)), ("value_support", (3, 3)),
    ("reward_support", (1,)), ("reward_support", (0.5, 2)), ("visit_softmax_temperatures", [-1.0]),
    ("visit_softmax_temperatures", []), ("root_exploration_fraction", 1.5), ("root_dirichlet_alpha", 0.0),
    ("pb_c_init", -1.0), ("unvisited_value", "max"), ("optimizer_type", "lamb"), ("lr", 0.0),
    ("prioritized_replay_eps", 0.0), ("prioritized_replay_beta", 2.0), ("training_intensity", -1.0),
    ("grad_clip", -1.0), ("fixed_temperatures", [1.0, 0.5]), ("fixed_temperatures", [-1.0]),
    ("fixed_temperatures", "hot"), ("lr_decay_rate", 0.0), ("lr_decay_rate", 1.5), ("lr_decay_steps", 0),
    ("lr_warmup_steps", -1), ("send_weights_frequency", 0), ("weight_sync_frequency", -5),
    ("max_nonfinite_updates_in_a_row", 0), ("replay_window_step", 0), ("replay_window_step", 10**9),
    ("replay_window_step", 2.5), ("no_support", "yes"), ("scalar_loss", "l1"),
    ("target_update_interval", 0), ("reanalyse_value", "yes"), ("off_policy_correction_age", 0),
    ("off_policy_correction_age", 2.5), ("consistency_loss_weight", -1.0), ("consistency_projection_size", 2),
    ("reanalyse_policy_fraction", 1.5), ("reanalyse_policy_fraction", -0.1), ("search_algorithm", "alphazero"),
    ("max_num_considered_actions", 0), ("gumbel_scale", -1.0), ("c_visit", float("nan")), ("c_scale", "big"),
]


@pytest.mark.parametrize("field,value", CONFIG_VALUES, ids=[f"config-{f}={v!r}" for f, v in CONFIG_VALUES])
def test_bad_config_value(field, value):
    config = MuZeroConfig().environment("CartPole-v1")
    setattr(config, field, value)
    with pytest.raises(ValueError, match=f"`{field}`") as err:
        config.validate()
    assert "\n" not in str(err.value) and "expected" in str(err.value)


# --- config structure, environments and env options (validate, before any worker) -----------------------------------
def _validate(**fields):
    config = MuZeroConfig()
    for key, value in fields.items():
        setattr(config, key, value)
    config.validate()


STRUCTURE = [
    ("misspelled-key", lambda: MuZeroConfig().update_from_dict({"env": "CartPole-v1", "num_simulation": 5}).validate(),
     "`num_simulation`.*num_simulations"),
    ("replay-smaller-than-batch", lambda: _validate(env="CartPole-v1", replay_capacity=8, train_batch_size=16),
     "`replay_capacity`"),
    ("temperature-steps-count", lambda: _validate(env="CartPole-v1", visit_softmax_steps=[10]),
     "`visit_softmax_steps`"),
    ("temperature-steps-order", lambda: _validate(env="CartPole-v1", visit_softmax_steps=[20, 10]),
     "`visit_softmax_steps`"),
    ("unknown-env-id", lambda: _validate(env="CartPol-v1"), "Unknown env `CartPol-v1`.*CartPole-v1"),
    ("ale-option-on-cartpole", lambda: _validate(env="CartPole-v1", env_config={"episode_life": True}),
     "`episode_life`"),
    ("norm-states-without-range", lambda: _validate(env="CartPole-v1", env_config={"norm_states": True}),
     "`norm_states`"),
    ("sticky-actions-zero", lambda: _validate(env="CartPole-v1", env_config={"sticky_actions": 0}),
     "`sticky_actions`"),
    ("env-config-not-a-dict", lambda: _validate(env="CartPole-v1", env_config=[1, 2]), "`env_config`"),
]


@pytest.mark.parametrize("case,action,message", STRUCTURE, ids=[c for c, _, _ in STRUCTURE])
def test_bad_config_structure(case, action, message):
    with pytest.raises(ValueError, match=message) as err:
        action()
    assert "\n" not in str(err.value)


# --- the command line: exit code 2, one line, no traceback ---------------------------------------------------------
def _write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


CLI = [
    ("train-missing-file", lambda t: ["train", "nope.yaml"], "not found"),
    ("train-invalid-yaml", lambda t: ["train", _write(t, "a: [1, 2\n")], "not valid YAML"),
    ("train-unknown-config-key", lambda t: ["train", _write(t, "e:\n  run: MuZero\n  env: CartPole-v1\n  config:\n"
                                                            "    num_simulation: 5\n")], "`num_simulation`"),
    ("train-unknown-experiment-key", lambda t: ["train", _write(t, "e:\n  run: MuZero\n  env: CartPole-v1\n"
                                                                "  stopp: {training_iteration: 1}\n")], "`stopp`"),
    ("train-other-algorithm", lambda t: ["train", _write(t, "e:\n  run: PPO\n  env: CartPole-v1\n")],
     "`run` must be MuZero"),
    ("train-no-env", lambda t: ["train", _write(t, "e:\n  run: MuZero\n")], "no `env`"),
    ("train-unknown-env", lambda t: ["train", _write(t, "e:\n  run: MuZero\n  env: CartPol-v1\n")],
     "Unknown env `CartPol-v1`"),
    ("train-continuous-actions", lambda t: ["train", _write(t, "e:\n  run: MuZero\n  env: Pendulum-v1\n")],
     "Discrete action space"),
    ("train-config-not-json", lambda t: ["train", "tuned_examples/cartpole-muzero.yaml", "--config", "{a: 1}"],
     "--config is not valid JSON"),
    ("train-stop-not-object", lambda t: ["train", "tuned_examples/cartpole-muzero.yaml", "--stop", "[1]"],
     "--stop must be a JSON object"),
    ("train-bad-override-value", lambda t: ["train", "tuned_examples/cartpole-muzero.yaml", "--config",
                                            json.dumps({"gamma": 2})], "`gamma`"),
    ("evaluate-missing-path", lambda t: ["evaluate", str(t / "nope")], "no such checkpoint"),
    ("evaluate-not-a-checkpoint", lambda t: ["evaluate", str(t)], "not an RLlib checkpoint"),
    ("evaluate-conflicting-modes", lambda t: ["evaluate", str(t), "--only-prior", "--only-value"],
     "exclude each other"),
]


@pytest.mark.parametrize("case,argv,message", CLI, ids=[c for c, _, _ in CLI])
def test_bad_command_line(case, argv, message, tmp_path, capsys):
    code = cli.main(argv(tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert message in err or __import__("re").search(message, err), err


# --- build time: spaces the network cannot take ----------------------------------------------------------------------
class _ImageEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        super().__init__()

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


@pytest.mark.integration
def test_image_observations_with_the_fully_connected_network(ray_session):
    config = MuZeroConfig().environment(_ImageEnv).env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    with pytest.raises(ValueError, match="custom_model") as err:
        config.build_algo()
    assert "Box" in str(err.value)


@pytest.mark.integration
def test_continuous_actions_from_python(ray_session):
    with pytest.raises(ValueError, match="Discrete action space"):
        MuZeroConfig().environment("Pendulum-v1").build_algo()


@pytest.mark.integration
def test_replay_that_cannot_fit_in_memory(ray_session):
    config = MuZeroConfig().environment("CartPole-v1").env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    config.replay_capacity = 10**12
    with pytest.raises(ValueError, match="`replay_capacity`.*GiB.*bytes per transition") as err:
        config.build_algo()
    assert "\n" not in str(err.value)
