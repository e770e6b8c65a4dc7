"""Policy reanalyse (MuZero paper, Appendix H "Reanalyze"; EfficientZero, Ye et al. 2021): fresh policy targets.

The policy target ``pi_{t+k}`` stored in the replay is the search's visit distribution from when the transition was
played, by a network that may be thousands of updates old. Reanalyse runs a new search from the stored observation
``o_{t+k}`` with the (target) network and trains on its result instead. The paper reanalyses 80% of the batch
("MuZero Reanalyze"); EfficientZero reanalyses all of it, with root noise as when acting.

This module only rewrites a training batch; the search itself is the caller's ``search_fn`` (the policy's batched
search with the target network), so the same code serves the learner and a reanalyse worker.

Implementation details:

1. The reanalysed rows are a uniformly random subset of ``round(fraction * B)`` rows of the batch (drawn from the
   caller's ``rng``); in each of them every unroll position ``k`` whose policy target exists (``TRAIN_POLICY_MASK``)
   is searched, all positions of all rows in ONE batched search.
2. Only the policy target changes. Values are reanalysed separately, and more cheaply, by
   :meth:`~rllib_muzero.replay.SequenceReplayBuffer.build_batch`'s ``value_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

import numpy as np

from rllib_muzero.columns import TRAIN_OBS, TRAIN_POLICY_MASK, TRAIN_TARGET_POLICY, TRAIN_UNROLL_OBS

__all__ = ["PolicySearchFn", "reanalyse_policy_targets"]

# (M, *obs_shape) observations -> (M, A) policy targets from a fresh search (normalised visits / improved policy).
PolicySearchFn = Callable[[np.ndarray], np.ndarray]


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
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction!r}")
    if TRAIN_UNROLL_OBS not in batch:
        raise ValueError(f"policy reanalyse needs `{TRAIN_UNROLL_OBS}` in the batch (sample with with_unroll_obs=True)")
    policy = batch[TRAIN_TARGET_POLICY]
    B, K1, A = policy.shape
    count = int(round(fraction * B))
    if count == 0:
        return 0
    rows = np.sort(rng.choice(B, size=count, replace=False))
    obs_BK = np.concatenate([batch[TRAIN_OBS][:, None], batch[TRAIN_UNROLL_OBS]], axis=1)  # (B, K+1, *obs)
    if obs_BK.shape[1] != K1:
        raise ValueError(f"`{TRAIN_UNROLL_OBS}` holds {obs_BK.shape[1] - 1} unroll steps, the policy targets "
                         f"{K1 - 1}")
    mask = batch[TRAIN_POLICY_MASK][rows] > 0  # (count, K+1)
    row_index, step_index = np.nonzero(mask)
    if row_index.size == 0:
        return 0
    rows_m = rows[row_index]
    fresh = np.asarray(search_fn(obs_BK[rows_m, step_index]), dtype=np.float32)
    if fresh.shape != (row_index.size, A):
        raise ValueError(f"`search_fn` must return ({row_index.size}, {A}) policies, got {fresh.shape}")
    policy = np.array(policy, copy=True)
    policy[rows_m, step_index] = fresh
    batch[TRAIN_TARGET_POLICY] = policy
    return int(row_index.size)
