"""Gumbel MuZero through every surface: config, acting (explore / greedy), replay targets, reanalyse, action masks,
`rllib-muzero evaluate` with tree pictures, and serving without Ray."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from rllib_muzero import MuZeroConfig, columns
from rllib_muzero.acting import search_with_model
from rllib_muzero.gumbel import GumbelSearchOutput
from rllib_muzero.serving import ServingAgent, export_for_serving
from tests.test_evaluate import run_cli

pytestmark = pytest.mark.integration


def gumbel_config(**training):
    options = dict(search_algorithm="gumbel", num_simulations=4, max_num_considered_actions=2, num_unroll_steps=3,
                   td_steps=5, train_batch_size=16, num_steps_sampled_before_learning_starts=32,
                   replay_capacity=2000, value_support=(-10, 10), reward_support=(-3, 3))
    options.update(training)
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(**options, model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        .debugging(seed=0)
    )


@pytest.fixture(scope="module")
def gumbel_algo(ray_session, tmp_path_factory):
    algo = gumbel_config(reanalyse_policy_fraction=0.5).build_algo()
    trial = tmp_path_factory.mktemp("gumbel") / "MuZero_CartPole-v1_00000"
    for i in (1, 2):
        algo.train()
        algo.save(str(trial / f"checkpoint_{i:06d}"))
    yield algo, trial
    algo.stop()


def test_acting_uses_the_search_action_and_stores_the_improved_policy(gumbel_algo):
    algo, _ = gumbel_algo
    policy = algo.get_policy()
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32) * 0.05
    actions, _, extras = policy.compute_actions_from_input_dict({"obs": obs}, explore=False)
    result = policy.last_search
    assert isinstance(result, GumbelSearchOutput)
    np.testing.assert_array_equal(actions, result.action)
    np.testing.assert_allclose(extras[columns.SEARCH_POLICY], result.action_weights, rtol=1e-6)
    # Greedy acting has no noise: the same observations give the same actions and targets every time.
    again, _, extras_again = policy.compute_actions_from_input_dict({"obs": obs}, explore=False)
    np.testing.assert_array_equal(actions, again)
    np.testing.assert_array_equal(extras[columns.SEARCH_POLICY], extras_again[columns.SEARCH_POLICY])
    assert not policy.last_search.gumbel.any()
    # Exploring draws Gumbel noise.
    policy.compute_actions_from_input_dict({"obs": obs}, explore=True)
    assert policy.last_search.gumbel.any()


def test_the_replay_holds_improved_policies_not_visit_counts(gumbel_algo):
    algo, _ = gumbel_algo
    replay = algo.replays["default_policy"]
    stored = replay._policies[: len(replay)].astype(np.float32)
    # With 4 simulations over 2 actions, visit fractions are multiples of 1/4; the improved policy is not.
    off_grid = np.abs(stored * 4 - np.round(stored * 4)) > 0.01
    assert off_grid.any()


def test_serving_acts_like_the_policy(gumbel_algo, tmp_path):
    algo, _ = gumbel_algo
    path = export_for_serving(algo, tmp_path / "gumbel.muzero.pt")
    agent = ServingAgent.load(path)
    assert agent.search_config["search_algorithm"] == "gumbel"
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    want = algo.get_policy().compute_actions_from_input_dict({"obs": obs[None].astype(np.float32)},
                                                             explore=False)[0][0]
    assert agent.act(obs) == int(want)


def test_evaluate_plays_and_draws_gumbel_trees(gumbel_algo, tmp_path):
    _, trial = gumbel_algo
    code, stdout, stderr = run_cli([
        "evaluate", str(trial / "checkpoint_000002"), "--games-per-evaluation", "2", "--max-steps", "6",
        "--save-mcts-after-step", "4", "--output-dir", str(tmp_path)])
    assert code == 0, stderr
    assert "mcts" in stdout
    trees = list(tmp_path.rglob("*.dot"))
    assert trees and all("digraph" in t.read_text() for t in trees)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary[0]["lengths"]


def test_evaluate_refuses_a_temperature_for_gumbel_search_and_explores_with_its_noise(gumbel_algo, tmp_path):
    """Gumbel search plays its own action, so `--eval-temperatures 0.5` would silently replay the greedy games: an
    error naming the option, before any game; `--use-exploration-noise` is the way to explore, and changes play."""
    from rllib_muzero.play import EvaluationError, EvaluationOptions, play_games, run_games

    algo, trial = gumbel_algo
    code, stdout, stderr = run_cli(["evaluate", str(trial / "checkpoint_000002"), "--eval-temperatures", "0", "0.5",
                                    "--max-steps", "3", "--output-dir", str(tmp_path)])
    assert code != 0 and "--eval-temperatures" in stderr and "'gumbel'" in stderr
    assert "--use-exploration-noise" in stderr
    assert "T=0:" not in stdout  # refused before the T = 0 games too
    policy = algo.get_policy()
    with pytest.raises(EvaluationError, match="temperature"):
        run_games(policy, lambda: gym.make("CartPole-v1"), EvaluationOptions(temperature=0.5, max_steps=3))
    with pytest.raises(EvaluationError, match="temperature"):  # the benchmarks' play_games alike
        play_games(policy, lambda: gym.make("CartPole-v1"), 1, seed=0, temperature=0.5, max_steps=3)

    searches = []
    real_search = policy.search

    def recording_search(*args, **kwargs):
        searches.append(real_search(*args, **kwargs))
        return searches[-1]

    policy.search = recording_search
    try:
        for noise in (False, True):
            searches.clear()
            options = EvaluationOptions(num_games=2, max_steps=5, use_exploration_noise=noise)
            run_games(policy, lambda: gym.make("CartPole-v1"), options)
            assert searches and all(bool(out.gumbel.any()) is noise for out in searches)
    finally:
        del policy.search


def test_masked_actions_are_never_chosen_by_the_gumbel_search(gumbel_algo):
    algo, _ = gumbel_algo
    policy = algo.get_policy()
    obs = torch.zeros((3, 4))
    invalid = np.array([[True, False], [False, True], [True, False]])
    for explore in (False, True):
        result = search_with_model(policy.model, obs, policy.config, value_support=policy.value_support,
                                   reward_support=policy.reward_support, use_target_transform=True, explore=explore,
                                   rng=np.random.default_rng(0), invalid_actions=invalid)
        np.testing.assert_array_equal(result.action, [1, 0, 1])
        assert (result.action_weights[invalid] == 0).all()
