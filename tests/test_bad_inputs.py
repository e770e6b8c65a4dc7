"""Every place a user types, one table: each bad input gives a one-line error naming the problem and what is
accepted, before any Ray worker starts where possible; the CLI exits with code 2 and prints no traceback.

The parametrised ids make the count visible: ``pytest --collect-only -q tests/test_bad_inputs.py`` (issue #15: at
least 80). Most need no Ray: validation runs before any worker; the few that build an env runner are marked
``integration``.
"""

import json
import re

import gymnasium as gym
import numpy as np
import pytest

from rllib_muzero import MuZero, MuZeroConfig, cli

NAN, INF = float("nan"), float("inf")

# --- config values (MuZeroConfig.validate, called by build_algo and by the CLI before Ray starts) -------------------
CONFIG_VALUES = [
    ("num_simulations", 0), ("num_simulations", -3), ("num_unroll_steps", 0), ("td_steps", 0),
    ("train_batch_size", 0), ("gamma", 0.0), ("gamma", 1.5), ("value_support", (5, -5)), ("value_support", (3, 3)),
    ("reward_support", (1,)), ("reward_support", (0.5, 2)), ("visit_softmax_temperatures", [-1.0]),
    ("visit_softmax_temperatures", []), ("root_exploration_fraction", 1.5), ("root_dirichlet_alpha", 0.0),
    ("pb_c_init", -1.0), ("unvisited_value", "max"), ("optimizer_type", "lamb"), ("lr", 0.0),
    ("learner_precision", "fp16"), ("learner_precision", "bfloat16"),
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
    ("num_simulations", -1), ("num_reanalyse_workers", -1), ("num_reanalyse_workers", 1.5),
    ("num_reanalyse_workers", 1),  # without reanalyse_policy_fraction > 0
    ("num_cpus_per_reanalyse_worker", 0), ("num_cpus_per_reanalyse_worker", NAN), ("reanalyse_batches_in_flight", 0),
    # NaN and infinities, wherever a finite number is meant (issue #15)
    ("lr", INF), ("lr", NAN), ("gamma", NAN), ("value_loss_weight", NAN), ("reward_loss_weight", INF),
    ("policy_loss_weight", NAN), ("consistency_loss_weight", INF), ("pb_c_init", NAN), ("pb_c_base", INF),
    ("root_dirichlet_alpha", INF), ("root_exploration_fraction", NAN), ("training_intensity", NAN),
    ("training_intensity", INF), ("grad_clip", INF), ("weight_decay", NAN), ("momentum", NAN),
    ("prioritized_replay_alpha", INF), ("prioritized_replay_eps", INF), ("beta_increment_per_sampling", NAN),
    ("lr_decay_rate", NAN), ("gumbel_scale", INF), ("visit_softmax_temperatures", [1.0, NAN, 0.25]),
    ("fixed_temperatures", [INF]),
    # switches that must be booleans
    ("root_counts_as_visit", "yes"), ("use_target_transform", 1), ("use_q_max", None),
    ("store_buffer_in_checkpoints", "no"), ("debug", 0), ("keep_freed_host_memory", "yes"),
    # RLlib's own fields, which RLlib accepts unchecked on the old API stack
    ("num_env_runners", -1), ("num_env_runners", 1.5), ("num_envs_per_env_runner", 0),
    ("rollout_fragment_length", 0), ("rollout_fragment_length", "long"), ("seed", 1.5), ("seed", "zero"),
    ("seed", -1), ("num_cpus_per_env_runner", -0.5), ("num_gpus", NAN), ("num_cpus_for_main_process", INF),
    ("evaluation_interval", -1), ("evaluation_num_env_runners", -1), ("evaluation_duration", 0),
    ("evaluation_duration_unit", "games"), ("evaluation_config", [1]), ("sample_timeout_s", NAN),
    ("min_time_s_per_iteration", -1), ("explore", "yes"), ("max_requests_in_flight_per_env_runner", 0),
    ("metrics_num_episodes_for_smoothing", 0), ("model", "muzero_fc"),
    # RLlib's torch.compile options: the search never runs torch.compile; the learner's must name what torch has
    ("torch_compile_worker", True), ("torch_compile_learner", "yes"),
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
    ("compile-backend", lambda: _validate(env="CartPole-v1", torch_compile_learner=True,
                                          torch_compile_learner_dynamo_backend="inductr"),
     "`torch_compile_learner_dynamo_backend`.*inductor"),
    ("compile-mode", lambda: _validate(env="CartPole-v1", torch_compile_learner=True,
                                       torch_compile_learner_dynamo_mode="fast"),
     "`torch_compile_learner_dynamo_mode`.*max-autotune"),
    ("compile-what", lambda: _validate(env="CartPole-v1", torch_compile_learner=True,
                                       torch_compile_learner_what_to_compile="complete_update"),
     "`torch_compile_learner_what_to_compile`.*forward_train"),
    ("env-config-not-a-dict", lambda: _validate(env="CartPole-v1", env_config=[1, 2]), "`env_config`"),
    # the network: names and options checked statically, naming what is accepted
    ("unknown-custom-model", lambda: _validate(env="CartPole-v1", model={"custom_model": "muzero_fcc"}),
     r"`model.custom_model`='muzero_fcc'.*built-in network.*did you mean 'muzero_fc'"),
    ("no-custom-model", lambda: _validate(env="CartPole-v1", model={"fcnet_hiddens": [64]}),
     r"`model.custom_model`=None.*muzero_fc"),
    ("custom-model-path-not-importable",
     lambda: _validate(env="CartPole-v1", model={"custom_model": "no_such_module.Net"}),
     r"`model.custom_model`.*importing module `no_such_module` failed: ModuleNotFoundError"),
    ("misspelled-network-option", lambda: _validate(env="CartPole-v1", model={
        "custom_model": "muzero_fc", "custom_model_config": {"hiden_size": 32}}),
     r"`model.custom_model_config.hiden_size`=32.*'hidden_size'.*did you mean 'hidden_size'"),
    ("negative-network-option", lambda: _validate(env="CartPole-v1", model={
        "custom_model": "muzero_fc", "custom_model_config": {"hidden_size": -4}}),
     r"`model.custom_model_config.hidden_size`=-4: expected a positive integer"),
    ("network-layers-not-a-list", lambda: _validate(env="CartPole-v1", model={
        "custom_model": "muzero_fc", "custom_model_config": {"value_layers": 64}}),
     r"`model.custom_model_config.value_layers`=64: expected a list of layer widths"),
    ("resnet-unknown-norm", lambda: _validate(env="CartPole-v1", model={
        "custom_model": "muzero_resnet", "custom_model_config": {"norm": "group"}}),
     r"`model.custom_model_config.norm`='group': expected one of \['batch', 'layer', 'none'\]"),
    ("tiny-no-conv-stage", lambda: _validate(env="CartPole-v1", model={
        "custom_model": "muzero_tiny", "custom_model_config": {"conv_channels": []}}),
     r"`model.custom_model_config.conv_channels`=\[\]"),
    ("network-options-not-a-dict", lambda: _validate(env="CartPole-v1", model={
        "custom_model": "muzero_fc", "custom_model_config": ["hidden_size", 64]}), r"`model.custom_model_config`="),
    # env class paths that do not import: the module or attribute and the import error, in one line
    ("env-module-not-importable", lambda: _validate(env="no_such_module.MyEnv"),
     r"`env`='no_such_module.MyEnv'.*importing module `no_such_module` failed: ModuleNotFoundError: No module"),
    ("env-class-missing", lambda: _validate(env="rllib_muzero.envs.NoSuchEnv"),
     r"`env`='rllib_muzero.envs.NoSuchEnv'.*module `rllib_muzero.envs` has no attribute `NoSuchEnv`"),
    # evaluation overrides are validated with the config, named as evaluation_config.<key>
    ("evaluation-override", lambda: _validate(env="CartPole-v1", evaluation_config={"num_simulations": 0}),
     r"`evaluation_config.num_simulations`=0: expected an integer >= 1"),
    # RLlib's own (multi-line) messages come out on one line
    ("rllib-message-on-one-line", lambda: _validate(env="CartPole-v1", evaluation_parallel_to_training=True),
     r"`evaluation_parallel_to_training`.*`evaluation_num_env_runners`"),
    # -1 survives RLlib's copies of the config (get_state / to_dict drop RLlib's DEPRECATED_VALUE, -1)
    ("minus-one-survives-get-state", lambda: MuZeroConfig.from_state(
        MuZeroConfig().environment("CartPole-v1").training(num_simulations=-1).get_state()).validate(),
     r"`num_simulations`=-1"),
    ("minus-one-survives-to-dict", lambda: MuZeroConfig().update_from_dict(
        MuZeroConfig().environment("CartPole-v1").training(prioritized_replay_alpha=-1).to_dict()).validate(),
     r"`prioritized_replay_alpha`=-1"),
]


@pytest.mark.parametrize("case,action,message", STRUCTURE, ids=[c for c, _, _ in STRUCTURE])
def test_bad_config_structure(case, action, message):
    with pytest.raises(ValueError, match=message) as err:
        action()
    assert "\n" not in str(err.value)


# --- build_algo(): refused before any worker, and never replaced by a default ---------------------------------------
# RLlib's Algorithm.__init__ rebuilds the config through get_state()/from_state(), which dropped every value equal to
# -1 (RLlib's DEPRECATED_VALUE): `num_simulations=-1` used to run with 50 simulations.
BUILD = [("num_simulations", -1), ("td_steps", -1), ("lr", -1.0), ("gamma", -1), ("prioritized_replay_alpha", -1),
         ("seed", -1), ("num_env_runners", -1), ("lr", NAN), ("evaluation_interval", -1)]


@pytest.mark.parametrize("field,value", BUILD, ids=[f"build_algo-{f}={v!r}" for f, v in BUILD])
def test_bad_value_refused_by_build_algo(field, value):
    config = MuZeroConfig().environment("CartPole-v1").env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    setattr(config, field, value)
    with pytest.raises(ValueError, match=f"`{field}`={re.escape(repr(value))}") as err:
        config.build_algo()
    assert "\n" not in str(err.value)


def test_minus_one_refused_when_the_algorithm_is_built_from_the_config_directly():
    """Without build_algo's own check: the algorithm's copy of the config (get_state/from_state) keeps the -1."""
    config = MuZeroConfig().environment("CartPole-v1").env_runners(num_env_runners=0).training(num_simulations=-1)
    with pytest.raises(ValueError, match="`num_simulations`=-1"):
        MuZero(config=config)


def test_a_network_registered_by_the_user_is_accepted_with_its_own_options():
    from ray.rllib.models import ModelCatalog

    from rllib_muzero.models import FullyConnectedMuZeroModel

    class MyNet(FullyConnectedMuZeroModel):
        DEFAULT_CONFIG = {**FullyConnectedMuZeroModel.DEFAULT_CONFIG, "dropout": 0.0}

    ModelCatalog.register_custom_model("test_bad_inputs_my_net", MyNet)
    _validate(env="CartPole-v1",
              model={"custom_model": "test_bad_inputs_my_net", "custom_model_config": {"dropout": 0.1}})
    _validate(env="CartPole-v1", model={"custom_model": MyNet, "custom_model_config": {"dropout": 0.1}})
    _validate(env="CartPole-v1", model={"custom_model": "rllib_muzero.models.FullyConnectedMuZeroModel"})


# --- the command line: exit code 2, one line, no traceback ---------------------------------------------------------
def _write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


CARTPOLE = "tuned_examples/cartpole-muzero.yaml"
_EXP = "e:\n  run: MuZero\n  env: CartPole-v1\n"


def _train(*args):
    return lambda t: ["train", CARTPOLE, *args]


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
    # stop criteria: numbers, and metrics MuZero reports (Tune only warns about an unknown one and trains forever)
    ("train-stop-value-not-a-number", _train("--stop", '{"training_iteration": "ten"}'),
     r"stop criterion `training_iteration`='ten' \(--stop\): expected a finite number"),
    ("train-stop-value-nan", _train("--stop", '{"time_total_s": NaN}'), r"`time_total_s`=nan.*finite number"),
    ("train-stop-nested-mapping", _train("--stop", '{"env_runners": {"episode_return_mean": 400}}'),
     r"`env_runners`=.*joined by '/', e.g. env_runners/episode_return_mean"),
    ("train-stop-unknown-metric", _train("--stop", '{"episode_reward_mean": 100}'),
     r"`episode_reward_mean`=100 \(--stop\): expected a metric MuZero reports \(did you mean "
     r"'env_runners/episode_reward_mean'"),
    ("train-stop-misspelled-nested-metric", _train("--stop", '{"env_runners/episode_return_mena": 100}'),
     r"`env_runners/episode_return_mena`.*did you mean 'env_runners/episode_return_mean'"),
    ("train-stop-evaluation-metric-without-evaluation",
     _train("--stop", '{"evaluation/env_runners/episode_return_mean": 100}'),
     r"`evaluation/env_runners/episode_return_mean`.*`evaluation_interval` >= 1"),
    ("train-file-stop-unknown-metric", lambda t: ["train", _write(t, _EXP + "  stop: {num_env_steps_trained_"
                                                                   "lifetime: 1000}\n")],
     r"`num_env_steps_trained_lifetime`=1000 \(`stop` of experiment `e`\).*did you mean"),
    ("train-file-stop-not-a-mapping", lambda t: ["train", _write(t, _EXP + "  stop: 100\n")],
     r"`stop` of experiment `e` must map metric names to numbers"),
    # experiment settings Tune takes as given
    ("train-negative-checkpoint-freq", _train("--checkpoint-freq", "-1"), r"--checkpoint-freq must be an integer >= 0"),
    ("train-checkpoint-freq-not-an-integer", _train("--checkpoint-freq", "often"),
     r"argument --checkpoint-freq: invalid int value: 'often'"),
    ("train-unknown-flag", _train("--stop-after", "2"), r"unrecognized arguments: --stop-after 2"),
    ("train-num-samples-zero", _train("--num-samples", "0"), r"--num-samples must be an integer >= 1"),
    ("train-abbreviated-flag", _train("--num-sample", "2"), r"unrecognized arguments: --num-sample 2"),
    ("train-file-num-samples-zero", lambda t: ["train", _write(t, _EXP + "  num_samples: 0\n")],
     r"`num_samples`=0: expected an integer >= 1"),
    ("train-file-negative-checkpoint-frequency",
     lambda t: ["train", _write(t, _EXP + "  checkpoint_config: {checkpoint_frequency: -5}\n")],
     r"checkpoint_frequency.*-5"),
    ("train-file-unknown-checkpoint-option",
     lambda t: ["train", _write(t, _EXP + "  checkpoint_config: {frequency: 5}\n")],
     r"invalid `checkpoint_config`.*frequency"),
    # resources the trial can never get: Tune would keep it PENDING forever
    ("train-num-cpus-zero", _train("--num-cpus", "0"), r"--num-cpus must be an integer >= 1"),
    ("train-fewer-cpus-than-the-trial-needs", _train("--num-cpus", "1", "--config", '{"num_env_runners": 2}'),
     r"one trial needs 3 CPUs \(`num_cpus_for_main_process`=1 \+ `num_env_runners`=2 x "
     r"`num_cpus_per_env_runner`=1\).*wait for resources forever"),
    ("train-gpus-the-machine-lacks", _train("--config", '{"num_gpus": 1000}'),
     r"one trial needs 1000 GPUs.*wait for resources forever"),
    # config mistakes that used to fail only inside Tune (or never)
    ("train-negative-env-runners", _train("--config", '{"num_env_runners": -1}'), r"`num_env_runners`=-1"),
    ("train-nan-learning-rate", _train("--config", '{"lr": NaN}'), r"`lr`=nan: expected a positive finite number"),
    ("train-seed-not-an-integer", _train("--config", '{"seed": "0"}'), r"`seed`='0'"),
    ("train-unknown-network", _train("--config", '{"model": {"custom_model": "resnet"}}'),
     r"`model.custom_model`='resnet'.*did you mean 'muzero_resnet'"),
    ("train-misspelled-network-option",
     _train("--config", '{"model": {"custom_model_config": {"hidden_sise": 32}}}'),
     r"`model.custom_model_config.hidden_sise`.*did you mean 'hidden_size'"),
    ("train-env-class-not-importable", lambda t: ["train", _write(t, "e:\n  run: MuZero\n  env: my_envs.Corridor\n")],
     r"`env`='my_envs.Corridor'.*importing module `my_envs` failed: ModuleNotFoundError: No module named 'my_envs'"),
    ("train-wrong-action-mask-shape",
     lambda t: ["train", _write(t, "e:\n  run: MuZero\n  env: tests.test_bad_inputs.BadMaskEnv\n")],
     r"action mask `action_mask` has shape \(3,\); expected \(2,\)"),
    ("evaluate-num-cpus-zero", lambda t: ["evaluate", str(t), "--num-cpus", "0"],
     r"--num-cpus must be an integer >= 1"),
]


def _must_not_start(*args, **kwargs):
    raise AssertionError("the command started Ray or Tune instead of refusing its input")


@pytest.mark.parametrize("case,argv,message", CLI, ids=[c for c, _, _ in CLI])
def test_bad_command_line(case, argv, message, tmp_path, capsys, monkeypatch):
    import ray
    from ray import tune

    monkeypatch.setattr(ray, "init", _must_not_start)  # a mistake must end before Ray starts, never in a training run
    monkeypatch.setattr(tune, "Tuner", _must_not_start)
    code = cli.main(argv(tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert message in err or re.search(message, err), err


def test_stop_keys_that_muzero_reports_are_accepted():
    stop = {"training_iteration": 3, "num_env_steps_sampled_lifetime": 1e4, "env_runners/episode_return_mean": 475,
            "evaluation/env_runners/episode_return_mean": 475, "time_total_s": 60.0,
            "info/learner/default_policy/learner_stats/total_loss": 0.1,
            "info/learner/default_policy/muzero/replay_size": 1000, "env_runners/custom_metrics/my_metric_mean": 1}
    assert cli.check_stop_criteria(stop, "--stop", {"evaluation_interval": 1}) == stop


@pytest.mark.integration
def test_every_metric_a_trial_reports_is_an_accepted_stop_key(ray_session):
    """Guards cli.REPORTED_METRICS against drift: what one iteration (with evaluation) reports, flattened as Tune
    flattens it, must all be accepted as stop keys."""
    from ray.tune.utils import flatten_dict

    config = (MuZeroConfig().environment("CartPole-v1")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=8)
              .training(num_simulations=2, train_batch_size=8, num_steps_sampled_before_learning_starts=8,
                        num_unroll_steps=2, td_steps=3, replay_capacity=1000,
                        model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 8}})
              .evaluation(evaluation_interval=1, evaluation_duration=1))
    algo = config.build_algo()
    try:
        result = flatten_dict(algo.train(), delimiter="/")
    finally:
        algo.stop()
    # Every numeric metric (NaN until an episode ends), except the process id and the echoed config.
    numeric = {k: 1 for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k != "pid" and not k.startswith("config/")}
    assert {"env_runners/episode_return_mean", "evaluation/env_runners/episode_return_mean",
            "training_iteration"} <= set(numeric)
    cli.check_stop_criteria(numeric, "--stop", {"evaluation_interval": 1})


# --- build time: spaces the network cannot take ----------------------------------------------------------------------
class _OneStepEnv(gym.Env):
    """A random observation of its space, then the episode ends: only the spaces matter to these tests."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        super().__init__()

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


class BadMaskEnv(_OneStepEnv):
    """Two actions, but an action mask of three entries (the CLI test names it by its class path)."""

    observation_space = gym.spaces.Dict({"observations": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
                                         "action_mask": gym.spaces.Box(0.0, 1.0, (3,), np.float32)})


class _ImageEnv(_OneStepEnv):
    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)


@pytest.mark.integration
def test_image_observations_with_the_fully_connected_network(ray_session):
    config = MuZeroConfig().environment(_ImageEnv).env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    with pytest.raises(ValueError, match="custom_model") as err:
        config.build_algo()
    assert "Box" in str(err.value)


@pytest.mark.integration
def test_wrong_action_mask_shape_from_python(ray_session):
    config = MuZeroConfig().environment(BadMaskEnv).env_runners(num_env_runners=0, num_envs_per_env_runner=1)
    with pytest.raises(ValueError, match=r"action mask `action_mask` has shape \(3,\); expected \(2,\)") as err:
        config.build_algo()
    assert "\n" not in str(err.value)


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
