"""The rllib-muzero command: user mistakes give one line and exit code 2, before Ray starts."""

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


@pytest.mark.parametrize("example", ["tuned_examples/cartpole-muzero.yaml"])
def test_tuned_examples_validate(example):
    for name, spec in cli.load_experiments(example).items():
        cli.build_param_space(name, spec, None)
