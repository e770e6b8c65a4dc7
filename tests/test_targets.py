"""Unroll targets (rllib_muzero.targets): hand-computed n-step returns, index alignment, episode ends."""

from __future__ import annotations

import numpy as np
import pytest

from rllib_muzero.columns import (
    TRAIN_ACTIONS,
    TRAIN_POLICY_MASK,
    TRAIN_REWARD_MASK,
    TRAIN_TARGET_POLICY,
    TRAIN_TARGET_REWARD,
    TRAIN_TARGET_VALUE,
    TRAIN_VALUE_MASK,
)
from rllib_muzero.targets import chain_length, make_unroll_targets

A = 3


def episode_chains(rewards, values, t_list, *, K, n, garbage=np.nan):
    """Chains (as the replay would gather them) of an episode for the start positions ``t_list``."""
    T = len(rewards)
    L = chain_length(K, n)
    B = len(t_list)
    r = np.full((B, L), garbage)
    v = np.full((B, L), garbage)
    pi = np.full((B, L, A), garbage)
    a = np.full((B, L), 99, dtype=np.int64)  # out-of-range garbage past the data
    lengths = np.zeros(B, dtype=np.int64)
    policies = np.eye(A)[np.arange(T) % A] * 0.5 + 0.5 / A  # distinct, normalised per position
    for b, t in enumerate(t_list):
        ell = min(L, T - t)
        r[b, :ell] = rewards[t : t + ell]
        v[b, :ell] = values[t : t + ell]
        pi[b, :ell] = policies[t : t + ell]
        a[b, :ell] = (np.arange(t, t + ell) * 7) % A
        lengths[b] = ell
    return r, v, pi, a, lengths, policies


def run(rewards, values, t_list, *, terminated, K, n, discount, seed=0):
    r, v, pi, a, lengths, policies = episode_chains(
        np.asarray(rewards, float), np.asarray(values, float), t_list, K=K, n=n
    )
    # The episode end is right after the last chain position only if the chain reaches it.
    term = np.array([terminated and t + lengths[b] == len(rewards) for b, t in enumerate(t_list)])
    out = make_unroll_targets(
        r,
        v,
        pi,
        a,
        lengths,
        term,
        num_unroll_steps=K,
        td_steps=n,
        discount=discount,
        num_actions=A,
        rng=np.random.default_rng(seed),
    )
    return out, policies


def test_terminated_episode_hand_computed():
    # Positions 0..3; u_{t+1} (reward for a_t) stored at t: 1, 2, 3, 4; root values nu_t: 10, 20, 30, 40.
    # The episode terminates after position 3. gamma = 0.9, n = 2, K = 3.
    out, policies = run([1, 2, 3, 4], [10, 20, 30, 40], [0, 2], terminated=True, K=3, n=2, discount=0.9)
    # t = 0:
    #   z_0 = 1 + .9*2 + .81*nu_2(30) = 27.1      z_1 = 2 + .9*3 + .81*nu_3(40) = 37.1
    #   z_2 = 3 + .9*4 (episode over: no bootstrap) = 6.6      z_3 = 4
    # t = 2:
    #   z_2 = 6.6, z_3 = 4, then two absorbing steps: 0, 0 (trained).
    np.testing.assert_allclose(out[TRAIN_TARGET_VALUE], [[27.1, 37.1, 6.6, 4.0], [6.6, 4.0, 0.0, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(out[TRAIN_VALUE_MASK], [[1, 1, 1, 1], [1, 1, 1, 1]])
    # Reward at k is u_{t+k}, the reward for a_{t+k-1}; none at k = 0; past the end absorbing 0 (trained).
    np.testing.assert_allclose(out[TRAIN_TARGET_REWARD], [[0, 1, 2, 3], [0, 3, 4, 0]])
    np.testing.assert_array_equal(out[TRAIN_REWARD_MASK], [[0, 1, 1, 1], [0, 1, 1, 1]])
    # Policy: pi_{t+k} inside the episode, masked (uniform) past its end.
    np.testing.assert_array_equal(out[TRAIN_POLICY_MASK], [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_allclose(out[TRAIN_TARGET_POLICY][0], policies[0:4])
    np.testing.assert_allclose(out[TRAIN_TARGET_POLICY][1, :2], policies[2:4])
    np.testing.assert_allclose(out[TRAIN_TARGET_POLICY][1, 2:], np.full((2, A), 1 / A))
    # Actions a_t = 7t mod 3 inside, random in [0, A) past the end.
    np.testing.assert_array_equal(out[TRAIN_ACTIONS][0], [0, 1, 2])
    np.testing.assert_array_equal(out[TRAIN_ACTIONS][1, :2], [2, 0])
    assert 0 <= out[TRAIN_ACTIONS][1, 2] < A


def test_truncated_episode_hand_computed():
    # Positions 0..4; rewards 1..5, root values 10..50; TRUNCATED (time limit) after position 4.
    # gamma = 0.9, n = 3, K = 3.
    out, _ = run([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], [0, 3], terminated=False, K=3, n=3, discount=0.9)
    # t = 0:
    #   z_0 = 1 + .9*2 + .81*3 + .729*nu_3(40) = 34.39
    #   z_1 = 2 + .9*3 + .81*4 + .729*nu_4(50) = 44.39
    #   z_2: nu_5 does not exist, bootstrap from the last stored root value nu_4 (m = 2): 3 + .9*4 + .81*50 = 47.1
    #   z_3: m = 1: 4 + .9*50 = 49
    # t = 3:
    #   z_3 = 49, z_4 = nu_4 = 50 (m = 0), then unknown: masked.
    np.testing.assert_allclose(out[TRAIN_TARGET_VALUE], [[34.39, 44.39, 47.1, 49.0], [49.0, 50.0, 0, 0]], rtol=1e-6)
    np.testing.assert_array_equal(out[TRAIN_VALUE_MASK], [[1, 1, 1, 1], [1, 1, 0, 0]])
    # Reward of the last stored action (u_5 = 5, at k = 2 for t = 3) is known; beyond it nothing is.
    np.testing.assert_allclose(out[TRAIN_TARGET_REWARD], [[0, 1, 2, 3], [0, 4, 5, 0]])
    np.testing.assert_array_equal(out[TRAIN_REWARD_MASK], [[0, 1, 1, 1], [0, 1, 1, 0]])
    np.testing.assert_array_equal(out[TRAIN_POLICY_MASK], [[1, 1, 1, 1], [1, 1, 0, 0]])


def test_reward_index_alignment():
    # Reward target at step k must be the reward for the action at t+k-1, i.e. the reward stored at t+k-1.
    rewards = np.arange(100, 112, dtype=float)  # reward stored at position p is 100 + p
    out, _ = run(rewards, np.zeros(12), [0, 3, 5], terminated=False, K=4, n=2, discount=0.5)
    for b, t in enumerate([0, 3, 5]):
        for k in range(1, 5):
            assert out[TRAIN_TARGET_REWARD][b, k] == 100 + t + k - 1
    assert (out[TRAIN_TARGET_REWARD][:, 0] == 0).all() and (out[TRAIN_REWARD_MASK][:, 0] == 0).all()


def test_absorbing_targets_past_termination():
    out, _ = run([5.0, 6.0], [1.0, 2.0], [1], terminated=True, K=4, n=3, discount=0.9)
    # t = 1 is the last step: z_1 = 6, then absorbing.
    np.testing.assert_allclose(out[TRAIN_TARGET_VALUE], [[6, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out[TRAIN_VALUE_MASK], [[1, 1, 1, 1, 1]])
    np.testing.assert_allclose(out[TRAIN_TARGET_REWARD], [[0, 6, 0, 0, 0]])
    np.testing.assert_array_equal(out[TRAIN_REWARD_MASK], [[0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out[TRAIN_POLICY_MASK], [[1, 0, 0, 0, 0]])
    np.testing.assert_allclose(out[TRAIN_TARGET_POLICY][0, 1:], 1 / A)
    assert out[TRAIN_ACTIONS].dtype == np.int64
    assert ((out[TRAIN_ACTIONS][0, 1:] >= 0) & (out[TRAIN_ACTIONS][0, 1:] < A)).all()


def test_masks_past_truncation():
    out, _ = run([5.0, 6.0], [1.0, 2.0], [1], terminated=False, K=4, n=3, discount=0.9)
    np.testing.assert_allclose(out[TRAIN_TARGET_VALUE], [[2, 0, 0, 0, 0]])  # m = 0: nu_1 itself
    np.testing.assert_array_equal(out[TRAIN_VALUE_MASK], [[1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out[TRAIN_REWARD_MASK], [[0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(out[TRAIN_POLICY_MASK], [[1, 0, 0, 0, 0]])
    assert np.isfinite(out[TRAIN_TARGET_VALUE]).all() and np.isfinite(out[TRAIN_TARGET_POLICY]).all()


def test_td_steps_longer_than_episode():
    # 3 steps, n = 10: a terminated episode gives the Monte-Carlo return, a truncated one bootstraps from nu_2.
    g = 0.9
    out, _ = run([1, 2, 3], [10, 20, 30], [0], terminated=True, K=2, n=10, discount=g)
    np.testing.assert_allclose(out[TRAIN_TARGET_VALUE], [[1 + g * 2 + g**2 * 3, 2 + g * 3, 3]], rtol=1e-6)
    out, _ = run([1, 2, 3], [10, 20, 30], [0], terminated=False, K=2, n=10, discount=g)
    np.testing.assert_allclose(out[TRAIN_TARGET_VALUE], [[1 + g * 2 + g**2 * 30, 2 + g * 30, 30]], rtol=1e-6)


def reference_targets(rewards, values, t, *, terminated, K, n, g):
    """Slow, loop-by-loop statement of the rules (pseudocode make_target + truncation bootstrap)."""
    T = len(rewards)
    z, zm, r, rm, pm = [], [], [], [], []
    for k in range(K + 1):
        p = t + k
        if p < T:
            if p + n < T:
                m, boot = n, values[p + n]
            elif terminated:
                m, boot = T - p, 0.0
            else:
                m, boot = T - 1 - p, values[T - 1]
            z.append(sum(g**i * rewards[p + i] for i in range(m)) + g**m * boot)
            zm.append(1)
            pm.append(1)
        else:
            z.append(0.0)
            zm.append(1 if terminated else 0)
            pm.append(0)
        if k == 0:
            r.append(0.0)
            rm.append(0)
        elif p - 1 < T:
            r.append(rewards[p - 1])
            rm.append(1)
        else:
            r.append(0.0)
            rm.append(1 if terminated else 0)
    return z, zm, r, rm, pm


@pytest.mark.parametrize("terminated", [True, False])
@pytest.mark.parametrize(("K", "n", "g"), [(5, 10, 0.997), (3, 1, 0.0), (2, 300, 0.95), (0, 4, 1.0)])
def test_matches_loop_reference(terminated, K, n, g):
    rng = np.random.default_rng(1)
    T = 40
    rewards, values = rng.normal(size=T), rng.normal(size=T) * 5
    ts = list(range(T))
    out, _ = run(rewards, values, ts, terminated=terminated, K=K, n=n, discount=g)
    for b, t in enumerate(ts):
        z, zm, r, rm, pm = reference_targets(rewards, values, t, terminated=terminated, K=K, n=n, g=g)
        np.testing.assert_allclose(out[TRAIN_TARGET_VALUE][b], z, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out[TRAIN_VALUE_MASK][b], zm)
        np.testing.assert_allclose(out[TRAIN_TARGET_REWARD][b], r, rtol=1e-6)
        np.testing.assert_array_equal(out[TRAIN_REWARD_MASK][b], rm)
        np.testing.assert_array_equal(out[TRAIN_POLICY_MASK][b], pm)


def test_output_shapes_and_dtypes():
    out, _ = run(np.ones(6), np.ones(6), [0, 1, 5], terminated=True, K=4, n=2, discount=0.9)
    assert out[TRAIN_ACTIONS].shape == (3, 4) and out[TRAIN_ACTIONS].dtype == np.int64
    for key in (TRAIN_TARGET_VALUE, TRAIN_TARGET_REWARD, TRAIN_VALUE_MASK, TRAIN_REWARD_MASK, TRAIN_POLICY_MASK):
        assert out[key].shape == (3, 5) and out[key].dtype == np.float32, key
    assert out[TRAIN_TARGET_POLICY].shape == (3, 5, A) and out[TRAIN_TARGET_POLICY].dtype == np.float32
    np.testing.assert_allclose(out[TRAIN_TARGET_POLICY].sum(-1), 1.0, rtol=1e-6)


def test_random_actions_come_from_rng():
    a1 = run([1.0], [1.0], [0], terminated=True, K=50, n=1, discount=0.9, seed=3)[0][TRAIN_ACTIONS]
    a2 = run([1.0], [1.0], [0], terminated=True, K=50, n=1, discount=0.9, seed=3)[0][TRAIN_ACTIONS]
    a3 = run([1.0], [1.0], [0], terminated=True, K=50, n=1, discount=0.9, seed=4)[0][TRAIN_ACTIONS]
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)
    assert set(a1[0, 1:].tolist()) == set(range(A))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_unroll_steps": -1}, "num_unroll_steps"),
        ({"td_steps": -1}, "td_steps"),
        ({"discount": 1.5}, "discount"),
        ({"lengths": 0}, "lengths_B"),
    ],
)
def test_bad_arguments(kwargs, match):
    K, n = 2, 2
    L = chain_length(K, n)
    args = {"num_unroll_steps": K, "td_steps": n, "discount": 0.9}
    lengths = np.full(2, kwargs.pop("lengths", 1))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_unroll_targets(
            np.zeros((2, L)),
            np.zeros((2, L)),
            np.full((2, L, A), 1 / A),
            np.zeros((2, L), int),
            lengths,
            np.zeros(2, bool),
            num_actions=A,
            rng=np.random.default_rng(0),
            **args,
        )


def test_off_policy_td_steps_follow_efficientzero():
    from rllib_muzero.targets import off_policy_td_steps

    np.testing.assert_array_equal(off_policy_td_steps(5, np.array([0, 9, 10, 25, 1000]), 10), [5, 5, 4, 3, 1])
    np.testing.assert_array_equal(off_policy_td_steps(5, np.array([0, 1000]), None), [5, 5])


def test_per_sample_td_steps_equal_separate_batches():
    """A batch with per-sample horizons n_b gives each row the targets of a batch built with td_steps = n_b."""
    rng = np.random.default_rng(0)
    K, n, B, A = 2, 4, 6, 3
    L = chain_length(K, n)
    rewards = rng.normal(size=(B, L))
    values = rng.normal(size=(B, L))
    policies = rng.dirichlet(np.ones(A), size=(B, L))
    actions = rng.integers(0, A, size=(B, L))
    lengths = np.array([L, L, 3, 5, L, 1])
    terminated = np.array([False, True, True, False, False, True])
    n_B = np.array([1, 2, 4, 3, 4, 1])
    mixed = make_unroll_targets(rewards, values, policies, actions, lengths, terminated, num_unroll_steps=K,
                                td_steps=n, discount=0.9, num_actions=A, rng=np.random.default_rng(1), td_steps_B=n_B)
    for b in range(B):
        single = make_unroll_targets(rewards[b:b + 1], values[b:b + 1], policies[b:b + 1], actions[b:b + 1],
                                     np.minimum(lengths[b:b + 1], chain_length(K, n_B[b])), terminated[b:b + 1],
                                     num_unroll_steps=K, td_steps=int(n_B[b]), discount=0.9, num_actions=A,
                                     rng=np.random.default_rng(1))
        np.testing.assert_allclose(mixed[TRAIN_TARGET_VALUE][b], single[TRAIN_TARGET_VALUE][0], rtol=1e-6)
        np.testing.assert_array_equal(mixed[TRAIN_VALUE_MASK][b], single[TRAIN_VALUE_MASK][0])
