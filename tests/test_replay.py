"""Prioritized sequence replay (rllib_muzero.replay): sum tree, PER weights, stitching, eviction, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from rllib_muzero.columns import (
    TRAIN_ACTIONS,
    TRAIN_GENERATIONS,
    TRAIN_INDICES,
    TRAIN_OBS,
    TRAIN_POLICY_MASK,
    TRAIN_REWARD_MASK,
    TRAIN_TARGET_POLICY,
    TRAIN_TARGET_REWARD,
    TRAIN_TARGET_VALUE,
    TRAIN_VALUE_MASK,
    TRAIN_WEIGHTS,
)
from rllib_muzero.replay import SequenceReplayBuffer, SumTree

A = 2
OBS = (4,)
TARGET_KEYS = (
    TRAIN_OBS,
    TRAIN_ACTIONS,
    TRAIN_TARGET_VALUE,
    TRAIN_TARGET_REWARD,
    TRAIN_TARGET_POLICY,
    TRAIN_VALUE_MASK,
    TRAIN_REWARD_MASK,
    TRAIN_POLICY_MASK,
)


def make_buffer(capacity=64, **kwargs):
    return SequenceReplayBuffer(capacity, OBS, np.float32, A, **kwargs)


def episode(T, seed, start=0):
    """Arrays of a T-step episode; obs[:, 0] is the step index + start (identifies a transition)."""
    rng = np.random.default_rng(seed)
    obs = np.zeros((T, *OBS), np.float32)
    obs[:, 0] = start + np.arange(T)
    obs[:, 1] = seed
    policies = rng.dirichlet(np.ones(A), size=T).astype(np.float32)
    return {
        "obs": obs,
        "actions": rng.integers(0, A, size=T),
        "rewards": rng.normal(size=T).astype(np.float32),
        "root_values": rng.normal(size=T).astype(np.float32),
        "search_policies": policies,
    }


def piece(ep, lo, hi):
    return {k: v[lo:hi] for k, v in ep.items()}


def add(buf, eid, arrays, *, terminated=False, truncated=False):
    buf.add_fragment(eid, **arrays, terminated=terminated, truncated=truncated)


def slot_of(buf, seed, step):
    """Slot holding step `step` of the episode generated with `seed` (via the identifying obs)."""
    obs = buf.get_state()["obs"]
    gen = buf.get_state()["generation"]
    hit = np.flatnonzero((obs[:, 0] == step) & (obs[:, 1] == seed) & (gen > 0))
    assert hit.size == 1
    return int(hit[0])


# ---------------------------------------------------------------------------------------------------- sum tree
def test_sum_tree_find_matches_cumsum():
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 8, 37, 100, 1000, 4097):  # one block of 32 leaves, several, a ragged last block
        tree = SumTree(size)
        values = rng.random(size) * (rng.random(size) > 0.3)
        values = values.astype(np.float32).astype(np.float64)  # the leaves are stored in float32
        values[rng.integers(size)] = 1.0  # at least one positive leaf
        tree.update(np.arange(size), values)
        assert tree.total == pytest.approx(values.sum())
        u = rng.random(1000) * values.sum()
        expected = np.searchsorted(np.cumsum(values), u, side="right")
        np.testing.assert_array_equal(tree.find(u), expected)
        # u at the total (round-off) lands on the last positive leaf, never on an empty one.
        assert tree.find(np.array([values.sum() * (1 + 1e-12)]))[0] == np.flatnonzero(values)[-1]


def test_sum_tree_incremental_equals_rebuild():
    rng = np.random.default_rng(1)
    a, b = SumTree(100), SumTree(100)
    for _ in range(20):
        idx = rng.integers(0, 100, size=17)
        a.update(idx, rng.random(17))
    b.set_all(np.array(a.leaves))
    np.testing.assert_array_equal(a._nodes, b._nodes)
    np.testing.assert_array_equal(a._leaves, b._leaves)


def test_sum_tree_skips_zero_blocks_and_clamps_past_the_total():
    tree = SumTree(200)  # 7 blocks of 32 leaves
    values = np.zeros(200)
    values[[3, 40, 41, 150]] = [1.0, 2.0, 0.5, 4.0]  # blocks 0, 1 and 4; the others are empty
    tree.update(np.arange(200), values)
    assert tree.total == 7.5
    u = np.array([0.0, 0.999, 1.0, 2.99, 3.0, 3.49, 3.5, 7.49, 7.5, 100.0])
    np.testing.assert_array_equal(tree.find(u), [3, 3, 40, 40, 41, 41, 150, 150, 150, 150])
    assert tree.find(u).dtype == np.int64
    np.testing.assert_array_equal(tree.get([3, 4]), [1.0, 0.0])
    assert tree.get([3]).dtype == np.float64


def test_sampling_frequencies_match_priorities():
    C = 8
    buf = make_buffer(C, alpha=0.7, epsilon=0.05)
    ep = episode(C, seed=0)
    add(buf, 1, ep, terminated=True)
    errors = np.array([0.0, 0.5, 1.0, 2.0, 0.1, 3.0, 0.3, 1.5])
    gens = buf.get_state()["generation"]
    buf.update_priorities(np.arange(C), gens, errors)
    priorities = (errors + 0.05) ** 0.7
    expected = priorities / priorities.sum()
    rng = np.random.default_rng(123)
    counts = np.zeros(C)
    draws = 0
    for _ in range(60):
        batch = buf.sample(997, num_unroll_steps=0, td_steps=0, discount=1.0, rng=rng)
        counts += np.bincount(batch[TRAIN_INDICES], minlength=C)
        draws += 997
    chi2 = ((counts - draws * expected) ** 2 / (draws * expected)).sum()
    assert chi2 < 30.0, (chi2, counts / draws, expected)  # 7 dof: p ~ 1e-4; stratification makes it much smaller
    np.testing.assert_allclose(counts / draws, expected, atol=0.01)


def test_importance_weights_formula_and_beta_annealing():
    buf = make_buffer(16, alpha=1.0, beta=0.4, beta_increment_per_sampling=0.25, epsilon=0.01)
    add(buf, 1, episode(10, seed=0), terminated=True)
    gens = buf.get_state()["generation"]
    errors = np.linspace(0.1, 2.0, 10)
    buf.update_priorities(np.arange(10), gens[:10], errors)
    p = errors + 0.01
    rng = np.random.default_rng(5)
    for beta in (0.4, 0.65, 0.9, 1.0, 1.0):
        assert buf.beta == pytest.approx(beta)
        batch = buf.sample(32, num_unroll_steps=1, td_steps=1, discount=0.9, rng=rng)
        idx = batch[TRAIN_INDICES]
        w = (10 * p[idx] / p.sum()) ** -beta
        np.testing.assert_allclose(batch[TRAIN_WEIGHTS], w / w.max(), rtol=1e-6)
        assert batch[TRAIN_WEIGHTS].dtype == np.float32
    assert buf.beta == 1.0


def test_priority_updates_land_and_stale_generations_are_ignored():
    buf = make_buffer(8, alpha=0.5, epsilon=0.1)
    add(buf, 1, episode(8, seed=0))
    batch = buf.sample(4, num_unroll_steps=2, td_steps=2, discount=0.9, rng=np.random.default_rng(0))
    assert np.allclose(buf.priorities(np.arange(8)), 1.0)  # new transitions: max priority (1.0 initially)
    gens = buf.get_state()["generation"]
    buf.update_priorities(np.array([2, 5]), gens[[2, 5]], np.array([-3.0, 8.9]))
    expected = np.ones(8)
    expected[2], expected[5] = 3.1**0.5, 9.0**0.5
    np.testing.assert_allclose(buf.priorities(np.arange(8)), expected)
    assert buf.max_priority == pytest.approx(3.0)
    # Overwrite slots 0..2 with a new episode: they get the new max priority and a new generation.
    old_generations = batch[TRAIN_GENERATIONS]
    add(buf, 2, episode(3, seed=1), terminated=True)
    np.testing.assert_allclose(buf.priorities(np.arange(3)), 3.0)
    buf.update_priorities(np.arange(3), gens[:3], np.zeros(3))  # generations from before the overwrite
    np.testing.assert_allclose(buf.priorities(np.arange(3)), 3.0)
    # A stale write among fresh ones: only the fresh slots change.
    new_gens = buf.get_state()["generation"]
    idx = np.array([0, 6])
    buf.update_priorities(idx, np.array([gens[0], new_gens[6]]), np.array([0.0, 0.0]))
    np.testing.assert_allclose(buf.priorities(idx), [3.0, 0.1**0.5])
    assert (old_generations >= 1).all()
    assert buf.mean_priority == pytest.approx(buf.priorities(np.arange(8)).mean())


def test_eviction_is_fifo_and_len_bounded():
    buf = make_buffer(10)
    start = 0
    for i, T in enumerate([4, 3, 6, 5, 7]):
        add(buf, i, episode(T, seed=0, start=start), terminated=True)
        start += T
        assert len(buf) == min(start, 10)
    assert buf.num_added == 25 and len(buf) == 10
    stored = np.sort(buf.get_state()["obs"][:, 0])
    np.testing.assert_array_equal(stored, np.arange(15, 25))  # the 15 oldest are gone
    batch = buf.sample(64, num_unroll_steps=1, td_steps=1, discount=0.9, rng=np.random.default_rng(0))
    assert (batch[TRAIN_OBS][:, 0] >= 15).all()


def test_fragment_longer_than_capacity_keeps_the_last_steps():
    buf = make_buffer(5)
    add(buf, 1, episode(12, seed=0), terminated=True)
    assert len(buf) == 5 and buf.num_added == 12
    np.testing.assert_array_equal(np.sort(buf.get_state()["obs"][:, 0]), np.arange(7, 12))


def test_window_step_grows_the_ring_each_time_it_wraps():
    """Reference semantics of --window_step: the ring starts at window_step slots and grows by window_step, up to
    capacity, each time the write position wraps to slot 0; older data is evicted sooner while the window is small."""
    buf = make_buffer(10, window_step=4)
    assert (buf.window, buf.capacity) == (4, 10)
    windows, sizes, oldest = [], [], []
    for t in range(24):
        add(buf, t, episode(1, seed=0, start=t), terminated=True)
        windows.append(buf.window)
        sizes.append(len(buf))
        oldest.append(int(buf.get_state()["obs"][: len(buf), 0].min()))
    # Steps 0-3 fill 4 slots, wrap -> window 8; steps 4-11 fill slots 0-7 (4 new), wrap -> 10 (= capacity).
    assert windows[:4] == [4, 4, 4, 8] and windows[4:12] == [8] * 7 + [10] and set(windows[12:]) == {10}
    assert sizes[:8] == [1, 2, 3, 4, 4, 4, 4, 4] and sizes[11] == 8 and sizes[-1] == 10
    assert oldest[7] == 4  # step 7 overwrote slot 3: only steps 4-7 left, while a plain ring of 10 keeps 0-7
    np.testing.assert_array_equal(np.sort(buf.get_state()["obs"][:, 0]), np.arange(14, 24))  # FIFO at capacity
    assert buf.get_state()["priorities"][len(buf):].sum() == 0.0  # never-written slots are never sampled
    batch = buf.sample(32, num_unroll_steps=1, td_steps=1, discount=0.9, rng=np.random.default_rng(0))
    assert (batch[TRAIN_OBS][:, 0] >= 14).all()


def test_window_step_with_fragments_that_cross_the_wrap_and_round_trip():
    buf = make_buffer(12, window_step=5)
    add(buf, 1, episode(3, seed=1))
    add(buf, 1, piece(episode(7, seed=1), 3, 7))  # crosses the end of the 5-slot window: slots 3, 4, 0, 1
    assert buf.window == 10 and len(buf) == 5
    # The episode is still linked in order across the wrap: its targets read steps 3, 4, 5, 6 in a row.
    start = slot_of(buf, 1, 3)
    batch = buf.build_batch(np.array([start]), num_unroll_steps=3, td_steps=1, discount=1.0,
                            rng=np.random.default_rng(0))
    np.testing.assert_array_equal(batch[TRAIN_POLICY_MASK][0], [1, 1, 1, 1])
    restored = make_buffer(12, window_step=5)
    restored.set_state(buf.get_state())
    assert restored.window == 10
    for b in (buf, restored):
        add(b, 2, episode(6, seed=2), terminated=True)
    assert buf.window == restored.window and len(buf) == len(restored)
    np.testing.assert_array_equal(buf.get_state()["obs"], restored.get_state()["obs"])


def test_window_step_must_fit_the_capacity():
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ValueError, match="`window_step`"):
            make_buffer(10, window_step=bad)


# ---------------------------------------------------------------------------------------------------- stitching
@pytest.mark.parametrize("terminated", [True, False])
def test_fragments_interleaved_equal_whole_episode(terminated):
    T, K, n = 11, 3, 4
    ep_x, ep_y = episode(T, seed=10), episode(9, seed=20)
    whole = make_buffer(64)
    add(whole, 7, ep_x, terminated=terminated, truncated=not terminated)
    pieces = make_buffer(64)
    add(pieces, 8, piece(ep_y, 0, 2))
    add(pieces, 7, piece(ep_x, 0, 4))
    add(pieces, 8, piece(ep_y, 2, 5))
    add(pieces, 7, piece(ep_x, 4, 5))
    add(pieces, 9, episode(3, seed=30), terminated=True)
    add(pieces, 8, piece(ep_y, 5, 9), terminated=True)
    add(pieces, 7, piece(ep_x, 5, T), terminated=terminated, truncated=not terminated)
    assert whole.num_open_episodes == 0 and pieces.num_open_episodes == 0
    slots_whole = [slot_of(whole, 10, t) for t in range(T)]
    slots_pieces = [slot_of(pieces, 10, t) for t in range(T)]
    assert slots_whole != slots_pieces  # really laid out differently
    kw = {"num_unroll_steps": K, "td_steps": n, "discount": 0.9}
    a = whole.build_batch(np.array(slots_whole), rng=np.random.default_rng(0), **kw)
    b = pieces.build_batch(np.array(slots_pieces), rng=np.random.default_rng(0), **kw)
    for key in TARGET_KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # And the stitched targets are the full-episode ones (spot check: z_0 at t = 0 bootstraps from nu_4).
    g = 0.9
    z0 = sum(g**i * ep_x["rewards"][i] for i in range(n)) + g**n * ep_x["root_values"][n]
    assert a[TRAIN_TARGET_VALUE][0, 0] == pytest.approx(z0, rel=1e-5)


def test_live_edge_then_continuation_changes_targets():
    buf = make_buffer(32)
    ep = episode(6, seed=1)
    add(buf, 3, piece(ep, 0, 2))
    kw = {"num_unroll_steps": 2, "td_steps": 3, "discount": 0.5, "rng": np.random.default_rng(0)}
    s0 = slot_of(buf, 1, 0)
    before = buf.build_batch(np.array([s0]), **kw)
    np.testing.assert_array_equal(before[TRAIN_VALUE_MASK], [[1, 1, 0]])  # live edge: unknown future masked
    add(buf, 3, piece(ep, 2, 6), terminated=True)
    after = buf.build_batch(np.array([s0]), **kw)
    np.testing.assert_array_equal(after[TRAIN_VALUE_MASK], [[1, 1, 1]])
    r, v = ep["rewards"], ep["root_values"]
    assert after[TRAIN_TARGET_VALUE][0, 0] == pytest.approx(r[0] + 0.5 * r[1] + 0.25 * r[2] + 0.125 * v[3], rel=1e-5)


def test_fragment_after_evicted_tail_is_not_linked():
    buf = make_buffer(8)
    ep = episode(6, seed=1)
    add(buf, 1, piece(ep, 0, 3))  # slots 0..2, open, tail slot 2
    assert buf.num_open_episodes == 1
    add(buf, 2, episode(5, seed=2), terminated=True)  # slots 3..7
    add(buf, 3, episode(3, seed=3), terminated=True)  # slots 0..2: evicts episode 1 including its tail
    assert buf.num_open_episodes == 0  # pruned when its tail was overwritten
    add(buf, 1, piece(ep, 3, 6), terminated=True)  # slots 3..5
    state = buf.get_state()
    first = slot_of(buf, 1, 3)
    assert first == 3
    assert not (state["next_slot"] == first).any()  # nobody links to the new fragment
    np.testing.assert_array_equal(state["next_slot"][:3], [1, 2, -1])  # episode 3 is intact, not extended
    batch = buf.build_batch(np.array([2]), num_unroll_steps=2, td_steps=1, discount=0.9, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(batch[TRAIN_POLICY_MASK], [[1, 0, 0]])  # episode 3 ends at slot 2


def test_stale_tail_generation_blocks_link():
    # Even if the open-episode table held a stale entry (tail rewritten since), the tail must not be linked.
    buf = make_buffer(8)
    ep = episode(4, seed=1)
    add(buf, 1, piece(ep, 0, 2))  # slots 0, 1; tail 1
    tail, gen = buf._open[1]
    buf._open[1] = (tail, gen - 1)  # as if slot 1 had been rewritten after the entry was made
    add(buf, 1, piece(ep, 2, 4), terminated=True)  # slots 2, 3
    assert buf.get_state()["next_slot"][1] == -1
    assert buf.num_open_episodes == 0
    # The control: with the right generation the same fragments are linked.
    buf = make_buffer(8)
    add(buf, 1, piece(ep, 0, 2))
    add(buf, 1, piece(ep, 2, 4), terminated=True)
    assert buf.get_state()["next_slot"][1] == 2


def test_empty_terminal_fragment_closes_episode():
    buf = make_buffer(16)
    add(buf, 4, episode(3, seed=0))
    assert buf.num_open_episodes == 1
    add(buf, 4, piece(episode(3, seed=0), 0, 0), terminated=True)
    assert buf.num_open_episodes == 0
    batch = buf.build_batch(np.array([2]), num_unroll_steps=2, td_steps=1, discount=0.9, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(batch[TRAIN_VALUE_MASK], [[1, 1, 1]])  # absorbing, not unknown


# ---------------------------------------------------------------------------------------------------- checkpoints
def fill_for_checkpoint(buf):
    add(buf, 1, episode(7, seed=1))
    add(buf, 2, episode(9, seed=2), terminated=True)
    add(buf, 3, episode(4, seed=3))
    add(buf, 1, episode(5, seed=4, start=7), truncated=True)
    batch = buf.sample(8, num_unroll_steps=3, td_steps=3, discount=0.9, rng=np.random.default_rng(1))
    buf.update_priorities(batch[TRAIN_INDICES], batch[TRAIN_GENERATIONS], np.linspace(0, 3, 8))


def test_state_round_trip_gives_identical_samples():
    src = make_buffer(20, beta=0.5, beta_increment_per_sampling=0.1)
    fill_for_checkpoint(src)
    state = src.get_state()
    dst = make_buffer(20, beta=0.5, beta_increment_per_sampling=0.1)
    dst.set_state(state)
    assert (len(dst), dst.num_added, dst.num_open_episodes, dst.beta) == (
        len(src),
        src.num_added,
        src.num_open_episodes,
        src.beta,
    )
    kw = {"num_unroll_steps": 3, "td_steps": 3, "discount": 0.9}
    a = src.sample(16, rng=np.random.default_rng(9), **kw)
    b = dst.sample(16, rng=np.random.default_rng(9), **kw)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Open episodes survive: continuing episode 3 in both stitches identically.
    add(src, 3, episode(2, seed=5, start=4), terminated=True)
    add(dst, 3, episode(2, seed=5, start=4), terminated=True)
    s1, s2 = src.get_state(), dst.get_state()
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key], err_msg=key)
    assert all(isinstance(v, (np.ndarray, int, float, str)) for v in s1.values())


@pytest.mark.parametrize(
    ("other", "match"),
    [
        ({"capacity": 21}, "capacity"),
        ({"obs_shape": (5,)}, "obs_shape"),
        ({"obs_dtype": np.uint8}, "obs_dtype"),
        ({"num_actions": 3}, "num_actions"),
    ],
)
def test_set_state_rejects_incompatible_buffers(other, match):
    src = make_buffer(20)
    fill_for_checkpoint(src)
    kwargs = {"capacity": 20, "obs_shape": OBS, "obs_dtype": np.float32, "num_actions": A} | other
    dst = SequenceReplayBuffer(**kwargs)
    with pytest.raises(ValueError, match=match):
        dst.set_state(src.get_state())


# ---------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capacity": 0}, "capacity"),
        ({"alpha": -0.1}, "alpha"),
        ({"beta": 1.5}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"num_actions": 0}, "num_actions"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = {"capacity": 10, "obs_shape": OBS, "obs_dtype": np.float32, "num_actions": A} | kwargs
    with pytest.raises(ValueError, match=match):
        SequenceReplayBuffer(**args)


def test_bad_fragments_and_empty_sampling():
    buf = make_buffer(10)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4, num_unroll_steps=1, td_steps=1, discount=0.9, rng=np.random.default_rng(0))
    ep = episode(3, seed=0)
    with pytest.raises(ValueError, match="obs"):
        add(buf, 1, ep | {"obs": np.zeros((3, 5), np.float32)})
    with pytest.raises(ValueError, match="rewards"):
        add(buf, 1, ep | {"rewards": np.zeros(2)})
    with pytest.raises(ValueError, match="search_policies"):
        add(buf, 1, ep | {"search_policies": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="actions"):
        add(buf, 1, ep | {"actions": np.array([0, 1, 2])})
    with pytest.raises(ValueError, match="episode_id"):
        add(buf, 2**70, ep)
    assert len(buf) == 0
    add(buf, 1, ep)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0, num_unroll_steps=1, td_steps=1, discount=0.9, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="abs_errors"):
        buf.update_priorities(np.array([0]), np.array([1]), np.array([np.nan]))
    with pytest.raises(ValueError, match="same length"):
        buf.update_priorities(np.array([0, 1]), np.array([1]), np.array([0.5, 0.5]))


# ---------------------------------------------------------------------------------------------------- memory layout
def array_nbytes(buf):
    """Bytes of every numpy array reachable from the buffer and its sum tree."""
    arrays = [v for v in vars(buf).values() if isinstance(v, np.ndarray)]
    arrays += [v for v in vars(buf._tree).values() if isinstance(v, np.ndarray)]
    return sum(a.nbytes for a in arrays)


@pytest.mark.parametrize(("obs_shape", "obs_dtype", "num_actions"), [((4,), np.float32, 2), ((128,), np.uint8, 18)])
def test_memory_stays_within_the_capacity_bound_under_a_long_fill(obs_shape, obs_dtype, num_actions):
    # Issue 7: at most the observation's bytes + 64 per transition, whatever was added. 16 envs send interleaved
    # fragments for 20x the capacity; every 7th fragment its env "crashes" and abandons the episode (never closed).
    C = 500
    buf = SequenceReplayBuffer(C, obs_shape, obs_dtype, num_actions)
    obs_bytes = int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize
    nbytes = buf.nbytes
    assert nbytes == array_nbytes(buf)
    assert nbytes / C <= obs_bytes + 64
    rng = np.random.default_rng(0)
    envs = list(range(16))
    next_id, added, fragment_count = 16, 0, 0
    tail_written_at = {}  # open episode -> global step index of its stored tail
    while added < 20 * C:
        for i, eid in enumerate(envs):
            T = int(rng.integers(1, 40))
            ends = rng.random() < 0.1
            buf.add_fragment(
                eid,
                np.zeros((T, *obs_shape), obs_dtype),
                rng.integers(0, num_actions, T),
                np.ones(T, np.float32),
                np.zeros(T, np.float32),
                rng.dirichlet(np.ones(num_actions), T).astype(np.float32),
                terminated=ends,
                truncated=False,
            )
            added += T
            fragment_count += 1
            tail_written_at.pop(eid, None)
            if not ends:
                tail_written_at[eid] = added - 1
            if ends or fragment_count % 7 == 0:  # a new episode; a crashed one stays open in the buffer's eyes
                envs[i], next_id = next_id, next_id + 1
    assert buf.num_added == added and len(buf) == C
    assert buf.nbytes == array_nbytes(buf) == nbytes  # no array grew
    # The open-episode table holds exactly the open episodes whose tail is still stored (abandoned ones are pruned
    # when their tail is overwritten), so it is bounded by the capacity too.
    still_stored = {e for e, at in tail_written_at.items() if at >= added - C}
    assert set(buf._open) == still_stored
    assert len(buf._tail_owner) == int(buf._is_open_tail.sum()) == buf.num_open_episodes <= C
    batch = buf.sample(64, num_unroll_steps=5, td_steps=10, discount=0.99, rng=rng)
    assert np.isfinite(batch[TRAIN_TARGET_VALUE]).all()


def test_compact_storage_dtypes():
    state = SequenceReplayBuffer(10, (128,), np.uint8, 18).get_state()
    assert state["obs"].dtype == np.uint8
    assert state["actions"].dtype == np.uint8
    assert state["search_policies"].dtype == np.float16
    assert state["rewards"].dtype == state["root_values"].dtype == np.float32
    assert state["next_slot"].dtype == np.int32 and state["end_flag"].dtype == np.int8
    assert state["generation"].dtype == np.uint32 and state["priorities"].dtype == np.float32
    assert SequenceReplayBuffer(10, (1,), np.float32, 256).get_state()["actions"].dtype == np.uint8
    assert SequenceReplayBuffer(10, (1,), np.float32, 257).get_state()["actions"].dtype == np.uint16


def test_float16_policies_are_renormalised_within_1e_3():
    A18 = 18
    buf = SequenceReplayBuffer(64, OBS, np.float32, A18)
    rng = np.random.default_rng(3)
    T = 20
    policies = rng.dirichlet(np.full(A18, 0.3), size=T)  # float64, many tiny entries
    buf.add_fragment(1, np.zeros((T, *OBS)), rng.integers(0, A18, T), np.zeros(T), np.zeros(T), policies,
                     terminated=True, truncated=False)
    batch = buf.build_batch(np.arange(T - 2), num_unroll_steps=2, td_steps=1, discount=0.9, rng=rng)
    target = batch[TRAIN_TARGET_POLICY]  # (B, 3, A): positions t, t+1, t+2 all exist
    assert target.dtype == np.float32
    np.testing.assert_allclose(target.sum(-1), 1.0, rtol=1e-6)
    expected = np.stack([policies[k : k + 3] for k in range(T - 2)])
    np.testing.assert_allclose(target, expected, rtol=1e-3, atol=1e-7)


def test_generation_wraps_around_without_hitting_never_written():
    buf = make_buffer(4)
    add(buf, 1, episode(2, seed=0), terminated=True)  # slots 0, 1
    buf._generation[2] = np.iinfo(np.uint32).max  # as if slot 2 had been written 2^32 - 1 times
    add(buf, 2, episode(2, seed=1), terminated=True)  # slots 2, 3
    assert buf._generation[2] == 1 and buf._generation[3] == 1  # 0 means "never written": skipped
    batch = buf.sample(8, num_unroll_steps=1, td_steps=1, discount=0.9, rng=np.random.default_rng(0))
    assert batch[TRAIN_GENERATIONS].dtype == np.int64 and (batch[TRAIN_GENERATIONS] >= 1).all()
    buf.update_priorities(batch[TRAIN_INDICES], batch[TRAIN_GENERATIONS], np.full(8, 2.0))
    np.testing.assert_allclose(buf.priorities(np.unique(batch[TRAIN_INDICES])), 2.01)


def test_state_with_wide_legacy_dtypes_restores():
    # A checkpoint from before the compact layout (float32 policies, float64 priorities, int64 everything else).
    src = make_buffer(20)
    fill_for_checkpoint(src)
    legacy = src.get_state()
    for key in ("actions", "next_slot", "generation"):
        legacy[key] = legacy[key].astype(np.int64)
    legacy["search_policies"] = legacy["search_policies"].astype(np.float32)
    legacy["priorities"] = legacy["priorities"].astype(np.float64)
    dst = make_buffer(20)
    dst.set_state(legacy)
    for key, value in src.get_state().items():
        np.testing.assert_array_equal(dst.get_state()[key], value, err_msg=key)


def test_search_policies_must_be_distributions():
    buf = make_buffer(10)
    ep = episode(3, seed=0)
    for bad in (np.full((3, A), 2.0), np.full((3, A), -0.1), np.full((3, A), np.nan)):
        with pytest.raises(ValueError, match="search_policies"):
            add(buf, 1, ep | {"search_policies": bad})
    assert len(buf) == 0


# ---------------------------------------------------------------------------------------------------------------------
# Value reanalyse and the off-policy correction (EfficientZero)


def _value_of_obs(obs):
    """A stand-in target network: the value of o_t is 100 + its step index (obs[:, 0])."""
    return 100.0 + obs[:, 0]


@pytest.mark.parametrize("terminated", [True, False])
def test_value_fn_replaces_exactly_the_bootstrap_values(terminated):
    T, K, n, gamma = 12, 2, 3, 0.9
    buf = make_buffer()
    ep = episode(T, seed=1)
    buf.add_fragment(5, **ep, terminated=terminated, truncated=not terminated)
    calls = []

    def value_fn(obs):
        calls.append(len(obs))
        return _value_of_obs(obs)

    indices = np.arange(T)
    batch = buf.build_batch(indices, num_unroll_steps=K, td_steps=n, discount=gamma, rng=np.random.default_rng(0),
                            value_fn=value_fn)
    assert len(calls) == 1  # one batched call
    assert calls[0] == len(np.unique(np.minimum(np.arange(T)[:, None] + np.arange(K + 1) + n, T - 1)))  # distinct
    u = ep["rewards"].astype(np.float64)
    for t in range(T):
        for k in range(K + 1):
            s = t + k
            if s >= T:
                continue
            if s + n < T:  # the full n-step return, bootstrapped from the reanalysed value of o_{s+n}
                want = sum(gamma**i * u[s + i] for i in range(n)) + gamma**n * (100.0 + s + n)
            elif terminated:  # no bootstrap after a termination: value_fn's value must not leak in
                want = sum(gamma**i * u[s + i] for i in range(T - s))
            else:  # truncated: bootstrap from the last stored observation, reanalysed
                m = T - 1 - s
                want = sum(gamma**i * u[s + i] for i in range(m)) + gamma**m * (100.0 + T - 1)
            assert batch[TRAIN_TARGET_VALUE][t, k] == pytest.approx(want, rel=1e-5), (t, k)


def test_value_fn_of_the_wrong_shape_is_refused():
    buf = make_buffer()
    buf.add_fragment(5, **episode(10, seed=1), terminated=True, truncated=False)
    with pytest.raises(ValueError, match="value_fn"):
        buf.build_batch(np.arange(3), num_unroll_steps=1, td_steps=2, discount=0.9, rng=np.random.default_rng(0),
                        value_fn=lambda obs: np.zeros(1))


def test_ages_count_the_transitions_stored_after_each_slot():
    buf = make_buffer(capacity=8)
    buf.add_fragment(1, **episode(5, seed=1), terminated=True, truncated=False)
    np.testing.assert_array_equal(buf.ages(np.arange(5)), [4, 3, 2, 1, 0])
    buf.add_fragment(2, **episode(6, seed=2), terminated=True, truncated=False)  # wraps: slots 5, 6, 7, 0, 1, 2
    np.testing.assert_array_equal(buf.ages(np.array([2, 1, 0, 7, 6, 5, 4, 3])), np.arange(8))


def test_off_policy_correction_shortens_the_horizon_of_old_samples():
    T, n, gamma = 40, 5, 0.9
    buf = make_buffer()
    ep = episode(T, seed=3)
    ep["root_values"][:] = 0.0  # bootstraps contribute 0: the target is the reward sum alone
    buf.add_fragment(5, **ep, terminated=True, truncated=False)
    batch = buf.build_batch(np.arange(T), num_unroll_steps=0, td_steps=n, discount=gamma,
                            rng=np.random.default_rng(0), td_decay_age=4)
    u = ep["rewards"].astype(np.float64)
    for t in range(T - n):
        age = T - 1 - t
        horizon = int(np.clip(n - age // 4, 1, n))
        want = sum(gamma**i * u[t + i] for i in range(horizon))
        assert batch[TRAIN_TARGET_VALUE][t, 0] == pytest.approx(want, rel=1e-5), t
