"""What `rllib-muzero train` and `evaluate` print: Tune's status table columns, no per-checkpoint policy-name
warning, and the latest checkpoint of a trial directory taken (and named) when no --checkpoints is given."""

import json
import logging
from types import SimpleNamespace

import gymnasium as gym
import pytest

from rllib_muzero import cli
from rllib_muzero.checkpoints import find_checkpoints, latest_checkpoints
from rllib_muzero.play import EvaluationError
from rllib_muzero.progress import StatusTable, is_unhealthy, status_table, table_columns


def result(return_mean=21.5, updates=7, restarts=0, healthy=2, evaluation=None, policies=("default_policy",)):
    r = {
        "num_healthy_workers": healthy, "actor_manager_num_outstanding_async_reqs": 0,
        "num_remote_worker_restarts": restarts, "num_env_runners_dropped_lifetime": 0,
        "num_env_steps_sampled_lifetime": 400, "training_iteration": 3, "time_total_s": 12.0,
        "env_runners": {"episode_return_mean": return_mean, "episode_len_mean": return_mean},
        "info": {"learner": {pid: {"learner_stats": {"num_grad_updates": updates}} for pid in policies}},
    }
    if evaluation is not None:
        r["evaluation"] = {"env_runners": {"episode_return_mean": evaluation}}
    return r


def trial(last_result, config=None):
    return SimpleNamespace(last_result=last_result, config=config if config is not None else {"num_env_runners": 2})


def headers(trials):
    return [header for _, header in table_columns(trials)]


def test_the_table_shows_return_env_steps_and_learner_updates_not_runner_health():
    assert headers([trial(result())]) == ["iter", "total time (s)", "env steps", "return (exploring)",
                                          "episode length", "learner updates"]


def test_the_evaluation_return_shows_where_evaluation_is_configured():
    assert headers([trial(result(evaluation=500.0))])[-1] == "return (evaluation)"


def test_multi_agent_runs_show_each_policys_learner_updates():
    assert headers([trial(result(policies=("p0", "p1")))])[-2:] == ["updates p0", "updates p1"]


def test_health_columns_appear_only_while_a_runner_is_unhealthy():
    healthy = trial(result())
    assert not is_unhealthy(healthy.last_result, healthy.config)
    for unhealthy in (trial(result(restarts=1)), trial(result(healthy=1))):
        assert is_unhealthy(unhealthy.last_result, unhealthy.config)
        assert headers([healthy, unhealthy])[-4:] == ["healthy runners", "in-flight requests", "runner restarts",
                                                      "runners dropped"]
    assert not is_unhealthy(result(healthy=0), {})  # num_env_runners not given: no count to compare with


def test_a_trial_without_results_yet_has_no_metric_columns():
    assert headers([trial({})]) == []


def test_status_table_replaces_tunes_reporter_only_inside_the_block():
    from ray.tune.experimental import output

    original = output._detect_reporter
    with status_table():
        reporter = output._detect_reporter(output.AirVerbosity.DEFAULT, num_samples=1,
                                           entrypoint=output.AirEntrypoint.TUNER)
        assert type(reporter) is StatusTable
        heartbeat, table = reporter._get_heartbeat([SimpleNamespace(
            last_result=result(), config={}, status="RUNNING", trial_id="t0", __str__=lambda self: "t0")])
    assert output._detect_reporter is original


def test_no_durable_policy_name_warning_for_muzeros_policy():
    from ray.rllib.policy.policy import PolicySpec

    import rllib_muzero  # noqa: F401  (installs the log filter)
    from rllib_muzero.policy import MuZeroTorchPolicy

    class Records(logging.Handler):  # on the logger itself: Ray's loggers do not propagate to the root
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    class SomeoneElsesPolicy:
        pass

    logger = logging.getLogger("ray.rllib.policy.policy")
    records = Records()
    logger.addHandler(records)
    try:
        space = gym.spaces.Box(-1.0, 1.0, (2,))
        PolicySpec(MuZeroTorchPolicy, space, gym.spaces.Discrete(2), {}).serialize()
        assert not any("durable policy name" in m for m in records.messages)
        PolicySpec(SomeoneElsesPolicy, space, gym.spaces.Discrete(2), {}).serialize()
        assert any("durable policy name" in m and "SomeoneElsesPolicy" in m for m in records.messages)  # others': kept
    finally:
        logger.removeHandler(records)


# ---------------------------------------------------------------------------------------------------- evaluate


def fake_checkpoint(path):
    path.mkdir(parents=True)
    (path / "rllib_checkpoint.json").write_text(json.dumps({"type": "Algorithm"}))
    return str(path)


def test_latest_checkpoint_of_a_trial_and_of_each_trial_of_an_experiment(tmp_path):
    trial_a = tmp_path / "MuZero_a"
    for i in (2, 10, 9):  # by Tune's index, not by name order or creation order
        fake_checkpoint(trial_a / f"checkpoint_{i:06d}")
    trial_b = tmp_path / "MuZero_b"
    fake_checkpoint(trial_b / "checkpoint_000001")
    assert latest_checkpoints(str(trial_a)) == [str(trial_a / "checkpoint_000010")]
    assert latest_checkpoints(str(tmp_path)) == [str(trial_a / "checkpoint_000010"),
                                                 str(trial_b / "checkpoint_000001")]
    assert find_checkpoints([str(trial_a)]) == [("checkpoint_000010", str(trial_a / "checkpoint_000010"))]
    # Named checkpoints and checkpoint directories work as before.
    assert find_checkpoints([str(trial_a)], ["2"]) == [("checkpoint_000002", str(trial_a / "checkpoint_000002"))]
    assert find_checkpoints([str(trial_a / "checkpoint_000009")])[0][1] == str(trial_a / "checkpoint_000009")


def test_a_directory_without_checkpoints_is_still_an_error(tmp_path):
    with pytest.raises(EvaluationError, match="is not an RLlib checkpoint"):
        find_checkpoints([str(tmp_path)])


def test_the_command_says_which_checkpoint_it_took(tmp_path, monkeypatch, capsys):
    trial_dir = tmp_path / "MuZero_a"
    for i in (1, 2):
        fake_checkpoint(trial_dir / f"checkpoint_{i:06d}")
    monkeypatch.setattr("rllib_muzero.checkpoints.check_muzero_checkpoint",
                        lambda path: (_ for _ in ()).throw(EvaluationError(f"stop here: {path}")))
    code = cli.main(["evaluate", str(trial_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"evaluating the latest checkpoint in {trial_dir}: checkpoint_000002" in err
    assert f"stop here: {trial_dir / 'checkpoint_000002'}" in err
