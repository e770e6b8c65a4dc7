"""K-step unroll targets with n-step value returns (paper Appendix B, pseudocode ``Game.make_target``).

Pure numpy, vectorised over the batch: no Python loop over samples, none over the ``td_steps`` rewards of a return.

Indexing (paper): the stored transition at position ``t`` holds the observation ``o_t``, the search root value
``nu_t``, the normalised visit distribution ``pi_t``, the action ``a_t`` and the reward ``u_{t+1}`` received for
``a_t``.
For a sampled position ``t`` the replay buffer gathers a *chain* of ``L = K + n + 1`` consecutive positions of the same
episode; chain position ``j`` is episode position ``t + j``. Only the first ``lengths_B[b]`` chain positions exist
(``1 <= lengths_B[b] <= L``); what lies past them is either nothing, because the episode TERMINATED right after the
last available position (``terminated_B[b]``), or unknown, because the episode was TRUNCATED (time limit) there or
its next steps have not arrived yet (the live edge of a running episode). Values stored in the chain arrays past
``lengths_B`` are ignored (they may be garbage).

Write ``l = lengths_B[b]`` and ``gamma = discount``. For unroll step ``k = 0..K`` (chain position ``k``):

Value target ``z_{t+k}`` (mask ``TRAIN_VALUE_MASK``)::

    z_{t+k} = sum_{i=0}^{m-1} gamma^i u_{t+k+1+i}  +  gamma^m nu_{t+k+m}          (paper eq. for z, Appendix B)

- ``k + n < l`` (the bootstrap position exists): ``m = n``, as in the paper.
- ``k < l <= k + n`` and terminated: the sum stops at the episode end and the bootstrap is 0,
  ``z = sum_{i=0}^{l-k-1} gamma^i u_{t+k+1+i}`` (pseudocode: ``value = 0`` when ``bootstrap_index >= len(game)``).
- ``k < l <= k + n`` and NOT terminated (truncation or live edge): the bootstrap moves back to the last stored root
  value, ``m = (l - 1) - k`` (a shorter n-step return; ``m = 0`` gives ``z = nu_{t+k}``). Time limits are not terminal,
  so a truncated episode must not be treated as ending in a zero-value state. Deviation from the pseudocode, which
  only knows whole, terminated games.
- ``k >= l`` and terminated: absorbing state, ``z = 0`` (mask 1, trained).
- ``k >= l`` and not terminated: unknown, ``z = 0`` with mask 0.

Reward target ``u_{t+k}`` (mask ``TRAIN_REWARD_MASK``), the reward for the action taken at ``t+k-1``, i.e. the reward
stored at chain position ``k - 1``:

- ``k = 0``: no reward is predicted at the representation step: target 0, mask 0.
- ``1 <= k <= l``: ``u_{t+k}`` (stored at position ``k-1``, which exists), mask 1. This includes ``k = l``: the
  reward of the last stored action is known even when what follows is not.
- ``k > l`` and terminated: absorbing, 0 with mask 1.  ``k > l`` and not terminated: 0 with mask 0.

Policy target (mask ``TRAIN_POLICY_MASK``): ``pi_{t+k}`` with mask 1 for ``k < l``. Past the data (absorbing or
unknown) the target is the UNIFORM distribution ``1/A`` with mask 0: the policy loss excludes it, and a consumer that
ignored the mask would still see a valid distribution (never an all-zero row).

Actions fed to the dynamics (``TRAIN_ACTIONS``, ``k = 0..K-1``): ``a_{t+k}`` for ``k < l``, uniformly random from
``rng`` past the data. The random draws always have shape ``(B, K)`` (drawn whether used or not), so the generator
advances the same way for every batch of the same shape.

The discounted sums use per-unroll-step discounted prefix sums: for each ``k`` (a loop over ``K + 1`` steps, each
vectorised over the batch and the chain) ``C_k[j] = sum_{k <= q < j} gamma^(q-k) u_{t+q+1}``, so a return of any
length ``m`` is one lookup ``C_k[k + m]``. This stays exact for ``td_steps`` in the thousands and for ``gamma = 0``
(no division by ``gamma^k``).
"""

from __future__ import annotations

import numpy as np

from rllib_muzero.columns import (
    TRAIN_ACTIONS,
    TRAIN_POLICY_MASK,
    TRAIN_REWARD_MASK,
    TRAIN_TARGET_POLICY,
    TRAIN_TARGET_REWARD,
    TRAIN_TARGET_VALUE,
    TRAIN_VALUE_MASK,
)

__all__ = ["bootstrap_positions", "chain_length", "make_unroll_targets", "off_policy_td_steps"]


def chain_length(num_unroll_steps: int, td_steps: int) -> int:
    """Number of consecutive positions ``L = K + n + 1`` the targets of one sample read (positions ``t .. t+K+n``)."""
    return num_unroll_steps + td_steps + 1


def off_policy_td_steps(td_steps: int, ages_B: np.ndarray, decay_age: int | None) -> np.ndarray:
    """Per-sample value horizons of EfficientZero's off-policy correction (Ye et al. 2021, section 4.3):

        n_i = clip(td_steps - floor(age_i / decay_age), 1, td_steps)

    where ``age_i`` counts the transitions stored after sample ``i`` (older data was collected by an older policy,
    so its rewards say less about the current policy's value: the target bootstraps sooner from the current,
    reanalysed value). ``decay_age=None`` keeps ``td_steps`` for every sample. Returns ``(B,)`` int64.
    """
    ages_B = np.asarray(ages_B, dtype=np.int64)
    if decay_age is None:
        return np.full(ages_B.shape, int(td_steps), dtype=np.int64)
    return np.clip(int(td_steps) - ages_B // int(decay_age), 1, int(td_steps))


def bootstrap_positions(
    lengths_B: np.ndarray, terminated_B: np.ndarray, *, num_unroll_steps: int, td_steps: int | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each unroll step's value target bootstraps (the rules of the module docstring).

    Returns ``(end_BK, has_bootstrap_BK)``, both ``(B, K+1)``: ``end_BK[b, k]`` is the chain position ``k + m`` at
    which the discounted reward sum stops and whose value ``nu_{t+k+m}`` is the bootstrap, used only where
    ``has_bootstrap_BK`` (the bootstrap is 0 after a termination). ``td_steps`` is ``n``, one int or ``(B,)`` per
    sample (:func:`off_policy_td_steps`). The replay uses the positions to reanalyse exactly the values read.
    """
    K = int(num_unroll_steps)
    l_B1 = np.asarray(lengths_B, dtype=np.int64)[:, None]
    term_B1 = np.asarray(terminated_B, dtype=bool)[:, None]
    n_B1 = np.asarray(td_steps, dtype=np.int64).reshape(-1, 1) if np.ndim(td_steps) else int(td_steps)
    k_1K = np.arange(K + 1)[None, :]
    full_BK = k_1K + n_B1 < l_B1  # the n-step bootstrap position exists
    end_BK = np.where(full_BK, k_1K + n_B1, np.where(term_B1, l_B1, l_B1 - 1))
    end_BK = np.maximum(end_BK, k_1K)  # past the data the sum is empty; masked or absorbing anyway
    has_bootstrap_BK = (full_BK | ~term_B1) & (k_1K < l_B1)
    return end_BK, has_bootstrap_BK


def make_unroll_targets(
    rewards_BL: np.ndarray,
    values_BL: np.ndarray,
    policies_BLA: np.ndarray,
    actions_BL: np.ndarray,
    lengths_B: np.ndarray,
    terminated_B: np.ndarray,
    *,
    num_unroll_steps: int,
    td_steps: int,
    discount: float,
    num_actions: int,
    rng: np.random.Generator,
    td_steps_B: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Build the training targets of ``K = num_unroll_steps`` unroll steps for a batch of gathered chains.

    The rules, with equations, are in the module docstring (paper Appendix B, pseudocode ``make_target``).

    Args:
        rewards_BL: ``(B, L)`` reward stored at chain position ``j``: ``u_{t+j+1}``, the reward for ``a_{t+j}``.
        values_BL: ``(B, L)`` search root values ``nu_{t+j}``.
        policies_BLA: ``(B, L', A)`` visit distributions ``pi_{t+j}``; only ``L' >= K + 1`` positions are read.
        actions_BL: ``(B, L'')`` actions ``a_{t+j}``; only ``L'' >= K`` positions are read.
        lengths_B: ``(B,)`` int, number of consecutive chain positions that exist (``1 <= l <= L``).
        terminated_B: ``(B,)`` bool, the episode terminated right after chain position ``l - 1``. False means the data
            stops because of a truncation (time limit) or because the rest of the episode has not arrived yet.
        num_unroll_steps: ``K >= 0``.
        td_steps: ``n >= 0``, the n of the n-step value return.
        discount: ``gamma`` in ``[0, 1]``.
        num_actions: ``A >= 1``, range of the random actions past the data.
        rng: consumed for the random actions past the data (one ``integers`` call of shape ``(B, K)``).
        td_steps_B: optional ``(B,)`` per-sample horizons ``1 <= n_b <= td_steps`` (EfficientZero's off-policy
            correction, :func:`off_policy_td_steps`); ``td_steps`` alone fixes the chain length ``L``.

    Returns:
        ``TRAIN_ACTIONS`` ``(B, K)`` int64, ``TRAIN_TARGET_VALUE`` / ``TRAIN_TARGET_REWARD`` ``(B, K+1)`` float32,
        ``TRAIN_TARGET_POLICY`` ``(B, K+1, A)`` float32, ``TRAIN_VALUE_MASK`` / ``TRAIN_REWARD_MASK`` /
        ``TRAIN_POLICY_MASK`` ``(B, K+1)`` float32.
    """
    K, n = int(num_unroll_steps), int(td_steps)
    if K < 0:
        raise ValueError(f"`num_unroll_steps` must be >= 0, got {num_unroll_steps}.")
    if n < 0:
        raise ValueError(f"`td_steps` must be >= 0, got {td_steps}.")
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"`discount` must be in [0, 1], got {discount}.")
    if num_actions < 1:
        raise ValueError(f"`num_actions` must be >= 1, got {num_actions}.")
    L = chain_length(K, n)
    rewards_BL = np.asarray(rewards_BL, dtype=np.float64)
    values_BL = np.asarray(values_BL, dtype=np.float64)
    policies_BLA = np.asarray(policies_BLA)
    actions_BL = np.asarray(actions_BL)
    lengths_B = np.asarray(lengths_B, dtype=np.int64)
    terminated_B = np.asarray(terminated_B, dtype=bool)
    if rewards_BL.ndim != 2 or rewards_BL.shape[1] < L:
        raise ValueError(f"`rewards_BL` must have shape (B, L >= {L}), got {rewards_BL.shape}.")
    B = rewards_BL.shape[0]
    if values_BL.shape[0] != B or values_BL.ndim != 2 or values_BL.shape[1] < L:
        raise ValueError(f"`values_BL` must have shape ({B}, L >= {L}), got {values_BL.shape}.")
    if policies_BLA.ndim != 3 or policies_BLA.shape[0] != B or policies_BLA.shape[1] < K + 1:
        raise ValueError(f"`policies_BLA` must have shape ({B}, >= {K + 1}, A), got {policies_BLA.shape}.")
    if policies_BLA.shape[2] != num_actions:
        raise ValueError(f"`policies_BLA` has {policies_BLA.shape[2]} actions, `num_actions` is {num_actions}.")
    if actions_BL.ndim != 2 or actions_BL.shape[0] != B or actions_BL.shape[1] < K:
        raise ValueError(f"`actions_BL` must have shape ({B}, >= {K}), got {actions_BL.shape}.")
    if lengths_B.shape != (B,) or terminated_B.shape != (B,):
        raise ValueError(f"`lengths_B` and `terminated_B` must have shape ({B},).")
    if B and (lengths_B.min() < 1 or lengths_B.max() > L):
        raise ValueError(f"`lengths_B` must be in [1, L={L}], got range [{lengths_B.min()}, {lengths_B.max()}].")
    n_per_sample: int | np.ndarray = n
    if td_steps_B is not None:
        n_per_sample = np.asarray(td_steps_B, dtype=np.int64)
        if n_per_sample.shape != (B,) or (B and (n_per_sample.min() < 0 or n_per_sample.max() > n)):
            raise ValueError(f"`td_steps_B` must have shape ({B},) with entries in [0, td_steps={n}].")

    j_L = np.arange(L)
    k_K1 = np.arange(K + 1)
    l_B1 = lengths_B[:, None]
    term_B1 = terminated_B[:, None]
    in_data_BL = j_L[None, :] < l_B1
    # Ignore whatever the chain holds past the available data.
    rewards_BL = np.where(in_data_BL, rewards_BL[:, :L], 0.0)
    values_BL = np.where(in_data_BL, values_BL[:, :L], 0.0)

    # --- value: z_{t+k} = C_k[k + m] + bootstrap, C_k[j] = sum_{k <= q < j} gamma^(q-k) u_{t+q+1} ----------------
    offset_KL = j_L[None, :] - k_K1[:, None]  # (K+1, L): q - k
    weights_KL = np.where(offset_KL >= 0, np.power(float(discount), np.maximum(offset_KL, 0)), 0.0)
    prefix_BKL1 = np.zeros((B, K + 1, L + 1))
    np.cumsum(rewards_BL[:, None, :] * weights_KL[None], axis=-1, out=prefix_BKL1[:, :, 1:])  # (B, K+1, L+1)

    k_1K = k_K1[None, :]
    in_data_BK = k_1K < l_B1  # (B, K+1): position t+k exists
    # End (exclusive) of the reward sum and the bootstrap position, per case (see module docstring).
    end_BK, has_bootstrap_BK = bootstrap_positions(lengths_B, terminated_B, num_unroll_steps=K, td_steps=n_per_sample)
    reward_sum_BK = np.take_along_axis(prefix_BKL1, end_BK[:, :, None], axis=-1)[:, :, 0]
    boot_pos_BK = np.minimum(end_BK, L - 1)
    boot_value_BK = np.take_along_axis(values_BL, boot_pos_BK, axis=1)
    boot_discount_BK = np.power(float(discount), end_BK - k_1K)
    value_BK = reward_sum_BK + np.where(has_bootstrap_BK, boot_discount_BK * boot_value_BK, 0.0)
    value_BK = np.where(in_data_BK, value_BK, 0.0)  # absorbing (terminated) or unknown (masked) past the data
    value_mask_BK = in_data_BK | term_B1

    # --- reward at k >= 1: u_{t+k}, stored at chain position k-1 ----------------------------------------------
    reward_known_BK = (k_1K >= 1) & (k_1K <= l_B1)
    reward_BK = np.zeros((B, K + 1))
    reward_BK[:, 1:] = rewards_BL[:, :K]  # already 0 past the data (absorbing value)
    reward_BK = np.where(reward_known_BK, reward_BK, 0.0)
    reward_mask_BK = (k_1K >= 1) & (reward_known_BK | term_B1)

    # --- policy: pi_{t+k} where the position exists, uniform with mask 0 past the data --------------------------
    policy_BKA = np.where(
        in_data_BK[:, :, None], policies_BLA[:, : K + 1].astype(np.float32), np.float32(1.0 / num_actions)
    )

    # --- actions: a_{t+k}, random past the data ------------------------------------------------------------------
    random_actions_BK = rng.integers(0, num_actions, size=(B, K), dtype=np.int64)
    actions_BK = np.where(in_data_BK[:, :K], actions_BL[:, :K].astype(np.int64), random_actions_BK)

    return {
        TRAIN_ACTIONS: actions_BK,
        TRAIN_TARGET_VALUE: value_BK.astype(np.float32),
        TRAIN_TARGET_REWARD: reward_BK.astype(np.float32),
        TRAIN_TARGET_POLICY: policy_BKA.astype(np.float32, copy=False),
        TRAIN_VALUE_MASK: value_mask_BK.astype(np.float32),
        TRAIN_REWARD_MASK: reward_mask_BK.astype(np.float32),
        TRAIN_POLICY_MASK: in_data_BK.astype(np.float32),
    }
