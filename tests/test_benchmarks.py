"""The train-until-target loop shared by the benchmarks (benchmarks/_target_return.py), at tiny budgets, and the
whole-game evaluation env of the Pong-RAM benchmark.

The benchmark scripts import ``_target_return`` from their own folder (``python benchmarks/<name>.py`` puts it on
``sys.path``); the tests put it there too.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import _target_return  # noqa: E402
import pong_ram  # noqa: E402

from rllib_muzero.cli import build_param_space, load_experiments  # noqa: E402
from rllib_muzero.envs import EpisodicLife, make_env_creator  # noqa: E402

TINY = {"num_steps_sampled_before_learning_starts": 100, "num_simulations": 2, "num_envs_per_env_runner": 2,
        "rollout_fragment_length": 25}


def _wrappers(env: gym.Env) -> list[str]:
    names = []
    while isinstance(env, gym.Wrapper):
        names.append(type(env).__name__)
        env = env.env
    return names


@pytest.fixture
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.integration
def test_loop_evaluates_every_interval_until_the_budget_and_writes_the_curve(ray_session, _one_torch_thread,
                                                                            tmp_path, capsys):
    path = tmp_path / "curve.csv"
    rows = _target_return.run_benchmark(
        example=_target_return.example_path("cartpole-muzero.yaml"),
        eval_env=lambda config: lambda: gym.make(config["env"]), target=1e9, eval_games=2, eval_every=100,
        max_env_steps=200, max_minutes=5, seeds=[3], overrides=TINY, eval_max_steps=5, csv_path=str(path))
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("  seed 3: env_steps=")]
    assert len(progress) == 2  # env steps 100 and 200 (fragments of 2 envs x 25 steps)
    assert "seed  reached  env_steps  updates  train_s  eval_s  best_greedy_mean" in out
    (row,) = rows
    assert row["seed"] == 3 and row["reached"] is False and row["env_steps"] == 200
    assert row["updates"] > 0 and row["train_s"] > 0 and row["eval_s"] > 0
    with open(path, newline="") as f:
        curve = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in curve] == [100, 200]
    assert list(curve[0]) == list(_target_return.CSV_COLUMNS)
    # eval_max_steps=5 cuts the games: CartPole's return is the number of steps played.
    assert all(float(r["greedy_max"]) <= 5 and r["games"] == "2" for r in curve)
    assert max(float(r["greedy_mean"]) for r in curve) == pytest.approx(row["best_greedy_mean"], abs=1e-3)


@pytest.mark.integration
def test_loop_stops_a_seed_at_the_first_evaluation_that_reaches_the_target(ray_session, _one_torch_thread, capsys):
    (row,) = _target_return.run_benchmark(
        example=_target_return.example_path("cartpole-muzero.yaml"),
        eval_env=lambda config: lambda: gym.make("CartPole-v1"), target=1.0, eval_games=1, eval_every=100,
        max_env_steps=10_000, max_minutes=5, seeds=[0], overrides=TINY, eval_max_steps=3)
    assert row["reached"] is True and row["env_steps"] == 100  # every CartPole game scores >= 1
    assert capsys.readouterr().out.count("  seed 0: env_steps=") == 1


def test_pong_evaluation_env_is_the_training_env_without_episode_life():
    (name, spec), = load_experiments(pong_ram.EXAMPLE).items()
    config = build_param_space(name, spec, {})
    assert config["env_config"]["episode_life"] is True
    _, creator = make_env_creator(config["env"])
    train_env = creator(dict(config["env_config"]))
    eval_env = pong_ram.eval_env(config)()
    try:
        assert "EpisodicLife" in _wrappers(train_env)
        assert [w for w in _wrappers(train_env) if w != EpisodicLife.__name__] == _wrappers(eval_env)
        assert eval_env.observation_space == train_env.observation_space  # RAM normalised to [0, 1]
        obs, _ = eval_env.reset(seed=0)
        assert obs.shape == (128,) and obs.dtype == np.float32 and 0 <= obs.min() and obs.max() <= 1
        # A lost point does not end the evaluation game (it would with episode_life).
        total, done = 0.0, False
        while total > -2 and not done:
            _, reward, terminated, truncated, _ = eval_env.step(0)
            total += reward
            done = terminated or truncated
        assert total == -2 and not done
    finally:
        train_env.close()
        eval_env.close()


@pytest.mark.parametrize("script,args", [
    ("selfplay_speed.py", ["--envs", "2", "--simulations", "2", "--fragment", "5", "--repeats", "1", "--warmup", "0"]),
    ("selfplay_speed.py", ["--envs", "2", "--simulations", "2", "--fragment", "5", "--repeats", "1", "--warmup", "0",
                           "--inference", "torch"]),
    ("search_speed.py", ["--batch-sizes", "1", "2", "--simulations", "3", "--repeats", "1"]),
    ("search_speed.py", ["--network", "default", "--batch-sizes", "2", "--simulations", "3", "--repeats", "1"]),
    ("search_speed.py", ["--inference", "torch", "--batch-sizes", "2", "--simulations", "3", "--repeats", "1"]),
    ("learner_speed.py", ["--batch-size", "16", "--capacity", "2000", "--updates", "2", "--repeats", "1",
                          "--warmup", "1"]),
    ("replay_memory.py", []),
])
def test_speed_benchmarks_run_and_print_their_figures(script, args):
    """Each speed benchmark still runs against the current package (a renamed function broke one once) and prints
    a table; its figures are not checked (no clock in tests)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(ch.isdigit() for ch in result.stdout), result.stdout


def test_search_speed_refuses_a_device_for_the_numpy_inference():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_speed.py"), "--device", "cuda"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "--device cuda needs --inference torch" in result.stderr
