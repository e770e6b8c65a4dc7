"""Training metrics computed from sample batches and model parameters (numpy only; reported through Tune).

Everything returned here lands in ``result["info"]["learner"][policy_id]["muzero"]`` and so in Tune's TensorBoard
files as ``ray/tune/info/learner/<policy_id>/muzero/<name>``; 1-D arrays become histograms.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from ray.rllib.policy.sample_batch import SampleBatch

from rllib_muzero import columns

HISTOGRAM_MAX_VALUES = 10_000  # values kept per histogram (evenly strided), so debug logging stays cheap


def search_statistics(batch: SampleBatch, gamma: float) -> dict[str, float]:
    """Search and value statistics of one policy's new sample batch.

    - ``root_value_mean`` / ``root_value_max``: search values nu_t over the steps of episodes that ended in this
      batch (the "finished games").
    - ``value_error_terminated``: mean |nu_t - G_t| over fragments that end in a TERMINATION, where the discounted
      return-to-go G_t is exact (nothing follows the last step): the predicted-vs-actual value error.
    - ``search_depth_mean``: mean deepest node reached per search.
    """
    stats: dict[str, float] = {"search_depth_mean": float(np.mean(batch[columns.SEARCH_MAX_DEPTH]))}
    finished_values: list[np.ndarray] = []
    errors: list[np.ndarray] = []
    for fragment in batch.split_by_episode():
        terminated = bool(fragment[SampleBatch.TERMINATEDS][-1])
        if not (terminated or bool(fragment[SampleBatch.TRUNCATEDS][-1])):
            continue
        values = np.asarray(fragment[columns.SEARCH_ROOT_VALUE], dtype=np.float64)
        finished_values.append(values)
        if terminated:
            errors.append(np.abs(values - discounted_returns_to_go(fragment[SampleBatch.REWARDS], gamma)))
    if finished_values:
        values = np.concatenate(finished_values)
        stats["root_value_mean"] = float(values.mean())
        stats["root_value_max"] = float(values.max())
    if errors:
        stats["value_error_terminated"] = float(np.concatenate(errors).mean())
    return stats


def discounted_returns_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_{i>=0} gamma^i u_{t+1+i} over the given rewards (u_{t+1} stored at t), nothing after the last."""
    returns = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        returns[t] = running
    return returns


def parameter_histograms(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> dict[str, np.ndarray]:
    """Weights and (if present) gradients of every parameter tensor as flat arrays, for ``debug`` histograms."""
    out: dict[str, np.ndarray] = {}
    for name, param in named_parameters:
        out[f"weights/{name}"] = _strided(param.detach())
        if param.grad is not None:
            out[f"grads/{name}"] = _strided(param.grad.detach())
    return out


def _strided(tensor: torch.Tensor) -> np.ndarray:
    flat = tensor.reshape(-1).float().cpu().numpy()
    step = max(1, len(flat) // HISTOGRAM_MAX_VALUES)
    return flat[::step].copy()
