"""The MuZero network interface and the built-in fully connected network."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.models import ModelCatalog
from ray.rllib.models.torch.torch_modelv2 import TorchModelV2
from torch import nn

from rllib_muzero.models import (
    DEFAULT_MODEL_NAME,
    FullyConnectedMuZeroModel,
    MuZeroModelV2,
    NetworkOutput,
    check_muzero_model,
    scale_hidden_state,
)
from rllib_muzero.registry import register_models
from rllib_muzero.support import DiscreteSupport, support_to_scalar

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
ACTION_SPACE = gym.spaces.Discrete(3)
SV, SR = 21, 11  # supports [-10, 10] and [-5, 5]


def make_model(obs_space=OBS_SPACE, action_space=ACTION_SPACE, cls=FullyConnectedMuZeroModel, **options):
    torch.manual_seed(0)
    return cls(
        obs_space,
        action_space,
        int(action_space.n),
        {"custom_model_config": options},
        "test",
        value_support_size=SV,
        reward_support_size=SR,
    )


def random_obs(batch_size, obs_space=OBS_SPACE, seed=0):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.uniform(-1.0, 1.0, (batch_size, *obs_space.shape)).astype(np.float32))


def perturb_heads(model):
    """Give the zero-initialised heads random weights (their zero init otherwise hides shape and path bugs)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in (model.value_head, model.reward_head, model.policy_head):
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


# ---- scale_hidden_state ----------------------------------------------------------------------------------------------


def test_scale_hidden_state_vectors_per_sample_min_zero_max_one():
    s = torch.tensor([[1.0, 3.0, 2.0], [-10.0, 0.0, 10.0]])
    scaled = scale_hidden_state(s)
    torch.testing.assert_close(scaled, torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.5, 1.0]]))


def test_scale_hidden_state_planes_over_the_whole_sample():
    scales = torch.tensor([1.0, 10.0, 100.0, 0.1]).view(4, 1, 1, 1)
    s = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * scales
    scaled = scale_hidden_state(s)
    assert scaled.shape == s.shape
    flat = scaled.reshape(4, -1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(4))
    torch.testing.assert_close(flat.max(1).values, torch.ones(4))
    # min and max over the whole sample, not per plane: some planes do not reach 0 or 1.
    per_plane_max = scaled.amax(dim=(2, 3))
    assert (per_plane_max < 0.999).any()


def test_scale_hidden_state_constant_sample_is_finite():
    scaled = scale_hidden_state(torch.full((2, 4), 7.0))
    assert torch.all(scaled == 0.0)


# ---- FullyConnectedMuZeroModel ---------------------------------------------------------------------------------------


def test_initial_and_recurrent_inference_shapes():
    model = make_model(hidden_size=16)
    obs = random_obs(5)
    out = model.initial_inference(obs)
    assert isinstance(out, NetworkOutput)
    assert out.hidden.shape == (5, 16)
    assert out.reward_logits is None
    assert out.policy_logits.shape == (5, 3)
    assert out.value_logits.shape == (5, SV)

    nxt = model.recurrent_inference(out.hidden, torch.tensor([0, 1, 2, 1, 0]))
    assert nxt.hidden.shape == (5, 16)
    assert nxt.reward_logits.shape == (5, SR)
    assert nxt.policy_logits.shape == (5, 3)
    assert nxt.value_logits.shape == (5, SV)
    # numpy actions (what the search passes) are accepted too.
    nxt_np = model.recurrent_inference(out.hidden, np.array([0, 1, 2, 1, 0]))
    torch.testing.assert_close(nxt_np.hidden, nxt.hidden)


def test_hidden_states_are_scaled_to_unit_range_per_sample():
    model = make_model()
    out = model.initial_inference(random_obs(8))
    nxt = model.recurrent_inference(out.hidden, torch.zeros(8, dtype=torch.long))
    for hidden in (out.hidden, nxt.hidden):
        assert hidden.min() >= 0.0 and hidden.max() <= 1.0
        torch.testing.assert_close(hidden.min(1).values, torch.zeros(8))
        torch.testing.assert_close(hidden.max(1).values, torch.ones(8))


def test_dynamics_takes_the_action_as_one_hot():
    model = make_model(hidden_size=16)
    assert model.dynamics_net[0].in_features == 16 + 3  # hidden + one-hot(A)
    hidden = model.initial_inference(random_obs(4)).hidden
    outs = [model.dynamics(hidden, torch.full((4,), a, dtype=torch.long))[0] for a in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(outs[a], outs[b])
    # Exactly a one-hot vector next to the hidden state: [hidden, 0, 0, 1] for action 2.
    one_hot = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    expected = scale_hidden_state(model.dynamics_net(torch.cat([hidden, one_hot], dim=-1)))
    torch.testing.assert_close(outs[2], expected)


def test_zero_initialised_heads_predict_zero_value_and_uniform_policy():
    model = make_model()
    value_support, reward_support = DiscreteSupport(-10, 10), DiscreteSupport(-5, 5)
    out = model.initial_inference(random_obs(4))
    nxt = model.recurrent_inference(out.hidden, torch.tensor([0, 1, 2, 0]))
    for o in (out, nxt):
        assert torch.all(o.value_logits == 0.0)
        assert torch.all(o.policy_logits == 0.0)  # uniform priors
        torch.testing.assert_close(support_to_scalar(o.value_logits, value_support), torch.zeros(4))
    assert torch.all(nxt.reward_logits == 0.0)
    torch.testing.assert_close(support_to_scalar(nxt.reward_logits, reward_support), torch.zeros(4))


def test_layer_options_and_activation_are_used():
    model = make_model(hidden_size=8, representation_layers=[32, 16], value_layers=[], activation="tanh")
    linears = [m for m in model.representation_net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 32), (32, 16), (16, 8)]
    assert isinstance(model.representation_net[1], nn.Tanh)
    assert len(model.value_head) == 1 and model.value_head[0].in_features == 8


def test_uint8_observations_are_cast():
    space = gym.spaces.Box(0, 255, (128,), np.uint8)
    model = make_model(obs_space=space)
    obs = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (3, 128), dtype=np.uint8))
    out = model.initial_inference(obs)
    assert out.hidden.dtype == torch.float32 and out.hidden.shape == (3, 64)


def test_forward_returns_policy_logits_and_value_function_zeros():
    model = make_model()
    perturb_heads(model)
    obs = random_obs(5)
    logits, state = model({"obs": obs}, [], None)
    assert state == []
    torch.testing.assert_close(logits, model.initial_inference(obs).policy_logits)
    assert torch.all(model.value_function() == 0.0) and model.value_function().shape == (5,)


def test_value_function_before_forward_raises():
    with pytest.raises(ValueError, match="forward"):
        make_model().value_function()


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Box(0, 1, (4, 4), np.float32),
        gym.spaces.Box(0, 255, (84, 84, 3), np.uint8),
        gym.spaces.Discrete(5),
    ],
)
def test_unsupported_observation_space_is_rejected(space):
    with pytest.raises(ValueError, match=r"`model\.custom_model`.*1-D Box"):
        make_model(obs_space=space)


def test_non_discrete_action_space_is_rejected():
    with pytest.raises(ValueError, match="Discrete action space"):
        FullyConnectedMuZeroModel(
            OBS_SPACE, gym.spaces.Box(-1, 1, (2,)), 2, {}, "x", value_support_size=SV, reward_support_size=SR
        )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"hidden_sise": 32}, "hidden_sise"),
        ({"activation": "sigmoidal"}, "activation"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"policy_layers": 64}, "policy_layers"),
        ({"value_layers": [64, -1]}, "value_layers"),
    ],
)
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        make_model(**options)


def test_bad_support_sizes_and_num_outputs_are_rejected():
    with pytest.raises(ValueError, match="value_support_size"):
        FullyConnectedMuZeroModel(OBS_SPACE, ACTION_SPACE, 3, {}, "x", value_support_size=0, reward_support_size=SR)
    with pytest.raises(ValueError, match="reward_support_size"):
        FullyConnectedMuZeroModel(OBS_SPACE, ACTION_SPACE, 3, {}, "x", value_support_size=SV, reward_support_size=2.0)
    with pytest.raises(ValueError, match="num_outputs"):
        FullyConnectedMuZeroModel(OBS_SPACE, ACTION_SPACE, 7, {}, "x", value_support_size=SV, reward_support_size=SR)


# ---- registration with RLlib -----------------------------------------------------------------------------------------


def test_registered_model_is_built_by_model_catalog():
    register_models()
    model = ModelCatalog.get_model_v2(
        OBS_SPACE,
        ACTION_SPACE,
        3,
        model_config={"custom_model": DEFAULT_MODEL_NAME, "custom_model_config": {"hidden_size": 12}},
        framework="torch",
        name="x",
        value_support_size=SV,
        reward_support_size=SR,
    )
    assert DEFAULT_MODEL_NAME == "muzero_fc"
    assert isinstance(model, FullyConnectedMuZeroModel)
    assert model.hidden_size == 12 and model.value_support_size == SV and model.reward_support_size == SR
    check_muzero_model(model, OBS_SPACE, ACTION_SPACE)
    assert model.initial_inference(random_obs(2)).hidden.shape == (2, 12)


# ---- check_muzero_model ----------------------------------------------------------------------------------------------


def test_check_accepts_the_built_in_model_and_restores_train_mode():
    model = make_model()
    model.train()
    check_muzero_model(model, OBS_SPACE, ACTION_SPACE, value_support_size=SV, reward_support_size=SR)
    assert model.training


class _NoDynamics(TorchModelV2, nn.Module):
    def __init__(self, obs_space, action_space):
        TorchModelV2.__init__(self, obs_space, action_space, action_space.n, {}, "no_dynamics")
        nn.Module.__init__(self)
        self.net = nn.Linear(6, 4)

    def representation(self, obs):
        return self.net(obs)

    def prediction(self, hidden):
        return hidden[:, :3], hidden


def test_check_rejects_a_model_without_dynamics():
    with pytest.raises(TypeError, match="dynamics"):
        check_muzero_model(_NoDynamics(OBS_SPACE, ACTION_SPACE), OBS_SPACE, ACTION_SPACE)


def test_subclass_without_dynamics_cannot_be_built():
    class Incomplete(MuZeroModelV2):
        def representation(self, obs):
            return obs

        def prediction(self, hidden):
            return hidden, hidden

    with pytest.raises(TypeError, match="dynamics"):
        make_model(cls=Incomplete)


def test_check_rejects_a_non_rllib_model():
    with pytest.raises(TypeError, match="TorchModelV2"):
        check_muzero_model(nn.Linear(2, 2), OBS_SPACE, ACTION_SPACE)


class _WrongValueSize(FullyConnectedMuZeroModel):
    def prediction(self, hidden):
        policy_logits, value_logits = super().prediction(hidden)
        return policy_logits, value_logits[:, :-1]


class _WrongPolicySize(FullyConnectedMuZeroModel):
    def prediction(self, hidden):
        policy_logits, value_logits = super().prediction(hidden)
        return torch.cat([policy_logits, policy_logits], dim=-1), value_logits


class _HiddenShapeChanges(FullyConnectedMuZeroModel):
    def dynamics(self, hidden, action):
        next_hidden, reward_logits = super().dynamics(hidden, action)
        return next_hidden[:, :-1], reward_logits

    def prediction(self, hidden):
        pad = hidden.new_zeros(hidden.shape[0], self.hidden_size - hidden.shape[1])
        return super().prediction(torch.cat([hidden, pad], dim=-1))


class _WrongRewardSize(FullyConnectedMuZeroModel):
    def dynamics(self, hidden, action):
        next_hidden, reward_logits = super().dynamics(hidden, action)
        return next_hidden, reward_logits[:, :3]


class _RewardAtRoot(FullyConnectedMuZeroModel):
    def initial_inference(self, obs):
        out = super().initial_inference(obs)
        return out._replace(reward_logits=torch.zeros(obs.shape[0], self.reward_support_size))


class _PlainTuple(FullyConnectedMuZeroModel):
    def initial_inference(self, obs):
        return tuple(super().initial_inference(obs))[:3]


@pytest.mark.parametrize(
    ("cls", "error", "match"),
    [
        (_WrongValueSize, ValueError, r"initial_inference\(obs\)\.value_logits must have shape \(B, Sv\) = \(2, 21\)"),
        (_WrongPolicySize, ValueError, r"initial_inference\(obs\)\.policy_logits must have shape \(B, A\) = \(2, 3\)"),
        (_HiddenShapeChanges, ValueError, r"recurrent_inference\(hidden, action\)\.hidden must have shape"),
        (_WrongRewardSize, ValueError, r"recurrent_inference\(.*\)\.reward_logits .* \(2, 11\), got \(2, 3\)"),
        (_RewardAtRoot, ValueError, "reward_logits must be None"),
        (_PlainTuple, TypeError, "NetworkOutput"),
    ],
)
def test_check_rejects_wrong_outputs(cls, error, match):
    model = make_model(cls=cls)
    with pytest.raises(error, match=match):
        check_muzero_model(model, OBS_SPACE, ACTION_SPACE)


def test_check_uses_explicit_support_sizes_over_the_models():
    model = make_model()
    with pytest.raises(ValueError, match="value_logits"):
        check_muzero_model(model, OBS_SPACE, ACTION_SPACE, value_support_size=SV + 2)


def test_check_rejects_nan_outputs():
    model = make_model()
    with torch.no_grad():
        model.value_head[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        check_muzero_model(model, OBS_SPACE, ACTION_SPACE)


def test_acting_path_equals_the_training_path_and_follows_weight_changes():
    """Without gradients the heads' first layers run stacked; the outputs must equal the plain module graph's, also
    after an optimizer step and a load_state_dict (the stacked weights are rebuilt when a parameter changes)."""
    torch.manual_seed(0)
    model = make_model()
    for parameter in model.parameters():  # non-zero last layers, so every output depends on every layer
        torch.nn.init.normal_(parameter, std=0.2)
    hidden = torch.rand(5, model.hidden_size)
    action = torch.tensor([0, 1, 2, 1, 0]) % model.num_actions

    def both_paths():
        plain = model.recurrent_inference(hidden, action)  # gradients enabled: the module graph
        with torch.no_grad():
            fast = model.recurrent_inference(hidden, action)
        return plain, fast

    def assert_same(plain, fast):
        for field in ("hidden", "reward_logits", "policy_logits", "value_logits"):
            torch.testing.assert_close(getattr(fast, field), getattr(plain, field).detach(), rtol=0, atol=1e-6)

    assert model._fuse_heads
    assert_same(*both_paths())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    plain, _ = both_paths()
    (plain.reward_logits.sum() + plain.value_logits.sum() + plain.policy_logits.sum()).backward()
    optimizer.step()
    assert_same(*both_paths())
    model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()})
    assert_same(*both_paths())
