"""Policy reanalyse (MuZero paper, Appendix H "Reanalyze"; EfficientZero, Ye et al. 2021): fresh policy targets.

The policy target ``pi_{t+k}`` stored in the replay is the search's visit distribution from when the transition was
played, by a network that may be thousands of updates old. Reanalyse runs a new search from the stored observation
``o_{t+k}`` with the (target) network and trains on its result instead. The paper reanalyses 80% of the batch
("MuZero Reanalyze"); EfficientZero reanalyses all of it, with root noise as when acting.

This module only rewrites a training batch; the search itself is the caller's ``search_fn`` (the policy's batched
search with the target network), so the same code serves the learner and the reanalyse workers
(:mod:`rllib_muzero.reanalyse_workers`), which split it in :func:`select_reanalyse_positions` (in the learner), the
search (in a worker) and :func:`apply_policy_targets` (in the learner).

Implementation details:

1. The reanalysed rows are a uniformly random subset of ``round(fraction * B)`` rows of the batch (drawn from the
   caller's ``rng``); in each of them every unroll position ``k`` whose policy target exists (``TRAIN_POLICY_MASK``)
   is searched, all positions of all rows in ONE batched search.
2. Only the policy target changes. Values are reanalysed separately, and more cheaply, by
   :meth:`~rllib_muzero.replay.SequenceReplayBuffer.build_batch`'s ``value_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import NamedTuple

import numpy as np

from rllib_muzero.columns import TRAIN_OBS, TRAIN_POLICY_MASK, TRAIN_TARGET_POLICY, TRAIN_UNROLL_OBS

__all__ = ["PolicySearchFn", "ReanalysePositions", "apply_policy_targets", "reanalyse_policy_targets",
           "select_reanalyse_positions"]

# (M, *obs_shape) observations -> (M, A) policy targets from a fresh search (normalised visits / improved policy).
PolicySearchFn = Callable[[np.ndarray], np.ndarray]


class ReanalysePositions(NamedTuple):
    """The ``M`` batch positions to reanalyse: row ``rows[m]``, unroll step ``steps[m]``, observation ``obs[m]``."""

    rows: np.ndarray  # (M,) int
    steps: np.ndarray  # (M,) int
    obs: np.ndarray  # (M, *obs_shape)


def select_reanalyse_positions(batch: Mapping[str, np.ndarray], fraction: float,
                               rng: np.random.Generator) -> ReanalysePositions | None:
    """The positions whose policy targets get reanalysed: ``round(fraction * B)`` random rows of ``batch``, every
    unroll position ``k`` of them whose policy target exists (``TRAIN_POLICY_MASK``). None when there are none.

    Args: as :func:`reanalyse_policy_targets`, without the search.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}")
    if TRAIN_UNROLL_OBS not in batch:
        raise ValueError(f"policy reanalyse needs `{TRAIN_UNROLL_OBS}` in the batch (sample with with_unroll_obs=True)")
    B, K1, _ = batch[TRAIN_TARGET_POLICY].shape
    count = int(round(fraction * B))
    if count == 0:
        return None
    rows = np.sort(rng.choice(B, size=count, replace=False))
    obs_BK = np.concatenate([batch[TRAIN_OBS][:, None], batch[TRAIN_UNROLL_OBS]], axis=1)  # (B, K+1, *obs)
    if obs_BK.shape[1] != K1:
        raise ValueError(f"`{TRAIN_UNROLL_OBS}` holds {obs_BK.shape[1] - 1} unroll steps, the policy targets "
                         f"{K1 - 1}")
    mask = batch[TRAIN_POLICY_MASK][rows] > 0  # (count, K+1)
    row_index, step_index = np.nonzero(mask)
    if row_index.size == 0:
        return None
    rows_m = rows[row_index]
    return ReanalysePositions(rows=rows_m, steps=step_index, obs=obs_BK[rows_m, step_index])


def apply_policy_targets(batch: MutableMapping[str, np.ndarray], positions: ReanalysePositions,
                         fresh: np.ndarray) -> int:
    """Writes the fresh policy targets ``(M, A)`` of ``positions`` into ``batch`` (a new ``TRAIN_TARGET_POLICY``
    array; the replay's own arrays are never written). Returns ``M``."""
    policy = batch[TRAIN_TARGET_POLICY]
    M, A = len(positions.rows), policy.shape[2]
    fresh = np.asarray(fresh, dtype=np.float32)
    if fresh.shape != (M, A):
        raise ValueError(f"`search_fn` must return ({M}, {A}) policies, got {fresh.shape}")
    policy = np.array(policy, copy=True)
    policy[positions.rows, positions.steps] = fresh
    batch[TRAIN_TARGET_POLICY] = policy
    return M


def reanalyse_policy_targets(batch: MutableMapping[str, np.ndarray], search_fn: PolicySearchFn, fraction: float,
                             rng: np.random.Generator) -> int:
    """Replaces the policy targets of ``round(fraction * B)`` random rows of ``batch`` (in place) by ``search_fn``.

    Args:
        batch: a replay batch with ``TRAIN_OBS`` ``(B, *obs)``, ``TRAIN_UNROLL_OBS`` ``(B, K, *obs)`` (sample with
            ``with_unroll_obs=True``), ``TRAIN_TARGET_POLICY`` ``(B, K+1, A)`` and ``TRAIN_POLICY_MASK`` ``(B, K+1)``.
        search_fn: one batched search over ``M`` observations, returning ``(M, A)`` policy targets.
        fraction: share of the rows to reanalyse, in ``[0, 1]``.
        rng: draws the rows (one ``choice`` call when ``0 < fraction``).

    Returns:
        The number of positions searched (``M``).
    """
    positions = select_reanalyse_positions(batch, fraction, rng)
    if positions is None:
        return 0
    return apply_policy_targets(batch, positions, search_fn(positions.obs))
