"""The train-until-target loop shared by the benchmarks (benchmarks/_target_return.py), at tiny budgets, the
multi-seed learning benchmark (benchmarks/learning.py: seed specs, summary statistics, a smoke run end to end), and the
whole-game evaluation env of the Pong-RAM benchmark.

The benchmark scripts import ``_target_return`` from their own folder (``python benchmarks/<name>.py`` puts it on
``sys.path``); the tests put it there too.
"""

import argparse
import csv
import json
import os
import shutil
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
import learner_speed  # noqa: E402
import learning  # noqa: E402
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


@pytest.mark.integration
def test_loop_trains_on_to_the_budget_past_the_target_when_asked(ray_session, _one_torch_thread, capsys):
    curve = []
    row = _target_return.run_seed(
        0, example=_target_return.example_path("cartpole-muzero.yaml"),
        eval_env=lambda config: lambda: gym.make("CartPole-v1"), target=1.0, eval_games=1, eval_every=100,
        max_env_steps=200, max_minutes=5, overrides=TINY, eval_max_steps=3, on_eval=curve.append,
        stop_at_target=False)
    assert row["reached"] is True and row["steps_to_target"] == 100 and row["env_steps"] == 200
    assert [r["env_steps"] for r in curve] == [100, 200] and all(r["reached"] for r in curve)


class _SeedScoredEnv(gym.Env):
    """3 steps of CartPole-shaped observations; each step pays 1 if the last reset seed is below ``limit``, else 0:
    evaluation and confirmation games (other reset seeds) can be told apart."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, limit):
        self.limit, self.pays, self.t = limit, 1.0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pays, self.t = float(seed is not None and seed < self.limit), 0
        return np.zeros(4, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(4, np.float32), self.pays, self.t >= 3, False, {}


@pytest.mark.integration
@pytest.mark.parametrize("confirmation_pays", [False, True])
def test_an_evaluation_reaches_the_target_only_if_the_confirmation_games_do(ray_session, _one_torch_thread,
                                                                            confirmation_pays):
    limit = 10**9 if confirmation_pays else _target_return.CONFIRM_SEED_BASE  # evaluation games always pay
    curve = []
    row = _target_return.run_seed(
        0, example=_target_return.example_path("cartpole-muzero.yaml"),
        eval_env=lambda config: lambda: _SeedScoredEnv(limit), target=3.0, eval_games=1, eval_every=100,
        max_env_steps=200, max_minutes=5, overrides=TINY, on_eval=curve.append, confirm_games=2)
    assert all(r["greedy_mean"] == 3.0 for r in curve)
    if confirmation_pays:
        assert row["reached"] is True and row["env_steps"] == 100 and len(curve) == 1
        assert curve[0]["reached"] and curve[0]["note"] == "confirmed: mean 3.00 over 2 more games (min 3, max 3)"
    else:
        assert row["reached"] is False and row["env_steps"] == 200 and row["steps_to_target"] is None
        assert [r["note"] for r in curve] == ["not confirmed: mean 0.00 over 2 more games (min 0, max 0)"] * 2
        assert not any(r["reached"] for r in curve)


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
        assert obs.shape == (4 * 128,) and obs.dtype == np.float32 and 0 <= obs.min() and obs.max() <= 1  # 4 frames
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
    ("learner_speed.py", ["--batch-size", "16", "--capacity", "2000", "--updates", "2", "--repeats", "1",
                          "--warmup", "1", "--support", "15"]),
    ("replay_memory.py", ["--capacities", "2000", "10001", "--detail"]),  # small: the default fills 1M
])
def test_speed_benchmarks_run_and_print_their_figures(script, args):
    """Each speed benchmark still runs against the current package (a renamed function broke one once) and prints
    a table; its figures are not checked (no clock in tests)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(ch.isdigit() for ch in result.stdout), result.stdout


def test_learner_speed_passes_only_the_options_it_changes(monkeypatch):
    """``build`` leaves options at their defaults out of ``MuZeroConfig.training``, so the script runs against an
    older checkout that lacks them (issue #17's reference); ``--support`` sets both heads' supports; the malloc
    thresholds are set as ``MuZero.setup`` sets them, and an older checkout without the option is reported as
    running with malloc's defaults."""
    import rllib_muzero
    import rllib_muzero.host_memory
    from rllib_muzero import MuZeroConfig

    seen, kept = [], []
    real_training = MuZeroConfig.training

    def recording_training(self, **kwargs):
        seen.append(kwargs)
        return real_training(self, **kwargs)

    monkeypatch.setattr(MuZeroConfig, "training", recording_training)
    monkeypatch.setattr(learner_speed, "fill_replay", lambda *args, **kwargs: None)
    # Recorded, not applied: mallopt would change this whole pytest process.
    monkeypatch.setattr(rllib_muzero.host_memory, "keep_freed_host_memory", lambda: kept.append(True) or True)
    base = dict(batch_size=16, unroll=5, td_steps=10, capacity=1000, fill=None, num_gpus=0, seed=0, compile=False)
    learner_speed.build(argparse.Namespace(**base, precision="float32", keep_freed_host_memory=True, support=None))
    assert set(seen[-1]) == {"train_batch_size", "num_unroll_steps", "td_steps", "replay_capacity"}
    assert kept == [True]
    policy, _ = learner_speed.build(argparse.Namespace(**base, precision="bf16-mixed", keep_freed_host_memory=False,
                                                       support=15))
    assert seen[-1]["learner_precision"] == "bf16-mixed" and seen[-1]["keep_freed_host_memory"] is False
    assert seen[-1]["value_support"] == seen[-1]["reward_support"] == (-15, 15)
    assert policy.model.value_support_size == policy.model.reward_support_size == 31
    assert kept == [True]  # not applied when the option is off

    class OlderConfig(MuZeroConfig):  # a checkout from before keep_freed_host_memory
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.keep_freed_host_memory

    monkeypatch.setattr(rllib_muzero, "MuZeroConfig", OlderConfig)
    args = argparse.Namespace(**base, precision="float32", keep_freed_host_memory=True, support=None)
    learner_speed.build(args)
    assert "keep_freed_host_memory" not in seen[-1] and kept == [True]
    assert args.keep_freed_host_memory is False  # the header then says "malloc defaults"


@pytest.mark.parametrize("script,args,message", [
    ("learner_speed.py", ["--support", "0"], "--support must be a positive integer"),
    ("search_speed.py", ["--device", "cuda"], "--device cuda needs --inference torch"),
])
def test_speed_benchmarks_refuse_bad_options(script, args, message):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert message in result.stderr


# ---------------------------------------------------------------------------------------------------- learning.py
@pytest.mark.parametrize("specs,seeds", [
    ("0-9", list(range(10))),
    (["0", "1", "2"], [0, 1, 2]),
    ("3,5", [3, 5]),
    (["0-2,7", "9", "1"], [0, 1, 2, 7, 9]),  # mixed, duplicates dropped, first-appearance order
    (["4", "2"], [4, 2]),
    ("5-5", [5]),
])
def test_seed_specs(specs, seeds):
    assert learning.parse_seeds(specs) == seeds


@pytest.mark.parametrize("spec", ["3-1", "a", "1-", "-2", "1.5", ""])
def test_bad_seed_specs_are_refused(spec):
    with pytest.raises(ValueError):
        learning.parse_seeds(spec)


def _eval(seed, env_steps, mean, train_s):
    return {"seed": str(seed), "status": "eval", "env_steps": str(env_steps), "updates": str(env_steps // 4),
            "train_s": f"{train_s:.3f}", "eval_s": "1.000", "games": "10", "greedy_mean": f"{mean:.3f}",
            "greedy_min": f"{mean:.3f}", "greedy_max": f"{mean:.3f}", "reached": str(mean >= 475), "note": ""}


def _done(seed, env_steps, train_s, reached, note):
    return {"seed": str(seed), "status": "done", "env_steps": str(env_steps), "updates": str(env_steps // 4),
            "train_s": f"{train_s:.3f}", "eval_s": "2.000", "games": "", "greedy_mean": "", "greedy_min": "",
            "greedy_max": "", "reached": str(reached), "note": note}


def _failed(seed, note):
    return {"seed": str(seed), "status": "failed", "note": note}


# Seeds 0, 3, 4 reach 475 (at 2,000 / 1,000 / 3,000 env steps, stopping there), seed 1 runs out of budget at
# 3,000, seed 2 crashes after one evaluation. Rows interleave as they do when seeds run in parallel.
ROWS = [_eval(0, 1000, 100, 10), _eval(1, 1000, 50, 11), _eval(0, 2000, 480, 20), _done(0, 2000, 20, True, "target"),
        _eval(2, 1000, 60, 9), _failed(2, "RuntimeError: boom"), _eval(1, 2000, 200, 21), _eval(3, 1000, 500, 8),
        _done(3, 1000, 8, True, "target"), _eval(1, 3000, 300, 31), _done(1, 3000, 31, False, "env-step budget"),
        _eval(4, 1000, 20, 12), _eval(4, 2000, 470, 24), _eval(4, 3000, 490, 36), _done(4, 3000, 36, True, "target")]


def test_seed_results_from_csv_rows():
    results = {r.seed: r for r in learning.seed_results(ROWS, 475.0)}
    assert [results[s].status for s in range(5)] == ["reached", "not reached", "failed", "reached", "reached"]
    assert [results[s].steps_to_target for s in range(5)] == [2000, None, None, 1000, 3000]
    assert results[0].train_s_to_target == pytest.approx(20) and results[0].updates_to_target == 500
    assert results[2].note == "RuntimeError: boom" and results[2].env_steps == 1000  # counters of its last eval
    assert results[1].best == pytest.approx(300) and results[4].last == pytest.approx(490)
    assert [results[s].stopped_at_target for s in range(5)] == [True, False, False, True, True]


def test_summary_success_rate_median_and_worst():
    summary = learning.summarize(learning.seed_results(ROWS, 475.0), 475.0)
    assert summary["n"] == 5 and summary["successes"] == 3 and summary["success_rate"] == pytest.approx(0.6)
    # Steps to target 1,000 / 2,000 / 3,000 and two failures (infinite): the median is the third, 3,000.
    assert summary["median_steps"] == 3000 and summary["worst_steps"] == float("inf")
    assert summary["median_train_s"] == pytest.approx(36)
    # Without the failures every figure is finite.
    good = learning.seed_results([r for r in ROWS if r["seed"] in ("0", "3", "4")], 475.0)
    summary = learning.summarize(good, 475.0)
    assert (summary["successes"], summary["median_steps"], summary["worst_steps"]) == (3, 2000, 3000)
    # More than half failing: the median is "not reached" too.
    bad = learning.seed_results([r for r in ROWS if r["seed"] in ("1", "2", "3")], 475.0)
    assert learning.summarize(bad, 475.0)["median_steps"] == float("inf")


def test_summary_text_lists_every_seed_and_a_markdown_row():
    results = learning.seed_results(ROWS, 475.0)
    summary = learning.summarize(results, 475.0)
    text = learning.format_summary(results, summary, label="mine", env="cartpole", max_env_steps=3000,
                                   random_mean=22.0)
    assert "success: 3/5 seeds reached 475 (60%)" in text
    assert "env steps to the target: median 3,000, worst not reached" in text
    table = text[text.index("seed  result"):]
    for seed, status in [(0, "reached"), (1, "not reached"), (2, "failed"), (3, "reached"), (4, "reached")]:
        assert any(line.split()[:1] == [str(seed)] and status in line for line in table.splitlines())
    assert "RuntimeError: boom" in text
    assert text.splitlines()[-1] == "| mine | 3/5 | 3,000 | not reached | 36.0 |"


def test_summary_without_a_target():
    rows = [{**r, "reached": "False"} for r in ROWS if r["status"] != "done" or r["seed"] != "0"]
    results = learning.seed_results(rows, None)
    assert [r.status for r in results] == ["incomplete", "done", "failed", "done", "done"]
    summary = learning.summarize(results, None)
    assert summary["successes"] is None and summary["median_last"] == pytest.approx(480)
    assert learning.markdown_row(summary, "x").startswith("| x | 5 | 480.0 | 480.0 |")


def test_curve_grid_carries_seeds_that_stopped_at_the_target_forward():
    xs, values = learning.curve_grid(learning.seed_results(ROWS, 475.0))
    assert list(xs) == [1000, 2000, 3000]
    nan = float("nan")
    expected = [[100, 480, 480], [50, 200, 300], [60, nan, nan], [500, 500, 500], [20, 470, 490]]
    np.testing.assert_array_equal(values, np.array(expected))


@pytest.mark.parametrize("name", ["pong-ram", "breakout-ram"])
def test_learning_evaluates_atari_on_whole_games_without_the_examples_own_evaluation(name):
    spec = learning.ENVS[name]
    (experiment, body), = load_experiments(_target_return.example_path(spec.example)).items()
    config = build_param_space(experiment, body, dict(spec.base_overrides))
    assert config["env_config"]["episode_life"] is True and config["evaluation_interval"] is None
    # Scored as the example's own evaluation scores: its evaluation_config's env changes (Breakout: raw points).
    assert dict(spec.eval_env_config) == body["config"]["evaluation_config"]["env_config"]
    env = _target_return.creator_eval_env(**spec.eval_env_config)(config)()
    try:
        assert "EpisodicLife" not in _wrappers(env) and spec.eval_games == 1
    finally:
        env.close()


def test_every_learning_env_has_a_valid_tuned_example():
    for name, spec in learning.ENVS.items():
        if name.startswith("minatar"):
            from rllib_muzero.envs import minatar_available

            if not minatar_available():
                continue
        (experiment, body), = load_experiments(_target_return.example_path(spec.example)).items()
        config = build_param_space(experiment, body, {"seed": 1})  # validated like `rllib-muzero train`
        assert config["seed"] == 1


@pytest.mark.integration
def test_a_crashing_seed_is_recorded_as_failed_with_its_error(tmp_path):
    """A seed's exception in its worker process becomes a "failed" row naming the error (the others go on)."""
    path = tmp_path / "crash.csv"
    writer = learning._CsvAppender(str(path))
    job = {"example": str(tmp_path / "missing.yaml"), "target": 475.0, "overrides": {}, "max_env_steps": 100,
           "max_minutes": 1.0, "eval_every": 100, "eval_games": 1, "eval_max_steps": 1, "full_curve": False,
           "confirm_games": 0, "cpus_per_job": 1, "checkpoint_dir": None, "eval_env_config": {}, "base_overrides": {}}
    try:
        learning.run_seeds([5], job, writer, jobs=1)
    finally:
        writer.close()
    with open(path, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["seed"] == "5" and row["status"] == "failed" and "missing.yaml" in row["note"]


LEARNING_SMOKE = ["--env", "cartpole", "--seeds", "0", "--jobs", "1", "--label", "smoke", "--max-env-steps", "200",
                  "--eval-every", "100", "--eval-games", "2", "--eval-max-steps", "5", "--random-games", "3",
                  "--config", json.dumps({**TINY})]


@pytest.mark.integration
def test_learning_benchmark_smoke_run_writes_csv_png_and_summary_and_resumes(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), *LEARNING_SMOKE, "--out", str(tmp_path),
               "--checkpoint-dir", runs]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "success: 0/1 seeds reached 475" in out and "env steps to the target: median not reached" in out
    assert "| smoke | 0/1 | not reached | not reached | not reached |" in out
    with open(tmp_path / "cartpole-smoke.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == learning.CSV_COLUMNS
    assert [(r["status"], r["env_steps"]) for r in rows] == [("eval", "100"), ("eval", "200"), ("done", "200")]
    assert all(float(r["greedy_max"]) <= 5 for r in rows[:2]) and rows[2]["note"] == "env-step budget"
    png = (tmp_path / "cartpole-smoke.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 200_000
    meta = json.loads((tmp_path / "cartpole-smoke.json").read_text())
    assert meta["settings"]["max_env_steps"] == 200 and meta["random_mean"] <= 5
    assert meta["settings"]["confirm_games"] == 0

    # Without --resume the files are not touched; with it the complete seed is not rerun (in-process: nothing to
    # train, so no Ray either), and other settings are refused.
    argv = [*LEARNING_SMOKE, "--out", str(tmp_path), "--checkpoint-dir", runs]
    with pytest.raises(SystemExit) as refused:
        learning.main(argv)
    assert refused.value.code == 2 and "--resume continues it" in capsys.readouterr().err
    runs_before = json.loads((tmp_path / "cartpole-smoke.json").read_text())["runs"]
    report = learning.main([*argv, "--resume"])
    assert "seed(s) 0 already complete, not rerun" in capsys.readouterr().out
    assert [r.seed for r in report["results"]] == [0] and report["summary"]["successes"] == 0
    assert json.loads((tmp_path / "cartpole-smoke.json").read_text())["runs"] == runs_before  # no part recorded
    with open(tmp_path / "cartpole-smoke.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    with pytest.raises(SystemExit):
        learning.main([*argv, "--resume", "--max-env-steps", "100"])
    assert "max_env_steps 200 there, 100 now (only the budgets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        learning.main([*argv, "--resume", "--eval-every", "50"])
    assert "eval_every 100 there, 50 now" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        learning.main([*argv, "--resume", "--confirm-games", "-1"])
    assert "--confirm-games must be >= 0" in capsys.readouterr().err

    # Interrupted after its last saved evaluation (no final row) and during an evaluation it never saved (a row at
    # 300): --resume continues seed 0 from its checkpoint (200 env steps: the budget, so it ends at once), keeps the
    # saved evaluations' rows, drops the unsaved one and writes the final row.
    progress = json.loads((tmp_path / "runs" / "cartpole-smoke" / "seed0" / "progress.json").read_text())
    assert progress["state"]["env_steps"] == 200 and progress["latest"] == "ckpt-000000200"
    with open(tmp_path / "cartpole-smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    learning._write_rows(str(tmp_path / "cartpole-smoke.csv"), [*rows[:2], {**rows[1], "env_steps": "300"}])
    report = learning.main([*argv, "--resume"])
    assert "seed 0 continues from its checkpoint at 200 env steps" in capsys.readouterr().out
    with open(tmp_path / "cartpole-smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], r["env_steps"]) for r in rows] == [("eval", "100"), ("eval", "200"), ("done", "200")]

    # A larger budget takes the seed the old one stopped further, from its checkpoint: its final row is replaced.
    report = learning.main([*argv, "--resume", "--max-env-steps", "300"])
    assert "seed 0 continues from its checkpoint at 200 env steps" in capsys.readouterr().out
    with open(tmp_path / "cartpole-smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], r["env_steps"]) for r in rows] == [("eval", "100"), ("eval", "200"), ("eval", "300"),
                                                              ("done", "300")]
    assert rows[-1]["note"] == "env-step budget" and int(rows[-1]["updates"]) > int(rows[1]["updates"])
    assert json.loads((tmp_path / "cartpole-smoke.json").read_text())["settings"]["max_env_steps"] == 300

    # --full-curve turned on continues a seed that stopped at the target (as if this one had) past it.
    learning._write_rows(str(tmp_path / "cartpole-smoke.csv"),
                         [*rows[:3], {**rows[3], "note": "stopped at the target"}])
    learning.main([*argv, "--resume", "--max-env-steps", "300"])
    assert "seed(s) 0 already complete, not rerun" in capsys.readouterr().out  # without --full-curve: complete
    learning.main([*argv, "--resume", "--max-env-steps", "300", "--full-curve"])
    assert "seed 0 continues from its checkpoint at 300 env steps" in capsys.readouterr().out
    with open(tmp_path / "cartpole-smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], r["env_steps"], r["note"]) for r in rows][-1] == ("done", "300", "env-step budget")
    assert json.loads((tmp_path / "cartpole-smoke.json").read_text())["settings"]["full_curve"] is True
    with pytest.raises(SystemExit):  # and not off again
        learning.main([*argv, "--resume", "--max-env-steps", "300"])
    assert "full_curve True there, False now" in capsys.readouterr().err

    # A --full-curve seed interrupted after an evaluation that reached the target (no final row; the seed counts as
    # reached) is not complete: --resume continues it from its checkpoint.
    learning._write_rows(str(tmp_path / "cartpole-smoke.csv"), [*rows[:2], {**rows[2], "reached": "True"}])
    assert learning.seed_results(learning.read_rows(str(tmp_path / "cartpole-smoke.csv")), 475)[0].status == "reached"
    learning.main([*argv, "--resume", "--max-env-steps", "300", "--full-curve"])
    assert "seed 0 continues from its checkpoint at 300 env steps" in capsys.readouterr().out
    with open(tmp_path / "cartpole-smoke.csv", newline="") as f:
        assert [(r["status"], r["env_steps"]) for r in csv.DictReader(f)][-2:] == [("eval", "300"), ("done", "300")]


class _SavingAlgo:
    """Stands in for an Algorithm in the checkpoint bookkeeping: ``save`` writes a directory (or fails)."""

    def __init__(self):
        self.fail = False

    def save(self, path):
        if self.fail:
            raise OSError("disk full")
        os.makedirs(path)
        Path(path, "state").write_text("complete")


def test_seed_checkpoints_commit_after_the_save_and_keep_the_latest_and_the_best(tmp_path):
    checkpoints = _target_return.SeedCheckpoints(str(tmp_path / "seed0"))
    algo = _SavingAlgo()
    assert checkpoints.load() is None  # nothing committed: a fresh start
    checkpoints.commit(algo, {"env_steps": 100, "best": 5.0}, improved=True)
    checkpoints.commit(algo, {"env_steps": 200, "best": 5.0}, improved=False)
    assert checkpoints.load() == {"state": {"env_steps": 200, "best": 5.0}, "latest": "ckpt-000000200",
                                  "best": "ckpt-000000100"}
    # A save that dies half way (its directory written, progress not) leaves the last commit in force; the next
    # commit removes the leftover, and checkpoints neither latest nor best.
    os.makedirs(tmp_path / "seed0" / "ckpt-000000300")
    algo.fail = True
    with pytest.raises(OSError):
        checkpoints.commit(algo, {"env_steps": 350, "best": 9.0}, improved=True)
    assert checkpoints.load()["latest"] == "ckpt-000000200"
    algo.fail = False
    checkpoints.commit(algo, {"env_steps": 400, "best": 9.0}, improved=True)
    assert sorted(os.listdir(tmp_path / "seed0")) == ["ckpt-000000400", "progress.json"]
    shutil.rmtree(tmp_path / "seed0" / "ckpt-000000400")
    with pytest.raises(FileNotFoundError, match="ckpt-000000400.*missing"):
        checkpoints.load()


def test_trim_curve_drops_only_the_seeds_rows_past_the_checkpoint(tmp_path):
    path = tmp_path / "curve.csv"
    rows = [{"seed": s, "env_steps": e} for s, e in [(0, 100), (1, 300), (0, 200), (0, 300)]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["seed", "env_steps"])
        writer.writeheader()
        writer.writerows(rows)
    assert _target_return.trim_curve(str(path), 0, 200) == 1
    with open(path, newline="") as f:
        assert [(r["seed"], r["env_steps"]) for r in csv.DictReader(f)] == [("0", "100"), ("1", "300"), ("0", "200")]
    assert _target_return.trim_curve(str(tmp_path / "none.csv"), 0, 0) == 0


@pytest.mark.integration
def test_a_seed_resumes_from_its_checkpoint_with_its_counters(ray_session, _one_torch_thread, tmp_path, capsys):
    """Two parts of one seed: the second restores the first's last evaluation (weights, replay, counters) and
    trains on; env steps, updates and training seconds add up."""
    common = dict(example=_target_return.example_path("cartpole-muzero.yaml"),
                  eval_env=lambda config: lambda: gym.make("CartPole-v1"), target=1e9, eval_games=1, eval_every=100,
                  max_minutes=5, overrides=TINY, eval_max_steps=3, checkpoint_dir=str(tmp_path / "seed0"))
    first_curve, second_curve = [], []
    first = _target_return.run_seed(0, max_env_steps=200, on_eval=first_curve.append, **common)
    second = _target_return.run_seed(0, max_env_steps=300, on_eval=second_curve.append, **common)
    out = capsys.readouterr().out
    assert f"seed 0: resuming from {tmp_path / 'seed0' / 'ckpt-000000200'}: 200 env steps" in out
    assert [r["env_steps"] for r in first_curve] == [100, 200] and [r["env_steps"] for r in second_curve] == [300]
    assert second["env_steps"] == 300 and second["updates"] > first["updates"] > 0
    assert second["train_s"] > first["train_s"] and second_curve[0]["updates"] == second["updates"]
