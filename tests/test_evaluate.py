"""`rllib-muzero evaluate` and its Python API: tables, plots, GIFs, search trees, acting modes, parallel play, errors.

One tiny CartPole run (2 iterations, 4 simulations) is saved as a Tune-like experiment with two checkpoints; the
command line is run once on it with every output switched on, and the tests below read what it wrote.
"""

import contextlib
import io
import json
import re
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch

from rllib_muzero import MuZeroConfig, cli
from rllib_muzero.evaluate import evaluate, write_trees
from rllib_muzero.play import EvaluationError
from rllib_muzero.visualize import _caption_band_height, side_by_side

pytestmark = pytest.mark.integration

NUM_SIMULATIONS = 4
MAX_STEPS = 8  # caps every game of the command-line run (an untrained CartPole game lasts ~8-40 steps)
TREES_FROM = 5  # --save-mcts-after-step
GAMES = 2
TEMPERATURES = ("0", "1")


def tiny_config():
    """A CartPole config small enough for CI (as tests/test_algorithm.py): in-process, small search and network."""
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(num_simulations=NUM_SIMULATIONS, num_unroll_steps=3, td_steps=5, train_batch_size=16,
                  num_steps_sampled_before_learning_starts=32, replay_capacity=2000,
                  value_support=(-10, 10), reward_support=(-3, 3),
                  model={"custom_model": "muzero_fc",
                         "custom_model_config": {"hidden_size": 16, "representation_layers": [16],
                                                 "dynamics_layers": [16], "reward_layers": [16],
                                                 "value_layers": [16], "policy_layers": [16]}})
        .debugging(seed=0)
    )


@pytest.fixture(scope="module")
def experiment(ray_session, tmp_path_factory):
    """(algo, experiment dir, trial dir): checkpoint_000001 and checkpoint_000002 in a Tune-like layout."""
    root = tmp_path_factory.mktemp("experiment")
    trial = root / "MuZero_CartPole-v1_00000"
    algo = tiny_config().build_algo()
    for i in (1, 2):
        algo.train()
        algo.save(str(trial / f"checkpoint_{i:06d}"))
    yield algo, root, trial
    algo.stop()


def run_cli(argv):
    """cli.main in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_run(experiment, tmp_path_factory):
    """One command-line evaluation: 2 checkpoints x 2 temperatures x 2 games with every output switched on."""
    _, root, _ = experiment
    out_dir = tmp_path_factory.mktemp("evaluation")
    code, stdout, stderr = run_cli([
        "evaluate", str(root), "--checkpoints", "1", "checkpoint_000002",
        "--games-per-evaluation", str(GAMES), "--eval-temperatures", *TEMPERATURES, "--max-steps", str(MAX_STEPS),
        "--plot-summary", "--include-policy", "--include-bounds", "--smooth", "2", "--detailed-label",
        "--save-gif-as", "cartpole", "--save-mcts-after-step", str(TREES_FROM), "--output-dir", str(out_dir),
    ])
    assert code == 0, stderr
    summary = json.loads((out_dir / "summary.json").read_text())
    return out_dir, stdout, summary


def test_table_compares_two_checkpoints_at_two_temperatures(cli_run):
    _, stdout, summary = cli_run
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["checkpoint", "T", "mode"] and "G0" in lines[0]
    rows = [line.split() for line in lines[2:6]]
    assert [(r[0], r[1]) for r in rows] == [("checkpoint_000001", "0"), ("checkpoint_000001", "1"),
                                            ("checkpoint_000002", "0"), ("checkpoint_000002", "1")]
    assert all(r[2] == "mcts" and r[3] == str(NUM_SIMULATIONS) and r[4] == str(GAMES) for r in rows)
    assert lines[6] == ""  # the table ends after the four rows
    for row, s in zip(rows, summary):
        assert row[5:8] == [f"{s['return_mean']:.2f}", "±", f"{s['return_std']:.2f}"]
        assert row[-1] == f"{s['discounted_return_mean']:.3f}"
        assert len(s["lengths"]) == GAMES and all(1 <= n <= MAX_STEPS for n in s["lengths"])
        # The actual discounted return from the start of a CartPole game (reward 1 per step), averaged over games.
        expected_g0 = np.mean([(1 - s["discount"] ** n) / (1 - s["discount"]) for n in s["lengths"]])
        assert s["discounted_return_mean"] == pytest.approx(expected_g0)


def test_summary_plot_is_a_png_with_a_policy_panel_per_evaluation(cli_run):
    from PIL import Image

    out_dir, stdout, _ = cli_run
    path = out_dir / "summary.png"
    assert f"wrote {path}" in stdout
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        # 3 metric panels + 4 policy panels (--include-policy): 2.6 in per panel + 0.6 in, at 100 dpi.
        assert image.size == (1100, round((2.6 * 7 + 0.6) * 100))


def test_gifs_hold_the_reset_frame_and_one_frame_per_step(cli_run):
    from PIL import Image

    out_dir, _, summary = cli_run
    for s in summary:
        for game, length in enumerate(s["lengths"]):
            path = out_dir / f"cartpole-{s['label']}-T{s['temperature']:g}-game{game}.gif"
            with Image.open(path) as gif:
                assert gif.format == "GIF"
                assert gif.n_frames == length + 1
                assert gif.size == (600, 400 + _caption_band_height())  # the caption band above the frame


def parse_dot(text):
    """Nodes {id: (visits, chosen)} and edges [(parent, child, action, chosen)] of a tree written by tree_to_dot."""
    assert text.startswith("digraph mcts {") and text.rstrip().endswith("}")
    nodes = {int(m[1]): (int(m[2]), "penwidth" in m[3])
             for m in re.finditer(r'^  n(\d+) \[label="(?:root|node \d+)\\nN=(\d+)  V=[^"]*"(.*)\];$', text, re.M)}
    edges = [(int(m[1]), int(m[2]), int(m[3]), "penwidth" in m[4])
             for m in re.finditer(r'^  n(\d+) -> n(\d+) \[label="a=(\d+)\\nP=[\d.]+  r=[-\d.]+"(.*)\];$', text, re.M)]
    body = [ln for ln in text.splitlines()[1:-1] if not ln.lstrip().startswith(("graph ", "node ", "edge "))]
    assert len(body) == len(nodes) + len(edges), "every line is a node or an edge"
    return nodes, edges


def test_search_trees_are_dot_files_with_the_root_visited_once_per_simulation_plus_one(cli_run, experiment):
    out_dir, _, summary = cli_run
    algo, _, _ = experiment
    root_counts_as_visit = algo.get_policy().config["root_counts_as_visit"]
    assert root_counts_as_visit  # the default: the root starts with one visit (mcts.py convention 4)
    num_files = 0
    for s in summary:
        folder = out_dir / "mcts" / f"{s['label']}-T{s['temperature']:g}"
        for game, length in enumerate(s["lengths"]):
            steps = sorted(int(p.stem.split("step")[1]) for p in folder.glob(f"game{game}-step*.dot"))
            assert steps == list(range(TREES_FROM, length))
            for step in steps:
                dot = folder / f"game{game}-step{step:04d}.dot"
                nodes, edges = parse_dot(dot.read_text())
                num_files += 1
                assert len(nodes) == NUM_SIMULATIONS + 1 and len(edges) == NUM_SIMULATIONS
                assert nodes[0][0] == NUM_SIMULATIONS + int(root_counts_as_visit)
                root_children = [(child, action) for parent, child, action, _ in edges if parent == 0]
                assert sum(nodes[child][0] for child, _ in root_children) == NUM_SIMULATIONS
                chosen = [(child, action) for parent, child, action, bold in edges if parent == 0 and bold]
                assert len(chosen) == 1 and nodes[chosen[0][0]][1]  # one bold edge from the root to a bold node
                if s["temperature"] == 0:  # greedy: the played child is the most visited one
                    assert nodes[chosen[0][0]][0] == max(nodes[child][0] for child, _ in root_children)
                png = dot.with_suffix(".png")
                assert png.exists() == (shutil.which("dot") is not None)
    assert num_files > 0


def test_single_game_gif_is_named_as_asked_and_only_prior_runs(experiment, tmp_path):
    from PIL import Image

    _, _, trial = experiment
    code, stdout, stderr = run_cli(["evaluate", str(trial / "checkpoint_000002"), "--only-prior", "--save-gif-as",
                                    "single", "--max-steps", "5", "--output-dir", str(tmp_path)])
    assert code == 0, stderr
    row = stdout.splitlines()[2].split()
    assert row[:5] == ["checkpoint_000002", "0", "prior", "-", "1"]
    (summary,) = json.loads((tmp_path / "summary.json").read_text())
    with Image.open(tmp_path / "single.gif") as gif:
        assert gif.n_frames == summary["lengths"][0] + 1


def test_random_agent_beside_the_trained_one_in_one_small_gif(experiment, tmp_path):
    """--beside-random: each GIF holds the random game (same reset seed) left and the checkpoint's right, as long
    as the longer game; --gif-every 2 keeps every second frame and the last, --gif-scale 0.5 halves each panel."""
    from PIL import Image

    _, _, trial = experiment
    code, stdout, stderr = run_cli(["evaluate", str(trial / "checkpoint_000002"), "--save-gif-as", "pair",
                                    "--beside-random", "--gif-every", "2", "--gif-scale", "0.5",
                                    "--max-steps", "9", "--output-dir", str(tmp_path)])
    assert code == 0, stderr
    (summary,) = json.loads((tmp_path / "summary.json").read_text())
    trained = summary["lengths"][0]
    with Image.open(tmp_path / "pair.gif") as gif:
        # Two 600x400 CartPole frames at half size, a 4-pixel gap, under a caption band (not over the frame: Atari
        # scores are at the top).
        assert gif.size == (300 + 4 + 300, 200 + _caption_band_height())
        frames = gif.n_frames
        assert gif.info["duration"] == 40  # CartPole's 50 fps, every second frame: 2 x 20 ms
    # Frames 0, 2, 4, ... of the longer game (length + 1 frames) and its last one.
    assert frames in {len(set(range(0, n + 1, 2)) | {n}) for n in range(trained, 10)}


def test_captions_go_in_a_band_above_the_frames_not_over_them():
    rng = np.random.default_rng(0)
    left, right = (rng.integers(0, 256, (2, 30, 40, 3), dtype=np.uint8) for _ in range(2))
    band = _caption_band_height()
    frames = side_by_side([(left, ["r 0", "r 1"]), (right[:1], ["agent"])], gap=4)
    assert len(frames) == 2 and all(f.shape == (30 + band, 40 + 4 + 40, 3) for f in frames)
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame[band:, :40], left[k])  # every pixel of the game, the top rows too
        np.testing.assert_array_equal(frame[band:, 44:], right[0])  # the shorter game holds its last frame
        assert (frame[:band] < 128).any()  # the caption's text is in the band
    assert frames[0][:band, :40].tolist() != frames[1][:band, :40].tolist()  # each frame its own caption
    # An uncaptioned panel beside a captioned one: level with it, under an empty (white) band.
    (mixed,) = side_by_side([(left[:1], ["r 0"]), (right[:1], [])], gap=4)
    assert mixed.shape == (30 + band, 84, 3)
    np.testing.assert_array_equal(mixed[band:, 44:], right[0])
    assert (mixed[:band, 44:] == 255).all()


def test_random_agent_acts_uniformly_without_the_network(experiment):
    algo, _, _ = experiment
    result = evaluate(algo, mode="random", num_games=6, max_steps=30, seed=3)
    actions = np.concatenate([g.actions for g in result.games])
    assert set(actions.tolist()) == {0, 1} and 0.25 < actions.mean() < 0.75
    for game in result.games:
        np.testing.assert_array_equal(game.policies, np.full((game.length, 2), 0.5))
        assert np.isnan(game.network_values).all() and np.isnan(game.predicted_rewards).all()
    again = evaluate(algo, mode="random", num_games=6, max_steps=30, seed=3)  # seeded: the same games
    assert [g.actions.tolist() for g in again.games] == [g.actions.tolist() for g in result.games]
    assert result.num_simulations == 0
    with pytest.raises(EvaluationError, match="--random-agent"):
        evaluate(algo, mode="random", num_simulations=3)


def test_random_agent_keeps_to_the_legal_actions(experiment):
    from rllib_muzero.play import _plan_at_random

    class MaskedPolicy:
        action_space = gym.spaces.Discrete(3)

        @staticmethod
        def split_observations(obs):
            return obs, np.array([[True, False, True], [False, False, False], [True, True, True]])

    plans = _plan_at_random(MaskedPolicy(), np.zeros((3, 1)), np.random.default_rng(0))
    assert plans[0][0].action == 1 and plans[0][0].policy.tolist() == [0.0, 1.0, 0.0]
    assert plans[1][0].policy.tolist() == pytest.approx([1 / 3] * 3)
    assert plans[2][0].policy.tolist() == pytest.approx([1 / 3] * 3)  # no legal action: all, as the search


def first_observation(seed):
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    env.close()
    return torch.as_tensor(obs[None], dtype=torch.float32)


def test_only_prior_acts_on_the_prior_argmax(experiment):
    algo, _, _ = experiment
    policy = algo.get_policy()
    result = evaluate(algo, mode="prior", num_games=2, max_steps=20)
    with torch.inference_mode():
        logits = policy.model.initial_inference(first_observation(0)).policy_logits[0].numpy()
    game = result.games[0]
    assert game.actions[0] == int(np.argmax(logits))
    np.testing.assert_allclose(game.policies[0], np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    assert np.isnan(game.search_values).all() and (game.search_depths == 0).all()
    assert result.num_simulations == 0


def test_only_value_acts_on_one_step_lookahead(experiment):
    algo, _, _ = experiment
    policy = algo.get_policy()
    result = evaluate(algo, mode="value", num_games=2, max_steps=20)
    with torch.inference_mode():
        root = policy.model.initial_inference(first_observation(0))
        step = policy.model.recurrent_inference(root.hidden.repeat(2, 1), torch.tensor([0, 1]))
        q = (policy.to_scalar(step.reward_logits, policy.reward_support)
             + policy.config["gamma"] * policy.to_scalar(step.value_logits, policy.value_support))
    game = result.games[0]
    assert game.actions[0] == int(np.argmax(q))
    assert game.search_values[0] == pytest.approx(float(q.max()), rel=1e-5)
    assert (game.search_depths == 1).all()
    np.testing.assert_array_equal(game.policies.argmax(axis=1), game.actions)  # greedy: one-hot on the action


def test_apply_mcts_steps_plays_the_most_visited_path_open_loop(experiment):
    algo, _, _ = experiment
    # 8 simulations over 2 actions: the most visited root child has >= 4 visits, so it always has a child and
    # every search plans exactly 2 actions.
    result = evaluate(algo, num_games=2, num_simulations=8, apply_mcts_steps=2, save_mcts_after_step=0,
                      max_steps=20)
    for game in result.games:
        np.testing.assert_array_equal(game.open_loop, np.arange(game.length) % 2 == 1)
        assert sorted(game.trees_dot) == list(range(0, game.length, 2))  # one search per two steps
        for step, text in game.trees_dot.items():
            nodes, edges = parse_dot(text)
            bold = {parent: (child, action) for parent, child, action, chosen in edges if chosen}
            assert bold[0][1] == game.actions[step]
            if step + 1 < game.length:  # the planned second action was played without a new search
                assert len(bold) == 2 and bold[bold[0][0]][1] == game.actions[step + 1]


def test_a_policy_plays_like_its_algorithm(experiment):
    algo, _, _ = experiment
    from_algo = evaluate(algo, num_games=2, temperature=1.0, max_steps=15)
    from_policy = evaluate(algo.get_policy(), num_games=2, temperature=1.0, max_steps=15)  # env from its config
    assert from_policy.summary() == dict(from_algo.summary(), label="MuZeroTorchPolicy")
    for a, b in zip(from_algo.games, from_policy.games):
        np.testing.assert_array_equal(a.actions, b.actions)


def test_trees_without_graphviz_are_dot_only(experiment, tmp_path, monkeypatch):
    from rllib_muzero import tree_dot

    algo, _, _ = experiment
    result = evaluate(algo, label="nodot", max_steps=3, save_mcts_after_step=0)
    monkeypatch.setattr(tree_dot.shutil, "which", lambda name: None)
    dots, pngs = write_trees(result, str(tmp_path))
    assert len(dots) == result.games[0].length and pngs == []
    assert not list(tmp_path.rglob("*.png"))


def test_parallel_play_gives_the_same_games_as_serial(experiment):
    algo, _, _ = experiment
    # Root noise and temperature sampling: every game draws random numbers, so any seeding slip shows (the noised
    # root priors are in the trees' DOT text).
    options = dict(num_games=3, temperature=1.0, use_exploration_noise=True, max_steps=30, save_mcts_after_step=0)
    for games_per_batch in (1, 2):
        serial = evaluate(algo, games_per_batch=games_per_batch, **options)
        parallel = evaluate(algo, games_per_batch=games_per_batch, parallel=True, **options)
        assert serial.summary() == parallel.summary()
        for a, b in zip(serial.games, parallel.games):
            for name in ("actions", "rewards", "predicted_rewards", "network_values", "search_values", "policies"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
            assert a.trees_dot == b.trees_dot
    other_seed = evaluate(algo, seed=1, **options)
    assert [g.actions.tolist() for g in other_seed.games] != [g.actions.tolist() for g in serial.games]


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, no traceback.


def assert_user_error(argv, *fragments):
    code, _, err = run_cli(argv)
    assert code == 2, err
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("rllib-muzero: error: ") and err.count("rllib-muzero: error:") == 1, err
    for fragment in fragments:
        assert fragment in last, last


def test_a_directory_that_is_not_a_checkpoint(tmp_path):
    assert_user_error(["evaluate", str(tmp_path)], "is not an RLlib checkpoint")


def test_an_experiment_directory_without_checkpoint_names_stands_for_its_latest_checkpoint(experiment):
    from rllib_muzero.checkpoints import find_checkpoints

    _, root, trial = experiment
    assert find_checkpoints([str(root)]) == [("checkpoint_000002", str(trial / "checkpoint_000002"))]


def test_unknown_checkpoint_name(experiment):
    _, root, _ = experiment
    assert_user_error(["evaluate", str(root), "--checkpoints", "checkpoint_000009"],
                      "`checkpoint_000009` not found", "available: checkpoint_000001, checkpoint_000002")


@pytest.mark.parametrize("old_stack", [False, True], ids=["new-api-stack", "old-api-stack"])
def test_a_checkpoint_of_another_algorithm(ray_session, tmp_path, old_stack):
    from ray.rllib.algorithms.ppo import PPOConfig

    config = PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0)
    if old_stack:
        config = config.api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False)
    ppo = config.build_algo()
    try:
        ppo.save(str(tmp_path / "ppo"))
    finally:
        ppo.stop()
    assert_user_error(["evaluate", str(tmp_path / "ppo")], "checkpoint of PPO, not MuZero")


def test_conflicting_and_incomplete_options(experiment):
    _, _, trial = experiment
    ckpt = str(trial / "checkpoint_000001")
    assert_user_error(["evaluate", ckpt, "--only-prior", "--only-value"], "--only-prior and --only-value")
    assert_user_error(["evaluate", ckpt, "--only-value", "--apply-mcts-steps", "2"], "--apply-mcts-steps")
    assert_user_error(["evaluate", ckpt, "--include-policy"], "--plot-summary")
    assert_user_error(["evaluate", ckpt, "--eval-temperatures", "-1"], "--eval-temperatures")
    assert_user_error(["evaluate", ckpt, "--env-config", "{bad"], "--env-config is not valid JSON")
    assert_user_error(["evaluate", ckpt, "--random-agent", "--only-prior"], "--only-prior and --random-agent")
    assert_user_error(["evaluate", ckpt, "--beside-random"], "--beside-random", "--save-gif-as")
    assert_user_error(["evaluate", ckpt, "--save-gif-as", "x", "--gif-every", "0"], "--gif-every", ">= 1")
    assert_user_error(["evaluate", ckpt, "--save-gif-as", "x", "--gif-scale", "0"], "--gif-scale", "(0, 4]")
    assert_user_error(["evaluate", ckpt, "--gif-scale", "0.5"], "--gif-scale", "--save-gif-as")


class NoRenderCartPole(gym.Wrapper):
    """CartPole that cannot render (its creator ignores render_mode)."""

    def __init__(self, config):
        super().__init__(gym.make("CartPole-v1"))


def test_an_env_that_cannot_render_refuses_gifs(experiment, tmp_path):
    from ray import tune

    _, _, trial = experiment
    tune.register_env("NoRenderCartPole", NoRenderCartPole)
    assert_user_error(["evaluate", str(trial / "checkpoint_000001"), "--env", "NoRenderCartPole", "--save-gif-as",
                       "x", "--output-dir", str(tmp_path)], "NoRenderCartPole", "cannot render")
    assert not list(tmp_path.iterdir())


def test_options_are_validated_in_the_python_api(experiment):
    algo, _, _ = experiment
    with pytest.raises(EvaluationError, match="num_games"):
        evaluate(algo, num_games=0)
    with pytest.raises(EvaluationError, match="--save-mcts"):
        evaluate(algo, mode="prior", save_mcts_after_step=0)


def test_env_config_changes_the_agents_env_config_and_replaces_another_envs():
    """``--env-config`` / ``env_config=``: over the agent's own env its keys change the checkpoint's env_config (so
    ``{"episode_life": false}`` keeps normalisation, frame skip and stacking); with ``--env`` it is that env's own."""
    import types

    from rllib_muzero.evaluate import _env_factory

    creator = object()
    algo = types.SimpleNamespace(env_creator=creator, config=types.SimpleNamespace(
        env="CartPole-v1", env_config={"max_episode_steps": 50, "clip_rewards": True}))
    make_env, _ = _env_factory(algo, None, None, {"max_episode_steps": 20}, False)
    assert make_env.args == (creator, {"max_episode_steps": 20, "clip_rewards": True}, None)
    make_env, _ = _env_factory(algo, None, None, None, False)
    assert make_env.args[1] == {"max_episode_steps": 50, "clip_rewards": True}
    make_env, _ = _env_factory(algo, None, "CartPole-v1", {"max_episode_steps": 20}, False)
    assert make_env.args[1] == {"max_episode_steps": 20}
