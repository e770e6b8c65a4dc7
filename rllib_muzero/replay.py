"""Prioritized sequence replay for MuZero: a ring of transitions linked per episode, sampled per position.

Layout (no Python object per transition): ``capacity`` slots in preallocated numpy arrays holding, for the transition
at episode position ``t``: ``o_t``, ``a_t``, the reward ``u_{t+1}`` for ``a_t``, the search root value ``nu_t``, the
visit distribution ``pi_t`` (the paper's indexing, see ``docs/design.md``), plus

- ``next_slot``: the slot of the next transition of the same episode, ``-1`` if none (yet);
- ``end_flag``: :data:`CONTINUES`, :data:`TERMINATED` (the episode terminated after this step) or :data:`TRUNCATED`
  (it was cut by a time limit after this step);
- ``generation``: a per-slot write counter (0 = never written, +1 on every write), so stale episode links and stale
  priority writes (for a slot overwritten since it was sampled) are detected and dropped.

Memory per transition is the observation's own bytes plus at most 64 bytes for up to 18 actions: about 27.5 more
bytes with 2 actions (CartPole), 59.5 with 18 (Atari); ``benchmarks/replay_memory.py`` measures it. The dtypes:

=====================  ============================  =======================================================
array                  dtype                         bytes per transition
=====================  ============================  =======================================================
observations           as given (``obs_dtype``)      the observation's own
search policies        float16                       ``2 A``
actions                smallest unsigned int for A   1 (A <= 256)
rewards, root values   float32                       4 + 4
next_slot              int32 (int64 beyond 2^31)     4
end_flag, open tail    int8, bool                    1 + 1
generation             uint32                        4
priorities (sum tree)  float32 leaves + float64 tree 4 + about 0.5 (one float64 node pair per 32 leaves)
=====================  ============================  =======================================================

Search policies are normalised visit distributions, kept in float16 (11 significant bits: each probability is
rounded to within 2^-11 ~ 5e-4 of itself, relatively, or 3e-8 absolutely below 6e-5) and renormalised to sum to 1
when read, so a stored ``pi`` reaches the targets within ~1e-3 (relative) of what was added. Priorities are stored in
float32 (relative rounding 6e-8; the sums above them are float64). Generations wrap around after 2^32 - 1 writes of
the same slot (skipping 0); a stale link or priority write would need to outlive that many rewrites of its slot to be
mistaken for a fresh one.

Episodes arrive in fragments, from several env runners, interleaved (RLlib's ``truncate_episodes``). The buffer keeps
``episode_id -> (tail slot, tail generation)`` for open episodes; the next fragment of an open episode links the old
tail to its first slot, but only if the tail slot still holds that episode. Terminated or truncated fragments close
the episode; an open entry whose tail gets overwritten is pruned at that write, so the table cannot grow without bound.

Eviction is FIFO: the ring overwrites the oldest slots. Links only point forward in time, i.e. to slots written
later, so an evicted slot is never the target of a live slot's link.

Growing window (``window_step``, the reference implementation's option): the ring runs over the first ``window``
slots only; ``window`` starts at ``window_step`` and grows by ``window_step`` (up to ``capacity``) each time the write
position wraps around to slot 0. Early in training, when the network changes fast, old data is evicted sooner; later
the buffer keeps up to ``capacity`` transitions. The arrays are allocated at ``capacity`` from the start (the memory
bound is fixed); slots beyond the window are never written and have priority 0, so they are never sampled. Without
``window_step`` the window is ``capacity`` from the start.

Sampling is per position (any stored transition can be the start ``t`` of an unroll), proportional to priorities kept
in a vectorised sum tree (:class:`SumTree`); Ray's ``SegmentTree`` does one Python loop per query, too slow for
per-position priorities over large buffers. Following Schaul et al. (2016, "Prioritized experience replay"):

- stored priority ``p_i = (|e_i| + epsilon)^alpha``; ``P(i) = p_i / sum_j p_j``;
- stratified sampling: the total mass is cut into ``batch_size`` equal segments, one uniform draw in each;
- importance-sampling weights ``w_i = (N P(i))^-beta / max_batch w`` with ``N = len(buffer)``, computed with the
  current beta; afterwards beta grows by ``beta_increment_per_sampling`` (per :meth:`SequenceReplayBuffer.sample`
  call) up to 1;
- new transitions get the maximum stored priority seen so far (1.0 before any update). Deviation from the paper,
  which uses ``|nu_t - z_t|`` at insertion: ``z_t`` needs up to ``td_steps`` future steps that may not have arrived;
  the learner refreshes the priorities of sampled positions with :meth:`SequenceReplayBuffer.update_priorities`.

For each sampled slot the chain of ``L = K + n + 1`` consecutive positions is gathered by following ``next_slot``
(``L`` vectorised steps over the batch) and turned into targets by :func:`rllib_muzero.targets.make_unroll_targets`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from rllib_muzero.columns import (
    TRAIN_GENERATIONS,
    TRAIN_INDICES,
    TRAIN_OBS,
    TRAIN_UNROLL_OBS,
    TRAIN_UNROLL_OBS_MASK,
    TRAIN_WEIGHTS,
)
from rllib_muzero.targets import bootstrap_positions, chain_length, make_unroll_targets, off_policy_td_steps

# (M, *obs_shape) stored observations -> (M,) values: reanalyses the bootstrap values of a batch (a target network).
ValueFn = Callable[[np.ndarray], np.ndarray]

__all__ = ["CONTINUES", "TERMINATED", "TRUNCATED", "SequenceReplayBuffer", "SumTree"]

CONTINUES = 0  # end_flag: the episode goes on after this step (the next step may not have arrived yet)
TERMINATED = 1  # end_flag: the episode terminated after this step (absorbing states follow)
TRUNCATED = 2  # end_flag: the episode was truncated (time limit) after this step (the future is unknown)

_NO_SLOT = -1
_INT64 = np.iinfo(np.int64)
_STATE_VERSION = 1  # the state's keys and shapes; arrays of older dtypes are cast on restore
_POLICY_DTYPE = np.float16  # search policies (normalised visit distributions), renormalised when read


def _action_dtype(num_actions: int) -> np.dtype:
    """The smallest unsigned integer dtype holding ``0 .. num_actions - 1``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_actions - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class SumTree:
    """A sum tree over ``size`` non-negative leaf values, updated and searched vectorised over a batch.

    The leaves are one float32 array, cut into blocks of :attr:`BLOCK` consecutive leaves; a binary tree of float64
    partial sums sits above the blocks: with ``P`` the next power of two ``>= ceil(size / BLOCK)``, node 1 is the root,
    node ``i`` has children ``2i`` and ``2i + 1``, and node ``P + b`` holds the sum of block ``b`` (summed in float64).
    Every sum is recomputed from its parts (never updated by a delta), so the tree is the same bit for bit however it
    was built, and does not drift. Each level of an update or a search is one numpy operation over the whole batch;
    inside a block, a search is one cumulative sum over ``BLOCK`` leaves per query.

    Memory: 4 bytes per leaf plus about 0.5 to 1 byte per leaf of tree nodes (a plain binary tree over the leaves in
    float64 takes 16 to 32 bytes per leaf).

    Example::

        >>> tree = SumTree(4)
        >>> tree.update(np.array([0, 1, 2, 3]), np.array([1.0, 2.0, 3.0, 4.0]))
        >>> float(tree.total)
        10.0
        >>> tree.find(np.array([0.5, 1.0, 2.9, 9.99])).tolist()   # prefix sums 1, 3, 6, 10
        [0, 1, 1, 3]
    """

    BLOCK = 32  # leaves per block (a power of two)

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"`size` must be >= 1, got {size}.")
        self.size = int(size)
        num_blocks = -(-self.size // self.BLOCK)
        self._leaf0 = 1 << max(0, (num_blocks - 1).bit_length())  # P: node of block 0
        self._depth = self._leaf0.bit_length() - 1  # levels between the root and the block nodes
        self._leaves = np.zeros(num_blocks * self.BLOCK, dtype=np.float32)  # padding leaves stay 0
        self._nodes = np.zeros(2 * self._leaf0, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self._nodes[1])

    @property
    def leaves(self) -> np.ndarray:
        """A read-only view of the ``size`` leaf values (float32)."""
        view = self._leaves[: self.size]
        view.flags.writeable = False
        return view

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values at ``indices`` (as float64)."""
        return self._leaves[np.asarray(indices, dtype=np.int64)].astype(np.float64)

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``indices`` to ``values`` (duplicates: the last one wins) and recompute their ancestors."""
        indices = np.asarray(indices, dtype=np.int64)
        self._leaves[indices] = values
        blocks = np.unique(indices // self.BLOCK)
        self._nodes[self._leaf0 + blocks] = self._block_sums(blocks)
        nodes = self._leaf0 + blocks
        for _ in range(self._depth):
            nodes = np.unique(nodes >> 1)
            self._nodes[nodes] = self._nodes[2 * nodes] + self._nodes[2 * nodes + 1]

    def set_all(self, values: np.ndarray) -> None:
        """Replace all ``size`` leaves and rebuild the tree level by level."""
        self._leaves[:] = 0.0
        self._leaves[: self.size] = values
        self._nodes[:] = 0.0
        num_blocks = self._leaves.shape[0] // self.BLOCK
        self._nodes[self._leaf0 : self._leaf0 + num_blocks] = self._block_sums(np.arange(num_blocks))
        lo = self._leaf0
        while lo > 1:
            lo >>= 1
            self._nodes[lo : 2 * lo] = self._nodes[2 * lo : 4 * lo : 2] + self._nodes[2 * lo + 1 : 4 * lo : 2]

    def _block_sums(self, blocks: np.ndarray) -> np.ndarray:
        """float64 sums of the given blocks' leaves, always summed the same way (bit-reproducible)."""
        return self._leaves.reshape(-1, self.BLOCK)[blocks].sum(axis=1, dtype=np.float64)

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """For each ``u`` the leaf ``i`` with ``sum_{j<i} v_j <= u < sum_{j<=i} v_j`` (int64 array).

        Zero-mass subtrees and zero leaves are never chosen, so a ``u`` at or past the total (float round-off) lands
        on the last leaf with positive value instead of an empty slot. Requires ``total > 0``.
        """
        u = np.array(prefix_sums, dtype=np.float64, copy=True)
        nodes = np.ones(u.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * nodes
            left_sum = self._nodes[left]
            go_right = (u >= left_sum) & (self._nodes[left + 1] > 0.0)
            u = np.where(go_right, u - left_sum, u)
            nodes = left + go_right
        blocks = nodes - self._leaf0
        leaves_QB = self._leaves.reshape(-1, self.BLOCK)[blocks].astype(np.float64)  # (queries, BLOCK)
        offset = (np.cumsum(leaves_QB, axis=-1) <= u[..., None]).sum(axis=-1)  # first leaf whose prefix sum > u
        past_end = offset >= self.BLOCK  # u at or past the block's sum (round-off): its last positive leaf
        if past_end.any():
            last_positive = self.BLOCK - 1 - np.argmax(leaves_QB[..., ::-1] > 0.0, axis=-1)
            offset = np.where(past_end, last_positive, offset)
        return blocks * self.BLOCK + offset


class SequenceReplayBuffer:
    """Prioritized replay of MuZero unroll sequences (see the module docstring for the layout and the rules).

    Args:
        capacity: number of transitions (env steps) kept; FIFO eviction beyond it.
        obs_shape: shape of one observation ``o_t``.
        obs_dtype: dtype the observations are stored in (e.g. ``np.float32``, ``np.uint8`` for Atari RAM/frames).
        num_actions: ``A``, size of the discrete action space and of the search policies.
        alpha: priority exponent, ``p = (|e| + epsilon)^alpha`` (Schaul et al.; 0 = uniform sampling). Default 1.0
            (paper Appendix G: "alpha = beta = 1").
        beta: importance-sampling exponent in ``[0, 1]`` at the start. Default 1.0 (paper Appendix G).
        beta_increment_per_sampling: added to beta after every :meth:`sample` call, capped at 1.
        epsilon: ``> 0``, added to ``|e|`` so no position gets zero probability.
        window_step: ``None`` (default: the ring spans ``capacity`` from the start) or an integer in
            ``[1, capacity]``: the ring starts over ``window_step`` slots and grows by ``window_step`` each time the
            write position wraps around (see the module docstring).

    Example::

        >>> buf = SequenceReplayBuffer(1000, obs_shape=(4,), obs_dtype=np.float32, num_actions=2)
        >>> T = 3
        >>> buf.add_fragment(7, np.zeros((T, 4)), np.zeros(T, int), np.ones(T), np.zeros(T),
        ...                  np.full((T, 2), 0.5), terminated=True, truncated=False)
        >>> batch = buf.sample(2, num_unroll_steps=2, td_steps=2, discount=0.9, rng=np.random.default_rng(0))
        >>> batch["target_value"].shape, batch["actions"].shape
        ((2, 3), (2, 2))
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: Any,
        num_actions: int,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        beta_increment_per_sampling: float = 0.001,
        epsilon: float = 0.01,
        window_step: int | None = None,
    ):
        if not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ValueError(f"`capacity` must be an integer >= 1, got {capacity!r}.")
        if window_step is not None and (
            isinstance(window_step, bool) or not isinstance(window_step, numbers.Integral)
            or not 1 <= window_step <= capacity
        ):
            raise ValueError(
                f"`window_step` must be None or an integer in [1, capacity={capacity}], got {window_step!r}."
            )
        if not isinstance(num_actions, numbers.Integral) or num_actions < 1:
            raise ValueError(f"`num_actions` must be an integer >= 1, got {num_actions!r}.")
        if not alpha >= 0.0:
            raise ValueError(f"`alpha` must be >= 0 (0 = uniform sampling), got {alpha}.")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"`beta` must be in [0, 1], got {beta}.")
        if not beta_increment_per_sampling >= 0.0:
            raise ValueError(f"`beta_increment_per_sampling` must be >= 0, got {beta_increment_per_sampling}.")
        if not epsilon > 0.0:
            raise ValueError(f"`epsilon` must be > 0 (keeps every priority positive), got {epsilon}.")
        self._capacity = int(capacity)
        self._obs_shape = tuple(int(d) for d in obs_shape)
        self._obs_dtype = np.dtype(obs_dtype)
        self._num_actions = int(num_actions)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.beta_increment_per_sampling = float(beta_increment_per_sampling)
        self.epsilon = float(epsilon)
        self._window_step = None if window_step is None else int(window_step)
        self._window = self._capacity if window_step is None else int(window_step)

        C, A = self._capacity, self._num_actions
        slot_dtype = np.int32 if C <= np.iinfo(np.int32).max else np.int64
        self._obs = np.zeros((C, *self._obs_shape), dtype=self._obs_dtype)
        self._actions = np.zeros(C, dtype=_action_dtype(A))
        self._rewards = np.zeros(C, dtype=np.float32)
        self._root_values = np.zeros(C, dtype=np.float32)
        self._policies = np.zeros((C, A), dtype=_POLICY_DTYPE)
        self._next_slot = np.full(C, _NO_SLOT, dtype=slot_dtype)
        self._end_flag = np.zeros(C, dtype=np.int8)
        self._generation = np.zeros(C, dtype=np.uint32)
        self._is_open_tail = np.zeros(C, dtype=bool)
        self._tree = SumTree(C)
        self._open: dict[int, tuple[int, int]] = {}  # episode_id -> (tail slot, tail generation)
        self._tail_owner: dict[int, int] = {}  # tail slot -> episode_id, for the open tails only
        self._next_index = 0
        self._size = 0
        self._num_added = 0
        self._max_priority = 1.0

    # ------------------------------------------------------------------------------------------------ properties
    def __len__(self) -> int:
        """Number of transitions stored (``<= capacity``)."""
        return self._size

    @property
    def capacity(self) -> int:
        """The most transitions the buffer will ever hold (its arrays' length)."""
        return self._capacity

    @property
    def window(self) -> int:
        """Slots the ring currently runs over (``capacity`` unless ``window_step`` is set; see the module docstring)."""
        return self._window

    @property
    def window_step(self) -> int | None:
        return self._window_step

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self._obs_shape

    @property
    def obs_dtype(self) -> np.dtype:
        return self._obs_dtype

    @property
    def num_actions(self) -> int:
        return self._num_actions

    @property
    def num_added(self) -> int:
        """Transitions ever added (including evicted ones)."""
        return self._num_added

    @property
    def num_open_episodes(self) -> int:
        """Episodes whose last stored fragment neither terminated nor truncated, and whose tail is still stored."""
        return len(self._open)

    @property
    def max_priority(self) -> float:
        """Largest stored priority ``(|e| + epsilon)^alpha`` seen so far (given to new transitions)."""
        return self._max_priority

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays, sum tree included (fixed at construction; see the module docstring)."""
        arrays = (self._obs, self._actions, self._rewards, self._root_values, self._policies, self._next_slot,
                  self._end_flag, self._generation, self._is_open_tail, self._tree._leaves, self._tree._nodes)
        return sum(a.nbytes for a in arrays)

    @property
    def mean_priority(self) -> float:
        """Mean stored priority over the stored transitions (0.0 when empty)."""
        return self._tree.total / self._size if self._size else 0.0

    # ------------------------------------------------------------------------------------------------ adding
    def add_fragment(
        self,
        episode_id: int,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        root_values: np.ndarray,
        search_policies: np.ndarray,
        *,
        terminated: bool,
        truncated: bool,
    ) -> None:
        """Store ``T`` consecutive steps of one episode, stitched onto its previous fragment if that is still stored.

        Args:
            episode_id: integer id (int64 range), the same for all fragments of an episode (RLlib's ``eps_id``).
            obs: ``(T, *obs_shape)`` observations ``o_t``.
            actions: ``(T,)`` actions ``a_t`` in ``[0, A)``.
            rewards: ``(T,)`` rewards ``u_{t+1}`` received for ``a_t``.
            root_values: ``(T,)`` search root values ``nu_t``.
            search_policies: ``(T, A)`` normalised root visit counts ``pi_t``, each in ``[0, 1]`` (stored in float16,
                renormalised when read; see the module docstring).
            terminated: the episode terminated after the last step of this fragment.
            truncated: the episode was truncated (time limit) after the last step. ``terminated`` wins if both.

        A fragment longer than the current :attr:`window` keeps only its last ``window`` steps (and is not linked to its
        predecessor). An empty fragment with ``terminated``/``truncated`` closes the episode's stored tail.
        """
        if not isinstance(episode_id, numbers.Integral) or not _INT64.min <= int(episode_id) <= _INT64.max:
            raise ValueError(f"`episode_id` must be an integer in the int64 range, got {episode_id!r}.")
        episode_id = int(episode_id)
        actions = np.asarray(actions)
        rewards = np.asarray(rewards, dtype=np.float32)
        root_values = np.asarray(root_values, dtype=np.float32)
        search_policies = np.asarray(search_policies, dtype=np.float32)
        obs = np.asarray(obs)
        if actions.ndim != 1:
            raise ValueError(f"`actions` must have shape (T,), got {actions.shape}.")
        T = actions.shape[0]
        if obs.shape != (T, *self._obs_shape):
            raise ValueError(f"`obs` must have shape (T={T}, *obs_shape={self._obs_shape}), got {obs.shape}.")
        for name, arr, shape in (
            ("rewards", rewards, (T,)),
            ("root_values", root_values, (T,)),
            ("search_policies", search_policies, (T, self._num_actions)),
        ):
            if arr.shape != shape:
                raise ValueError(f"`{name}` must have shape {shape} (T = len(actions) = {T}), got {arr.shape}.")
        if T and (
            not np.issubdtype(actions.dtype, np.integer) or actions.min() < 0 or actions.max() >= self._num_actions
        ):
            raise ValueError(f"`actions` must be integers in [0, {self._num_actions}), got {actions.dtype} {actions}.")
        if T and not (search_policies.min() >= 0.0 and search_policies.max() <= 1.0):  # also False for NaN
            raise ValueError(
                "`search_policies` must be normalised visit distributions with entries in [0, 1], got range "
                f"[{search_policies.min()}, {search_policies.max()}]."
            )
        end = TERMINATED if terminated else TRUNCATED if truncated else CONTINUES

        if T == 0:
            if end != CONTINUES and episode_id in self._open:
                tail, _ = self._open.pop(episode_id)
                del self._tail_owner[tail]
                self._is_open_tail[tail] = False
                self._end_flag[tail] = end
            return

        link = True
        if T > self._window:  # only the last `window` steps fit; the rest would be overwritten at once
            cut = T - self._window
            obs, actions, rewards = obs[cut:], actions[cut:], rewards[cut:]
            root_values, search_policies = root_values[cut:], search_policies[cut:]
            self._num_added += cut
            T = self._window
            link = False
        slots = self._advance(T)

        # Eviction: open episodes whose tail is about to be overwritten can no longer be continued.
        for slot in slots[self._is_open_tail[slots]].tolist():
            del self._open[self._tail_owner.pop(slot)]
        self._is_open_tail[slots] = False

        self._obs[slots] = obs
        self._actions[slots] = actions
        self._rewards[slots] = rewards
        self._root_values[slots] = root_values
        self._policies[slots] = search_policies
        self._next_slot[slots[:-1]] = slots[1:]
        self._next_slot[slots[-1]] = _NO_SLOT
        self._end_flag[slots] = CONTINUES
        self._end_flag[slots[-1]] = end
        generation = self._generation[slots] + np.uint32(1)  # wraps around modulo 2^32 ...
        generation[generation == 0] = 1  # ... skipping 0, which means "never written"
        self._generation[slots] = generation
        self._tree.update(slots, np.full(T, self._max_priority))

        previous = self._open.pop(episode_id, None)
        if previous is not None:
            tail, tail_generation = previous
            del self._tail_owner[tail]
            self._is_open_tail[tail] = False
            if link and self._generation[tail] == tail_generation:
                self._next_slot[tail] = slots[0]
        if end == CONTINUES:
            last = int(slots[-1])
            self._open[episode_id] = (last, int(self._generation[last]))
            self._tail_owner[last] = episode_id
            self._is_open_tail[last] = True

        self._size = max(self._size, int(slots.max()) + 1)  # slots are written in order from 0: the filled prefix
        self._num_added += T

    def _advance(self, T: int) -> np.ndarray:
        """The next ``T <= window`` ring slots from the write position, which moves past them; a wrap to slot 0 grows
        the window by ``window_step`` (up to ``capacity``). The slots are distinct: after a wrap the fragment's tail
        runs from 0 and stops before its head's first slot."""
        start = self._next_index
        head = min(T, self._window - start)  # slots up to the window's end
        slots = np.arange(start, start + head)
        self._next_index = start + head
        if self._next_index == self._window:
            self._next_index = 0
            if self._window_step is not None:
                self._window = min(self._capacity, self._window + self._window_step)
            if head < T:
                slots = np.concatenate([slots, np.arange(T - head)])
                self._next_index = T - head
        return slots

    # ------------------------------------------------------------------------------------------------ sampling
    def sample(
        self,
        batch_size: int,
        *,
        num_unroll_steps: int,
        td_steps: int,
        discount: float,
        rng: np.random.Generator,
        value_fn: ValueFn | None = None,
        td_decay_age: int | None = None,
        with_unroll_obs: bool = False,
    ) -> dict[str, np.ndarray]:
        """Draw ``batch_size`` positions by stratified proportional sampling and build their unroll targets.

        Returns the keys of :meth:`build_batch` plus ``TRAIN_WEIGHTS`` ``(B,)`` float32, the importance-sampling
        weights ``(N P(i))^-beta / max`` with the beta in force before this call; then beta is annealed.
        ``rng`` is consumed for the stratified draws, then for the random actions past episode ends.
        ``value_fn``, ``td_decay_age`` and ``with_unroll_obs``: see :meth:`build_batch`.
        """
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        if self._size == 0:
            raise ValueError("Cannot sample from an empty SequenceReplayBuffer: call `add_fragment` first.")
        total = self._tree.total
        u_B = (np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size)
        indices_B = self._tree.find(np.minimum(u_B, total))
        probs_B = self._tree.get(indices_B) / total
        weights_B = (self._size * probs_B) ** (-self.beta)
        weights_B /= weights_B.max()
        batch = self.build_batch(
            indices_B, num_unroll_steps=num_unroll_steps, td_steps=td_steps, discount=discount, rng=rng,
            value_fn=value_fn, td_decay_age=td_decay_age, with_unroll_obs=with_unroll_obs,
        )
        batch[TRAIN_WEIGHTS] = weights_B.astype(np.float32)
        self.beta = min(1.0, self.beta + self.beta_increment_per_sampling)
        return batch

    def build_batch(
        self,
        indices: np.ndarray,
        *,
        num_unroll_steps: int,
        td_steps: int,
        discount: float,
        rng: np.random.Generator,
        value_fn: ValueFn | None = None,
        td_decay_age: int | None = None,
        with_unroll_obs: bool = False,
    ) -> dict[str, np.ndarray]:
        """Training batch (without weights) for the given stored slots, each the start position ``t`` of an unroll.

        Follows ``next_slot`` for ``L = K + n + 1`` positions (one vectorised step per position) and calls
        :func:`~rllib_muzero.targets.make_unroll_targets`. Returns its keys plus ``TRAIN_OBS`` ``(B, *obs_shape)``,
        ``TRAIN_INDICES`` and ``TRAIN_GENERATIONS`` ``(B,)`` int64. ``rng`` is consumed for the random actions.

        Args:
            value_fn: value reanalyse (paper Appendix H; EfficientZero): ``(M, *obs_shape) -> (M,)`` values. When
                given, every bootstrap value ``nu_{t+k+m}`` the targets read is recomputed as ``value_fn(o_{t+k+m})``
                (one call for the whole batch, on the distinct slots only) instead of the search value stored at
                acting time; a fresher network's value of old data.
            td_decay_age: EfficientZero's off-policy correction: sample ``i`` bootstraps after
                ``n_i = clip(td_steps - floor(age_i / td_decay_age), 1, td_steps)`` steps, ``age_i`` =
                :meth:`ages` (transitions stored after it). None: ``td_steps`` for every sample.
            with_unroll_obs: also return ``TRAIN_UNROLL_OBS`` ``(B, K, *obs_shape)``, the observations
                ``o_{t+1} .. o_{t+K}`` (the consistency loss's targets), and ``TRAIN_UNROLL_OBS_MASK`` ``(B, K)``,
                1 where ``o_{t+k}`` is stored (past the data the last stored observation is repeated, masked).
        """
        indices_B = np.asarray(indices, dtype=np.int64)
        if indices_B.ndim != 1:
            raise ValueError(f"`indices` must be 1-D, got shape {indices_B.shape}.")
        if indices_B.size and (indices_B.min() < 0 or indices_B.max() >= self._capacity):
            raise ValueError(f"`indices` must be in [0, capacity={self._capacity}).")
        if indices_B.size and (self._generation[indices_B] == 0).any():
            raise ValueError("`indices` must point at stored transitions (some slots were never written).")
        if num_unroll_steps < 0 or td_steps < 0:
            raise ValueError(f"`num_unroll_steps` and `td_steps` must be >= 0, got {num_unroll_steps}, {td_steps}.")
        L = chain_length(num_unroll_steps, td_steps)
        B = indices_B.shape[0]
        chain_BL = np.empty((B, L), dtype=np.int64)
        chain_BL[:, 0] = indices_B
        lengths_B = np.ones(B, dtype=np.int64)
        current_B = indices_B.copy()
        alive_B = np.ones(B, dtype=bool)
        for j in range(1, L):
            nxt_B = np.where(alive_B, self._next_slot[current_B], _NO_SLOT)
            alive_B = nxt_B >= 0
            current_B = np.where(alive_B, nxt_B, current_B)  # past the data: repeat the last slot (ignored)
            chain_BL[:, j] = current_B
            lengths_B += alive_B
        terminated_B = self._end_flag[current_B] == TERMINATED  # current_B is the last available slot
        P = num_unroll_steps + 1  # positions whose policy / action are read
        policies_BPA = self._policies[chain_BL[:, :P]].astype(np.float32)  # stored in float16: renormalise
        policy_sums_BP1 = policies_BPA.sum(axis=-1, keepdims=True)
        np.divide(policies_BPA, policy_sums_BP1, out=policies_BPA, where=policy_sums_BP1 > 0.0)
        td_steps_B = None
        if td_decay_age is not None:
            td_steps_B = off_policy_td_steps(td_steps, self.ages(indices_B), td_decay_age)
        values_BL = self._root_values[chain_BL]
        if value_fn is not None:
            values_BL = self._reanalysed_values(value_fn, chain_BL, values_BL, lengths_B, terminated_B,
                                                num_unroll_steps, td_steps if td_steps_B is None else td_steps_B)
        batch = make_unroll_targets(
            self._rewards[chain_BL],
            values_BL,
            policies_BPA,
            self._actions[chain_BL[:, :P]],
            lengths_B,
            terminated_B,
            num_unroll_steps=num_unroll_steps,
            td_steps=td_steps,
            discount=discount,
            num_actions=self._num_actions,
            rng=rng,
            td_steps_B=td_steps_B,
        )
        batch[TRAIN_OBS] = self._obs[indices_B]
        if with_unroll_obs:
            K = num_unroll_steps
            batch[TRAIN_UNROLL_OBS] = self._obs[chain_BL[:, 1:K + 1]]
            batch[TRAIN_UNROLL_OBS_MASK] = (np.arange(1, K + 1)[None, :] < lengths_B[:, None]).astype(np.float32)
        batch[TRAIN_INDICES] = indices_B
        batch[TRAIN_GENERATIONS] = self._generation[indices_B].astype(np.int64)
        return batch

    def _reanalysed_values(self, value_fn: ValueFn, chain_BL: np.ndarray, values_BL: np.ndarray,
                           lengths_B: np.ndarray, terminated_B: np.ndarray, num_unroll_steps: int,
                           td_steps: int | np.ndarray) -> np.ndarray:
        """``values_BL`` with every bootstrap value the targets read replaced by ``value_fn`` of its observation."""
        end_BK, has_bootstrap_BK = bootstrap_positions(lengths_B, terminated_B, num_unroll_steps=num_unroll_steps,
                                                       td_steps=td_steps)
        rows, cols = np.nonzero(has_bootstrap_BK)
        if rows.size == 0:
            return values_BL
        positions = end_BK[rows, cols]
        slots = chain_BL[rows, positions]
        unique_slots, inverse = np.unique(slots, return_inverse=True)
        values = np.asarray(value_fn(self._obs[unique_slots]), dtype=np.float32).reshape(-1)
        if values.shape != unique_slots.shape:
            raise ValueError(f"`value_fn` must return one value per observation: {unique_slots.shape[0]} expected, "
                             f"got shape {values.shape}.")
        values_BL = values_BL.copy()
        values_BL[rows, positions] = values[inverse]
        return values_BL

    def ages(self, indices: np.ndarray) -> np.ndarray:
        """``(B,)`` int64: how many transitions were stored after each slot (0 for the newest).

        Slots are written in ring order, so the age is the ring distance behind the write position; with a growing
        window (``window_step``) the ring spans the filled prefix ``len(self)``.
        """
        indices_B = np.asarray(indices, dtype=np.int64)
        size = max(self._size, 1)
        return (self._next_index - 1 - indices_B) % size

    # ------------------------------------------------------------------------------------------------ priorities
    def update_priorities(self, indices: np.ndarray, generations: np.ndarray, abs_errors: np.ndarray) -> None:
        """Set the priorities ``(|e| + epsilon)^alpha`` of sampled slots, skipping slots rewritten since sampling.

        Args:
            indices: ``(B,)`` slots, as returned in ``TRAIN_INDICES``.
            generations: ``(B,)`` their write generations at sampling time (``TRAIN_GENERATIONS``); a slot whose
                generation changed holds another transition now and keeps its priority.
            abs_errors: ``(B,)`` errors, e.g. ``|nu_t - z_t|`` from the current network; the sign is dropped.
        If a slot appears several times, the last valid entry wins.
        """
        indices_B = np.asarray(indices, dtype=np.int64)
        generations_B = np.asarray(generations, dtype=np.int64)
        errors_B = np.abs(np.asarray(abs_errors, dtype=np.float64))
        if not indices_B.ndim == 1 or indices_B.shape != generations_B.shape or indices_B.shape != errors_B.shape:
            raise ValueError(
                "`indices`, `generations` and `abs_errors` must be 1-D of the same length, got shapes "
                f"{indices_B.shape}, {generations_B.shape}, {errors_B.shape}."
            )
        if indices_B.size == 0:
            return
        if indices_B.min() < 0 or indices_B.max() >= self._capacity:
            raise ValueError(f"`indices` must be in [0, capacity={self._capacity}).")
        if not np.isfinite(errors_B).all():
            raise ValueError("`abs_errors` must be finite (a NaN/inf priority would corrupt the sum tree).")
        valid_B = (self._generation[indices_B] == generations_B) & (generations_B > 0)
        if not valid_B.any():
            return
        priorities_B = np.minimum((errors_B[valid_B] + self.epsilon) ** self.alpha, np.finfo(np.float32).max)
        self._tree.update(indices_B[valid_B], priorities_B)
        self._max_priority = max(self._max_priority, float(priorities_B.max()))

    def priorities(self, indices: np.ndarray) -> np.ndarray:
        """Stored priorities ``(|e| + epsilon)^alpha`` of ``indices`` (0 for never-written slots), as float64.

        They are stored in float32, i.e. rounded to 24 significant bits."""
        return self._tree.get(indices)

    # ------------------------------------------------------------------------------------------------ episode ends
    def close_open_episodes(self) -> int:
        """Marks every open episode :data:`TRUNCATED` after its stored tail; returns how many were closed.

        For an episode that will never be continued (its env runner dropped it, e.g. at a checkpoint's episode
        boundary): without this its tail would wait forever for a next fragment. Sampling reads a truncated tail as it
        reads an open one (the value target bootstraps from the last stored value; see
        :func:`~rllib_muzero.targets.make_unroll_targets`), so no target changes; a fragment arriving later under the
        same id starts a new chain instead of linking.
        """
        tails = [tail for tail, _ in self._open.values()]
        self._end_flag[tails] = TRUNCATED
        self._is_open_tail[tails] = False
        self._open.clear()
        self._tail_owner.clear()
        return len(tails)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def get_state(self, *, close_open_episodes: bool = False) -> dict[str, Any]:
        """Everything needed to restore the buffer exactly: numpy arrays (copies) and plain Python scalars.

        Contents, priorities, links, end flags, generations, open episodes, counters and the current beta, each array
        in its storage dtype (see the module docstring). ``alpha``, ``epsilon`` and ``beta_increment_per_sampling``
        are configuration and stay the restoring buffer's own.

        With ``close_open_episodes`` the state is the one :meth:`close_open_episodes` would leave (no open episode, the
        tails truncated) while this buffer keeps its open episodes: for a checkpoint whose restored runners will not
        continue them while this buffer's runners do (the asynchronous pipeline).
        """
        open_ids = [] if close_open_episodes else list(self._open)
        end_flag = self._end_flag.copy()
        if close_open_episodes:
            end_flag[[tail for tail, _ in self._open.values()]] = TRUNCATED
        return {
            "version": _STATE_VERSION,
            "capacity": self._capacity,
            "obs_shape": np.array(self._obs_shape, dtype=np.int64),
            "obs_dtype": self._obs_dtype.str,
            "num_actions": self._num_actions,
            "obs": self._obs.copy(),
            "actions": self._actions.copy(),
            "rewards": self._rewards.copy(),
            "root_values": self._root_values.copy(),
            "search_policies": self._policies.copy(),
            "next_slot": self._next_slot.copy(),
            "end_flag": end_flag,
            "generation": self._generation.copy(),
            "priorities": np.array(self._tree.leaves),
            "open_episode_ids": np.array(open_ids, dtype=np.int64),
            "open_tail_slots": np.array([self._open[e][0] for e in open_ids], dtype=np.int64),
            "open_tail_generations": np.array([self._open[e][1] for e in open_ids], dtype=np.int64),
            "next_index": self._next_index,
            "window": self._window,
            "size": self._size,
            "num_added": self._num_added,
            "max_priority": self._max_priority,
            "beta": self.beta,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s output. Capacity, observation shape and dtype and ``num_actions`` must match.

        Arrays are cast to this buffer's storage dtypes, so a state saved with wider dtypes (float32 search policies,
        float64 priorities, int64 actions, links and generations, as before the compact layout) restores too, its
        policies rounded to float16 and its priorities to float32. A state from this layout restores exactly.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"Unknown replay state version {state.get('version')!r}; expected {_STATE_VERSION}.")
        saved = {
            "capacity": int(state["capacity"]),
            "obs_shape": tuple(int(d) for d in np.asarray(state["obs_shape"]).reshape(-1)),
            "obs_dtype": np.dtype(state["obs_dtype"]),
            "num_actions": int(state["num_actions"]),
        }
        mine = {
            "capacity": self._capacity,
            "obs_shape": self._obs_shape,
            "obs_dtype": self._obs_dtype,
            "num_actions": self._num_actions,
        }
        for key, value in saved.items():
            if value != mine[key]:
                raise ValueError(
                    f"Cannot restore replay state: saved `{key}` is {value!r}, this buffer's is {mine[key]!r}. "
                    "Build the buffer with the same configuration as the one that was saved."
                )
        C, A = self._capacity, self._num_actions
        arrays = {
            "obs": ((C, *self._obs_shape), self._obs),
            "actions": ((C,), self._actions),
            "rewards": ((C,), self._rewards),
            "root_values": ((C,), self._root_values),
            "search_policies": ((C, A), self._policies),
            "next_slot": ((C,), self._next_slot),
            "end_flag": ((C,), self._end_flag),
            "generation": ((C,), self._generation),
        }
        for key, (shape, _) in arrays.items():
            if np.shape(state[key]) != shape:
                raise ValueError(f"Cannot restore replay state: `{key}` has shape {np.shape(state[key])}, not {shape}.")
        if np.shape(state["priorities"]) != (C,):
            raise ValueError(f"Cannot restore replay state: `priorities` must have shape ({C},).")
        for key, (_, target) in arrays.items():
            target[...] = state[key]
        self._tree.set_all(np.asarray(state["priorities"], dtype=np.float32))
        ids = np.asarray(state["open_episode_ids"], dtype=np.int64).tolist()
        tails = np.asarray(state["open_tail_slots"], dtype=np.int64).tolist()
        gens = np.asarray(state["open_tail_generations"], dtype=np.int64).tolist()
        self._open = {e: (s, g) for e, s, g in zip(ids, tails, gens, strict=True)}
        self._tail_owner = {s: e for e, s in zip(ids, tails, strict=True)}
        self._is_open_tail[:] = False
        self._is_open_tail[tails] = True
        self._next_index = int(state["next_index"])
        self._window = int(state.get("window", self._capacity))  # states saved before window_step: the full ring
        self._size = int(state["size"])
        self._num_added = int(state["num_added"])
        self._max_priority = float(state["max_priority"])
        self.beta = float(state["beta"])
