"""Batched Gumbel MuZero search (Danihelka et al., "Policy improvement by planning with Gumbel", ICLR 2022).

Framework-free (numpy + numba, embeddings opaque), beside :func:`rllib_muzero.mcts.muzero_search`: the same ``B``
preallocated trees (:class:`~rllib_muzero.mcts.Tree`, reused through a :class:`~rllib_muzero.mcts.SearchWorkspace`),
the same simulation loop with exactly ONE ``recurrent_fn`` call per simulation for the whole batch, and the same
expand / backup kernel. Only the action selection differs. DeepMind's mctx (``gumbel_muzero_policy``) is the reference
implementation; the names below are the paper's.

The equations (for a node ``s`` with children ``a``; ``N(a)`` the child's visit count, 0 if never expanded)
---------------------------------------------------------------------------------------------------------------
- Q of a visited child: ``q(a) = r(s, a) + discount * V(child)``, ``V = value_sum / visits`` (as ``muzero_search``).
- Mixed value (paper Appendix D), with ``v_hat`` the network value of ``s`` and ``pi = softmax(logits)``::

      v_mix = (v_hat + (sum_b N(b)) / (sum_{b: N(b)>0} pi(b)) * sum_{b: N(b)>0} pi(b) q(b)) / (1 + sum_b N(b))

- Completed Q (paper Section 4): ``completedQ(a) = q(a)`` if ``N(a) > 0`` else ``v_mix``.
- Rescaled (mctx ``qtransform_completed_by_mix_value(rescale_values=True)``), over the node's (legal) actions::

      q_hat(a) = (completedQ(a) - min_b completedQ(b)) / max(max_b completedQ(b) - min_b completedQ(b), 1e-8)

- Monotone transform (paper): ``sigma(q_hat) = (c_visit + max_b N(b)) * c_scale * q_hat``.
- Improved policy (paper Section 4): ``pi'(a) = softmax(logits + sigma(q_hat))(a)``.
- Root (paper: Gumbel-top-k and "Sequential Halving with Gumbel"): ``g(a) ~ gumbel_scale * Gumbel(0, 1)``
  (``g = 0`` without noise); the considered set is Gumbel-top-k, the ``k = min(max_num_considered_actions, #legal)``
  legal actions with the largest ``g(a) + logits(a)``. Sequential Halving splits the budget over them: simulation
  ``i`` (0-based) takes, among the considered actions with ``N(a) == considered_visits[k][i]``
  (:func:`considered_visit_sequence`), ``argmax_a g(a) + logits(a) + sigma(q_hat(a))``.
- Below the root (paper Section 5, "Planning at non-root nodes"), deterministic:
  ``argmax_a pi'(a) - N(a) / (1 + sum_b N(b))``.
- Result: ``action = argmax g(a) + logits(a) + sigma(q_hat(a))`` over the considered actions with the most visits;
  ``action_weights = pi'`` at the root (the policy target).

How the code maps to mctx
-------------------------
=============================================  ======================================================================
mctx                                           here
=============================================  ======================================================================
``gumbel_muzero_policy``                       :func:`gumbel_muzero_search`
``search.search`` (simulate/expand/backward)   ``mcts._run_simulations`` + ``mcts._expand_and_backup`` (shared)
``gumbel_muzero_root_action_selection``        :func:`_select_root` (numba)
``gumbel_muzero_interior_action_selection``    :func:`_select_interior` (numba)
``qtransform_completed_by_mix_value``          :func:`_completed_q` (numba)
``get_sequence_of_considered_visits``          :func:`considered_visit_sequence`
``score_considered`` + ``masked_argmax``       :func:`_root_choice`, in the search and in :func:`_summarise_roots`
=============================================  ======================================================================

Conventions (every choice where this module differs from the paper or mctx, or where they leave it open)
--------------------------------------------------------------------------------------------------------
1. Ties (equal scores) go to the LOWEST action index everywhere: Gumbel-top-k, the root's Sequential Halving
   choice, the interior ``argmax`` and the final action (mctx's ``jnp.argmax`` does the same).
2. The considered set is computed explicitly once per search (top-k of ``g + logits`` over the legal actions) and the
   root never leaves it. mctx keeps it implicit (the first ``k`` simulations pick the best unvisited actions, whose
   completed Qs are all ``v_mix``); the two agree (up to the rounding of ``g + logits + sigma`` vs ``g + logits``).
3. Sequential Halving follows mctx's ``get_sequence_of_considered_visits``, not the paper's phase sizes literally:
   ``m`` starts at ``k``; each phase gives every one of the ``m`` remaining actions
   ``max(1, floor(n / (ceil(log2 k) * m)))`` more visits, then ``m = max(2, m // 2)``; the last (2-action) phase
   repeats until the budget ``n = num_simulations`` is spent, so no simulation is wasted. ``k = 1``: every
   simulation visits the single considered action.
4. ``num_simulations < k``: only the first phase runs, partially: the ``num_simulations`` considered actions with the
   largest ``g + logits + sigma`` (= ``g + logits``, all unvisited) get one visit each, the other considered actions
   none, and the action is the best visited one (mctx behaves the same).
5. The min-max rescaling of completed Q runs over the LEGAL actions of the root only (interior nodes: every action).
   mctx includes the root's invalid actions, completed by ``v_mix``, which moves the minimum / maximum when every
   legal action has been visited.
6. The root score is ``g + logits + sigma`` with the root logits max-subtracted over the legal actions, in float64,
   without mctx's clamp at ``-1e9`` (which only matters for logits ``1e9`` below the best one).
7. Below the root, ``pi'`` is computed from the stored float32 prior ``P = softmax(logits)``:
   ``pi'(a) = P(a) exp(sigma(a)) / sum_b P(b) exp(sigma(b))``, algebraically ``softmax(logits + sigma)`` (the float32
   rounding of ``P`` is the only difference; a prior that underflowed to 0 gives ``pi' = 0``). The mixed value's
   weights use ``max(P(b), float32 tiny)`` as mctx, so visited children with prior 0 cannot divide by zero.
8. Visited means expanded (every expanded node has been backed up once, ``N >= 1``). ``V(child)`` includes the
   child's own network value (as mctx); ``discount`` is one constant for every edge (mctx takes a discount per edge
   from ``recurrent_fn``, e.g. 0 after a terminal state). One player: no sign flip between levels.
9. ``root_value`` is the mean backed-up value of the root counting the root's network value as one visit (mctx's
   ``summary().value``; ``muzero_search`` with ``root_counts_as_visit=True``), not ``v_mix``.
10. Gumbel noise: ONE draw ``rng.gumbel(size=(B, A))`` (float64) per search, times ``gumbel_scale``, only when
    ``add_gumbel_noise=True``; ``rng`` is the only randomness source and is consumed only then. Without noise
    ``g = 0``: the search is deterministic and the action is the greedy ``argmax logits + sigma`` over the most
    visited considered actions.
11. ``invalid_actions`` (``True`` = illegal) acts at the root only: illegal actions are never considered or visited,
    get ``action_weights`` 0 and ``completed_q_values`` 0. Deeper nodes may take any action (as mctx).
12. The tree's ``min_value`` / ``max_value`` are kept by the shared backup kernel but unused here (the rescaling is
    per node, convention 5); ``children_prior`` of the root holds ``softmax(logits)`` over the legal actions.

The numba functions are plain numpy-compatible Python and give identical results with ``NUMBA_DISABLE_JIT=1`` (all
scalar arithmetic is float64; float32 entries are read with ``np.float64(...)``).

Example:
    >>> import numpy as np
    >>> from rllib_muzero.mcts import RecurrentOutput, RootOutput
    >>> def recurrent_fn(embedding, actions):   # a 3-armed bandit: arm 2 pays 1
    ...     b = len(actions)
    ...     return RecurrentOutput(reward=(actions == 2).astype(np.float32), prior_logits=np.zeros((b, 3), np.float32),
    ...                            value=np.zeros(b, np.float32), embedding=embedding)
    >>> root = RootOutput(prior_logits=np.zeros((1, 3), np.float32), value=np.zeros(1, np.float32),
    ...                   embedding=np.zeros((1, 2), np.float32))
    >>> out = gumbel_muzero_search(root, recurrent_fn, num_simulations=8, discount=0.99, add_gumbel_noise=False)
    >>> int(out.action[0]), out.visit_counts[0].tolist()
    (2, [3, 1, 4])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from rllib_muzero.mcts import (
    ROOT_INDEX,
    UNVISITED,
    RecurrentFn,
    RootOutput,
    SearchWorkspace,
    Tree,
    _fail,
    _legal_mask,
    _number,
    _reset_roots,
    _root_arrays,
    _root_prior,
    _run_simulations,
    _summarise,
)

__all__ = [
    "GumbelSearchOutput",
    "considered_visit_sequence",
    "gumbel_muzero_search",
]

RESCALE_EPSILON = 1e-8  # smallest denominator of the min-max rescaling of completed Q (mctx's `epsilon`)
PRIOR_FLOOR = float(np.finfo(np.float32).tiny)  # floor of the prior weights in the mixed value (convention 7)


@dataclass(frozen=True)
class GumbelSearchOutput:
    """Result of :func:`gumbel_muzero_search`; all arrays except ``tree`` are fresh copies.

    ``visit_counts``, ``root_value``, ``q_values``, ``max_depth`` and ``tree`` mean what they mean in
    :class:`~rllib_muzero.mcts.SearchOutput`, so code reading those fields handles both results alike.
    """

    action: np.ndarray  # [B] int64: argmax g + logits + sigma(q_hat) over the most visited considered actions
    action_weights: np.ndarray  # [B, A] float32: pi' = softmax(logits + sigma(q_hat)) over the legal actions, 0 illegal
    visit_counts: np.ndarray  # [B, A] int32 visits of the root's children
    root_value: np.ndarray  # [B] float32, mean backed-up value at the root incl. its network value (convention 9)
    q_values: np.ndarray  # [B, A] float32, r(s, a) + discount * V(child); 0 where unvisited
    completed_q_values: np.ndarray  # [B, A] float32: q_values where visited, v_mix where not (legal); 0 illegal
    considered: np.ndarray  # [B, A] bool: the Gumbel-top-k set the root's Sequential Halving ran over
    gumbel: np.ndarray  # [B, A] float32: the noise g (gumbel_scale * Gumbel(0, 1)), zeros without noise
    max_depth: np.ndarray  # [B] int32
    tree: Tree  # the arrays, for visualisation; valid until the next search with the same workspace


# ----------------------------------------------------------------------------------------------------------------------
# Sequential Halving's schedule.


def considered_visit_sequence(num_considered: int, num_simulations: int) -> tuple[int, ...]:
    """Visit count that the root's chosen action has before each simulation, under Sequential Halving (convention 3).

    Simulation ``i`` visits one of the considered actions that have exactly ``sequence[i]`` visits. ``m`` (the number
    of actions still in the race) starts at ``num_considered``; a phase gives each of the ``m`` actions
    ``max(1, floor(num_simulations / (ceil(log2 num_considered) * m)))`` visits, one round of ``m`` simulations at a
    time, then ``m = max(2, m // 2)``. Same schedule as mctx's ``get_sequence_of_considered_visits``.

    Example:
        >>> considered_visit_sequence(4, 16)   # phase 1: 4 actions x 2 visits; then 2 actions x 4 visits
        (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5)
        >>> considered_visit_sequence(4, 3)
        (0, 0, 0)
        >>> considered_visit_sequence(1, 3)
        (0, 1, 2)
    """
    if num_considered <= 1:
        return tuple(range(num_simulations))
    phases = math.ceil(math.log2(num_considered))
    sequence: list[int] = []
    visits = 0  # the visit count shared by every action still in the race
    remaining = num_considered
    while len(sequence) < num_simulations:
        rounds = max(1, num_simulations // (phases * remaining))
        for _ in range(rounds):
            sequence.extend([visits] * remaining)
            visits += 1
        remaining = max(2, remaining // 2)
    return tuple(sequence[:num_simulations])


def _considered_visit_table(max_considered: int, num_simulations: int) -> np.ndarray:
    """[max_considered + 1, num_simulations] int32: row ``k`` is :func:`considered_visit_sequence` ``(k, n)``."""
    return np.array(
        [considered_visit_sequence(k, num_simulations) for k in range(max_considered + 1)], dtype=np.int32
    ).reshape(max_considered + 1, num_simulations)


# ----------------------------------------------------------------------------------------------------------------------
# Per-shape buffers, kept in the workspace slot next to the tree.


@dataclass
class _GumbelBuffers:
    """Root data and scratch rows of one search shape (B roots, A actions), allocated once per workspace slot."""

    root_logits: np.ndarray  # [B, A] float64: root logits minus their legal maximum; 0 where illegal
    gumbel: np.ndarray  # [B, A] float64: g
    considered: np.ndarray  # [B, A] bool: the Gumbel-top-k set
    num_considered: np.ndarray  # [B] int32: k per root
    completed: np.ndarray  # [A] float64 scratch: completed Q of the node being scored
    sigma: np.ndarray  # [A] float64 scratch: sigma(q_hat) of the node being scored, then pi'; the top-k keys at init
    tables: dict = field(default_factory=dict)  # (max considered, n) -> considered-visit table


def _buffers(slot: Any) -> _GumbelBuffers:
    buffers = slot.extras.get("gumbel")
    if buffers is None:
        B, A = slot.tree.batch_size, slot.tree.num_actions
        buffers = _GumbelBuffers(
            root_logits=np.zeros((B, A), dtype=np.float64),
            gumbel=np.zeros((B, A), dtype=np.float64),
            considered=np.zeros((B, A), dtype=np.bool_),
            num_considered=np.zeros(B, dtype=np.int32),
            completed=np.zeros(A, dtype=np.float64),
            sigma=np.zeros(A, dtype=np.float64),
        )
        slot.extras["gumbel"] = buffers
    return buffers


# ----------------------------------------------------------------------------------------------------------------------
# Numba kernels. Plain numpy-compatible Python (NUMBA_DISABLE_JIT=1 safe).


@numba.njit(cache=True, inline="always")
def _children_statistics(b, node, at_root, children_index, children_prior, node_visits, node_q, root_legal):
    """One pass over the children of ``node`` (root ``b``; legal actions only at the root): ``sum_b N(b)``,
    ``max_b N(b)``, the floored prior mass and prior-weighted Q of the visited children (for ``v_mix``), the min and
    max Q of the visited children, and whether a (legal) child is unvisited."""
    num_actions = children_index.shape[2]
    sum_visits = 0
    max_visits = 0
    sum_prior = 0.0
    sum_prior_q = 0.0
    lo = math.inf
    hi = -math.inf
    any_unvisited = False
    for a in range(num_actions):
        if at_root and not root_legal[b, a]:
            continue
        child = children_index[b, node, a]
        if child == UNVISITED:
            any_unvisited = True
            continue
        n = node_visits[b, child]
        sum_visits += n
        if n > max_visits:
            max_visits = n
        p = np.float64(children_prior[b, node, a])
        if p < PRIOR_FLOOR:
            p = PRIOR_FLOOR
        q = node_q[b, child]
        sum_prior += p
        sum_prior_q += p * q
        if q < lo:
            lo = q
        if q > hi:
            hi = q
    return sum_visits, max_visits, sum_prior, sum_prior_q, lo, hi, any_unvisited


@numba.njit(cache=True, inline="always")
def _mix_and_rescale(v_hat, sum_visits, sum_prior, sum_prior_q, lo, hi, any_unvisited):
    """``v_mix`` (paper Appendix D, from the network value ``v_hat`` and the visited children's statistics) and the
    min and span of the min-max rescaling of completed Q (unvisited children completed by ``v_mix``)."""
    v_mix = v_hat
    if sum_visits > 0:
        v_mix = (v_hat + sum_visits * (sum_prior_q / sum_prior)) / (1.0 + sum_visits)
    if any_unvisited:
        if v_mix < lo:
            lo = v_mix
        if v_mix > hi:
            hi = v_mix
    span = hi - lo
    if not span > RESCALE_EPSILON:
        span = RESCALE_EPSILON
    return v_mix, lo, hi, span


@numba.njit(cache=True, inline="always")
def _completed_q(
    b,
    node,
    children_index,
    children_prior,
    node_visits,
    node_q,
    node_raw_value,
    root_legal,
    c_visit,
    c_scale,
    completed_out,
    sigma_out,
):
    """mctx ``qtransform_completed_by_mix_value`` for one node of root ``b``.

    Writes ``completedQ(a)`` (q where visited, ``v_mix`` where not; paper Section 4 / Appendix D) to
    ``completed_out[a]`` and ``sigma(q_hat(a)) = (c_visit + max_b N(b)) * c_scale * q_hat(a)`` to ``sigma_out[a]``,
    ``q_hat`` = completed Q min-max rescaled over the node's actions (the legal ones at the root; illegal entries are
    set to 0). Returns ``sum_b N(b)``.
    """
    num_actions = children_index.shape[2]
    at_root = node == ROOT_INDEX
    sum_visits, max_visits, sum_prior, sum_prior_q, lo, hi, any_unvisited = _children_statistics(
        b, node, at_root, children_index, children_prior, node_visits, node_q, root_legal)
    v_mix, lo, hi, span = _mix_and_rescale(node_raw_value[b, node], sum_visits, sum_prior, sum_prior_q, lo, hi,
                                           any_unvisited)
    scale = (c_visit + max_visits) * c_scale
    for a in range(num_actions):
        if at_root and not root_legal[b, a]:
            completed_out[a] = 0.0
            sigma_out[a] = 0.0
            continue
        child = children_index[b, node, a]
        q = v_mix if child == UNVISITED else node_q[b, child]
        completed_out[a] = q
        sigma_out[a] = scale * ((q - lo) / span)
    return sum_visits


@numba.njit(cache=True, inline="always")
def _child_visits(b, node, a, children_index, node_visits):
    child = children_index[b, node, a]
    if child == UNVISITED:
        return 0
    return node_visits[b, child]


@numba.njit(cache=True, inline="always")
def _root_choice(b, target_visits, children_index, node_visits, root_logits, gumbel, considered, sigma):
    """``argmax_a g(a) + logits(a) + sigma(a)`` over the considered actions with ``N(a) == target_visits``; -1 if none
    (ties -> lowest index)."""
    num_actions = children_index.shape[2]
    best_action = -1
    best_score = -math.inf
    for a in range(num_actions):
        if not considered[b, a]:
            continue
        if _child_visits(b, ROOT_INDEX, a, children_index, node_visits) != target_visits:
            continue
        score = gumbel[b, a] + root_logits[b, a] + sigma[a]
        if best_action < 0 or score > best_score:
            best_action = a
            best_score = score
    return best_action


@numba.njit(cache=True, inline="always")
def _select_root(
    b,
    children_index,
    children_prior,
    node_visits,
    node_q,
    node_raw_value,
    root_legal,
    root_logits,
    gumbel,
    considered,
    num_considered,
    visit_table,
    c_visit,
    c_scale,
    completed,
    sigma,
):
    """mctx ``gumbel_muzero_root_action_selection``: Sequential Halving over the considered actions of root ``b``.

    Simulation ``i = sum_a N(a)`` takes ``argmax g + logits + sigma(q_hat)`` among the considered actions with
    ``N(a) == visit_table[k, i]``.
    """
    sum_visits = _completed_q(
        b,
        ROOT_INDEX,
        children_index,
        children_prior,
        node_visits,
        node_q,
        node_raw_value,
        root_legal,
        c_visit,
        c_scale,
        completed,
        sigma,
    )
    target = visit_table[num_considered[b], sum_visits]
    action = _root_choice(b, target, children_index, node_visits, root_logits, gumbel, considered, sigma)
    if action < 0:  # unreachable: every entry of the schedule is the visit count of >= 1 considered action
        num_actions = children_index.shape[2]
        fewest = -1
        for a in range(num_actions):
            if considered[b, a]:
                n = _child_visits(b, ROOT_INDEX, a, children_index, node_visits)
                if fewest < 0 or n < fewest:
                    fewest = n
                    action = a
    return action


@numba.njit(cache=True, inline="always")
def _select_interior(
    b,
    node,
    children_index,
    children_prior,
    node_visits,
    node_q,
    node_raw_value,
    root_legal,
    c_visit,
    c_scale,
    weights,
):
    """mctx ``gumbel_muzero_interior_action_selection``: ``argmax_a pi'(a) - N(a) / (1 + sum_b N(b))`` (paper Sec. 5),
    ``pi'(a) = P(a) exp(sigma(a)) / sum_b P(b) exp(sigma(b))`` (convention 7); ties -> lowest index.

    The arithmetic of :func:`_completed_q` followed by the softmax, in two passes over the children instead of five
    (this runs at every interior node of every descent, the search's hottest code): the statistics pass, then ``pi'``.
    ``max_a sigma(a)`` needs no pass of its own: the rescaling is monotone in Q, so it is ``sigma`` at the largest
    completed Q, bit for bit. ``weights`` [A] is a scratch row (unnormalised ``pi'``).
    """
    num_actions = children_index.shape[2]
    sum_visits, max_visits, sum_prior, sum_prior_q, lo, hi, any_unvisited = _children_statistics(
        b, node, False, children_index, children_prior, node_visits, node_q, root_legal)
    v_mix, lo, hi, span = _mix_and_rescale(node_raw_value[b, node], sum_visits, sum_prior, sum_prior_q, lo, hi,
                                           any_unvisited)
    scale = (c_visit + max_visits) * c_scale
    max_sigma = scale * ((hi - lo) / span)
    total = 0.0
    for a in range(num_actions):
        child = children_index[b, node, a]
        q = v_mix if child == UNVISITED else node_q[b, child]
        weight = np.float64(children_prior[b, node, a]) * math.exp(scale * ((q - lo) / span) - max_sigma)
        weights[a] = weight
        total += weight
    denominator = 1.0 + sum_visits
    best_action = -1
    best_score = -math.inf
    for a in range(num_actions):
        score = weights[a] / total - _child_visits(b, node, a, children_index, node_visits) / denominator
        if best_action < 0 or score > best_score:
            best_action = a
            best_score = score
    return best_action


@numba.njit(cache=True)
def _simulate(
    children_index,
    children_prior,
    node_visits,
    node_q,
    node_raw_value,
    root_legal,
    max_depth,
    root_logits,
    gumbel,
    considered,
    num_considered,
    visit_table,
    c_visit,
    c_scale,
    completed,
    sigma,
    parents_out,
    actions_out,
    flat_index_out,
):
    """Descends every tree from its root (Sequential Halving) through interior nodes (deterministic selection) to
    its first unexpanded edge; writes the edge (parent node, action) and the parent's row in the node-major
    embedding store (``parent * B + b``), as ``mcts._simulate``."""
    batch_size = children_index.shape[0]
    for b in range(batch_size):
        node = ROOT_INDEX
        action = _select_root(
            b,
            children_index,
            children_prior,
            node_visits,
            node_q,
            node_raw_value,
            root_legal,
            root_logits,
            gumbel,
            considered,
            num_considered,
            visit_table,
            c_visit,
            c_scale,
            completed,
            sigma,
        )
        depth = 1
        while True:
            child = children_index[b, node, action]
            if child == UNVISITED:  # expand this edge
                break
            node = child
            action = _select_interior(
                b,
                node,
                children_index,
                children_prior,
                node_visits,
                node_q,
                node_raw_value,
                root_legal,
                c_visit,
                c_scale,
                sigma,
            )
            depth += 1
        parents_out[b] = node
        actions_out[b] = action
        flat_index_out[b] = node * batch_size + b
        if depth > max_depth[b]:
            max_depth[b] = depth


@numba.njit(cache=True)
def _summarise_roots(
    children_index,
    children_prior,
    node_visits,
    node_q,
    node_raw_value,
    root_legal,
    root_logits,
    gumbel,
    considered,
    c_visit,
    c_scale,
    action_out,
    weights_out,
    completed_out,
    sigma,
):
    """After the search, per root: completed Q, the action (``argmax g + logits + sigma`` over the considered actions
    with the most visits; mctx's final ``score_considered`` + ``masked_argmax``) and ``pi' = softmax(logits + sigma)``
    over the legal actions (0 for illegal ones)."""
    batch_size = children_index.shape[0]
    num_actions = children_index.shape[2]
    for b in range(batch_size):
        _completed_q(
            b,
            ROOT_INDEX,
            children_index,
            children_prior,
            node_visits,
            node_q,
            node_raw_value,
            root_legal,
            c_visit,
            c_scale,
            completed_out[b],
            sigma,
        )
        most = 0
        for a in range(num_actions):
            if considered[b, a]:
                n = _child_visits(b, ROOT_INDEX, a, children_index, node_visits)
                if n > most:
                    most = n
        action_out[b] = _root_choice(b, most, children_index, node_visits, root_logits, gumbel, considered, sigma)
        max_logit = -math.inf
        for a in range(num_actions):
            if root_legal[b, a] and root_logits[b, a] + sigma[a] > max_logit:
                max_logit = root_logits[b, a] + sigma[a]
        total = 0.0
        for a in range(num_actions):
            if root_legal[b, a]:
                total += math.exp(root_logits[b, a] + sigma[a] - max_logit)
        for a in range(num_actions):
            if root_legal[b, a]:
                weights_out[b, a] = math.exp(root_logits[b, a] + sigma[a] - max_logit) / total
            else:
                weights_out[b, a] = 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Public entry point.


@dataclass(frozen=True)
class _GumbelParams:
    """Validated scalar arguments of one search."""

    num_simulations: int
    discount: float
    max_num_considered_actions: int
    gumbel_scale: float
    c_visit: float
    c_scale: float


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        _fail(name, value, "an integer >= 1")
    return int(value)


def _finite_at_least_zero(name: str, value: Any) -> float:
    accepted = "a finite float >= 0"
    x = _number(name, value, accepted)
    if not (math.isfinite(x) and x >= 0.0):
        _fail(name, value, accepted)
    return x


def _validate(
    num_simulations: Any,
    discount: Any,
    max_num_considered_actions: Any,
    gumbel_scale: Any,
    c_visit: Any,
    c_scale: Any,
    add_gumbel_noise: Any,
    rng: Any,
) -> _GumbelParams:
    """Checks every scalar argument (ValueError naming it and the accepted values)."""
    num_simulations = _positive_int("num_simulations", num_simulations)
    discount = _number("discount", discount, "a float in (0, 1]")
    if not 0.0 < discount <= 1.0:
        _fail("discount", discount, "a float in (0, 1]")
    max_num_considered_actions = _positive_int("max_num_considered_actions", max_num_considered_actions)
    gumbel_scale = _finite_at_least_zero("gumbel_scale", gumbel_scale)
    c_visit = _finite_at_least_zero("c_visit", c_visit)
    c_scale = _finite_at_least_zero("c_scale", c_scale)
    if not isinstance(add_gumbel_noise, (bool, np.bool_)):
        _fail("add_gumbel_noise", add_gumbel_noise, "True (acting: Gumbel noise at the root) or False (greedy)")
    if add_gumbel_noise and not isinstance(rng, np.random.Generator):
        _fail("rng", rng, "a numpy.random.Generator when add_gumbel_noise=True")
    return _GumbelParams(num_simulations, discount, max_num_considered_actions, gumbel_scale, c_visit, c_scale)


@numba.njit(cache=True)
def _init_gumbel_root_kernel(prior_logits, legal, gumbel, max_considered, root_logits, considered, num_considered,
                             keys):
    """Per root: the logits minus their legal maximum (0 where illegal), ``k = min(m, #legal)`` and the Gumbel-top-k
    set, the ``k`` legal actions with the largest ``g + logits`` (ties -> lower index, as a stable sort). ``keys`` is
    an ``[A]`` scratch row; the top ``k`` are picked by ``k`` scans (``k * A`` comparisons, no sort, no allocation)."""
    batch_size, num_actions = legal.shape
    for b in range(batch_size):
        top = -math.inf
        num_legal = 0
        for a in range(num_actions):
            if legal[b, a]:
                num_legal += 1
                logit = np.float64(prior_logits[b, a])
                if logit > top:
                    top = logit
        for a in range(num_actions):
            root_logits[b, a] = np.float64(prior_logits[b, a]) - top if legal[b, a] else 0.0
            keys[a] = gumbel[b, a] + root_logits[b, a] if legal[b, a] else -math.inf
            considered[b, a] = False
        k = min(max_considered, num_legal)
        num_considered[b] = k
        for _ in range(k):
            best = -1
            for a in range(num_actions):
                if legal[b, a] and not considered[b, a] and (best < 0 or keys[a] > keys[best]):
                    best = a
            considered[b, best] = True


def _init_gumbel_root(
    buffers: _GumbelBuffers,
    prior_logits: np.ndarray,
    legal: np.ndarray,
    params: _GumbelParams,
    add_gumbel_noise: bool,
    rng: np.random.Generator | None,
) -> None:
    """Root logits, Gumbel noise and the Gumbel-top-k considered set."""
    if add_gumbel_noise:
        buffers.gumbel[...] = rng.gumbel(size=legal.shape)  # [B, A]
        buffers.gumbel *= params.gumbel_scale
    else:
        buffers.gumbel.fill(0.0)
    _init_gumbel_root_kernel(prior_logits, legal, buffers.gumbel, params.max_num_considered_actions,
                             buffers.root_logits, buffers.considered, buffers.num_considered, buffers.sigma)


def gumbel_muzero_search(
    root: RootOutput,
    recurrent_fn: RecurrentFn,
    *,
    num_simulations: int,
    discount: float,
    max_num_considered_actions: int = 16,
    gumbel_scale: float = 1.0,
    c_visit: float = 50.0,
    c_scale: float = 0.1,
    add_gumbel_noise: bool = False,
    rng: np.random.Generator | None = None,
    invalid_actions: np.ndarray | None = None,
    workspace: SearchWorkspace | None = None,
) -> GumbelSearchOutput:
    """Runs ``num_simulations`` Gumbel MuZero simulations from each of the ``B`` roots (Danihelka et al. 2022).

    Args:
        root: network outputs at the roots; ``prior_logits`` [B, A], ``value`` [B], ``embedding`` [B, *H].
        recurrent_fn: ``(parent_embeddings [B, *H], actions int64 [B]) -> RecurrentOutput``; called exactly
            ``num_simulations`` times, each time with the whole batch (same contract as ``muzero_search``).
        num_simulations: simulations per root, ``n``, the budget Sequential Halving splits; the tree has
            ``num_simulations + 1`` nodes per root.
        discount: ``gamma`` in ``q = r + gamma * V(child)`` and in the backup, in (0, 1].
        max_num_considered_actions: ``m`` of Gumbel-top-k, the most root actions Sequential Halving considers
            (paper and mctx: 16); ``k = min(m, #legal actions)`` per root.
        gumbel_scale: multiplies the Gumbel(0, 1) noise ``g`` when ``add_gumbel_noise`` (mctx: 1.0).
        c_visit: ``c_visit`` of ``sigma(q_hat) = (c_visit + max_b N(b)) * c_scale * q_hat`` (paper and mctx's
            ``maxvisit_init``: 50).
        c_scale: ``c_scale`` of the same transform (mctx's ``value_scale``: 0.1); with ``q_hat`` in [0, 1] it bounds
            how far the values can move the improved policy away from the prior logits.
        add_gumbel_noise: sample ``g`` (acting: the selected action is then a sample from the improved policy);
            False = ``g = 0``, a deterministic greedy search (evaluation).
        rng: the only randomness source; consumed (one ``gumbel`` draw of shape [B, A]) only when
            ``add_gumbel_noise``, and then required.
        invalid_actions: optional bool [B, A], True = illegal at the ROOT (never considered, weight 0); every row
            needs at least one legal action.
        workspace: reuse preallocated trees across calls (may be shared with ``muzero_search``); a fresh one is made
            when None.

    Returns:
        :class:`GumbelSearchOutput`; ``tree`` stays valid until the workspace's next search of the same shape.

    Raises:
        ValueError: an argument out of range (the message names it and the accepted values), or a
            ``recurrent_fn`` output of the wrong shape.
    """
    params = _validate(
        num_simulations, discount, max_num_considered_actions, gumbel_scale, c_visit, c_scale, add_gumbel_noise, rng
    )
    prior_logits, root_value = _root_arrays(root)
    batch_size, num_actions = prior_logits.shape
    legal = _legal_mask(invalid_actions, batch_size, num_actions)
    num_nodes = params.num_simulations + 1

    if workspace is None:
        workspace = SearchWorkspace(max_entries=1)
    slot = workspace._slot(batch_size, num_nodes, num_actions, root.embedding)
    tree = slot.tree
    buffers = _buffers(slot)
    _reset_roots(tree, _root_prior(prior_logits, legal), root_value, legal, True, None)
    _init_gumbel_root(buffers, prior_logits, legal, params, bool(add_gumbel_noise), rng)
    table_key = (min(params.max_num_considered_actions, num_actions), params.num_simulations)
    visit_table = buffers.tables.get(table_key)
    if visit_table is None:
        visit_table = buffers.tables[table_key] = _considered_visit_table(*table_key)

    select = functools.partial(
        _simulate,
        tree.children_index,
        tree.children_prior,
        tree.node_visits,
        tree.node_q,
        tree.node_raw_value,
        tree.root_legal,
        tree.max_depth,
        buffers.root_logits,
        buffers.gumbel,
        buffers.considered,
        buffers.num_considered,
        visit_table,
        params.c_visit,
        params.c_scale,
        buffers.completed,
        buffers.sigma,
        slot.parents,
        slot.actions,
        slot.flat_index,
    )
    _run_simulations(slot, root.embedding, recurrent_fn, select, params.discount)

    action = np.zeros(batch_size, dtype=np.int64)
    action_weights = np.zeros((batch_size, num_actions), dtype=np.float64)
    completed = np.zeros((batch_size, num_actions), dtype=np.float64)
    _summarise_roots(
        tree.children_index,
        tree.children_prior,
        tree.node_visits,
        tree.node_q,
        tree.node_raw_value,
        tree.root_legal,
        buffers.root_logits,
        buffers.gumbel,
        buffers.considered,
        params.c_visit,
        params.c_scale,
        action,
        action_weights,
        completed,
        buffers.sigma,
    )
    summary = _summarise(tree)
    return GumbelSearchOutput(
        action=action,
        action_weights=action_weights.astype(np.float32),
        visit_counts=summary.visit_counts,
        root_value=summary.root_value,
        q_values=summary.q_values,
        completed_q_values=completed.astype(np.float32),
        considered=buffers.considered.copy(),
        gumbel=buffers.gumbel.astype(np.float32),
        max_depth=summary.max_depth,
        tree=tree,
    )
