"""RLlib callbacks with MuZero: the usual hooks fire, and every step's search statistics are in the sample batches.

MuZero's policy writes four columns into RLlib's sample batches (names in ``rllib_muzero.columns``), one row per
env step, so any old-stack hook that sees a batch can read them:

==========================  =========================================================================
``SEARCH_ROOT_VALUE``       ``(T,)`` float32: the search value nu_t of the root
``SEARCH_POLICY``           ``(T, A)`` float32: normalised root visit counts pi_t (the acting policy)
``SEARCH_Q_MAX``            ``(T,)`` float32: max_a Q(s_t, a) over the visited root children
``SEARCH_MAX_DEPTH``        ``(T,)`` int32: the deepest node the search reached
==========================  =========================================================================

``SearchStatisticsCallback`` below shows three hooks:

- ``on_postprocess_trajectory`` (per episode fragment, on the env runner) accumulates the search statistics of the
  episode in ``episode.user_data``;
- ``on_episode_end`` turns them into ``episode.custom_metrics``, which RLlib averages over episodes into
  ``result["env_runners"]["custom_metrics"]`` (``search_root_value_mean``, ``search_depth_mean``,
  ``search_policy_entropy_mean``, ... with ``_min`` / ``_max``);
- ``on_sample_end`` counts the searched steps on each env runner, and ``on_train_result`` (on the driver) sums those
  counters over all runners into ``result["searched_steps_lifetime"]``.

Run it::

    python examples/callbacks.py --iterations 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.rllib.callbacks.callbacks import RLlibCallback

from rllib_muzero import MuZeroConfig, columns

STATS_KEY = "muzero_search_stats"  # key of the per-episode accumulators in episode.user_data


class SearchStatisticsCallback(RLlibCallback):
    """Reports MuZero's per-step search statistics as RLlib custom metrics (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.searched_steps = 0  # steps searched by the env runner this instance lives on

    def on_postprocess_trajectory(self, *, worker, episode, agent_id, policy_id, policies, postprocessed_batch,
                                  original_batches, **kwargs) -> None:
        stats = episode.user_data.setdefault(STATS_KEY, {"steps": 0, "root_value": 0.0, "q_max": 0.0, "depth": 0.0,
                                                         "policy_entropy": 0.0})
        pi = postprocessed_batch[columns.SEARCH_POLICY]  # (T, A)
        entropy = -np.sum(np.where(pi > 0, pi * np.log(np.where(pi > 0, pi, 1.0)), 0.0), axis=1)  # (T,)
        stats["steps"] += len(pi)
        stats["root_value"] += float(np.sum(postprocessed_batch[columns.SEARCH_ROOT_VALUE]))
        stats["q_max"] += float(np.sum(postprocessed_batch[columns.SEARCH_Q_MAX]))
        stats["depth"] += float(np.sum(postprocessed_batch[columns.SEARCH_MAX_DEPTH]))
        stats["policy_entropy"] += float(np.sum(entropy))

    def on_episode_end(self, *, episode, worker=None, base_env=None, policies=None, env_index=None,
                       **kwargs) -> None:
        stats = episode.user_data.get(STATS_KEY)
        if not stats or not stats["steps"]:
            return
        n = stats["steps"]
        episode.custom_metrics["search_root_value"] = stats["root_value"] / n
        episode.custom_metrics["search_q_max"] = stats["q_max"] / n
        episode.custom_metrics["search_depth"] = stats["depth"] / n
        episode.custom_metrics["search_policy_entropy"] = stats["policy_entropy"] / n
        episode.custom_metrics["search_steps"] = n

    def on_sample_end(self, *, samples, worker=None, **kwargs) -> None:
        batch = samples.as_multi_agent()
        for policy_batch in batch.policy_batches.values():
            if columns.SEARCH_POLICY in policy_batch:
                self.searched_steps += policy_batch.count

    def on_train_result(self, *, algorithm, result: dict, **kwargs) -> None:
        counts = algorithm.env_runner_group.foreach_env_runner(lambda runner: runner.callbacks.searched_steps)
        result["searched_steps_lifetime"] = int(sum(counts))


def make_config(*, seed: int = 0) -> MuZeroConfig:
    """CartPole with the callback, sized for a 2-core machine (everything in the driver process)."""
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(num_simulations=4, num_unroll_steps=3, td_steps=5, train_batch_size=16,
                  num_steps_sampled_before_learning_starts=20, replay_capacity=2000,
                  value_support=(-10, 10), reward_support=(-3, 3),
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        .callbacks(SearchStatisticsCallback)
        .debugging(seed=seed)
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    algo = make_config(seed=args.seed).build_algo()
    try:
        results = [algo.train() for _ in range(args.iterations)]
    finally:
        algo.stop()
    for result in results:
        custom = result["env_runners"].get("custom_metrics", {})
        print(f"iteration {result['training_iteration']}: searched_steps_lifetime="
              f"{result['searched_steps_lifetime']} "
              + " ".join(f"{k}={v:.3f}" for k, v in sorted(custom.items()) if k.endswith("_mean")))
    return results


if __name__ == "__main__":
    main()
