"""The MuZero loss (paper eq. (1)), its gradient scalings, masks, importance weights and priorities."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rllib_muzero.columns import (
    TRAIN_ACTIONS,
    TRAIN_OBS,
    TRAIN_POLICY_MASK,
    TRAIN_REWARD_MASK,
    TRAIN_TARGET_POLICY,
    TRAIN_TARGET_REWARD,
    TRAIN_TARGET_VALUE,
    TRAIN_VALUE_MASK,
    TRAIN_WEIGHTS,
)
from rllib_muzero.losses import LossOutput, muzero_loss, scale_gradient
from rllib_muzero.models import FullyConnectedMuZeroModel, NetworkOutput
from rllib_muzero.support import DiscreteSupport, h, h_inverse, scalar_to_support

VALUE_SUPPORT = DiscreteSupport(-10, 10)
REWARD_SUPPORT = DiscreteSupport(-5, 5)
A = 3


def make_batch(B=4, K=3, obs_dim=6, seed=0):
    rng = np.random.default_rng(seed)
    policy = rng.dirichlet(np.ones(A), size=(B, K + 1)).astype(np.float32)
    reward_mask = np.ones((B, K + 1), np.float32)
    reward_mask[:, 0] = 0.0
    batch = {
        TRAIN_OBS: rng.normal(size=(B, obs_dim)).astype(np.float32),
        TRAIN_ACTIONS: rng.integers(0, A, size=(B, K)),
        TRAIN_TARGET_VALUE: rng.uniform(-20.0, 20.0, size=(B, K + 1)).astype(np.float32),
        TRAIN_TARGET_REWARD: rng.uniform(-3.0, 3.0, size=(B, K + 1)).astype(np.float32),
        TRAIN_TARGET_POLICY: policy,
        TRAIN_VALUE_MASK: np.ones((B, K + 1), np.float32),
        TRAIN_REWARD_MASK: reward_mask,
        TRAIN_POLICY_MASK: np.ones((B, K + 1), np.float32),
        TRAIN_WEIGHTS: np.ones(B, np.float32),
    }
    return {key: torch.as_tensor(value) for key, value in batch.items()}


def fc_model(seed=0, obs_dim=6):
    torch.manual_seed(seed)
    return FullyConnectedMuZeroModel(
        gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        gym.spaces.Discrete(A),
        A,
        {"custom_model_config": {"hidden_size": 16, "representation_layers": [32], "dynamics_layers": [32]}},
        "loss_test",
        value_support_size=VALUE_SUPPORT.size,
        reward_support_size=REWARD_SUPPORT.size,
    )


def loss(model, batch, **kwargs):
    kwargs.setdefault("value_support", VALUE_SUPPORT)
    kwargs.setdefault("reward_support", REWARD_SUPPORT)
    return muzero_loss(model, batch, **kwargs)


class ToyModel(nn.Module):
    """A 1-D hidden state with additive dynamics, so every gradient path can be written down by hand.

    s^0 = w_r * obs,  s^k = s^{k-1} + b_d + e[a],  logits = s * slope + bias for each head.
    """

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w_r = nn.Parameter(torch.tensor(0.7))
        self.b_d = nn.Parameter(torch.tensor(0.3))
        self.register_buffer("action_effect", torch.tensor([0.0, 0.5, -0.5]))
        self.v_slope = nn.Parameter(torch.randn(VALUE_SUPPORT.size, generator=g))
        self.v_bias = nn.Parameter(torch.randn(VALUE_SUPPORT.size, generator=g))
        self.r_slope = nn.Parameter(torch.randn(REWARD_SUPPORT.size, generator=g))
        self.r_bias = nn.Parameter(torch.randn(REWARD_SUPPORT.size, generator=g))
        self.p_slope = nn.Parameter(torch.randn(A, generator=g))
        self.p_bias = nn.Parameter(torch.randn(A, generator=g))

    def prediction(self, s):
        return s * self.p_slope + self.p_bias, s * self.v_slope + self.v_bias

    def reward(self, s):
        return s * self.r_slope + self.r_bias

    def initial_inference(self, obs):
        s = self.w_r * obs[:, :1]  # (B, 1)
        policy_logits, value_logits = self.prediction(s)
        return NetworkOutput(s, None, policy_logits, value_logits)

    def recurrent_inference(self, s, action):
        s = s + self.b_d + self.action_effect[action].unsqueeze(-1)
        policy_logits, value_logits = self.prediction(s)
        return NetworkOutput(s, self.reward(s), policy_logits, value_logits)


def cross_entropy(logits, probs):
    return -(probs * torch.log_softmax(logits, -1)).sum(-1)


def toy_step_loss(model, s, k, batch):
    """Unscaled loss of unroll step k as a function of its hidden state s^k, mean over the batch (eq. (1) term)."""
    policy_logits, value_logits = model.prediction(s)
    z = scalar_to_support(h(batch[TRAIN_TARGET_VALUE][:, k]), VALUE_SUPPORT)
    step = cross_entropy(value_logits, z) + cross_entropy(policy_logits, batch[TRAIN_TARGET_POLICY][:, k])
    if k > 0:
        u = scalar_to_support(h(batch[TRAIN_TARGET_REWARD][:, k]), REWARD_SUPPORT)
        step = step + cross_entropy(model.reward(s), u)
    return step.mean()


def toy_hidden_states(model, batch):
    """s^0..s^K without any gradient scaling, detached."""
    with torch.no_grad():
        s = [model.w_r * batch[TRAIN_OBS][:, :1]]
        for k in range(batch[TRAIN_ACTIONS].shape[1]):
            s.append(s[-1] + model.b_d + model.action_effect[batch[TRAIN_ACTIONS][:, k]].unsqueeze(-1))
    return s


# ---- scale_gradient --------------------------------------------------------------------------------------------------


def test_scale_gradient_keeps_value_and_scales_gradient():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = scale_gradient(x, 0.25)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.5, 0.75]))


# ---- hand-checked values ---------------------------------------------------------------------------------------------


def test_uniform_predictions_give_log_support_sizes():
    # Zero-initialised heads predict uniform distributions: every cross-entropy is log(#atoms), whatever the target.
    B, K = 4, 3
    batch = make_batch(B, K)
    batch[TRAIN_VALUE_MASK][0, 1:] = 0.0  # sample 0: value trained only at k = 0
    batch[TRAIN_POLICY_MASK][1, 2:] = 0.0  # sample 1: policy trained at k = 0, 1
    batch[TRAIN_REWARD_MASK][2, 3] = 0.0  # sample 2: reward at k = 1, 2
    out = loss(fc_model(), batch)
    n_value = (1 + 4 + 4 + 4) / B
    n_reward = (3 + 3 + 2 + 3) / B
    n_policy = (4 + 2 + 4 + 4) / B
    assert isinstance(out, LossOutput)
    torch.testing.assert_close(out.value_loss, torch.tensor(n_value * math.log(21)))
    torch.testing.assert_close(out.reward_loss, torch.tensor(n_reward * math.log(11)))
    torch.testing.assert_close(out.policy_loss, torch.tensor(n_policy * math.log(3)))
    # The gradient scalings leave the value of the loss unchanged: total = sum of the components (weights 1).
    torch.testing.assert_close(out.total, out.value_loss + out.reward_loss + out.policy_loss)


class _FixedLogits(nn.Module):
    """K = 0 model with given logits (no recurrent step)."""

    def __init__(self, value_probs, policy_probs):
        super().__init__()
        self.value_logits = nn.Parameter(torch.log(torch.tensor(value_probs)))
        self.policy_logits = nn.Parameter(torch.log(torch.tensor(policy_probs)))

    def initial_inference(self, obs):
        B = obs.shape[0]
        return NetworkOutput(obs, None, self.policy_logits.expand(B, -1), self.value_logits.expand(B, -1))


def _single_step_batch(target_value, target_policy):
    return {
        TRAIN_OBS: torch.zeros(1, 2),
        TRAIN_ACTIONS: torch.zeros(1, 0, dtype=torch.long),
        TRAIN_TARGET_VALUE: torch.tensor([[target_value]]),
        TRAIN_TARGET_REWARD: torch.tensor([[123.0]]),
        TRAIN_TARGET_POLICY: torch.tensor([[target_policy]]),
        TRAIN_VALUE_MASK: torch.ones(1, 1),
        TRAIN_REWARD_MASK: torch.ones(1, 1),  # even if set, k = 0 has no reward loss
        TRAIN_POLICY_MASK: torch.ones(1, 1),
        TRAIN_WEIGHTS: torch.ones(1),
    }


def test_hand_checked_cross_entropies_without_transform():
    support = DiscreteSupport(-2, 2)
    model = _FixedLogits([0.1, 0.2, 0.4, 0.2, 0.1], [0.5, 0.25, 0.25])
    batch = _single_step_batch(0.5, [0.0, 1.0, 0.0])  # two-hot: 0.5 on atom 0, 0.5 on atom 1
    out = muzero_loss(model, batch, value_support=support, reward_support=support, use_target_transform=False)
    expected_value = -(0.5 * math.log(0.4) + 0.5 * math.log(0.2))
    torch.testing.assert_close(out.value_loss, torch.tensor(expected_value))
    torch.testing.assert_close(out.policy_loss, torch.tensor(math.log(4.0)))
    assert out.reward_loss == 0.0
    torch.testing.assert_close(out.total, torch.tensor(expected_value + math.log(4.0)))
    # predicted value in raw scale: sum p_i * atom_i = 0 for this symmetric distribution.
    torch.testing.assert_close(out.priorities, torch.tensor([0.5]))


def test_hand_checked_value_cross_entropy_with_transform():
    support = DiscreteSupport(-3, 3)
    model = _FixedLogits([0.1, 0.1, 0.1, 0.1, 0.3, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3])
    batch = _single_step_batch(8.0, [1.0, 0.0, 0.0])  # h(8) = 2.008: 0.992 on atom 2, 0.008 on atom 3
    out = muzero_loss(model, batch, value_support=support, reward_support=support)
    expected_value = -(0.992 * math.log(0.2) + 0.008 * math.log(0.1))
    torch.testing.assert_close(out.value_loss, torch.tensor(expected_value))


# ---- masks, weights, loss weights ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask_key", "component"),
    [(TRAIN_VALUE_MASK, "value_loss"), (TRAIN_REWARD_MASK, "reward_loss"), (TRAIN_POLICY_MASK, "policy_loss")],
)
def test_zero_mask_zeroes_that_component_and_its_gradient(mask_key, component):
    model = ToyModel()
    batch = make_batch()
    batch[mask_key].zero_()
    out = loss(model, batch)
    assert getattr(out, component) == 0.0
    for other in {"value_loss", "reward_loss", "policy_loss"} - {component}:
        assert getattr(out, other) > 0.0
    out.total.backward()
    head = {"value_loss": model.v_bias, "reward_loss": model.r_bias, "policy_loss": model.p_bias}[component]
    assert torch.all(head.grad == 0.0)


def test_masked_targets_may_be_nan():
    model = ToyModel()
    batch = make_batch()
    reference = loss(model, batch)
    batch[TRAIN_VALUE_MASK][1, 2:] = 0.0
    batch[TRAIN_REWARD_MASK][1, 2:] = 0.0
    batch[TRAIN_POLICY_MASK][1, 2:] = 0.0
    masked = loss(model, batch)
    batch[TRAIN_TARGET_VALUE][1, 2:] = float("nan")
    batch[TRAIN_TARGET_REWARD][1, 2:] = float("nan")
    batch[TRAIN_TARGET_POLICY][1, 2:] = float("nan")
    out = loss(model, batch)
    torch.testing.assert_close(out.total, masked.total)
    assert out.total < reference.total
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_reward_at_k0_is_never_trained():
    model = ToyModel()
    batch = make_batch()
    reference = loss(model, batch)
    batch[TRAIN_REWARD_MASK][:, 0] = 1.0
    batch[TRAIN_TARGET_REWARD][:, 0] = 1e4
    out = loss(model, batch)
    torch.testing.assert_close(out.total, reference.total)
    torch.testing.assert_close(out.reward_loss, reference.reward_loss)


def test_importance_weights_multiply_the_per_sample_loss():
    model = ToyModel()
    batch = make_batch(B=4)
    base = loss(model, batch).total
    batch[TRAIN_WEIGHTS] = torch.full((4,), 2.0)
    torch.testing.assert_close(loss(model, batch).total, 2.0 * base)

    per_sample = []
    for i in range(4):
        single = {key: value[i : i + 1] for key, value in make_batch(B=4).items()}
        per_sample.append(loss(model, single).total)
    batch[TRAIN_WEIGHTS] = torch.tensor([1.0, 0.0, 0.5, 0.0])
    expected = (per_sample[0] + 0.5 * per_sample[2]) / 4
    torch.testing.assert_close(loss(model, batch).total, expected)
    # The reported components stay unweighted.
    torch.testing.assert_close(loss(model, batch).value_loss, loss(model, make_batch(B=4)).value_loss)


def test_loss_weights_scale_their_components_in_the_total():
    model = ToyModel()
    batch = make_batch()
    out = loss(model, batch)
    weighted = loss(model, batch, value_loss_weight=0.25, reward_loss_weight=2.0, policy_loss_weight=0.0)
    expected = 0.25 * out.value_loss + 2.0 * out.reward_loss
    torch.testing.assert_close(weighted.total, expected)
    torch.testing.assert_close(weighted.value_loss, out.value_loss)


# ---- gradient scalings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [1, 2, 4])
def test_recurrent_step_losses_get_one_over_K_of_the_gradient(K):
    # The value bias enters every step's value logits directly (not through the hidden state), so its gradient is
    # dl_0/db + (1/K) sum_{k>=1} dl_k/db, with no hidden-state scaling involved.
    model = ToyModel()
    batch = make_batch(B=3, K=K)
    out = loss(model, batch)
    (grad,) = torch.autograd.grad(out.total, model.v_bias)

    s = toy_hidden_states(model, batch)
    step_grads = [torch.autograd.grad(toy_step_loss(model, s[k], k, batch), model.v_bias)[0] for k in range(K + 1)]
    expected = step_grads[0] + sum(step_grads[1:]) / K
    torch.testing.assert_close(grad, expected)
    if K > 1:
        assert not torch.allclose(grad, sum(step_grads))  # the unscaled sum is different


def test_hidden_state_gradient_is_halved_at_the_start_of_each_dynamics_step():
    # With additive dynamics ds^k/ds^{k-1} = 1 and ds^k/db_d = 1 (per step), so by hand:
    #   dL/dw_r = sum_k c_k 0.5^k <dl_k/ds^k, obs>,           c_0 = 1, c_k = 1/K
    #   dL/db_d = sum_{k>=1} (1/K) sum_{j=1..k} 0.5^(k-j) sum_b dl_k/ds^k_b
    # (0.5^k for w_r: the representation's output passes k scalings, one at the start of each dynamics step).
    K = 3
    model = ToyModel()
    batch = make_batch(B=5, K=K)
    out = loss(model, batch)
    grad_w_r, grad_b_d = torch.autograd.grad(out.total, [model.w_r, model.b_d])

    s = toy_hidden_states(model, batch)
    obs = batch[TRAIN_OBS][:, :1]
    expected_w_r = torch.tensor(0.0)
    expected_b_d = torch.tensor(0.0)
    for k in range(K + 1):
        leaf = s[k].clone().requires_grad_(True)
        (g_k,) = torch.autograd.grad(toy_step_loss(model, leaf, k, batch), leaf)  # (B, 1)
        c_k = 1.0 if k == 0 else 1.0 / K
        expected_w_r = expected_w_r + c_k * 0.5**k * (g_k * obs).sum()
        if k > 0:
            expected_b_d = expected_b_d + c_k * sum(0.5 ** (k - j) for j in range(1, k + 1)) * g_k.sum()
    torch.testing.assert_close(grad_w_r, expected_w_r)
    torch.testing.assert_close(grad_b_d, expected_b_d)


# ---- priorities ------------------------------------------------------------------------------------------------------


class _ValueFromObs(nn.Module):
    """Predicts (almost exactly) the value obs[:, 0] at the root, in the transformed or raw scale."""

    def __init__(self, transform):
        super().__init__()
        self.transform = transform
        self.p = nn.Parameter(torch.zeros(A))

    def initial_inference(self, obs):
        target = h(obs[:, 0]) if self.transform else obs[:, 0]
        value_logits = torch.log(scalar_to_support(target, VALUE_SUPPORT) + 1e-12)
        return NetworkOutput(obs, None, self.p.expand(obs.shape[0], -1), value_logits)


@pytest.mark.parametrize("use_target_transform", [True, False])
def test_priorities_are_raw_scale_value_errors_at_k0(use_target_transform):
    batch = make_batch(B=3, K=0, obs_dim=1)
    batch[TRAIN_OBS] = torch.tensor([[9.5], [-3.5], [0.0]])  # predicted values v^0
    batch[TRAIN_TARGET_VALUE] = torch.tensor([[0.0], [-3.5], [10.0]])  # z_t
    out = loss(_ValueFromObs(use_target_transform), batch, use_target_transform=use_target_transform)
    # Raw scale: |9.5 - 0| = 9.5 (the transformed difference h(9.5) would be about 2.25).
    torch.testing.assert_close(out.priorities, torch.tensor([9.5, 0.0, 10.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.predicted_value, torch.tensor([9.5, -3.5, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.target_value, torch.tensor([0.0, -3.5, 10.0]))
    assert not out.priorities.requires_grad
    assert set(out.stats()) >= {"value_loss", "reward_loss", "policy_loss", "mean_predicted_value", "mean_target_value"}


def test_priorities_come_from_the_k0_prediction_only():
    model = ToyModel()
    batch = make_batch(K=2)
    reference = loss(model, batch).priorities
    batch[TRAIN_TARGET_VALUE][:, 1:] += 100.0
    torch.testing.assert_close(loss(model, batch).priorities, reference)
    batch[TRAIN_TARGET_VALUE][:, 0] += 1.0
    assert not torch.allclose(loss(model, batch).priorities, reference)


# ---- learning and validation -----------------------------------------------------------------------------------------


def test_adam_steps_reduce_the_loss_on_a_fixed_batch():
    model = fc_model()
    batch = make_batch(B=16, K=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        out = loss(model, batch)
        out.total.backward()
        optimizer.step()
        losses.append(float(out.total.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_unroll_of_zero_steps_works():
    out = loss(fc_model(), make_batch(K=0))
    assert out.reward_loss == 0.0 and out.total > 0.0


def test_missing_key_is_reported():
    batch = make_batch()
    del batch[TRAIN_POLICY_MASK]
    with pytest.raises(ValueError, match=TRAIN_POLICY_MASK):
        loss(fc_model(), batch)


def test_mis_shaped_target_is_reported():
    batch = make_batch(B=4, K=3)
    batch[TRAIN_TARGET_VALUE] = batch[TRAIN_TARGET_VALUE][:, :3]
    with pytest.raises(ValueError, match=TRAIN_TARGET_VALUE):
        loss(fc_model(), batch)


def test_negative_loss_weight_is_rejected():
    with pytest.raises(ValueError, match="value_loss_weight"):
        loss(fc_model(), make_batch(), value_loss_weight=-1.0)


# ---- scalar heads (no_support) ---------------------------------------------------------------------------------------


class _ScalarHeads(nn.Module):
    """Scalar value / reward heads that output fixed numbers, to check the regression losses by hand."""

    def __init__(self, value, reward):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))
        self.reward = nn.Parameter(torch.tensor(float(reward)))

    def initial_inference(self, obs):
        B = obs.shape[0]
        return NetworkOutput(obs, None, torch.zeros(B, A), self.value.expand(B, 1))

    def recurrent_inference(self, hidden, action):
        B = hidden.shape[0]
        return NetworkOutput(hidden, self.reward.expand(B, 1), torch.zeros(B, A), self.value.expand(B, 1))


@pytest.mark.parametrize("scalar_loss,expected", [
    ("mse", lambda d: d ** 2),
    ("huber", lambda d: 0.5 * d ** 2 if abs(d) <= 1 else abs(d) - 0.5),
])
@pytest.mark.parametrize("use_target_transform", [False, True])
def test_scalar_heads_use_the_regression_loss_on_the_transformed_target(scalar_loss, expected, use_target_transform):
    batch = make_batch(B=1, K=1, obs_dim=2)
    batch[TRAIN_TARGET_VALUE] = torch.tensor([[3.0, 0.5]])
    batch[TRAIN_TARGET_REWARD] = torch.tensor([[0.0, -2.0]])
    model = _ScalarHeads(value=1.5, reward=0.25)
    out = loss(model, batch, value_support=None, reward_support=None, scalar_loss=scalar_loss,
               use_target_transform=use_target_transform)
    t = (lambda x: float(h(torch.tensor(x)))) if use_target_transform else (lambda x: x)
    assert float(out.value_loss) == pytest.approx(expected(1.5 - t(3.0)) + expected(1.5 - t(0.5)), rel=1e-5)
    assert float(out.reward_loss) == pytest.approx(expected(0.25 - t(-2.0)), rel=1e-5)
    # Priorities and metrics read the head in the raw scale: h^-1(1.5) when transformed, 1.5 otherwise.
    raw = float(h_inverse(torch.tensor(1.5))) if use_target_transform else 1.5
    assert float(out.predicted_value[0]) == pytest.approx(raw, rel=1e-5)
    assert float(out.priorities[0]) == pytest.approx(abs(raw - 3.0), rel=1e-5)
    out.total.backward()
    assert model.value.grad is not None and model.reward.grad is not None


def test_scalar_head_fc_network_learns_and_rejects_unknown_losses():
    torch.manual_seed(0)
    model = FullyConnectedMuZeroModel(
        gym.spaces.Box(-np.inf, np.inf, (6,), np.float32), gym.spaces.Discrete(A), A,
        {"custom_model_config": {"hidden_size": 16}}, "scalar", value_support_size=1, reward_support_size=1)
    batch = make_batch(B=16, K=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(15):
        optimizer.zero_grad()
        out = loss(model, batch, value_support=None, reward_support=None, scalar_loss="huber")
        out.total.backward()
        optimizer.step()
        values.append(float(out.value_loss))
    assert values[-1] < 0.8 * values[0]
    with pytest.raises(ValueError, match="`scalar_loss`"):
        loss(model, batch, value_support=None, reward_support=None, scalar_loss="l1")
