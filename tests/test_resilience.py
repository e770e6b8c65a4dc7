"""Nothing lost: exact resume in a fresh process, non-finite updates, atomic checkpoints, crashed env runners."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm

from rllib_muzero import columns
from tests.test_algorithm import tiny_config

pytestmark = pytest.mark.integration


@pytest.fixture()
def algo(ray_session):
    algo = tiny_config().build_algo()
    for _ in range(3):
        algo.train()
    yield algo
    algo.stop()


def _replay_digest(replay) -> str:
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(replay.get_state().items()):
        h.update(key.encode())
        h.update(np.asarray(value).tobytes() if isinstance(value, np.ndarray) else repr(value).encode())
    return h.hexdigest()


def test_exact_resume_in_a_fresh_process(algo, tmp_path):
    path = algo.save(str(tmp_path / "ckpt")).checkpoint.path
    policy = algo.get_policy()
    expected = {
        "updates": policy.num_grad_updates,
        "env_steps": algo._counters["num_env_steps_sampled"],
        "iteration": algo.iteration,
        "replay": _replay_digest(algo.replays["default_policy"]),
        "temperature": policy.current_temperature(),
    }
    # The next learner update of the uninterrupted run.
    expected_loss = algo._learn_once("default_policy")["learner_stats"]["total_loss"]
    script = textwrap.dedent(f"""
        import ray, json
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        from ray.rllib.algorithms.algorithm import Algorithm
        from tests.test_resilience import _replay_digest
        algo = Algorithm.from_checkpoint({path!r})
        policy = algo.get_policy()
        got = {{"updates": policy.num_grad_updates, "env_steps": algo._counters["num_env_steps_sampled"],
               "iteration": algo.iteration, "replay": _replay_digest(algo.replays["default_policy"]),
               "temperature": policy.current_temperature()}}
        got["loss"] = algo._learn_once("default_policy")["learner_stats"]["total_loss"]
        print("RESULT", json.dumps(got))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)), env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    got = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")).split(" ", 1)[1])
    loss = got.pop("loss")
    assert got == expected
    assert loss == pytest.approx(expected_loss, rel=1e-6)


def test_replay_can_be_left_out_of_checkpoints(ray_session, tmp_path):
    config = tiny_config()
    config.store_buffer_in_checkpoints = False
    algo = config.build_algo()
    try:
        algo.train()
        path = algo.save(str(tmp_path / "small")).checkpoint.path
        with open(os.path.join(path, "algorithm_state.pkl"), "rb") as f:
            state = pickle.load(f)
        assert state["muzero"]["replays"] == {}
    finally:
        algo.stop()


def test_nonfinite_update_is_skipped_and_weights_untouched(algo):
    policy = algo.get_policy()
    batch = algo.replays["default_policy"].sample(16, num_unroll_steps=3, td_steps=5, discount=0.997,
                                                  rng=np.random.default_rng(0))
    batch[columns.TRAIN_OBS] = np.full_like(batch[columns.TRAIN_OBS], np.nan)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    skipped_before = policy.num_nonfinite_updates
    out = policy.learn_on_replay_batch(batch)
    assert out["finite"] is False
    assert policy.num_nonfinite_updates == skipped_before + 1
    for k, v in policy.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # The weights the runners get are the untouched ones.
    for k, v in policy.get_weights().items():
        np.testing.assert_array_equal(v, before[k].numpy())


def test_a_burst_of_nonfinite_updates_stops_training(ray_session, monkeypatch):
    config = tiny_config(max_nonfinite_updates_in_a_row=3, training_intensity=16.0)
    algo = config.build_algo()
    try:
        algo.train()
        replay = algo.replays["default_policy"]
        original = replay.sample

        def poisoned(*args, **kwargs):
            batch = original(*args, **kwargs)
            batch[columns.TRAIN_TARGET_VALUE] = np.full_like(batch[columns.TRAIN_TARGET_VALUE], np.inf)
            return batch

        monkeypatch.setattr(replay, "sample", poisoned)
        with pytest.raises(Exception, match="max_nonfinite_updates_in_a_row"):
            for _ in range(5):
                algo.train()
    finally:
        algo.stop()


def test_crash_while_saving_keeps_the_previous_checkpoint(algo, tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    algo.save(str(target))
    updates_at_first_save = algo.get_policy().num_grad_updates
    algo.train()

    def crash(self, checkpoint_dir):
        with open(os.path.join(checkpoint_dir, "algorithm_state.pkl"), "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Algorithm, "save_checkpoint", crash)
    with pytest.raises(OSError, match="disk full"):
        algo.save(str(target))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no partial directory left behind
    restored = Algorithm.from_checkpoint(str(target))
    try:
        assert restored.get_policy().num_grad_updates == updates_at_first_save
    finally:
        restored.stop()


def test_checkpoint_format_from_the_future_is_refused(algo, tmp_path):
    path = algo.save(str(tmp_path / "ckpt")).checkpoint.path
    state_file = os.path.join(path, "algorithm_state.pkl")
    with open(state_file, "rb") as f:
        state = pickle.load(f)
    state["muzero"]["format_version"] = 99
    with open(state_file, "wb") as f:
        pickle.dump(state, f)
    with pytest.raises(ValueError, match="format version 99"):
        Algorithm.from_checkpoint(path)


def test_training_survives_a_crashed_env_runner(ray_session):
    config = (
        tiny_config()
        .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5, num_envs_per_env_runner=2)
        .resources(num_cpus_for_main_process=0.5)
        .fault_tolerance(restart_failed_env_runners=True)
    )
    algo = config.build_algo()
    try:
        algo.train()
        replay = algo.replays["default_policy"]
        added_before = replay.num_added
        victim = algo.env_runner_group._worker_manager._actors[1]
        ray.kill(victim, no_restart=False)
        for _ in range(3):
            algo.train()
        assert replay.num_added > added_before
        assert len(replay) == min(replay.num_added, replay.capacity)
    finally:
        algo.stop()


def test_tune_resume_continues_after_a_crash(ray_session, tmp_path):
    """A trial that crashes at iteration 3 resumes with `rllib-muzero train --resume` from its last checkpoint."""
    import json

    from ray.rllib.callbacks.callbacks import RLlibCallback

    from rllib_muzero import cli

    marker = tmp_path / "crashed-once"

    class CrashOnce(RLlibCallback):
        def on_train_result(self, *, algorithm, result, **kwargs):
            if result["training_iteration"] == 3 and not marker.exists():
                marker.write_text("x")
                raise RuntimeError("simulated crash")

    experiment = tmp_path / "exp.yaml"
    experiment.write_text(textwrap.dedent("""
        resume-me:
            run: MuZero
            env: CartPole-v1
            stop: {training_iteration: 5}
            checkpoint_config: {checkpoint_frequency: 1}
            config: {}
    """))
    overrides = {"num_simulations": 2, "train_batch_size": 8, "num_steps_sampled_before_learning_starts": 16,
                 "num_envs_per_env_runner": 2, "rollout_fragment_length": 8, "num_env_runners": 0,
                 "value_support": [-5, 5], "reward_support": [-2, 2], "replay_capacity": 500,
                 "num_cpus_for_main_process": 0.5, "callbacks": CrashOnce}
    args = ["train", str(experiment), "--storage-path", str(tmp_path / "results"), "--quiet"]
    from ray import tune

    # The first run goes through the Python API (a callback class cannot be passed as --config JSON); the resume
    # through the command.
    experiments = cli.load_experiments(str(experiment))
    param_space = cli.build_param_space("resume-me", experiments["resume-me"], overrides)
    first = tune.Tuner("MuZero", param_space=param_space, run_config=tune.RunConfig(
        name="resume-me", stop={"training_iteration": 5}, storage_path=str(tmp_path / "results"),
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1), verbose=0)).fit()
    assert first.errors and marker.exists()
    assert cli.main(args + ["--resume"]) == 0
    trial_dir = next(d for d in (tmp_path / "results" / "resume-me").iterdir() if d.is_dir())
    results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert [r["training_iteration"] for r in results] == [1, 2, 3, 4, 5]  # 3 re-run from checkpoint 2
    result = results[-1]
    assert result["num_env_steps_sampled_lifetime"] == 5 * 2 * 8  # counters continued from the checkpoint
