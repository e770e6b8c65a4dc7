"""Training metrics reach Tune's TensorBoard event files (read back with tensorboard's event reader)."""

import numpy as np
import pytest
from ray.rllib.policy.sample_batch import SampleBatch

from rllib_muzero import columns
from rllib_muzero.metrics import discounted_returns_to_go, search_statistics
from tests.test_algorithm import tiny_config

PREFIX = "ray/tune/info/learner/default_policy/"


def test_discounted_returns_to_go_by_hand():
    np.testing.assert_allclose(discounted_returns_to_go(np.array([1.0, 2.0, 3.0]), 0.5),
                               [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])


def test_search_statistics_use_finished_episodes_only():
    batch = SampleBatch({
        SampleBatch.EPS_ID: np.array([7, 7, 8, 8]),
        SampleBatch.REWARDS: np.array([1.0, 1.0, 1.0, 1.0]),
        SampleBatch.TERMINATEDS: np.array([False, True, False, False]),
        SampleBatch.TRUNCATEDS: np.array([False, False, False, False]),
        columns.SEARCH_ROOT_VALUE: np.array([2.0, 1.0, 50.0, 60.0], np.float32),
        columns.SEARCH_MAX_DEPTH: np.array([1, 2, 3, 4], np.int32),
    })
    stats = search_statistics(batch, gamma=0.5)
    assert stats["root_value_max"] == 2.0  # episode 8 has not finished
    assert stats["root_value_mean"] == 1.5
    # Returns to go of episode 7: [1.5, 1.0] vs values [2, 1].
    assert stats["value_error_terminated"] == pytest.approx(0.25)
    assert stats["search_depth_mean"] == 2.5


@pytest.mark.integration
def test_metrics_arrive_in_tensorboard_event_files(ray_session, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from ray import tune

    config = tiny_config(num_steps_sampled_before_learning_starts=20, debug=True)
    results = tune.Tuner("MuZero", param_space=config, run_config=tune.RunConfig(
        stop={"training_iteration": 3}, storage_path=str(tmp_path), name="tb", verbose=0)).fit()
    assert not results.errors
    event_files = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert event_files
    acc = event_accumulator.EventAccumulator(str(event_files[0].parent), size_guidance={"histograms": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for name in ["learner_stats/total_loss", "learner_stats/value_loss", "learner_stats/reward_loss",
                 "learner_stats/policy_loss", "learner_stats/cur_lr", "learner_stats/grad_gnorm",
                 "learner_stats/weights_min", "learner_stats/weights_max", "muzero/replay_size",
                 "muzero/replay_mean_priority", "muzero/learner_updates_per_s", "muzero/env_steps_per_s",
                 "muzero/replay_ratio", "muzero/temperature",
                 "muzero/temperature_runner_0", "muzero/root_value_mean", "muzero/root_value_max",
                 "muzero/value_error_terminated", "muzero/search_depth_mean"]:
        assert PREFIX + name in scalars, name
    assert "ray/tune/env_runners/episode_return_mean" in scalars
    histograms = set(acc.Tags()["histograms"])
    assert any(t.startswith(PREFIX + "muzero/histograms/weights/") for t in histograms)
    assert any(t.startswith(PREFIX + "muzero/histograms/grads/") for t in histograms)
    size = acc.Scalars(PREFIX + "muzero/replay_size")
    assert [s.value for s in size] == sorted(s.value for s in size) and size[-1].value > 0
