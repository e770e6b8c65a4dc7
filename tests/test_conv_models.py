"""The convolutional MuZero networks "muzero_resnet" and "muzero_tiny" (rllib_muzero.conv_models)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.models import ModelCatalog

from rllib_muzero import columns
from rllib_muzero.conv_models import CONV_MODELS, ResidualMuZeroModel, TinyConvMuZeroModel
from rllib_muzero.losses import muzero_loss
from rllib_muzero.models import check_muzero_model
from rllib_muzero.registry import register_models
from rllib_muzero.support import DiscreteSupport

ACTION_SPACE = gym.spaces.Discrete(3)
A = 3
VALUE_SUPPORT, REWARD_SUPPORT = DiscreteSupport(-5, 5), DiscreteSupport(-2, 2)
SV, SR = VALUE_SUPPORT.size, REWARD_SUPPORT.size

ATARI_LIKE = gym.spaces.Box(0, 255, (96, 96, 3), np.uint8)  # HWC uint8, the paper's downsampling to 6x6
SMALL = gym.spaces.Box(0.0, 1.0, (10, 10, 4), np.float32)  # HWC float, full resolution

# Small enough to be quick on a CPU, with every part of each network present.
RESNET_SMALL = {"channels": 8, "num_blocks": 1, "prediction_blocks": 1, "downsample_channels": 4,
                "downsample_blocks": [1, 1, 1], "reward_head_channels": 2, "value_head_channels": 2,
                "policy_head_channels": 2, "head_layers": [16]}
TINY_SMALL = {"conv_channels": [4, 8], "hidden_channels": 8, "head_layers": [16]}

# (class, observation space, options, expected hidden shape)
SETUPS = {
    "resnet-96x96-downsample": (ResidualMuZeroModel, ATARI_LIKE, RESNET_SMALL, (8, 6, 6)),
    "resnet-10x10-full": (ResidualMuZeroModel, SMALL, {**RESNET_SMALL, "downsample": False}, (8, 10, 10)),
    "tiny-96x96-downsample": (TinyConvMuZeroModel, ATARI_LIKE, TINY_SMALL, (8, 6, 6)),
    "tiny-10x10-full": (TinyConvMuZeroModel, SMALL, {**TINY_SMALL, "downsample": False}, (8, 10, 10)),
}


def make_model(cls, obs_space, options, *, value_support_size=SV, reward_support_size=SR, seed=0):
    torch.manual_seed(seed)
    return cls(obs_space, ACTION_SPACE, A, {"custom_model_config": dict(options)}, "test",
               value_support_size=value_support_size, reward_support_size=reward_support_size)


def sample_obs(obs_space, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    if obs_space.dtype == np.uint8:
        return torch.as_tensor(rng.integers(0, 256, (batch_size, *obs_space.shape), dtype=np.uint8))
    return torch.as_tensor(rng.uniform(0.0, 1.0, (batch_size, *obs_space.shape)).astype(np.float32))


def heads(model):
    return (model.value_head, model.reward_head, model.policy_head)


def perturb_head_outputs(model):
    """Random weights in the zero-initialised last layers (zeros would hide paths and block gradients)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in heads(model):
            last = head.mlp[-1] if hasattr(head, "mlp") else head[-1]
            for p in last.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


@pytest.fixture(params=list(SETUPS), ids=list(SETUPS))
def setup(request):
    return SETUPS[request.param]


# ---- interface and shapes --------------------------------------------------------------------------------------------


def test_check_muzero_model_passes(setup):
    cls, space, options, hidden_shape = setup
    model = make_model(cls, space, options)
    check_muzero_model(model, space, ACTION_SPACE)
    assert model.hidden_shape == hidden_shape
    out = model.initial_inference(sample_obs(space, 2))
    assert out.hidden.shape == (2, *hidden_shape)
    assert out.policy_logits.shape == (2, A) and out.value_logits.shape == (2, SV)


def test_dynamics_preserves_the_hidden_shape(setup):
    cls, space, options, hidden_shape = setup
    model = make_model(cls, space, options).eval()
    with torch.no_grad():
        hidden = model.representation(sample_obs(space, 3))
        for _ in range(3):
            hidden, reward_logits = model.dynamics(hidden, torch.tensor([0, 1, 2]))
            assert hidden.shape == (3, *hidden_shape)
            assert reward_logits.shape == (3, SR)


def test_hidden_states_are_scaled_to_unit_range_per_sample(setup):
    cls, space, options, _ = setup
    model = make_model(cls, space, options, seed=3).eval()
    obs = sample_obs(space, 3)
    dtype = obs.dtype
    obs = obs.float()
    obs[1] = obs[1] * 0.02  # samples of very different scales: a batch-wide min-max would squash these
    obs[2] = obs[2] * 0.2
    with torch.no_grad():
        initial = model.initial_inference(obs.to(dtype))
        recurrent = model.recurrent_inference(initial.hidden, torch.tensor([0, 1, 2]))
    for hidden in (initial.hidden, recurrent.hidden):
        flat = hidden.flatten(1)
        assert torch.all(flat >= 0.0) and torch.all(flat <= 1.0)
        torch.testing.assert_close(flat.min(dim=1).values, torch.zeros(3))
        torch.testing.assert_close(flat.max(dim=1).values, torch.ones(3), atol=1e-5, rtol=0)


def test_the_action_changes_the_next_hidden_state(setup):
    cls, space, options, _ = setup
    model = make_model(cls, space, options).eval()
    with torch.no_grad():
        hidden = model.representation(sample_obs(space, 1)).expand(A, *model.hidden_shape)
        next_hidden, _ = model.dynamics(hidden, torch.arange(A))
    for a in range(A):
        for b in range(a + 1, A):
            assert not torch.allclose(next_hidden[a], next_hidden[b], atol=1e-4), (a, b)


@pytest.mark.parametrize("cls", [ResidualMuZeroModel, TinyConvMuZeroModel])
def test_actions_are_one_hot_planes(cls):
    options = {**(RESNET_SMALL if cls is ResidualMuZeroModel else TINY_SMALL), "downsample": False}
    model = make_model(cls, SMALL, options)
    hidden = torch.rand(2, *model.hidden_shape)
    x = model._with_action_planes(hidden, torch.tensor([2, 0]))
    C = model.hidden_shape[0]
    assert x.shape == (2, C + A, 10, 10)
    torch.testing.assert_close(x[:, :C], hidden)
    expected = torch.zeros(2, A, 10, 10)
    expected[0, 2] = 1.0
    expected[1, 0] = 1.0
    torch.testing.assert_close(x[:, C:], expected)


def test_zero_initialised_heads_predict_uniform_outputs(setup):
    cls, space, options, _ = setup
    model = make_model(cls, space, options).eval()
    with torch.no_grad():
        out = model.initial_inference(sample_obs(space, 2))
        rec = model.recurrent_inference(out.hidden, torch.tensor([0, 2]))
    for logits in (out.policy_logits, out.value_logits, rec.reward_logits, rec.policy_logits, rec.value_logits):
        torch.testing.assert_close(logits, torch.zeros_like(logits))


@pytest.mark.parametrize("cls,options", [(ResidualMuZeroModel, {**RESNET_SMALL, "downsample": False}),
                                         (TinyConvMuZeroModel, {**TINY_SMALL, "downsample": False})])
def test_scalar_heads(cls, options):
    model = make_model(cls, SMALL, options, value_support_size=1, reward_support_size=1)
    check_muzero_model(model, SMALL, ACTION_SPACE)
    out = model.recurrent_inference(model.representation(sample_obs(SMALL, 2)), torch.tensor([0, 1]))
    assert out.value_logits.shape == (2, 1) and out.reward_logits.shape == (2, 1)


# ---- observations ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,options", [(ResidualMuZeroModel, {**RESNET_SMALL, "downsample": False}),
                                         (TinyConvMuZeroModel, {**TINY_SMALL, "downsample": False})])
def test_uint8_observations_are_divided_by_255(cls, options):
    uint8_space = gym.spaces.Box(0, 255, (10, 10, 4), np.uint8)
    obs = sample_obs(uint8_space, 2)
    scaled = make_model(cls, uint8_space, options).eval()
    unscaled = make_model(cls, uint8_space, {**options, "scale_obs": False}).eval()
    assert scaled.obs_scale == pytest.approx(1 / 255) and unscaled.obs_scale is None
    with torch.no_grad():
        torch.testing.assert_close(scaled.representation(obs), unscaled.representation(obs.float() / 255.0))
    float_space = gym.spaces.Box(0.0, 255.0, (10, 10, 4), np.float32)
    assert make_model(cls, float_space, options).obs_scale is None  # "auto": only uint8 spaces with high 255
    assert make_model(cls, float_space, {**options, "scale_obs": True}).obs_scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("shape,option,channels_last,input_shape", [
    ((96, 96, 3), "auto", True, (3, 96, 96)),
    ((10, 10, 4), "auto", True, (4, 10, 10)),
    ((4, 84, 84), "auto", False, (4, 84, 84)),
    ((3, 8, 8), "auto", False, (3, 8, 8)),
    ((32, 32, 32), "auto", False, (32, 32, 32)),
    ((8, 8, 12), False, False, (8, 8, 12)),
    ((4, 12, 12), True, True, (12, 4, 12)),
    ((12, 12), "auto", False, (1, 12, 12)),
])
def test_channels_last_detection(shape, option, channels_last, input_shape):
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    model = make_model(TinyConvMuZeroModel, space, {"conv_channels": [2], "hidden_channels": 2, "head_layers": [],
                                                    "downsample": False, "channels_last": option})
    assert model.obs_channels_last is channels_last
    assert model.input_shape == input_shape


def test_channels_last_observations_are_permuted():
    hwc = gym.spaces.Box(0.0, 1.0, (10, 10, 4), np.float32)
    chw = gym.spaces.Box(0.0, 1.0, (4, 10, 10), np.float32)
    options = {**TINY_SMALL, "downsample": False}
    model_hwc, model_chw = make_model(TinyConvMuZeroModel, hwc, options), make_model(TinyConvMuZeroModel, chw, options)
    obs = sample_obs(hwc, 2)
    with torch.no_grad():
        torch.testing.assert_close(model_hwc.representation(obs), model_chw.representation(obs.permute(0, 3, 1, 2)))


@pytest.mark.parametrize("space", [gym.spaces.Box(0.0, 1.0, (6,), np.float32),
                                   gym.spaces.Box(0.0, 1.0, (2, 3, 4, 5), np.float32),
                                   gym.spaces.Discrete(4)])
@pytest.mark.parametrize("cls", [ResidualMuZeroModel, TinyConvMuZeroModel])
def test_non_image_observations_are_rejected(cls, space):
    with pytest.raises(ValueError, match="image observations.*muzero_fc"):
        make_model(cls, space, {})


# ---- options ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,options,match", [
    (ResidualMuZeroModel, {"chanels": 8}, r"unknown .*\['chanels'\].*known: .*'channels'"),
    (ResidualMuZeroModel, {"channels": 0}, r"`model.custom_model_config.channels` must be a positive integer"),
    (ResidualMuZeroModel, {"channels": 8.0}, r"`model.custom_model_config.channels`"),
    (ResidualMuZeroModel, {"num_blocks": -1}, r"`model.custom_model_config.num_blocks` must be an integer >= 0"),
    (ResidualMuZeroModel, {"prediction_blocks": True}, r"`model.custom_model_config.prediction_blocks`"),
    (ResidualMuZeroModel, {"downsample": "yes"}, r"`model.custom_model_config.downsample` must be true or false"),
    (ResidualMuZeroModel, {"downsample_blocks": [2, 3]}, r"`model.custom_model_config.downsample_blocks`.*3"),
    (ResidualMuZeroModel, {"head_layers": 32}, r"`model.custom_model_config.head_layers` must be a list"),
    (ResidualMuZeroModel, {"value_head_channels": 0}, r"`model.custom_model_config.value_head_channels`"),
    (ResidualMuZeroModel, {"norm": "group"}, r"`model.custom_model_config.norm` must be one of"),
    (ResidualMuZeroModel, {"channels_last": "yes"}, r"`model.custom_model_config.channels_last`"),
    (ResidualMuZeroModel, {"scale_obs": 255}, r"`model.custom_model_config.scale_obs`"),
    (TinyConvMuZeroModel, {"channels": 8}, r"unknown .*\['channels'\].*known: .*'conv_channels'"),
    (TinyConvMuZeroModel, {"conv_channels": []}, r"`model.custom_model_config.conv_channels` must be a non-empty"),
    (TinyConvMuZeroModel, {"conv_channels": [8, 0]}, r"`model.custom_model_config.conv_channels`"),
    (TinyConvMuZeroModel, {"hidden_channels": "8"}, r"`model.custom_model_config.hidden_channels`"),
    (TinyConvMuZeroModel, {"head_layers": ["64"]}, r"`model.custom_model_config.head_layers`"),
])
def test_bad_options_are_rejected_naming_the_key(cls, options, match):
    with pytest.raises(ValueError, match=match):
        make_model(cls, SMALL, options)


def test_options_also_arrive_as_keyword_arguments_and_defaults_are_copied():
    model = ResidualMuZeroModel(SMALL, ACTION_SPACE, A, {}, "test", value_support_size=SV, reward_support_size=SR,
                                downsample=False, channels=4, num_blocks=0)
    assert model.hidden_shape == (4, 10, 10)
    assert model.options["downsample_blocks"] == [1, 1, 1]
    assert ResidualMuZeroModel.DEFAULT_CONFIG["channels"] == 32


@pytest.mark.parametrize("norm,module", [("batch", torch.nn.BatchNorm2d), ("layer", torch.nn.GroupNorm),
                                         ("none", None)])
def test_norm_option(norm, module):
    model = make_model(ResidualMuZeroModel, SMALL, {**RESNET_SMALL, "downsample": False, "norm": norm})
    kinds = {type(m) for m in model.modules()}
    for candidate in (torch.nn.BatchNorm2d, torch.nn.GroupNorm):
        assert (candidate in kinds) == (candidate is module)
    check_muzero_model(model, SMALL, ACTION_SPACE)


def test_eval_mode_outputs_do_not_depend_on_the_rest_of_the_batch():
    """What the search relies on with BatchNorm: in eval mode a root searched alone gets the same outputs as in a
    batch (running statistics, not batch statistics)."""
    model = make_model(ResidualMuZeroModel, SMALL, {**RESNET_SMALL, "downsample": False}, seed=4)
    perturb_head_outputs(model)
    model.train()
    with torch.no_grad():  # move the running statistics away from their initial values
        for seed in range(3):
            model.recurrent_inference(model.representation(sample_obs(SMALL, 8, seed=seed)), torch.zeros(8))
    model.eval()
    obs = sample_obs(SMALL, 4, seed=9)
    with torch.no_grad():
        batch = model.recurrent_inference(model.representation(obs), torch.tensor([0, 1, 2, 0]))
        alone = model.recurrent_inference(model.representation(obs[2:3]), torch.tensor([2]))
    for field in ("hidden", "reward_logits", "policy_logits", "value_logits"):
        torch.testing.assert_close(getattr(alone, field)[0], getattr(batch, field)[2], atol=1e-5, rtol=1e-5)


def test_registered_with_the_model_catalog():
    register_models()
    assert set(CONV_MODELS) == {"muzero_resnet", "muzero_tiny"}
    for name, cls in CONV_MODELS.items():
        options = {**(RESNET_SMALL if cls is ResidualMuZeroModel else TINY_SMALL), "downsample": False}
        model_config = {"custom_model": name, "custom_model_config": options}
        model = ModelCatalog.get_model_v2(SMALL, ACTION_SPACE, A, model_config, framework="torch",
                                          value_support_size=SV, reward_support_size=SR)
        assert type(model) is cls
        logits, _ = model({"obs": sample_obs(SMALL, 2)}, [], None)
        assert logits.shape == (2, A)


# ---- learning --------------------------------------------------------------------------------------------------------


def unroll_batch(obs_space, batch_size=4, unroll_steps=2, seed=0):
    rng = np.random.default_rng(seed)
    K = unroll_steps
    policy = rng.random((batch_size, K + 1, A)).astype(np.float32)
    batch = {
        columns.TRAIN_OBS: sample_obs(obs_space, batch_size, seed=seed),
        columns.TRAIN_ACTIONS: torch.as_tensor(rng.integers(0, A, (batch_size, K))),
        columns.TRAIN_TARGET_VALUE: torch.as_tensor(rng.uniform(-3, 3, (batch_size, K + 1)).astype(np.float32)),
        columns.TRAIN_TARGET_REWARD: torch.as_tensor(rng.uniform(-1, 1, (batch_size, K + 1)).astype(np.float32)),
        columns.TRAIN_TARGET_POLICY: torch.as_tensor(policy / policy.sum(-1, keepdims=True)),
        columns.TRAIN_VALUE_MASK: torch.ones(batch_size, K + 1),
        columns.TRAIN_REWARD_MASK: torch.ones(batch_size, K + 1),
        columns.TRAIN_POLICY_MASK: torch.ones(batch_size, K + 1),
        columns.TRAIN_WEIGHTS: torch.ones(batch_size),
    }
    batch[columns.TRAIN_REWARD_MASK][:, 0] = 0.0
    return batch


def test_gradients_reach_every_parameter_through_a_two_step_unroll(setup):
    cls, space, options, _ = setup
    model = make_model(cls, space, options)
    perturb_head_outputs(model)
    model.train()
    out = muzero_loss(model, unroll_batch(space), value_support=VALUE_SUPPORT, reward_support=REWARD_SUPPORT)
    assert torch.isfinite(out.total)
    out.total.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reaches {missing}"


def test_bf16_autocast_unroll_is_float32_at_the_loss_and_trains_every_parameter(setup):
    """``learner_precision`` "bf16-mixed" runs this forward under ``torch.autocast`` (bfloat16): convolutions,
    normalisation and heads work in it, the loss comes out float32 and finite, and every parameter gets a float32
    gradient (the weights stay float32)."""
    cls, space, options, _ = setup
    model = make_model(cls, space, options)
    perturb_head_outputs(model)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = muzero_loss(model, unroll_batch(space), value_support=VALUE_SUPPORT, reward_support=REWARD_SUPPORT)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total) and out.priorities.dtype == torch.float32
    out.total.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reaches {missing}"
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())


def test_fresh_heads_still_train_their_last_layers(setup):
    """Zero-initialised last layers get gradients on the first update (only the layers before them do not)."""
    cls, space, options, _ = setup
    model = make_model(cls, space, options).train()
    muzero_loss(model, unroll_batch(space), value_support=VALUE_SUPPORT, reward_support=REWARD_SUPPORT).total.backward()
    for head in heads(model):
        last = head.mlp[-1] if hasattr(head, "mlp") else head[-1]
        assert torch.any(last.weight.grad != 0)


# ---- end to end ------------------------------------------------------------------------------------------------------


class DotEnv(gym.Env):
    """An 8x8x1 uint8 image with one bright dot; actions move it left / stay / right; reward 1 in the middle columns;
    episodes of 12 steps (truncated)."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 1), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, config=None):
        super().__init__()
        self.row = self.col = self.t = 0

    def _obs(self):
        image = np.zeros((8, 8, 1), np.uint8)
        image[self.row, self.col, 0] = 255
        return image

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.row, self.col = (int(v) for v in self.np_random.integers(0, 8, 2))
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.col = int(np.clip(self.col + int(action) - 1, 0, 7))
        self.t += 1
        return self._obs(), float(self.col in (3, 4)), False, self.t >= 12, {}


E2E_MODELS = {
    "muzero_tiny": {"conv_channels": [8], "hidden_channels": 8, "head_layers": [16]},
    "muzero_resnet": {"channels": 8, "num_blocks": 1, "prediction_blocks": 1, "downsample": False,
                      "reward_head_channels": 2, "value_head_channels": 2, "policy_head_channels": 2,
                      "head_layers": [16]},
}


@pytest.mark.integration
@pytest.mark.parametrize("custom_model", list(E2E_MODELS))
def test_muzero_trains_on_image_observations(ray_session, custom_model):
    from rllib_muzero import MuZeroConfig

    config = (
        MuZeroConfig()
        .environment(DotEnv)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=20)
        .training(num_simulations=4, num_unroll_steps=2, td_steps=3, train_batch_size=8,
                  num_steps_sampled_before_learning_starts=30, replay_capacity=500,
                  value_support=(-5, 5), reward_support=(-2, 2),
                  model={"custom_model": custom_model, "custom_model_config": E2E_MODELS[custom_model]})
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        assert isinstance(algo.get_policy().model, CONV_MODELS[custom_model])
        results = [algo.train() for _ in range(2)]
        policy = algo.get_policy()
        assert policy.num_grad_updates >= 1
        stats = results[-1]["info"]["learner"]["default_policy"]["learner_stats"]
        for key in ("total_loss", "value_loss", "reward_loss", "policy_loss", "grad_gnorm"):
            assert np.isfinite(stats[key]), key
        assert policy.num_nonfinite_updates == 0
        # weights reach the env runners through get_weights / set_weights: BatchNorm statistics travel with them
        weights = policy.get_weights()
        assert any(k.endswith("running_mean") for k in weights) == (custom_model == "muzero_resnet")
        policy.set_weights(weights)
        # acting after learning: the search runs the model in eval mode on the new observations
        actions, _, extras = policy.compute_actions_from_input_dict(
            {"obs": np.stack([DotEnv.observation_space.sample() for _ in range(3)])}, explore=False)
        assert actions.shape == (3,) and not policy.model.training
        np.testing.assert_allclose(extras[columns.SEARCH_POLICY].sum(axis=1), 1.0, rtol=1e-5)
    finally:
        algo.stop()
