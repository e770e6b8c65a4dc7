"""The scripts in examples/ run, and do what their docstrings say (one shared Ray session, small budgets).

The examples are imported as the package ``examples`` from the repository root; the Ray workers of the YAML and
scale-out tests import them too, which works because Ray puts the driver's working directory (pytest runs from the
repository root) on every worker's ``sys.path``.
"""

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ray.rllib.models import ModelCatalog
from ray.rllib.models.torch.torch_modelv2 import TorchModelV2
from torch import nn

from rllib_muzero import MuZeroModelV2
from rllib_muzero.serving import ServingAgent, export_for_serving

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import callbacks, custom_env, custom_network, evaluation_workers, scale_out  # noqa: E402
from examples import serve_without_ray as serving_example  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The examples search and learn in this process with tiny networks. With more torch threads than free cores
    (a busy 2-core machine) every small op waits for a time slice: the corridor run measured 17 s with one thread and
    217 s with two next to two busy processes. Restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------- 1. custom env
def test_custom_env_untrained_greedy_agent_never_reaches_the_goal(ray_session):
    """The control for the next test: without training, greedy play stays in cell 0 until the time limit."""
    custom_env.register()
    algo = custom_env.make_config(length=5).build_algo()
    try:
        returns = custom_env.greedy_returns(algo, length=5)
    finally:
        algo.stop()
    assert returns.tolist() == [-20.0] * 3  # max_steps = 4 * length steps at -1, never terminated


def test_custom_env_registered_with_tune_learns_the_corridor_optimum(ray_session):
    summary = custom_env.main(["--iterations", "40", "--length", "5", "--seed", "0"])
    assert summary["env_steps"] == 40 * 4 * 10  # fixed budget: iterations x envs x fragment length
    assert summary["optimal_return"] == -4.0
    assert summary["greedy_returns"] == [-4.0, -4.0, -4.0]
    assert summary["solved"]


def test_custom_env_yaml_trains_through_the_cli(ray_session, tmp_path):
    from rllib_muzero import cli

    code = cli.main(["train", str(ROOT / "examples" / "custom_env.yaml"), "--stop", '{"training_iteration": 2}',
                     "--storage-path", str(tmp_path), "--quiet"])
    assert code == 0
    trial_dirs = [d for d in (tmp_path / "corridor-muzero").iterdir() if d.is_dir()]
    assert len(trial_dirs) == 1
    params = json.loads((trial_dirs[0] / "params.json").read_text())
    assert params["env"] == "examples.custom_env.CorridorEnv"
    assert params["env_config"] == {"length": 5}
    with open(trial_dirs[0] / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    # Corridor returns are in [-max_steps, optimum] = [-20, -4] (CartPole's would be positive).
    episode_return = float(rows[-1]["env_runners/episode_return_mean"])
    assert -20.0 <= episode_return <= -4.0


# ---------------------------------------------------------------------------------------------------- 2. network
def test_custom_network_is_selected_by_name_and_trains(ray_session):
    summary = custom_network.main(["--iterations", "1", "--width", "16"])
    assert summary["model_class"] == "ResidualMLPNet"
    assert summary["iterations"] == 1
    assert math.isfinite(summary["learner_stats"]["total_loss"])  # one learner update happened


class _NoDynamics(TorchModelV2, nn.Module):
    """A TorchModelV2 with representation and prediction but no dynamics (nor the base class's inference)."""

    def __init__(self, obs_space, action_space, num_outputs, model_config, name, **kwargs):
        TorchModelV2.__init__(self, obs_space, action_space, num_outputs, model_config, name)
        nn.Module.__init__(self)
        self.fc = nn.Linear(4, 2)

    def forward(self, input_dict, state, seq_lens):
        return self.fc(input_dict["obs"]), state

    def representation(self, obs):
        return obs

    def prediction(self, hidden):
        return self.fc(hidden), torch.zeros(len(hidden), 21)


class _WrongRewardShape(custom_network.ResidualMLPNet):
    def dynamics(self, hidden, action):
        next_hidden, reward_logits = super().dynamics(hidden, action)
        return next_hidden, reward_logits[:, :3]  # (B, 3) instead of (B, Sr) = (B, 7)


class _AbstractDynamics(MuZeroModelV2):
    def representation(self, obs):
        return obs

    def prediction(self, hidden):
        return hidden, hidden


@pytest.mark.parametrize(("model_class", "error", "message"), [
    (_NoDynamics, TypeError, r"_NoDynamics lacks the MuZero method\(s\) \['dynamics'"),
    (_WrongRewardShape, ValueError, r"recurrent_inference\(hidden, action\)\.reward_logits must have shape "
                                    r"\(B, Sr\) = \(2, 7\), got \(2, 3\)"),
    (_AbstractDynamics, TypeError, r"abstract method.*dynamics"),
])
def test_incomplete_network_is_refused_by_build_algo(ray_session, model_class, error, message):
    name = f"test_{model_class.__name__.lower()}"
    ModelCatalog.register_custom_model(name, model_class)
    config = custom_network.make_config().training(model={"custom_model": name, "custom_model_config": {}})
    with pytest.raises(error, match=message):
        config.build_algo()


# ---------------------------------------------------------------------------------------------------- 3. callbacks
def test_callbacks_report_search_statistics_as_custom_metrics(ray_session):
    results = callbacks.main(["--iterations", "3"])
    result = results[-1]
    custom = result["env_runners"]["custom_metrics"]
    # Written in on_episode_end from what on_postprocess_trajectory read out of the SEARCH_* columns.
    assert 1.0 <= custom["search_depth_mean"] <= 4.0  # num_simulations=4: depth between 1 and 4
    assert 0.0 <= custom["search_policy_entropy_mean"] <= math.log(2) + 1e-6
    assert math.isfinite(custom["search_root_value_mean"]) and math.isfinite(custom["search_q_max_mean"])
    # Every step of every finished episode was searched and seen by the callback exactly once.
    assert custom["search_steps_mean"] == pytest.approx(result["env_runners"]["episode_len_mean"])
    # on_sample_end counted on the env runner, on_train_result summed it on the driver.
    assert [r["searched_steps_lifetime"] for r in results] == [r["num_env_steps_sampled_lifetime"] for r in results]
    assert results[-1]["searched_steps_lifetime"] == 3 * 4 * 10


# ---------------------------------------------------------------------------------------------------- 4. evaluation
def test_evaluation_runs_greedy_search_without_root_noise(ray_session):
    algo = evaluation_workers.make_config(episodes=2).build_algo()
    try:
        eval_policy = algo.eval_env_runner.get_policy()
        train_policy = algo.get_policy()
        assert eval_policy is not train_policy
        assert eval_policy.config["explore"] is False and train_policy.config["explore"] is True
        eval_rng_before = eval_policy.rng.bit_generator.state
        train_rng_before = train_policy.rng.bit_generator.state
        result = algo.train()
        evaluation = result["evaluation"]["env_runners"]
        assert evaluation["num_episodes"] == 2
        assert evaluation["episode_return_mean"] > 0
        assert eval_policy.global_timestep > 0  # the evaluation policy did search
        # Root noise and temperature sampling are the only draws from a policy's generator: the evaluation
        # policy's is untouched, the exploring training policy's moved.
        assert eval_policy.rng.bit_generator.state == eval_rng_before
        assert train_policy.rng.bit_generator.state != train_rng_before
    finally:
        algo.stop()


# ---------------------------------------------------------------------------------------------------- 5. serving
def _randomise_weights(model: nn.Module, seed: int) -> None:
    """Random weights everywhere (the zero-initialised heads would otherwise make every greedy action 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def test_served_agent_acts_like_rllib_in_process_and_without_ray(ray_session, tmp_path):
    algo = serving_example.make_config().build_algo()
    try:
        _randomise_weights(algo.get_policy().model, seed=0)
        observations = serving_example.sample_observations(8, seed=0)  # what main() acts on
        expected = [int(algo.compute_single_action(obs, explore=False)) for obs in observations]
        expected_search = algo.get_policy().search(observations, explore=False)
        expected_root_values = expected_search.root_value.copy()
        expected_visits = expected_search.visit_counts.copy()
        path = export_for_serving(algo, tmp_path / "agent.muzero.pt")
        checkpoint = algo.save(str(tmp_path / "checkpoint")).checkpoint.path
    finally:
        algo.stop()
    assert len(set(expected)) > 1  # the comparison is not trivially all-zeros

    agent = ServingAgent.load(path)
    search = agent.search(observations)  # same network, supports, value transform and search settings
    np.testing.assert_array_equal(search.visit_counts, expected_visits)
    np.testing.assert_allclose(search.root_value, expected_root_values, rtol=1e-6, atol=1e-6)
    assert [agent.act(obs) for obs in observations] == expected
    assert agent.act_batch(observations).tolist() == expected
    assert torch.load(path, weights_only=True)["spec"]["search"]["num_simulations"] == 8

    # The script: restore the RLlib checkpoint, export it, act in this process and in a fresh one without Ray.
    summary = serving_example.main(["--checkpoint", checkpoint, "--path", str(tmp_path / "from_checkpoint.pt")])
    assert summary["rllib_actions"] == expected
    assert summary["served_actions_in_process"] == expected
    assert summary["served_actions_without_ray"] == expected
    assert summary["serving_process_ray_initialized"] is False
    assert summary["served_episode_return"] >= 1


def test_served_agent_applies_rllibs_preprocessor_and_finds_a_custom_network(ray_session, tmp_path):
    custom_network.register()
    config = (
        serving_example.make_config()
        .environment("FrozenLake-v1", env_config={"is_slippery": False})  # Discrete(16) obs: one-hot preprocessor
        .training(model={"custom_model": custom_network.MODEL_NAME,
                         "custom_model_config": {"width": 8, "num_blocks": 1}})
    )
    algo = config.build_algo()
    try:
        _randomise_weights(algo.get_policy().model, seed=2)
        observations = list(range(16))
        expected = [int(algo.compute_single_action(obs, explore=False)) for obs in observations]
        path = export_for_serving(algo, tmp_path / "frozenlake.muzero.pt")
    finally:
        algo.stop()
    assert len(set(expected)) > 1

    agent = ServingAgent.load(path)
    assert type(agent.model) is custom_network.ResidualMLPNet
    assert agent.preprocessor is not None
    assert [agent.act(obs) for obs in observations] == expected


# ---------------------------------------------------------------------------------------------------- 6. scale out
def test_scale_out_replay_gets_samples_from_both_remote_runners(ray_session):
    summary = scale_out.main(["--iterations", "2"])
    per_runner = summary["steps_per_runner"]
    # Asynchronous sampling (the default with remote runners): a faster runner may deliver more fragments, and a
    # runner's last fragment may be sampled but not stored yet when the example counts.
    assert per_runner[0] == 0 and per_runner[1] > 0 and per_runner[2] > 0  # local runner idle; both remote sampled
    assert summary["replay_num_added"] == summary["num_env_steps_sampled_lifetime"] <= sum(per_runner.values())
    assert summary["num_updates"] > 0  # the driver learned from the runners' samples
