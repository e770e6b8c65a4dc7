"""EfficientZero's temporal consistency loss: the heads, the stop-gradient, the masks, the replay's unroll observations
and the policy's training of the heads."""

import numpy as np
import pytest
import torch

from rllib_muzero.columns import TRAIN_OBS, TRAIN_UNROLL_OBS, TRAIN_UNROLL_OBS_MASK
from rllib_muzero.consistency import ConsistencyHeads, negative_cosine_similarity, unroll_target_hidden
from rllib_muzero.replay import SequenceReplayBuffer
from tests.test_losses import fc_model, loss, make_batch


def test_negative_cosine_similarity_by_hand():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    y = torch.tensor([[3.0, 0.0], [-1.0, -1.0], [0.0, 5.0]])
    np.testing.assert_allclose(negative_cosine_similarity(x, y).numpy(), [-1.0, 1.0, 0.0], atol=1e-6)


def test_target_branch_gets_no_gradient_and_the_online_branch_does():
    torch.manual_seed(0)
    heads = ConsistencyHeads((8,), projection_size=16)
    predicted = torch.randn(5, 8, requires_grad=True)
    target = torch.randn(5, 8, requires_grad=True)
    heads.loss(predicted, target).sum().backward()
    assert target.grad is None  # stop-gradient: sg[P(h(o_{t+k}))]
    assert predicted.grad is not None and predicted.grad.abs().sum() > 0
    assert all(p.grad is not None for p in heads.prediction.parameters())


def test_heads_flatten_image_hidden_states():
    heads = ConsistencyHeads((4, 3, 3), projection_size=8)
    assert heads.online(torch.rand(2, 4, 3, 3)).shape == (2, 8)
    with pytest.raises(ValueError, match="projection_size"):
        ConsistencyHeads((4,), projection_size=2)


def _consistency_batch(B=4, K=3, obs_dim=6, seed=0):
    batch = make_batch(B=B, K=K, obs_dim=obs_dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    batch[TRAIN_UNROLL_OBS] = torch.as_tensor(rng.normal(size=(B, K, obs_dim)).astype(np.float32))
    batch[TRAIN_UNROLL_OBS_MASK] = torch.ones(B, K)
    return batch


def test_the_loss_adds_the_masked_consistency_term_at_each_recurrent_step():
    model, batch = fc_model(), _consistency_batch()
    torch.manual_seed(1)
    heads = ConsistencyHeads((16,), projection_size=16)
    heads.eval()  # deterministic BatchNorm, so the hand computation below sees the same heads
    base = loss(model, batch)
    with_c = loss(model, batch, consistency_heads=heads, consistency_loss_weight=2.0)
    # By hand: unroll the network along the batch's actions, compare with h(o_{t+k}).
    with torch.no_grad():
        hidden = model.initial_inference(batch[TRAIN_OBS]).hidden
        target = unroll_target_hidden(model, batch[TRAIN_UNROLL_OBS])
        terms = []
        for k in range(1, 4):
            hidden = model.recurrent_inference(hidden, batch["actions"][:, k - 1]).hidden
            terms.append(heads.loss(hidden, target[:, k - 1]))
        per_sample = torch.stack(terms, 1).sum(1)
    assert float(with_c.consistency_loss) == pytest.approx(float(per_sample.mean()), rel=1e-5)
    # In the total, with weight 2 (the 1/K scaling changes gradients only, not the value).
    difference = float((with_c.total - base.total).detach())
    assert difference == pytest.approx(2.0 * float(per_sample.mean()), rel=1e-4, abs=1e-6)
    assert float(base.consistency_loss) == 0.0

    # A zero mask removes that step's term.
    batch[TRAIN_UNROLL_OBS_MASK][:, 1:] = 0.0
    masked = loss(model, batch, consistency_heads=heads, consistency_loss_weight=2.0)
    assert float(masked.consistency_loss) == pytest.approx(float(terms[0].mean()), rel=1e-5)


def test_the_loss_asks_for_the_unroll_observations():
    model, batch = fc_model(), make_batch()
    with pytest.raises(ValueError, match=TRAIN_UNROLL_OBS):
        loss(model, batch, consistency_heads=ConsistencyHeads((16,), 16), consistency_loss_weight=1.0)
    with pytest.raises(ValueError, match="consistency_loss_weight"):
        loss(model, batch, consistency_heads=ConsistencyHeads((16,), 16), consistency_loss_weight=-1.0)


def test_consistency_gradient_reaches_dynamics_and_representation():
    model, batch = fc_model(), _consistency_batch()
    heads = ConsistencyHeads((16,), projection_size=16)
    out = loss(model, batch, consistency_heads=heads, consistency_loss_weight=1.0, value_loss_weight=0.0,
               reward_loss_weight=0.0, policy_loss_weight=0.0)
    out.total.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "dynamics" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "representation" in n)


def test_replay_returns_the_next_observations_with_their_mask():
    buf = SequenceReplayBuffer(64, (2,), np.float32, 2)
    T = 6
    obs = np.stack([np.arange(T), np.zeros(T)], 1).astype(np.float32)
    buf.add_fragment(1, obs, np.zeros(T, int), np.ones(T), np.zeros(T), np.full((T, 2), 0.5), terminated=True,
                     truncated=False)
    batch = buf.build_batch(np.array([0, 4]), num_unroll_steps=3, td_steps=2, discount=0.9,
                            rng=np.random.default_rng(0), with_unroll_obs=True)
    np.testing.assert_array_equal(batch[TRAIN_UNROLL_OBS][0, :, 0], [1, 2, 3])
    np.testing.assert_array_equal(batch[TRAIN_UNROLL_OBS_MASK], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(batch[TRAIN_UNROLL_OBS][1, 0, 0], 5)
    plain = buf.build_batch(np.array([0]), num_unroll_steps=3, td_steps=2, discount=0.9, rng=np.random.default_rng(0))
    assert TRAIN_UNROLL_OBS not in plain


@pytest.mark.integration
def test_policy_trains_the_heads_and_keeps_them_in_its_state(ray_session):
    from tests.test_algorithm import tiny_config

    algo = tiny_config(consistency_loss_weight=2.0, consistency_projection_size=8).build_algo()
    try:
        policy = algo.get_policy()
        heads = policy.consistency_heads
        assert heads is not None
        before = [p.detach().clone() for p in heads.parameters()]
        for _ in range(3):
            result = algo.train()
        stats = result["info"]["learner"]["default_policy"]["learner_stats"]
        assert stats["consistency_loss"] != 0.0 and -3.0 <= stats["consistency_loss"] <= 3.0  # K=3 steps in [-1, 1]
        assert any(not torch.equal(b, p) for b, p in zip(before, heads.parameters()))
        state = policy.get_state()
        saved = state["muzero"]["consistency_heads"]
        with torch.no_grad():
            for p in heads.parameters():
                p.add_(1.0)
        policy.set_state(state)
        for name, value in heads.state_dict().items():
            assert torch.equal(value, saved[name]), name
        # Acting never touches the heads, and the network's weights (what runners and serving get) exclude them.
        assert not any(key.startswith("consistency") for key in policy.get_weights())
    finally:
        algo.stop()
