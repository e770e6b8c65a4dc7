"""Batched MuZero search (paper Appendix B), framework-free: numpy + numba, embeddings opaque.

The search runs ``B`` independent trees at once. Each tree is a struct of preallocated arrays (:class:`Tree`) with
``N = num_simulations + 1`` nodes: node ``ROOT_INDEX`` (0) is the root, node ``i`` is created by simulation ``i``.
Every simulation makes exactly one batched network call for all ``B`` roots.

How the loop maps to the published pseudocode
----------------------------------------------
=====================================  =============================================================================
pseudocode                             here
=====================================  =============================================================================
``run_mcts``                           :func:`muzero_search` -> :func:`_run_simulations`, one iteration per simulation
``expand_node(root, ...)``             :func:`_init_roots` (root prior = softmax of the root logits, legal mask)
``add_exploration_noise``              :func:`_init_roots` (Dirichlet noise on the root prior, only when exploring)
``select_child`` (descend)             :func:`_simulate` (numba, whole batch): pUCT descent until an unexpanded edge
``ucb_score``                          :func:`_select_child` (numba): prior term + normalised value term
``network.recurrent_inference``        one call ``recurrent_fn(parent_embeddings [B, *H], actions int64 [B])``
``expand_node(node, ...)``             :func:`_expand_and_backup` (numba), first half: reward, prior, value, embedding
``backpropagate``                      :func:`_expand_and_backup` (numba), second half: leaf -> root
``MinMaxStats``                        ``Tree.min_value`` / ``Tree.max_value``, one pair PER ROOT, :func:`_normalise`
=====================================  =============================================================================

Convention choices (each one documented where the paper, its pseudocode and public implementations differ)
-----------------------------------------------------------------------------------------------------------
1. pUCT (pseudocode ``ucb_score``): ``pb_c = log((N(s) + pb_c_base + 1) / pb_c_base) + pb_c_init``,
   ``pb_c *= sqrt(N(s)) / (N(s, a) + 1)``, ``score = pb_c * P(s, a) + value_score``.
2. Value term of a visited child: ``normalise(r(s, a) + discount * V(child))`` with ``V = value_sum / visits``.
3. Value term of an unvisited child (``unvisited_value``): ``"zero"`` = 0, the pseudocode and the default;
   ``"parent"`` = ``normalise(V(parent))``, the normalised mean value of the parent node (EfficientZero's / mctx's
   parent-value variant). A parent that has never been visited (only the root, on the first simulation with
   ``root_counts_as_visit=False``) has value 0.
4. First simulation from a fresh root (``root_counts_as_visit``): ``True`` (default, as mctx) starts the root with
   visit count 1 and value sum = the root network value, so ``sqrt(N(s)) = 1`` and the prior decides the first move
   (the root network value also enters ``root_value`` once). ``False`` reproduces the pseudocode: root visit count 0,
   every score of the first simulation is 0 and the tie rule picks the action.
5. Ties between equal scores go to the LOWEST action index (strict ``>`` scan; the pseudocode's ``max`` over
   ``(score, action, child)`` tuples would pick the highest).
6. Min-max statistics are kept per root (never shared across the batch) and track exactly the quantity pUCT
   normalises, ``Q(s, a) = r(s, a) + discount * V(child)``, for every non-root node on the backed-up path (after its
   value sum is updated). The pseudocode also feeds the root's own ``0 + discount * V(root)``; we skip it because it
   is not a Q that pUCT ever normalises. ``normalise(q) = (q - min) / (max - min)`` if ``max > min``, else ``q``
   unchanged (pseudocode). ``known_bounds=(min, max)`` initialises the statistics (pseudocode ``KnownBounds``);
   without it they start empty (``min = +inf``, ``max = -inf``).
7. Backup (one player): walking leaf -> root with ``G`` = the leaf's network value,
   ``value_sum += G; visits += 1; update min-max; G = reward + discount * G``. A two-player version would negate
   ``G`` between the levels at the marked line of :func:`_expand_and_backup`; not implemented.
8. Priors: ``softmax(logits)`` with max-subtraction (no overflow), computed in float64, stored as float32.
9. Dirichlet noise (pseudocode ``add_exploration_noise``): root only, only when ``add_exploration_noise=True``:
   ``P = (1 - root_exploration_fraction) * P + root_exploration_fraction * Dir(root_dirichlet_alpha)``, the Dirichlet
   over the legal actions only. It is drawn as ONE call ``rng.gamma(root_dirichlet_alpha, size=(B, A))`` per search
   (illegal entries zeroed, each row normalised: a Dirichlet sample over the legal actions; a row whose gamma draws all
   underflow to 0 gets uniform noise over its legal actions). ``rng`` is the search's only randomness source and is
   consumed only when noise is on.
10. ``invalid_actions`` (``True`` = illegal) acts at the ROOT only: illegal children get prior 0 (the prior is
    renormalised over the legal actions before noise) and are never selected, whatever their score.
11. Outputs: ``root_value = value_sum(root) / visits(root)`` (pseudocode ``root.value()``); ``q_values`` =
    ``r + discount * V(child)`` for visited root children, 0 where unvisited; ``max_depth`` = depth of the deepest
    node created (root depth 0).
12. The search never tracks gradients: embeddings are stored detached. The network's outputs are trusted to be
    finite; NaNs are not checked for (a NaN score never wins the scan, the first legal action is taken instead).

The numba functions are plain numpy-compatible Python and give identical results with ``NUMBA_DISABLE_JIT=1``
(all scalar arithmetic is float64: float32 array entries are read with ``np.float64(...)``; numba's ``float()`` of a
float32 stays float32).

Example:
    >>> import numpy as np
    >>> def recurrent_fn(embedding, actions):   # a 2-armed bandit: arm 1 pays 1
    ...     b = len(actions)
    ...     return RecurrentOutput(reward=actions.astype(np.float32), prior_logits=np.zeros((b, 2), np.float32),
    ...                            value=np.zeros(b, np.float32), embedding=embedding)
    >>> root = RootOutput(prior_logits=np.zeros((1, 2), np.float32), value=np.zeros(1, np.float32),
    ...                   embedding=np.zeros((1, 3), np.float32))
    >>> out = muzero_search(root, recurrent_fn, num_simulations=20, discount=0.99)
    >>> int(out.visit_counts[0].argmax())
    1
"""

from __future__ import annotations

import functools
import math
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

__all__ = [
    "ROOT_INDEX",
    "UNVISITED",
    "UNVISITED_VALUE_MODES",
    "RecurrentFn",
    "RecurrentOutput",
    "RootOutput",
    "SearchOutput",
    "SearchWorkspace",
    "Tree",
    "muzero_search",
]

ROOT_INDEX = 0  # node index of every root
UNVISITED = -1  # children_index of an edge never expanded; parent / action_from_parent of the root
UNVISITED_VALUE_MODES = ("zero", "parent")  # accepted values of `unvisited_value` (see convention 3)


@dataclass(frozen=True)
class RootOutput:
    """Network outputs at the roots (``initial_inference``)."""

    prior_logits: np.ndarray  # [B, A] float32
    value: np.ndarray  # [B] float32, scalar (already inverse-transformed)
    embedding: Any  # [B, *H] torch.Tensor or np.ndarray (opaque to the tree)


@dataclass(frozen=True)
class RecurrentOutput:
    """Network outputs after one dynamics step (``recurrent_inference``)."""

    reward: np.ndarray  # [B] float32 scalar
    prior_logits: np.ndarray  # [B, A] float32
    value: np.ndarray  # [B] float32 scalar
    embedding: Any  # [B, *H], same type / dtype / device as RootOutput.embedding


RecurrentFn = Callable[[Any, np.ndarray], RecurrentOutput]  # (parent embeddings [B, *H], actions int64 [B])


@dataclass(frozen=True)
class Tree:
    """``B`` search trees as a struct of preallocated arrays; node ``i`` was created by simulation ``i``.

    Owned by a :class:`SearchWorkspace` and overwritten by its next search of the same shape.
    """

    children_index: np.ndarray  # [B, N, A] int32: node index of child (node, a), UNVISITED if not expanded
    children_prior: np.ndarray  # [B, N, A] float32: P(node, a); the root row includes mask and noise
    node_visits: np.ndarray  # [B, N] int32: visit count N(node)
    node_value_sum: np.ndarray  # [B, N] float64: sum of backed-up values; V(node) = value_sum / visits
    node_reward: np.ndarray  # [B, N] float64: r(parent, action_from_parent) predicted by dynamics; 0 at the root
    node_q: np.ndarray  # [B, N] float64: Q of the edge into the node, reward + discount * V(node); 0 at the root
    node_raw_value: np.ndarray  # [B, N] float64: network value at the node
    parent: np.ndarray  # [B, N] int32: parent node index, UNVISITED at the root
    action_from_parent: np.ndarray  # [B, N] int32: action on the edge parent -> node, UNVISITED at the root
    min_value: np.ndarray  # [B] float64: per-root min-max statistics of Q (convention 6)
    max_value: np.ndarray  # [B] float64
    root_legal: np.ndarray  # [B, A] bool: True where the root action may be selected
    max_depth: np.ndarray  # [B] int32: depth of the deepest node (root depth 0)
    embeddings: Any  # [B, N, *H] torch.Tensor or np.ndarray (a view of node-major storage [N, B, *H])

    @property
    def batch_size(self) -> int:
        return self.children_index.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.children_index.shape[1]

    @property
    def num_actions(self) -> int:
        return self.children_index.shape[2]


@dataclass(frozen=True)
class SearchOutput:
    """Result of :func:`muzero_search`; all arrays except ``tree`` are fresh copies."""

    visit_counts: np.ndarray  # [B, A] int32 visits of the root's children
    root_value: np.ndarray  # [B] float32, mean backed-up value at the root (pseudocode root.value())
    q_values: np.ndarray  # [B, A] float32, r(s, a) + discount * V(child); 0 where unvisited
    max_depth: np.ndarray  # [B] int32
    tree: Tree  # the arrays, for visualisation; valid until the next search with the same workspace


# ----------------------------------------------------------------------------------------------------------------------
# Workspace: preallocated trees, embedding stores and index buffers, reused across searches.


@dataclass
class _Slot:
    """Everything one search of a given shape needs, allocated once."""

    tree: Tree
    embedding_store: Any  # [N, B, *H] node-major storage behind tree.embeddings
    embedding_flat: Any  # [N * B, *H] view of embedding_store, gathered with `flat_index`
    node_embeddings: list  # N views [B, *H] of embedding_store, written once each per search
    parents: np.ndarray  # [B] int32 node to expand from (output of _simulate)
    actions: np.ndarray  # [B] int64 action to expand (output of _simulate)
    flat_index: np.ndarray  # [B] int64 parents * B + b, the row of the parent embedding in embedding_flat
    flat_index_torch: Any  # torch view (CPU: shares memory with flat_index) or None for numpy embeddings
    parent_embedding: Any  # [B, *H] the parents' embeddings, gathered here before each recurrent_fn call
    on_cpu: bool
    _pb_c_key: tuple = ()
    _pb_c_table: np.ndarray | None = None
    extras: dict = field(default_factory=dict)  # other searches' buffers for this shape (e.g. gumbel.py's), by name

    def pb_c_table(self, pb_c_init: float, pb_c_base: float) -> np.ndarray:
        """pUCT exploration weight before the child term, for every parent visit count n in [0, N]:
        ``(log((n + pb_c_base + 1) / pb_c_base) + pb_c_init) * sqrt(n)`` (pseudocode ``ucb_score``); cached."""
        if self._pb_c_key != (pb_c_init, pb_c_base):
            n = np.arange(self.tree.num_nodes + 1, dtype=np.float64)
            self._pb_c_table = (np.log((n + pb_c_base + 1.0) / pb_c_base) + pb_c_init) * np.sqrt(n)
            self._pb_c_key = (pb_c_init, pb_c_base)
        return self._pb_c_table


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _embedding_signature(embedding: Any) -> tuple:
    if _is_torch(embedding):
        return ("torch", str(embedding.dtype), str(embedding.device), tuple(embedding.shape[1:]))
    return ("numpy", str(embedding.dtype), "cpu", tuple(embedding.shape[1:]))


class SearchWorkspace:
    """Cache of preallocated trees keyed by ``(B, N, A)`` and the embedding's type / dtype / device / shape.

    Pass the same workspace to every :func:`muzero_search` call (e.g. one per policy) so no tree array is allocated
    after the first search of each shape. The most recently used ``max_entries`` shapes are kept. A workspace is not
    thread-safe, and the ``tree`` of a search result is overwritten by the next search of the same shape.
    """

    def __init__(self, max_entries: int = 8) -> None:
        if max_entries < 1:
            raise ValueError(f"`max_entries` must be >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._slots: OrderedDict[tuple, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def _slot(self, batch_size: int, num_nodes: int, num_actions: int, embedding: Any) -> _Slot:
        key = (batch_size, num_nodes, num_actions, _embedding_signature(embedding))
        slot = self._slots.get(key)
        if slot is None:
            slot = _allocate_slot(batch_size, num_nodes, num_actions, embedding)
            self._slots[key] = slot
            while len(self._slots) > self.max_entries:
                self._slots.popitem(last=False)
        else:
            self._slots.move_to_end(key)
        return slot


def _allocate_slot(B: int, N: int, A: int, embedding: Any) -> _Slot:
    hidden_shape = tuple(embedding.shape[1:])
    flat_index = np.zeros(B, dtype=np.int64)
    if _is_torch(embedding):
        import torch

        # A normal (not inference-mode) tensor, so it can be written both inside and outside torch.inference_mode().
        with torch.inference_mode(False):
            store = torch.zeros((N, B, *hidden_shape), dtype=embedding.dtype, device=embedding.device)
            parent_embedding = torch.zeros((B, *hidden_shape), dtype=embedding.dtype, device=embedding.device)
        on_cpu = store.device.type == "cpu"
        flat_index_torch = torch.from_numpy(flat_index)  # shares memory with flat_index
        embeddings_view = store.transpose(0, 1)
    else:
        store = np.zeros((N, B, *hidden_shape), dtype=embedding.dtype)
        parent_embedding = np.zeros((B, *hidden_shape), dtype=embedding.dtype)
        on_cpu = True
        flat_index_torch = None
        embeddings_view = store.swapaxes(0, 1)
    tree = Tree(
        children_index=np.full((B, N, A), UNVISITED, dtype=np.int32),
        children_prior=np.zeros((B, N, A), dtype=np.float32),
        node_visits=np.zeros((B, N), dtype=np.int32),
        node_value_sum=np.zeros((B, N), dtype=np.float64),
        node_reward=np.zeros((B, N), dtype=np.float64),
        node_q=np.zeros((B, N), dtype=np.float64),
        node_raw_value=np.zeros((B, N), dtype=np.float64),
        parent=np.full((B, N), UNVISITED, dtype=np.int32),
        action_from_parent=np.full((B, N), UNVISITED, dtype=np.int32),
        min_value=np.zeros(B, dtype=np.float64),
        max_value=np.zeros(B, dtype=np.float64),
        root_legal=np.ones((B, A), dtype=np.bool_),
        max_depth=np.zeros(B, dtype=np.int32),
        embeddings=embeddings_view,
    )
    return _Slot(
        tree=tree,
        embedding_store=store,
        embedding_flat=store.reshape((N * B, *hidden_shape)),
        node_embeddings=list(store),
        parents=np.zeros(B, dtype=np.int32),
        actions=np.zeros(B, dtype=np.int64),
        flat_index=flat_index,
        flat_index_torch=flat_index_torch,
        parent_embedding=parent_embedding,
        on_cpu=on_cpu,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Numba kernels: each loops over the whole batch in one call. Plain numpy-compatible Python (NUMBA_DISABLE_JIT=1 safe).


@numba.njit(cache=True, inline="always")
def _normalise(q, min_value, max_value):
    """Pseudocode ``MinMaxStats.normalize``: unchanged until a range exists."""
    if max_value > min_value:
        return (q - min_value) / (max_value - min_value)
    return q


@numba.njit(cache=True, inline="always")
def _select_child(
    b,
    node,
    children_index,
    children_prior,
    node_visits,
    node_value_sum,
    node_q,
    min_value,
    max_value,
    root_legal,
    pb_c_table,
    unvisited_is_parent,
):
    """Pseudocode ``select_child`` + ``ucb_score`` for one node of root ``b``; ties -> lowest action index.

    ``pb_c_table[n]`` holds the visit-count part of the exploration weight, ``(log((n + pb_c_base + 1) / pb_c_base) +
    pb_c_init) * sqrt(n)``, precomputed for every parent visit count ``n`` the search can reach.
    """
    num_actions = children_index.shape[2]
    parent_visits = node_visits[b, node]
    pb_c_sqrt = pb_c_table[parent_visits]
    lo = min_value[b]
    hi = max_value[b]
    unvisited_score = 0.0
    if unvisited_is_parent and parent_visits > 0:
        unvisited_score = _normalise(node_value_sum[b, node] / parent_visits, lo, hi)
    best_action = -1
    best_score = -math.inf
    for a in range(num_actions):
        if node == ROOT_INDEX and not root_legal[b, a]:
            continue
        child = children_index[b, node, a]
        if child == UNVISITED:
            exploration = pb_c_sqrt  # / (0 + 1)
            value_score = unvisited_score
        else:
            exploration = pb_c_sqrt / (node_visits[b, child] + 1.0)
            value_score = _normalise(node_q[b, child], lo, hi)  # node_q = r(s, a) + discount * V(child)
        score = exploration * np.float64(children_prior[b, node, a]) + value_score
        if best_action < 0 or score > best_score:
            best_action = a
            best_score = score
    return best_action


@numba.njit(cache=True)
def _simulate(
    children_index,
    children_prior,
    node_visits,
    node_value_sum,
    node_q,
    min_value,
    max_value,
    root_legal,
    max_depth,
    pb_c_table,
    unvisited_is_parent,
    parents_out,
    actions_out,
    flat_index_out,
):
    """Descends every tree with pUCT from the root to its first unexpanded edge (pseudocode: the ``while
    node.expanded()`` loop of ``run_mcts``). Writes the edge (parent node, action) and the parent's row in the
    node-major embedding store (``parent * B + b``)."""
    batch_size = children_index.shape[0]
    for b in range(batch_size):
        node = ROOT_INDEX
        depth = 0
        while True:
            action = _select_child(
                b,
                node,
                children_index,
                children_prior,
                node_visits,
                node_value_sum,
                node_q,
                min_value,
                max_value,
                root_legal,
                pb_c_table,
                unvisited_is_parent,
            )
            depth += 1
            child = children_index[b, node, action]
            if child == UNVISITED:  # expand this edge
                break
            node = child
        parents_out[b] = node
        actions_out[b] = action
        flat_index_out[b] = node * batch_size + b
        if depth > max_depth[b]:
            max_depth[b] = depth


@numba.njit(cache=True)
def _expand_and_backup(
    new_node,
    parents,
    actions,
    rewards,
    prior_logits,
    values,
    discount,
    children_index,
    children_prior,
    node_visits,
    node_value_sum,
    node_reward,
    node_q,
    node_raw_value,
    node_parent,
    node_action,
    min_value,
    max_value,
):
    """Pseudocode ``expand_node`` (reward, prior = softmax(logits), value into node ``new_node``) followed by
    ``backpropagate`` from that leaf to the root, for every root of the batch."""
    batch_size = children_index.shape[0]
    num_actions = children_index.shape[2]
    for b in range(batch_size):
        # --- expand ---
        parent = parents[b]
        action = actions[b]
        children_index[b, parent, action] = new_node
        node_parent[b, new_node] = parent
        node_action[b, new_node] = action
        node_reward[b, new_node] = np.float64(rewards[b])
        leaf_value = np.float64(values[b])
        node_raw_value[b, new_node] = leaf_value
        node_visits[b, new_node] = 0
        node_value_sum[b, new_node] = 0.0
        max_logit = np.float64(prior_logits[b, 0])
        for a in range(1, num_actions):
            logit = np.float64(prior_logits[b, a])
            if logit > max_logit:
                max_logit = logit
        total = 0.0
        for a in range(num_actions):
            total += math.exp(np.float64(prior_logits[b, a]) - max_logit)
        for a in range(num_actions):
            children_prior[b, new_node, a] = math.exp(np.float64(prior_logits[b, a]) - max_logit) / total

        # --- backpropagate: leaf -> root ---
        g = leaf_value
        node = new_node
        while True:
            node_value_sum[b, node] += g
            node_visits[b, node] += 1
            if node == ROOT_INDEX:  # its 0 + discount * V(root) is not a Q pUCT normalises (convention 6)
                break
            reward = node_reward[b, node]
            q = reward + discount * (node_value_sum[b, node] / node_visits[b, node])
            node_q[b, node] = q
            if q < min_value[b]:
                min_value[b] = q
            if q > max_value[b]:
                max_value[b] = q
            g = reward + discount * g  # a two-player version negates g here when the player to move changes
            node = node_parent[b, node]


# ----------------------------------------------------------------------------------------------------------------------
# Public entry point.


def _fail(name: str, value: Any, accepted: str) -> None:
    raise ValueError(f"`{name}` must be {accepted}, got {value!r}")


def _number(name: str, value: Any, accepted: str) -> float:
    """``float(value)``, or a ValueError naming the argument (strings, None, arrays, ... are refused)."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)):
        _fail(name, value, accepted)
    return float(value)


@dataclass(frozen=True)
class _Params:
    """Validated scalar arguments of one search."""

    num_simulations: int
    discount: float
    pb_c_init: float
    pb_c_base: float
    root_dirichlet_alpha: float
    root_exploration_fraction: float
    known_bounds: tuple[float, float] | None


def _validate(
    root: RootOutput,
    num_simulations: Any,
    discount: Any,
    pb_c_init: Any,
    pb_c_base: Any,
    add_exploration_noise: bool,
    root_dirichlet_alpha: Any,
    root_exploration_fraction: Any,
    rng: Any,
    unvisited_value: Any,
    known_bounds: Any,
) -> tuple[np.ndarray, np.ndarray, _Params]:
    """Checks every argument (ValueError naming it and the accepted values); returns root arrays and scalars."""
    if isinstance(num_simulations, bool) or not isinstance(num_simulations, (int, np.integer)) or num_simulations < 1:
        _fail("num_simulations", num_simulations, "an integer >= 1")
    discount = _number("discount", discount, "a float in (0, 1]")
    if not 0.0 < discount <= 1.0:
        _fail("discount", discount, "a float in (0, 1]")
    pb_c_init = _number("pb_c_init", pb_c_init, "a float >= 0")
    if not pb_c_init >= 0.0:
        _fail("pb_c_init", pb_c_init, "a float >= 0")
    pb_c_base = _number("pb_c_base", pb_c_base, "a float > 0")
    if not pb_c_base > 0.0:
        _fail("pb_c_base", pb_c_base, "a float > 0")
    if not isinstance(unvisited_value, str) or unvisited_value not in UNVISITED_VALUE_MODES:
        _fail("unvisited_value", unvisited_value, f"one of {list(UNVISITED_VALUE_MODES)}")
    alpha = _number("root_dirichlet_alpha", root_dirichlet_alpha, "a float > 0")
    fraction = _number("root_exploration_fraction", root_exploration_fraction, "a float in [0, 1]")
    if add_exploration_noise:
        if not alpha > 0.0:
            _fail("root_dirichlet_alpha", root_dirichlet_alpha, "a float > 0")
        if not 0.0 <= fraction <= 1.0:
            _fail("root_exploration_fraction", root_exploration_fraction, "a float in [0, 1]")
        if not isinstance(rng, np.random.Generator):
            _fail("rng", rng, "a numpy.random.Generator when add_exploration_noise=True")
    if known_bounds is not None:
        accepted = "None or a pair of finite floats (min, max) with min <= max"
        if not isinstance(known_bounds, (tuple, list)) or len(known_bounds) != 2:
            _fail("known_bounds", known_bounds, accepted)
        lo, hi = (_number("known_bounds", x, accepted) for x in known_bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            _fail("known_bounds", known_bounds, accepted)
        known_bounds = (lo, hi)
    prior_logits, value = _root_arrays(root)
    params = _Params(int(num_simulations), discount, pb_c_init, pb_c_base, alpha, fraction, known_bounds)
    return prior_logits, value, params


def _root_arrays(root: RootOutput) -> tuple[np.ndarray, np.ndarray]:
    """``root.prior_logits`` [B, A] and ``root.value`` [B] as arrays; ValueError if the root's shapes disagree."""
    prior_logits = np.asarray(root.prior_logits)
    if prior_logits.ndim != 2 or prior_logits.shape[0] < 1 or prior_logits.shape[1] < 1:
        _fail("root.prior_logits", f"array of shape {prior_logits.shape}", "a non-empty [B, A] array")
    batch_size = prior_logits.shape[0]
    value = np.asarray(root.value)
    if value.shape != (batch_size,):
        _fail("root.value", f"array of shape {value.shape}", f"shape [B] = ({batch_size},) to match root.prior_logits")
    shape = getattr(root.embedding, "shape", None)
    if shape is None or len(shape) < 1 or shape[0] != batch_size:
        _fail("root.embedding", f"object of shape {shape}", f"a tensor or array of shape [B={batch_size}, *H]")
    return prior_logits, value


def _legal_mask(invalid_actions: np.ndarray | None, batch_size: int, num_actions: int) -> np.ndarray:
    """[B, A] bool, True = may be selected at the root; ValueError for a bad shape or a row without legal action."""
    if invalid_actions is None:
        return np.ones((batch_size, num_actions), dtype=np.bool_)
    invalid = np.asarray(invalid_actions)
    if invalid.shape != (batch_size, num_actions):
        _fail(
            "invalid_actions",
            f"array of shape {invalid.shape}",
            f"None or a bool array of shape [B, A] = {(batch_size, num_actions)}",
        )
    legal = ~invalid.astype(np.bool_)
    no_legal = ~legal.any(axis=1)
    if no_legal.any():
        _fail(
            "invalid_actions",
            f"a mask whose rows {np.flatnonzero(no_legal).tolist()} have every action illegal",
            "a mask leaving >= 1 legal action in every row",
        )
    return legal


def _root_prior(prior_logits: np.ndarray, legal: np.ndarray) -> np.ndarray:
    """[B, A] float64 softmax of the root logits over the legal actions, with max-subtraction; 0 where illegal."""
    logits = np.where(legal, prior_logits.astype(np.float64), -np.inf)  # [B, A]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _reset_roots(
    tree: Tree,
    prior: np.ndarray,
    value: np.ndarray,
    legal: np.ndarray,
    root_counts_as_visit: bool,
    known_bounds: tuple[float, float] | None,
) -> None:
    """Empties the trees and expands their roots with ``prior`` [B, A] (pseudocode ``expand_node(root)``)."""
    tree.children_index.fill(UNVISITED)
    tree.root_legal[...] = legal
    tree.children_prior[:, ROOT_INDEX, :] = prior
    tree.parent[:, ROOT_INDEX] = UNVISITED
    tree.action_from_parent[:, ROOT_INDEX] = UNVISITED
    tree.node_reward[:, ROOT_INDEX] = 0.0
    tree.node_q[:, ROOT_INDEX] = 0.0
    tree.node_raw_value[:, ROOT_INDEX] = value
    tree.node_visits[:, ROOT_INDEX] = 1 if root_counts_as_visit else 0
    tree.node_value_sum[:, ROOT_INDEX] = value if root_counts_as_visit else 0.0
    tree.min_value.fill(math.inf if known_bounds is None else known_bounds[0])
    tree.max_value.fill(-math.inf if known_bounds is None else known_bounds[1])
    tree.max_depth.fill(0)


def _init_roots(
    tree: Tree,
    prior_logits: np.ndarray,
    value: np.ndarray,
    legal: np.ndarray,
    add_exploration_noise: bool,
    params: _Params,
    rng: np.random.Generator | None,
    root_counts_as_visit: bool,
) -> None:
    """Resets the tree and expands the roots: pseudocode ``expand_node(root)`` + ``add_exploration_noise``."""
    prior = _root_prior(prior_logits, legal)  # [B, A] float64
    if add_exploration_noise:
        gamma = np.where(legal, rng.gamma(params.root_dirichlet_alpha, size=legal.shape), 0.0)  # [B, A]
        total = gamma.sum(axis=1, keepdims=True)
        uniform = legal / legal.sum(axis=1, keepdims=True)
        noise = np.where(total > 0.0, gamma / np.where(total > 0.0, total, 1.0), uniform)
        fraction = params.root_exploration_fraction
        prior = (1.0 - fraction) * prior + fraction * noise
    _reset_roots(tree, prior, value, legal, root_counts_as_visit, params.known_bounds)


@numba.njit(cache=True)
def _summarise_kernel(children_index, node_visits, node_q, node_value_sum, visit_counts, q_values, root_value):
    """Per root: the visit counts and Q of the root's children (0 where unvisited) and the root's mean value."""
    batch_size, _, num_actions = children_index.shape
    for b in range(batch_size):
        for a in range(num_actions):
            child = children_index[b, ROOT_INDEX, a]
            if child == UNVISITED:
                visit_counts[b, a] = 0
                q_values[b, a] = 0.0
            else:
                visit_counts[b, a] = node_visits[b, child]
                q_values[b, a] = node_q[b, child]
        root_value[b] = node_value_sum[b, ROOT_INDEX] / node_visits[b, ROOT_INDEX]


def _summarise(tree: Tree) -> SearchOutput:
    """The search's result from the trees: fresh arrays (one compiled pass; this runs once per search, and at one
    root its ~10 numpy calls cost as much as a simulation)."""
    batch_size, num_actions = tree.batch_size, tree.num_actions
    visit_counts = np.empty((batch_size, num_actions), np.int32)
    q_values = np.empty((batch_size, num_actions), np.float32)
    root_value = np.empty(batch_size, np.float32)
    _summarise_kernel(tree.children_index, tree.node_visits, tree.node_q, tree.node_value_sum, visit_counts, q_values,
                      root_value)
    return SearchOutput(visit_counts=visit_counts, root_value=root_value, q_values=q_values,
                        max_depth=tree.max_depth.copy(), tree=tree)


def muzero_search(
    root: RootOutput,
    recurrent_fn: RecurrentFn,
    *,
    num_simulations: int,
    discount: float,
    pb_c_init: float = 1.25,
    pb_c_base: float = 19652.0,
    add_exploration_noise: bool = False,
    root_dirichlet_alpha: float = 0.25,
    root_exploration_fraction: float = 0.25,
    rng: np.random.Generator | None = None,
    unvisited_value: str = "zero",
    root_counts_as_visit: bool = True,
    known_bounds: tuple[float, float] | None = None,
    invalid_actions: np.ndarray | None = None,
    workspace: SearchWorkspace | None = None,
) -> SearchOutput:
    """Runs ``num_simulations`` MuZero simulations from each of the ``B`` roots (paper Appendix B, ``run_mcts``).

    Args:
        root: network outputs at the roots; ``prior_logits`` [B, A], ``value`` [B], ``embedding`` [B, *H].
        recurrent_fn: ``(parent_embeddings [B, *H], actions int64 [B]) -> RecurrentOutput``; called exactly
            ``num_simulations`` times, each time with the whole batch. Its embeddings must have the type, dtype,
            device and shape of ``root.embedding``. The search copies what it keeps from each output (and from
            ``root``) before the next call, so ``recurrent_fn`` may return the same preallocated arrays every time.
        num_simulations: simulations per root (paper: 50 for Atari, 800 for board games); the tree has
            ``num_simulations + 1`` nodes per root.
        discount: ``gamma`` in ``Q = r + gamma * V(child)`` and in the backup, in (0, 1].
        pb_c_init: ``c1`` of pUCT, the constant part of the exploration weight (paper: 1.25).
        pb_c_base: ``c2`` of pUCT, the visit scale at which the exploration weight grows (paper: 19652).
        add_exploration_noise: mix Dirichlet noise into the root prior (acting); off for evaluation.
        root_dirichlet_alpha: Dirichlet concentration (paper: 0.25 for Atari).
        root_exploration_fraction: weight of the noise in the root prior (paper: 0.25).
        rng: the only randomness source; consumed (one ``gamma`` draw of shape [B, A]) only when
            ``add_exploration_noise``, and then required.
        unvisited_value: value term of unvisited children: ``"zero"`` (pseudocode) or ``"parent"`` (normalised mean
            value of the parent node).
        root_counts_as_visit: start each root with one visit carrying its network value (mctx) so the prior decides
            the first simulation; ``False`` = pseudocode (root visit count 0).
        known_bounds: ``(min, max)`` initial min-max statistics of Q (pseudocode ``KnownBounds``), or None.
        invalid_actions: optional bool [B, A], True = illegal at the ROOT (prior 0, never selected); every row needs
            at least one legal action.
        workspace: reuse preallocated trees across calls; a fresh one is made when None.

    Returns:
        :class:`SearchOutput`; ``tree`` stays valid until the workspace's next search of the same shape.

    Raises:
        ValueError: an argument out of range (the message names it and the accepted values), or a
            ``recurrent_fn`` output of the wrong shape.
    """
    prior_logits, root_value, params = _validate(
        root,
        num_simulations,
        discount,
        pb_c_init,
        pb_c_base,
        add_exploration_noise,
        root_dirichlet_alpha,
        root_exploration_fraction,
        rng,
        unvisited_value,
        known_bounds,
    )
    batch_size, num_actions = prior_logits.shape
    legal = _legal_mask(invalid_actions, batch_size, num_actions)
    discount = params.discount
    num_nodes = params.num_simulations + 1

    if workspace is None:
        workspace = SearchWorkspace(max_entries=1)
    slot = workspace._slot(batch_size, num_nodes, num_actions, root.embedding)
    tree = slot.tree
    _init_roots(tree, prior_logits, root_value, legal, add_exploration_noise, params, rng, bool(root_counts_as_visit))
    select = functools.partial(
        _simulate,
        tree.children_index,
        tree.children_prior,
        tree.node_visits,
        tree.node_value_sum,
        tree.node_q,
        tree.min_value,
        tree.max_value,
        tree.root_legal,
        tree.max_depth,
        slot.pb_c_table(params.pb_c_init, params.pb_c_base),
        unvisited_value == "parent",
        slot.parents,
        slot.actions,
        slot.flat_index,
    )
    _run_simulations(slot, root.embedding, recurrent_fn, select, discount)
    return _summarise(tree)


def _run_simulations(
    slot: _Slot, root_embedding: Any, recurrent_fn: RecurrentFn, select: Callable[[], None], discount: float
) -> None:
    """The simulation loop shared by the searches of this package, over a tree whose roots are already expanded.

    Simulation ``sim = 1 .. N - 1`` creates node ``sim`` in every tree of the batch:
    1. ``select()`` (a numba kernel over the whole batch) descends each tree to an unexpanded edge and writes it to
       ``slot.parents`` / ``slot.actions`` and the parent's row in the embedding store to ``slot.flat_index``;
    2. ONE ``recurrent_fn`` call for the whole batch, from each parent's own embedding;
    3. :func:`_expand_and_backup` stores the outputs as node ``sim`` and backs its value up to the root.
    Everything the loop touches is bound to locals once; nothing is allocated besides the network's outputs.
    """
    tree = slot.tree
    batch_size, num_nodes, num_actions = tree.batch_size, tree.num_nodes, tree.num_actions
    is_torch = slot.flat_index_torch is not None
    torch_index_select = sys.modules["torch"].index_select if is_torch else None
    node_embeddings, flat = slot.node_embeddings, slot.embedding_flat
    embedding_shape = tuple(root_embedding.shape)
    if is_torch:
        node_embeddings[ROOT_INDEX].copy_(root_embedding.detach())
    else:
        node_embeddings[ROOT_INDEX][...] = root_embedding

    children_index, children_prior = tree.children_index, tree.children_prior
    node_visits, node_value_sum, node_q = tree.node_visits, tree.node_value_sum, tree.node_q
    node_reward, node_raw_value = tree.node_reward, tree.node_raw_value
    node_parent, node_action = tree.parent, tree.action_from_parent
    min_value, max_value = tree.min_value, tree.max_value
    parents, actions, flat_index = slot.parents, slot.actions, slot.flat_index
    flat_index_torch, parent_embedding = slot.flat_index_torch, slot.parent_embedding
    device = None if slot.on_cpu else root_embedding.device
    logits_shape = (batch_size, num_actions)
    scalar_shape = (batch_size,)
    f32, contiguous = np.float32, np.ascontiguousarray

    for sim in range(1, num_nodes):  # simulation `sim` creates node `sim`
        # 1. simulate: select from every root down to an unexpanded edge (parent node, action).
        select()
        # 2. one recurrent_inference for the whole batch, from each parent's own embedding.
        if is_torch:
            index = flat_index_torch if device is None else flat_index_torch.to(device)
            torch_index_select(flat, 0, index, out=parent_embedding)  # [B, *H]
        else:
            flat.take(flat_index, axis=0, out=parent_embedding)  # [B, *H]
        out = recurrent_fn(parent_embedding, actions.copy())
        rewards = contiguous(out.reward, dtype=f32)  # [B]
        logits = contiguous(out.prior_logits, dtype=f32)  # [B, A]
        values = contiguous(out.value, dtype=f32)  # [B]
        embedding = out.embedding  # [B, *H]
        if (
            logits.shape != logits_shape
            or rewards.shape != scalar_shape
            or values.shape != scalar_shape
            or embedding.shape != embedding_shape  # a tuple, or a torch.Size (a tuple subclass)
        ):
            _fail(
                "recurrent_fn",
                f"outputs of shapes reward {rewards.shape}, prior_logits {logits.shape}, value {values.shape}, "
                f"embedding {tuple(embedding.shape)}",
                f"outputs of shapes reward [B], prior_logits [B, A], value [B], embedding [B, *H] with (B, A) = "
                f"{logits_shape}, [B, *H] = {embedding_shape}",
            )
        # 3. expand node `sim` + 4. backpropagate from it to the root.
        if is_torch:
            node_embeddings[sim].copy_(embedding.detach() if embedding.requires_grad else embedding)
        else:
            node_embeddings[sim][...] = embedding
        _expand_and_backup(
            sim,
            parents,
            actions,
            rewards,
            logits,
            values,
            discount,
            children_index,
            children_prior,
            node_visits,
            node_value_sum,
            node_reward,
            node_q,
            node_raw_value,
            node_parent,
            node_action,
            min_value,
            max_value,
        )
