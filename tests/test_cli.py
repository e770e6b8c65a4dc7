"""The rllib-muzero command: user mistakes give one line and exit code 2, before Ray starts."""

import glob
import json

import pytest

from rllib_muzero import cli


def run(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_missing_file(capsys):
    code, err = run(["train", "does-not-exist.yaml"], capsys)
    assert code == 2 and "not found" in err and "Traceback" not in err


def test_invalid_yaml(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("a: [1, 2\n")
    code, err = run(["train", str(f)], capsys)
    assert code == 2 and "not valid YAML" in err


def test_unknown_config_key_names_the_key(tmp_path, capsys):
    f = tmp_path / "typo.yaml"
    f.write_text("exp:\n  run: MuZero\n  env: CartPole-v1\n  config:\n    num_simulation: 5\n")
    code, err = run(["train", str(f)], capsys)
    assert code == 2 and "`num_simulation`" in err and "num_simulations" in err


def test_unknown_experiment_key(tmp_path, capsys):
    f = tmp_path / "typo.yaml"
    f.write_text("exp:\n  run: MuZero\n  env: CartPole-v1\n  stopp: {training_iteration: 1}\n")
    code, err = run(["train", str(f)], capsys)
    assert code == 2 and "`stopp`" in err


def test_other_algorithm_is_refused(tmp_path, capsys):
    f = tmp_path / "ppo.yaml"
    f.write_text("exp:\n  run: PPO\n  env: CartPole-v1\n")
    code, err = run(["train", str(f)], capsys)
    assert code == 2 and "`run` must be MuZero" in err


def test_bad_value_in_config_override(capsys):
    code, err = run(["train", "tuned_examples/cartpole-muzero.yaml", "--config", '{"num_simulations": 0}'], capsys)
    assert code == 2 and "`num_simulations`" in err


def test_config_override_must_be_json(capsys):
    code, err = run(["train", "tuned_examples/cartpole-muzero.yaml", "--config", "{num_simulations: 3}"], capsys)
    assert code == 2 and "--config is not valid JSON" in err


EXAMPLES = sorted(glob.glob("tuned_examples/*.yaml"))
TINY = {"num_simulations": 2, "train_batch_size": 8, "num_steps_sampled_before_learning_starts": 16,
        "num_envs_per_env_runner": 2, "rollout_fragment_length": 8, "num_unroll_steps": 2, "td_steps": 3,
        "num_env_runners": 0, "evaluation_interval": None, "replay_capacity": 1000,
        "model": {"custom_model": "muzero_fc", "custom_model_config": {
            "hidden_size": 8, "representation_layers": [8], "dynamics_layers": [8], "reward_layers": [8],
            "value_layers": [8], "policy_layers": [8]}}}


def test_examples_are_found():
    assert {"tuned_examples/cartpole-muzero.yaml", "tuned_examples/lunarlander-muzero.yaml",
            "tuned_examples/pong-ram-muzero.yaml", "tuned_examples/breakout-ram-muzero.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_tuned_examples_validate(example):
    for name, spec in cli.load_experiments(example).items():
        cli.build_param_space(name, spec, None)


@pytest.mark.integration
@pytest.mark.parametrize("example", [e for e in EXAMPLES if "search" not in e])
def test_tuned_example_runs_one_iteration(example, ray_session, tmp_path):
    (_, spec), = cli.load_experiments(example).items()
    network = spec["config"].get("model", {}).get("custom_model", "muzero_fc")
    # Image examples keep their own (small) convolutional network: muzero_fc refuses image observations.
    tiny = TINY if network == "muzero_fc" else {k: v for k, v in TINY.items() if k != "model"}
    code = cli.main(["train", example, "--stop", '{"training_iteration": 1}', "--config", json.dumps(tiny),
                     "--storage-path", str(tmp_path), "--quiet"])
    assert code == 0
    progress = list(tmp_path.rglob("progress.csv"))
    assert len(progress) == 1 and len(progress[0].read_text().splitlines()) == 2


@pytest.mark.integration
def test_asha_search_example_runs_with_small_budgets(ray_session, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("asha", "tuned_examples/cartpole_asha_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = {k: v for k, v in TINY.items() if k not in ("num_simulations",)}
    results = module.main(["--num-samples", "2", "--max-iterations", "2", "--storage-path", str(tmp_path),
                           "--config", json.dumps(tiny)])
    assert len(results) == 2 and not results.errors
    searched = {(r.config["lr"], r.config["td_steps"], r.config["num_simulations"]) for r in results}
    assert len(searched) == 2  # two different points of the search space


@pytest.mark.integration
def test_a_checkpoint_written_by_train_is_accepted_by_evaluate(ray_session, tmp_path):
    """Tune pickles the trainable's class by value (cloudpickle) in the checkpoints that `train` writes; evaluate's
    class check must see through that and play them."""
    from rllib_muzero.evaluate import check_muzero_checkpoint, load_algorithm

    code = cli.main(["train", "tuned_examples/cartpole-muzero.yaml", "--stop", '{"training_iteration": 1}',
                     "--config", json.dumps(TINY), "--checkpoint-at-end", "--storage-path", str(tmp_path), "--quiet"])
    assert code == 0
    checkpoints = sorted(tmp_path.rglob("checkpoint_*"))
    assert checkpoints
    check_muzero_checkpoint(str(checkpoints[-1]))
    algo = load_algorithm(str(checkpoints[-1]))
    try:
        assert algo.get_policy().model is not None
    finally:
        algo.stop()


def test_progress_lines_show_the_return_and_throttle_per_trial():
    from types import SimpleNamespace

    from rllib_muzero.progress import ProgressLines, format_progress

    result = {"training_iteration": 3, "num_env_steps_sampled_lifetime": 1200, "time_total_s": 12.4,
              "env_runners": {"episode_return_mean": 87.25, "episode_len_mean": 87.25},
              "info": {"learner": {"default_policy": {"learner_stats": {"num_grad_updates": 600}}}}}
    assert format_progress("T", result) == ("T iter 3 | env steps 1,200 | return mean 87.2 (exploring) | "
                                            "episode length 87.2 | learner updates 600 | 12 s")
    early = {"training_iteration": 1, "num_env_steps_sampled_lifetime": 400, "time_total_s": 1.0,
             "env_runners": {"episode_return_mean": float("nan")}}
    assert format_progress("T", early) == ("T iter 1 | env steps 400 | return mean n/a (exploring) | "
                                           "episode length n/a | 1 s")

    lines = []
    callback = ProgressLines(min_interval_s=3600, print_fn=lines.append)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for i in (1, 2, 3):
        callback.on_trial_result(i, [a, b], a, {**result, "training_iteration": i})
    callback.on_trial_result(1, [a, b], b, {**result, "training_iteration": 1})
    assert [line.split(" | ")[0] for line in lines] == ["namespace(trial_id='a') iter 1",
                                                        "namespace(trial_id='b') iter 1"]
    callback.on_trial_complete(3, [a, b], a)  # its last result was held back: printed now
    callback.on_trial_complete(1, [a, b], b)  # already printed: nothing more
    assert [line.split(" | ")[0] for line in lines][2:] == ["namespace(trial_id='a') iter 3"]


@pytest.mark.integration
def test_train_prints_progress_lines_unless_quiet(ray_session, tmp_path, capsys):
    code = cli.main(["train", "tuned_examples/cartpole-muzero.yaml", "--stop", '{"training_iteration": 2}',
                     "--config", json.dumps(TINY), "--storage-path", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert " iter 1 | env steps " in out and " iter 2 | env steps " in out and "return mean" in out
