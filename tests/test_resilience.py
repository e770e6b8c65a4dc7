"""Nothing lost: exact resume in a fresh process, non-finite updates, atomic checkpoints, crashed env runners, a
second Ray session in the same process. (The save protocol's every instant: tests/test_saves.py.)"""

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
from rllib_muzero.policy import PreStepCopy
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


def _state_copy(module_or_optimizer) -> dict:
    """A deep copy of a module's state_dict, or of an optimizer's per-parameter state (tensors cloned; the learning
    rate in its param_groups is the policy's to set at every update)."""
    import copy

    state = module_or_optimizer.state_dict()
    return copy.deepcopy(state["state"] if isinstance(module_or_optimizer, torch.optim.Optimizer) else state)


def _assert_same_state(got, expected, where=""):
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert set(got) == set(expected), where
        for k in expected:
            _assert_same_state(got[k], expected[k], f"{where}/{k}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_same_state(g, e, f"{where}/{i}")
    else:
        assert got == expected, where


def _infinite_lr_step(optimizer):
    """The optimizer's step with ``lr = inf`` (which validation refuses as a config: injected here)."""
    real_step = optimizer.step

    def step(*args, **kwargs):
        for group in optimizer.param_groups:
            group["lr"] = float("inf")
        return real_step(*args, **kwargs)

    return step


@pytest.mark.parametrize("fused", [False, True], ids=["default", "fused"])  # the policy uses fused where torch can
@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, torch.optim.SGD])
def test_pre_step_copy_undoes_a_step_exactly(optimizer_class, fused):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    kwargs = {"momentum": 0.9} if optimizer_class is torch.optim.SGD else {}
    optimizer = optimizer_class(net.parameters(), lr=0.1, fused=fused, **kwargs)
    copy_ = PreStepCopy()

    def update(lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        copy_.take([net], optimizer)
        net(torch.randn(8, 3)).pow(2).mean().backward()  # training mode: moves the BatchNorm statistics
        optimizer.step()
        return copy_.all_finite([net], optimizer)

    # The very first step creates the optimizer state: undoing it drops that state again.
    before_net, before_opt = _state_copy(net), _state_copy(optimizer)
    assert update(float("inf")) is False
    copy_.restore()
    _assert_same_state(_state_copy(net), before_net)
    _assert_same_state(_state_copy(optimizer), before_opt)
    assert update(0.1) is True
    # A later step: parameters, BatchNorm statistics and moments / momentum buffers all come back.
    before_net, before_opt = _state_copy(net), _state_copy(optimizer)
    assert update(float("inf")) is False
    assert not all(torch.isfinite(p).all() for p in net.parameters())
    copy_.restore()
    _assert_same_state(_state_copy(net), before_net)
    _assert_same_state(_state_copy(optimizer), before_opt)
    assert update(0.1) is True  # and training goes on from there


def test_all_finite_tells_huge_finite_weights_from_nan_and_inf():
    """The check's fast float32 norm overflows for huge but finite weights: those still count as finite (the float64
    recheck), a single NaN or inf does not."""
    net = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    check = PreStepCopy()
    with torch.no_grad():
        net.weight.fill_(1e30)  # norm 6.4e31 in float64; its square overflows float32
        assert not torch.isfinite(torch.linalg.vector_norm(net.weight))
        assert check.all_finite([net], optimizer) is True
        for bad in (float("nan"), float("inf"), -float("inf")):
            net.bias[3] = bad
            assert check.all_finite([net], optimizer) is False
            net.bias[3] = 0.0
        assert check.all_finite([net], optimizer) is True


def test_an_update_that_makes_the_weights_nonfinite_is_undone_and_counts_nothing(ray_session):
    """lr = inf in one optimizer step: the loss and gradient are finite, the new weights are not. The update is
    undone (network, consistency heads with their BatchNorm statistics, optimizer state) and nothing that counts
    learner updates advances: num_grad_updates (learning-rate warm-up and decay, target-network refresh,
    temperature schedule), the replay's beta annealing, the trained-steps counters. Then training goes on."""
    config = tiny_config(consistency_loss_weight=0.5, reanalyse_value=True, target_update_interval=1,
                         lr_warmup_steps=1000, lr_decay_rate=0.5, lr_decay_steps=10, prioritized_replay_beta=0.4,
                         beta_increment_per_sampling=0.01, visit_softmax_temperatures=[1.0, 0.5],
                         visit_softmax_steps=[3])
    algo = config.build_algo()
    try:
        for _ in range(3):
            algo.train()
        policy = algo.get_policy()
        replay = algo.replays["default_policy"]
        optimizer = policy._optimizers[0]
        assert policy.num_grad_updates >= 1 and policy.consistency_heads is not None
        before = {
            "model": _state_copy(policy.model), "heads": _state_copy(policy.consistency_heads),
            "target": _state_copy(policy.target_model()), "optimizer": _state_copy(optimizer),
        }
        counters = {
            "updates": policy.num_grad_updates, "target_updated_at": policy._target_updated_at,
            "lr": policy.current_lr(), "temperature": policy.current_temperature(), "beta": replay.beta,
            "trained": algo._counters["num_env_steps_trained"],
        }
        nonfinite_before = policy.num_nonfinite_updates
        optimizer.step = _infinite_lr_step(optimizer)
        try:
            stats = algo._learn_once("default_policy")["learner_stats"]
        finally:
            del optimizer.step
        assert np.isfinite(stats["total_loss"]) and np.isfinite(stats["grad_gnorm"])  # only the step went wrong
        assert policy.num_nonfinite_updates == nonfinite_before + 1
        for name, module in [("model", policy.model), ("heads", policy.consistency_heads),
                             ("target", policy.target_model()), ("optimizer", optimizer)]:
            _assert_same_state(_state_copy(module), before[name], name)
        assert {
            "updates": policy.num_grad_updates, "target_updated_at": policy._target_updated_at,
            "lr": policy.current_lr(), "temperature": policy.current_temperature(), "beta": replay.beta,
            "trained": algo._counters["num_env_steps_trained"],
        } == counters
        result = algo.train()
        assert policy.num_grad_updates > counters["updates"]
        assert replay.beta > counters["beta"]
        assert all(torch.isfinite(p).all() for p in policy._trained_parameters())
        muzero = result["info"]["learner"]["default_policy"]["muzero"]
        assert muzero["num_nonfinite_updates"] == nonfinite_before + 1
    finally:
        algo.stop()


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


def test_building_again_after_ray_shutdown_and_init_in_the_same_process():
    """Notebook use: ray.shutdown() drops the session's registrations (models, the "MuZero" trainable); the package
    registers them again at the next ray.init(), so a second build in the same process works, env runners included.
    A subprocess: the test run's shared Ray session stays untouched."""
    script = textwrap.dedent("""
        import ray, torch
        from ray.rllib.models import ModelCatalog
        from ray.tune.registry import TRAINABLE_CLASS, _global_registry
        from tests.test_algorithm import tiny_config

        torch.set_num_threads(1)
        for session in (1, 2):
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     object_store_memory=128 * 1024 * 1024)
            assert _global_registry.contains(TRAINABLE_CLASS, "MuZero"), session
            config = tiny_config(num_simulations=2, train_batch_size=8, num_steps_sampled_before_learning_starts=16)
            if session == 2:  # a remote env runner builds the network from the new session's registry too
                config = config.env_runners(num_env_runners=1, num_cpus_per_env_runner=0.5,
                                            num_envs_per_env_runner=2).resources(num_cpus_for_main_process=0.5)
            algo = config.build_algo()
            result = algo.train()
            assert result["num_env_steps_sampled_lifetime"] > 0, session
            algo.stop()
            ray.shutdown()
            print("SESSION", session, "OK", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(__file__)), env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SESSION 1 OK" in out.stdout and "SESSION 2 OK" in out.stdout
