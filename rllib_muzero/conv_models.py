"""Convolutional MuZero networks for image observations: ``"muzero_resnet"`` and ``"muzero_tiny"``.

- :class:`ResidualMuZeroModel` (``"muzero_resnet"``): the paper's network (arXiv 1911.08265, Appendix F "Network
  Architecture"): a downsampling stack (96x96 -> 6x6 in the paper), residual towers for the representation and the
  dynamics, and AlphaZero-style heads (a 1x1 convolution that reduces the planes, then fully connected layers).
- :class:`TinyConvMuZeroModel` (``"muzero_tiny"``): the reference implementation's "TinyNetwork" idea: a few strided
  convolutions and max-pools down to a small grid, one light residual block (no normalisation) per function, a tanh
  hidden state and MLP heads. Cheap enough for small images on a CPU.

Both implement :class:`rllib_muzero.models.MuZeroModelV2`, so they plug into the policy, the loss and the search like
``"muzero_fc"``; :func:`rllib_muzero.registry.register_models` registers every entry of :data:`CONV_MODELS` with RLlib's
``ModelCatalog``. Select one with ``model={"custom_model": "muzero_resnet", "custom_model_config": {...}}``; each
class documents its options, checked like ``"muzero_fc"``'s (unknown names and bad values are errors naming
``model.custom_model_config.<key>``).

Observations (both networks): a ``Box`` of rank 3 (``(H, W, C)`` or ``(C, H, W)``, see ``channels_last``) or rank 2
(``(H, W)``, one plane). They are cast to float32 and, when ``scale_obs`` says so (by default: a uint8 space whose
``high`` is 255), divided by 255. Frame stacking is the env's business (``env_config``), not the network's.

Implementation details / deviations (paper Appendix F unless said otherwise):

1. **Action planes** — the dynamics input is ``concat[hidden planes, A one-hot planes]``: ``A`` constant planes at
   the hidden resolution, plane ``a`` all ones and the others zeros (the paper's encoding for Atari: a one-hot vector
   tiled into planes). The reference implementation feeds one plane filled with ``a / A``, which puts the actions on
   a line the network must first untangle; not copied.
2. **Hidden-state scaling** — min-max to [0, 1] per sample over all its planes
   (:func:`rllib_muzero.models.scale_hidden_state`), after the representation and after every dynamics step (paper
   Appendix G). The reference scales with the min and max of the whole batch, so one sample's hidden state depended
   on the others in its batch (different during search and training); not copied.
3. **Normalisation** (``muzero_resnet``) — ``norm="batch"`` (default): BatchNorm as in AlphaZero's residual network,
   which the paper reuses. Safe here because every acting path puts the model in eval mode before searching
   (``MuZeroTorchPolicy.search``, ``ServingAgent``, the evaluation tools), so a search batch of one root uses the
   running statistics, while ``learn_on_replay_batch`` switches to train mode. The running statistics are part of
   ``state_dict``, so they reach the env runners with the weights. ``norm="layer"`` (``GroupNorm(1, C)``: per-sample
   normalisation over all planes) and ``"none"`` make every output independent of the rest of the batch in training
   too. ``muzero_tiny`` has no normalisation, like the reference's TinyNetwork.
4. **Reward head** — reads the (scaled) next hidden state, as ``"muzero_fc"`` does; the reference's TinyNetwork reads
   ``[hidden, action plane]`` through its own block instead.
5. **Prediction tower** (``muzero_resnet``) — ``prediction_blocks`` residual blocks before the value and policy heads.
   The paper's prediction function is only AlphaZero's heads (0 blocks); the reference runs 16; default 1.
6. **Heads** — the last layers of the value, reward and policy heads start at zero (as ``"muzero_fc"``, see its
   docstring): first predictions are uniform policies and the mean atom (0 on symmetric supports). A value or reward
   support size of 1 (scalar heads, ``no_support``) simply makes that head output one number.
7. **Average pooling** (``muzero_resnet`` downsampling) — 3x3, stride 2, padding 1, borders averaged over the real
   pixels only (``count_include_pad=False``, TensorFlow's ``SAME``); the reference (PyTorch's default) averages the
   zero padding in. Strided convolutions and pools round up: an ``n``-pixel side becomes ``ceil(n / 2)``.
8. **Inputs** — the paper's Atari input is the last 32 RGB frames plus the last 32 actions as planes (128 planes);
   here the network takes whatever the env observes (stack frames with an env wrapper / ``env_config``).
9. **Sizes** — defaults are small enough for a CPU; each class's docstring gives the paper's (or reference's) values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rllib_muzero.models import MuZeroModelV2, merge_model_options, mlp, model_option_error, scale_hidden_state

__all__ = ["CONV_MODELS", "ResidualMuZeroModel", "TinyConvMuZeroModel"]

NORMS = ("batch", "layer", "none")
AUTO = "auto"
MAX_CHANNELS_LAST_DEPTH = 16  # "auto": a rank-3 observation (H, W, C) with C <= 16 and C < H, W is channels-last


# ---------------------------------------------------------------------------------------------------------------------
# Option checks (messages name `model.custom_model_config.<key>`).


def _fail(key: str, expected: str, value: Any) -> NoReturn:
    raise model_option_error(key, value, expected)


def _int_at_least(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        _fail(key, "a positive integer" if minimum == 1 else f"an integer >= {minimum}", value)
    return int(value)


def _int_list(key: str, value: Any, minimum: int, *, length: int | None = None, nonempty: bool = False) -> list[int]:
    what = f"a list of {length} integers >= {minimum}" if length is not None else (
        f"a {'non-empty ' if nonempty else ''}list of integers >= {minimum}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        _fail(key, what, value)
    if (length is not None and len(value) != length) or (nonempty and not value):
        _fail(key, what, value)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < minimum:
            _fail(key, what, value)
    return [int(item) for item in value]


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        _fail(key, "true or false", value)
    return bool(value)


def _bool_or_auto(key: str, value: Any) -> bool | str:
    if isinstance(value, str) and value == AUTO:
        return AUTO
    if not isinstance(value, (bool, np.bool_)):
        _fail(key, f"{AUTO!r}, true or false", value)
    return bool(value)


def _choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        _fail(key, f"one of {list(choices)}", value)
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks.


def _norm(kind: str, channels: int) -> nn.Module:
    """``"batch"``: BatchNorm2d; ``"layer"``: GroupNorm(1, C), per-sample over all planes; ``"none"``: identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str, *, kernel_size: int = 3,
                    stride: int = 1) -> nn.Sequential:
    """``conv (no bias when a normalisation follows) -> norm -> ReLU``."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                     bias=norm == "none")
    return nn.Sequential(conv, _norm(norm, out_channels), nn.ReLU())


def _halve(size: int) -> int:
    """Side length after a 3x3 convolution or pool with stride 2 and padding 1."""
    return (size - 1) // 2 + 1


class ResidualBlock(nn.Module):
    """``x -> conv3x3 -> norm -> ReLU -> conv3x3 -> norm -> (+ x) -> ReLU`` (AlphaZero's block, paper Appendix F)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm1 = _norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm2 = _norm(norm, channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + x)


class TinyBlock(nn.Module):
    """``x -> conv3x3 -> ReLU -> conv3x3 -> (+ x) -> ReLU``, no normalisation (the reference's TinyNetwork block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + x)


class _ConvHead(nn.Module):
    """AlphaZero-style head: ``1x1 conv to head_channels -> norm -> ReLU -> flatten -> MLP -> out_size`` (the MLP's
    last layer zero-initialised)."""

    def __init__(self, channels: int, grid: tuple[int, int], head_channels: int, layers: Sequence[int], out_size: int,
                 norm: str) -> None:
        super().__init__()
        self.reduce = _conv_norm_relu(channels, head_channels, norm, kernel_size=1)
        self.mlp = mlp(head_channels * grid[0] * grid[1], layers, out_size, "relu", zero_last=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.reduce(x).flatten(1))


# ---------------------------------------------------------------------------------------------------------------------
# What both networks share: observation handling, action planes, option resolution.


class _ImageMuZeroModel(MuZeroModelV2):
    """Observations to float planes ``(B, C, H, W)``, actions to one-hot planes, options checked against
    ``DEFAULT_CONFIG``. Subclasses extend ``DEFAULT_CONFIG`` and ``_check_options`` and build their layers in
    ``_build`` (called at the end of ``__init__``)."""

    REGISTERED_NAME: ClassVar[str] = ""
    DEFAULT_CONFIG: ClassVar[Mapping[str, Any]] = {"channels_last": AUTO, "scale_obs": AUTO}

    def __init__(
        self,
        obs_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        num_outputs: int | None,
        model_config: dict,
        name: str,
        *,
        value_support_size: int,
        reward_support_size: int,
        **kwargs: Any,
    ) -> None:
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) not in (2, 3):
            raise ValueError(
                f"`model.custom_model` {self.REGISTERED_NAME!r} ({type(self).__name__}) takes image observations: a "
                f"Box of shape (H, W, C), (C, H, W) or (H, W); got observation space {obs_space}. For 1-D "
                "observations use 'muzero_fc'."
            )
        super().__init__(
            obs_space,
            action_space,
            num_outputs,
            model_config,
            name,
            value_support_size=value_support_size,
            reward_support_size=reward_support_size,
        )
        self.options: dict[str, Any] = self._resolve_options(model_config, kwargs)
        shape = tuple(int(d) for d in obs_space.shape)
        self.obs_channels_last: bool = self._is_channels_last(shape, self.options["channels_last"])
        if len(shape) == 2:
            self.input_shape: tuple[int, int, int] = (1, *shape)
        elif self.obs_channels_last:
            self.input_shape = (shape[2], shape[0], shape[1])
        else:
            self.input_shape = shape  # type: ignore[assignment]
        scale = self.options["scale_obs"]
        if scale == AUTO:
            scale = np.dtype(obs_space.dtype) == np.uint8 and bool(np.all(obs_space.high == 255))
        self.obs_scale: float | None = 1.0 / 255.0 if scale else None
        self._build()

    def _build(self) -> None:
        """Builds the layers from ``self.options``, ``self.input_shape`` and the support sizes (subclasses)."""
        raise NotImplementedError

    @staticmethod
    def _is_channels_last(shape: tuple[int, ...], option: bool | str) -> bool:
        if len(shape) == 2:
            return False  # (H, W): a single plane
        if option == AUTO:
            h, w, c = shape
            return c <= MAX_CHANNELS_LAST_DEPTH and c < h and c < w
        return bool(option)

    @classmethod
    def _resolve_options(cls, model_config: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        options = merge_model_options(cls, model_config, kwargs)
        cls._check_options(options)
        return options

    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> None:
        """Validates and normalises ``options`` in place (subclasses call super and add their keys)."""
        options["channels_last"] = _bool_or_auto("channels_last", options["channels_last"])
        options["scale_obs"] = _bool_or_auto("scale_obs", options["scale_obs"])

    def _planes(self, obs: Tensor) -> Tensor:
        """``(B, *obs_shape)`` observations (any dtype) -> float32 ``(B, C, H, W)``."""
        x = obs.to(torch.float32)
        if self.obs_scale is not None:
            x = x * self.obs_scale
        if x.dim() == 3:
            return x.unsqueeze(1)
        if self.obs_channels_last:
            return x.permute(0, 3, 1, 2).contiguous()
        return x

    def _with_action_planes(self, hidden: Tensor, action: Tensor) -> Tensor:
        """``concat[hidden (B, C, h, w), one-hot action planes (B, A, h, w)]`` along the planes."""
        B, _, h, w = hidden.shape
        one_hot = F.one_hot(action.long(), self.num_actions).to(hidden.dtype)  # (B, A)
        return torch.cat([hidden, one_hot[:, :, None, None].expand(B, self.num_actions, h, w)], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# The paper's residual network.


class ResidualMuZeroModel(_ImageMuZeroModel):
    """The paper's residual MuZero network for images (arXiv 1911.08265, Appendix F), registered as
    ``"muzero_resnet"``.

    - representation ``h``: the downsampling stack (``downsample=True``; paper: 96x96 -> 6x6)::

          conv3x3 stride 2 -> downsample_channels      | downsample_blocks[0] residual blocks
          conv3x3 stride 2 -> channels                 | downsample_blocks[1] residual blocks
          avg pool 3x3 stride 2                        | downsample_blocks[2] residual blocks
          avg pool 3x3 stride 2

      (each convolution followed by norm and ReLU), or with ``downsample=False`` one ``conv3x3 -> norm -> ReLU`` stem
      at full resolution (small images); then ``num_blocks`` residual blocks, then per-sample min-max scaling. The
      hidden state is ``channels`` planes of the downsampled grid.
    - dynamics ``g``: ``conv3x3 -> norm -> ReLU`` over ``concat[hidden, A one-hot action planes]`` back to
      ``channels`` planes, ``num_blocks`` residual blocks, scaling; the reward head reads the new hidden state.
    - prediction ``f``: ``prediction_blocks`` residual blocks, then the value head and the policy head.
    - heads (AlphaZero's): ``conv1x1 -> <head>_head_channels planes -> norm -> ReLU -> flatten ->`` fully connected
      layers of widths ``head_layers`` (ReLU) ``->`` the output (``Sr``, ``Sv`` or ``A`` numbers; last layer
      zero-initialised).
    - residual block: ``conv3x3 -> norm -> ReLU -> conv3x3 -> norm -> (+ input) -> ReLU``.

    Options (``model_config["custom_model_config"]``, also accepted as keyword arguments; defaults in
    ``DEFAULT_CONFIG``, small enough for a CPU):

    ========================  ===========  ===========================================================================
    option                    default      paper (Atari) / notes
    ========================  ===========  ===========================================================================
    ``channels``              32           256 planes in every tower convolution and in the hidden state
    ``num_blocks``            2            16 residual blocks in each of the representation and dynamics towers
    ``prediction_blocks``     1            0 (AlphaZero heads on the hidden state); the reference uses 16
    ``downsample``            True         True (96x96 -> 6x6); False: full-resolution stem, for small images
    ``downsample_channels``   16           128 planes of the first stride-2 convolution
    ``downsample_blocks``     [1, 1, 1]    [2, 3, 3] residual blocks after the two convolutions and the first pool
    ``reward_head_channels``  4            not stated (AlphaZero's value head: 1); planes of the 1x1 reduction
    ``value_head_channels``   4            AlphaZero: 1
    ``policy_head_channels``  4            AlphaZero: 2
    ``head_layers``           [32]         AlphaZero: [256] in the value head; hidden widths of each head's MLP
    ``norm``                  "batch"      "batch" (AlphaZero); "layer" = GroupNorm(1, C), "none" = no norm
    ``channels_last``         "auto"       observation layout: True (H, W, C), False (C, H, W), "auto" (see below)
    ``scale_obs``             "auto"       divide observations by 255: True, False, "auto" (uint8 space, high 255)
    ========================  ===========  ===========================================================================

    ``channels_last="auto"`` reads a rank-3 observation as ``(H, W, C)`` when its last dimension is at most 16 and
    smaller than the other two (then it is permuted to ``(C, H, W)``), else as ``(C, H, W)``. A rank-2 observation is
    one plane ``(H, W)``. With ``norm="batch"`` the model must be in eval mode when acting (the policy, serving and
    evaluation code make sure of it; do the same if you call the model yourself), and a training batch of a single
    sample only works if the hidden grid is larger than 1x1. Unknown option names are an error.
    """

    REGISTERED_NAME: ClassVar[str] = "muzero_resnet"
    DEFAULT_CONFIG: ClassVar[Mapping[str, Any]] = {
        "channels": 32,
        "num_blocks": 2,
        "prediction_blocks": 1,
        "downsample": True,
        "downsample_channels": 16,
        "downsample_blocks": (1, 1, 1),
        "reward_head_channels": 4,
        "value_head_channels": 4,
        "policy_head_channels": 4,
        "head_layers": (32,),
        "norm": "batch",
        **_ImageMuZeroModel.DEFAULT_CONFIG,
    }

    def _build(self) -> None:
        o = self.options
        C, norm, A = o["channels"], o["norm"], self.num_actions
        in_channels, height, width = self.input_shape

        # representation: downsampling (or a full-resolution stem), then the tower
        if o["downsample"]:
            c1 = o["downsample_channels"]
            n1, n2, n3 = o["downsample_blocks"]
            pool = {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}
            self.downsample_net = nn.Sequential(
                _conv_norm_relu(in_channels, c1, norm, stride=2),
                *(ResidualBlock(c1, norm) for _ in range(n1)),
                _conv_norm_relu(c1, C, norm, stride=2),
                *(ResidualBlock(C, norm) for _ in range(n2)),
                nn.AvgPool2d(**pool),
                *(ResidualBlock(C, norm) for _ in range(n3)),
                nn.AvgPool2d(**pool),
            )
            for _ in range(4):
                height, width = _halve(height), _halve(width)
        else:
            self.downsample_net = _conv_norm_relu(in_channels, C, norm)
        self.hidden_shape: tuple[int, int, int] = (C, height, width)
        grid = (height, width)
        self.representation_tower = nn.Sequential(*(ResidualBlock(C, norm) for _ in range(o["num_blocks"])))

        # dynamics
        self.dynamics_stem = _conv_norm_relu(C + A, C, norm)
        self.dynamics_tower = nn.Sequential(*(ResidualBlock(C, norm) for _ in range(o["num_blocks"])))
        self.reward_head = _ConvHead(C, grid, o["reward_head_channels"], o["head_layers"], self.reward_support_size,
                                     norm)

        # prediction
        self.prediction_tower = nn.Sequential(*(ResidualBlock(C, norm) for _ in range(o["prediction_blocks"])))
        self.value_head = _ConvHead(C, grid, o["value_head_channels"], o["head_layers"], self.value_support_size,
                                    norm)
        self.policy_head = _ConvHead(C, grid, o["policy_head_channels"], o["head_layers"], A, norm)

    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> None:
        super()._check_options(options)
        for key in ("channels", "downsample_channels", "reward_head_channels", "value_head_channels",
                    "policy_head_channels"):
            options[key] = _int_at_least(key, options[key], 1)
        for key in ("num_blocks", "prediction_blocks"):
            options[key] = _int_at_least(key, options[key], 0)
        options["downsample"] = _bool("downsample", options["downsample"])
        options["downsample_blocks"] = _int_list("downsample_blocks", options["downsample_blocks"], 0, length=3)
        options["head_layers"] = _int_list("head_layers", options["head_layers"], 1)
        options["norm"] = _choice("norm", options["norm"], NORMS)

    def representation(self, obs: Tensor) -> Tensor:
        x = self.downsample_net(self._planes(obs))
        return scale_hidden_state(self.representation_tower(x))

    def dynamics(self, hidden: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        x = self.dynamics_stem(self._with_action_planes(hidden, action))
        next_hidden = scale_hidden_state(self.dynamics_tower(x))
        return next_hidden, self.reward_head(next_hidden)

    def prediction(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prediction_tower(hidden)
        return self.policy_head(x), self.value_head(x)


# ---------------------------------------------------------------------------------------------------------------------
# The reference's "TinyNetwork" idea.


class TinyConvMuZeroModel(_ImageMuZeroModel):
    """A small convolutional MuZero network (the reference implementation's "TinyNetwork"), registered as
    ``"muzero_tiny"``.

    - representation ``h``: one stage per entry ``c`` of ``conv_channels``: ``conv3x3 stride 2 -> c planes -> ReLU ->
      max pool 3x3 stride 2`` (``downsample=True``; each stage divides the sides by 4, so two stages take 96x96 to
      6x6) or ``conv3x3 stride 1 -> ReLU`` without pooling (``downsample=False``); then one tiny residual block and
      ``conv3x3 -> hidden_channels planes -> tanh``, then per-sample min-max scaling.
    - dynamics ``g``: ``concat[hidden, A one-hot action planes] ->`` one tiny residual block ``-> conv3x3 ->
      hidden_channels -> tanh``, scaling; the reward head is an MLP on the flattened new hidden state.
    - prediction ``f``: one tiny residual block, then the value MLP and the policy MLP on the flattened planes.
    - tiny residual block: ``conv3x3 -> ReLU -> conv3x3 -> (+ input) -> ReLU``, no normalisation (so no train / eval
      mode difference).
    - each MLP: hidden widths ``head_layers`` with ReLU, last layer zero-initialised.

    Options (``model_config["custom_model_config"]``, also as keyword arguments; defaults in ``DEFAULT_CONFIG``):

    ===================  ===========  ===================================================================
    option               default      reference TinyNetwork / notes
    ===================  ===========  ===================================================================
    ``conv_channels``    [16, 32]     [32, 64]; one stage per entry (at least one)
    ``downsample``       True         True (96x96 -> 6x6 with two stages); False: stride 1, no pooling
    ``hidden_channels``  32           64 planes of the hidden state
    ``head_layers``      [64]         [512]; hidden widths of the value, reward and policy MLPs
    ``channels_last``    "auto"       as for ``"muzero_resnet"``
    ``scale_obs``        "auto"       as for ``"muzero_resnet"``
    ===================  ===========  ===================================================================
    """

    REGISTERED_NAME: ClassVar[str] = "muzero_tiny"
    DEFAULT_CONFIG: ClassVar[Mapping[str, Any]] = {
        "conv_channels": (16, 32),
        "downsample": True,
        "hidden_channels": 32,
        "head_layers": (64,),
        **_ImageMuZeroModel.DEFAULT_CONFIG,
    }

    def _build(self) -> None:
        o = self.options
        H, A = o["hidden_channels"], self.num_actions
        channels, height, width = self.input_shape

        stages: list[nn.Module] = []
        for out_channels in o["conv_channels"]:
            if o["downsample"]:
                stages += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), nn.ReLU(),
                           nn.MaxPool2d(3, stride=2, padding=1)]
                height, width = _halve(_halve(height)), _halve(_halve(width))
            else:
                stages += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]
            channels = out_channels
        self.representation_net = nn.Sequential(
            *stages, TinyBlock(channels), nn.Conv2d(channels, H, 3, padding=1), nn.Tanh()
        )
        self.hidden_shape: tuple[int, int, int] = (H, height, width)
        flat = H * height * width

        self.dynamics_net = nn.Sequential(TinyBlock(H + A), nn.Conv2d(H + A, H, 3, padding=1), nn.Tanh())
        self.reward_head = mlp(flat, o["head_layers"], self.reward_support_size, "relu", zero_last=True)

        self.prediction_block = TinyBlock(H)
        self.value_head = mlp(flat, o["head_layers"], self.value_support_size, "relu", zero_last=True)
        self.policy_head = mlp(flat, o["head_layers"], A, "relu", zero_last=True)

    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> None:
        super()._check_options(options)
        options["conv_channels"] = _int_list("conv_channels", options["conv_channels"], 1, nonempty=True)
        options["downsample"] = _bool("downsample", options["downsample"])
        options["hidden_channels"] = _int_at_least("hidden_channels", options["hidden_channels"], 1)
        options["head_layers"] = _int_list("head_layers", options["head_layers"], 1)

    def representation(self, obs: Tensor) -> Tensor:
        return scale_hidden_state(self.representation_net(self._planes(obs)))

    def dynamics(self, hidden: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        next_hidden = scale_hidden_state(self.dynamics_net(self._with_action_planes(hidden, action)))
        return next_hidden, self.reward_head(next_hidden.flatten(1))

    def prediction(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prediction_block(hidden).flatten(1)
        return self.policy_head(x), self.value_head(x)


CONV_MODELS: dict[str, type[MuZeroModelV2]] = {
    ResidualMuZeroModel.REGISTERED_NAME: ResidualMuZeroModel,
    TinyConvMuZeroModel.REGISTERED_NAME: TinyConvMuZeroModel,
}
"""``custom_model`` name -> class, registered with RLlib's ``ModelCatalog`` by
:func:`rllib_muzero.registry.register_models`."""
