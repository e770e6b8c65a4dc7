"""Policy reanalyse: which rows and positions get fresh policy targets, in one batched search."""

import numpy as np
import pytest

from rllib_muzero.columns import TRAIN_OBS, TRAIN_POLICY_MASK, TRAIN_TARGET_POLICY, TRAIN_UNROLL_OBS
from rllib_muzero.reanalyse import reanalyse_policy_targets

B, K, A = 8, 3, 2


def make_batch():
    obs = np.arange(B, dtype=np.float32)[:, None] * 10  # o_t = 10 b; o_{t+k} = 10 b + k
    unroll = obs[:, None, :] + np.arange(1, K + 1, dtype=np.float32)[None, :, None]
    mask = np.ones((B, K + 1), np.float32)
    mask[0, 2:] = 0.0  # the episode of row 0 ends after o_{t+1}
    return {
        TRAIN_OBS: obs,
        TRAIN_UNROLL_OBS: unroll,
        TRAIN_TARGET_POLICY: np.full((B, K + 1, A), 0.5, np.float32),
        TRAIN_POLICY_MASK: mask,
    }


def fake_search(calls):
    def search_fn(obs):
        calls.append(obs.copy())
        p = (obs[:, 0] % 10) / 10.0  # encodes k, so each position's target is recognisable
        return np.stack([p, 1.0 - p], 1)

    return search_fn


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_a_random_share_of_rows_gets_fresh_targets_at_every_stored_position(fraction):
    batch, calls = make_batch(), []
    searched = reanalyse_policy_targets(batch, fake_search(calls), fraction, np.random.default_rng(0))
    assert len(calls) == 1  # one batched search
    policy = batch[TRAIN_TARGET_POLICY]
    fresh_rows = [b for b in range(B) if not np.allclose(policy[b, 1], 0.5)]
    assert len(fresh_rows) == round(fraction * B)
    for b in range(B):
        for k in range(K + 1):
            stored = b not in fresh_rows or batch[TRAIN_POLICY_MASK][b, k] == 0
            want = [0.5, 0.5] if stored else [k / 10.0, 1 - k / 10.0]
            np.testing.assert_allclose(policy[b, k], want, err_msg=f"row {b} step {k}")
    assert searched == sum(int(batch[TRAIN_POLICY_MASK][b].sum()) for b in fresh_rows)


def test_fraction_zero_searches_nothing_and_bad_inputs_are_refused():
    batch, calls = make_batch(), []
    assert reanalyse_policy_targets(batch, fake_search(calls), 0.0, np.random.default_rng(0)) == 0
    assert not calls
    with pytest.raises(ValueError, match="fraction"):
        reanalyse_policy_targets(batch, fake_search(calls), 1.5, np.random.default_rng(0))
    del batch[TRAIN_UNROLL_OBS]
    with pytest.raises(ValueError, match=TRAIN_UNROLL_OBS):
        reanalyse_policy_targets(batch, fake_search(calls), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="search_fn"):
        reanalyse_policy_targets(make_batch(), lambda obs: np.zeros((1, A)), 0.5, np.random.default_rng(0))


@pytest.mark.integration
def test_learner_reanalyses_policies_with_the_target_network(ray_session):
    from tests.test_algorithm import tiny_config

    algo = tiny_config(reanalyse_policy_fraction=0.5, training_intensity=4.0).build_algo()
    try:
        policy = algo.get_policy()
        sizes = []
        original = policy.reanalyse_policies

        def spy(obs):
            out = original(obs)
            sizes.append(len(obs))
            assert out.shape == (len(obs), 2) and np.allclose(out.sum(1), 1.0)
            return out

        policy.reanalyse_policies = spy
        for _ in range(4):
            algo.train()
        assert sizes and max(sizes) <= 8 * 4  # half of 16 rows, K + 1 = 4 positions each
        assert policy._reanalyse_rng is not None and policy._target_model is not None
        assert policy._reanalyse_rng is not policy.rng  # reanalyse noise never shifts the acting noise stream
    finally:
        algo.stop()
