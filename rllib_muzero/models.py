"""MuZero networks as RLlib (old API stack) ``TorchModelV2`` models.

MuZero learns three functions (paper Section 3, Appendix B):

- representation ``h``: observation ``o_t`` -> hidden state ``s^0``,
- dynamics ``g``: ``(s^{k-1}, a^k)`` -> ``(s^k, r^k)``,
- prediction ``f``: ``s^k`` -> ``(p^k, v^k)``.

:class:`MuZeroModelV2` is the interface every MuZero network implements (the built-in one and a user's own); it gives
``initial_inference`` (``h`` then ``f``) and ``recurrent_inference`` (``g`` then ``f``) on top of the three functions
and plugs into RLlib as a ``TorchModelV2`` (``forward`` returns the policy logits, so RLlib's generic machinery works).
:class:`FullyConnectedMuZeroModel` ("muzero_fc") is the built-in network for 1-D observations.
:func:`check_muzero_model` validates any model against the interface with a dummy batch (used when the policy is built).

Value and reward heads output logits over categorical supports (see :mod:`rllib_muzero.support`); the model only knows
the support *sizes* (``value_support_size``, ``reward_support_size`` constructor kwargs), never the atoms or the value
transform, which belong to the loss and the policy.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import tree
from ray.rllib.models.torch.torch_modelv2 import TorchModelV2
from ray.rllib.policy.sample_batch import SampleBatch
from torch import Tensor, nn
from torch.nn import functional as F

from rllib_muzero.numpy_inference import HIDDEN_STATE_SCALE_EPS, NumpyMLPInference, dense_layers

__all__ = [
    "DEFAULT_MODEL_NAME",
    "FullyConnectedMuZeroModel",
    "ModelOptionError",
    "check_model_options",
    "merge_model_options",
    "mlp",
    "MuZeroModelV2",
    "NetworkOutput",
    "check_muzero_model",
    "scale_hidden_state",
]

DEFAULT_MODEL_NAME = "muzero_fc"  # FullyConnectedMuZeroModel's name in ModelCatalog (rllib_muzero/registry.py)

# HIDDEN_STATE_SCALE_EPS, the epsilon of the min-max scaling (paper Appendix G), is defined in numpy_inference.py, the
# lower of the two modules that scale hidden states, and imported from there.


class NetworkOutput(NamedTuple):
    """What ``initial_inference`` and ``recurrent_inference`` return (pseudocode ``NetworkOutput``).

    Attributes:
        hidden: ``(B, *H)`` hidden state ``s^k``, min-max scaled to [0, 1].
        reward_logits: ``(B, Sr)`` logits of the reward ``r^k`` over the reward support; ``None`` for the initial
            inference (there is no reward at ``k = 0``; the pseudocode returns the constant 0 there).
        policy_logits: ``(B, A)`` logits of the policy ``p^k``.
        value_logits: ``(B, Sv)`` logits of the value ``v^k`` over the value support.
    """

    hidden: Tensor
    reward_logits: Tensor | None
    policy_logits: Tensor
    value_logits: Tensor


def scale_hidden_state(s: Tensor) -> Tensor:
    """Min-max scale each sample's hidden state to [0, 1] over all its non-batch dimensions (paper Appendix G).

    ``s_scaled = (s - min(s)) / (max(s) - min(s) + 1e-8)`` per sample, so hidden states share the range of the one-hot
    action input of the dynamics. Works for ``(B, H)`` vectors and ``(B, C, H, W)`` planes alike (min and max taken over
    the whole sample, not per plane).
    """
    if s.dim() < 2:
        raise ValueError(f"hidden state must have a batch dimension and at least one more, got shape {tuple(s.shape)}")
    flat = s.reshape(s.shape[0], -1)
    s_min, s_max = torch.aminmax(flat, dim=1, keepdim=True)  # one pass instead of min() and max()
    if torch.is_grad_enabled():
        return ((flat - s_min) / (s_max - s_min + HIDDEN_STATE_SCALE_EPS)).reshape(s.shape)
    # Acting: the same operations in the same order, in place on the fresh intermediates (two allocations fewer).
    return (flat - s_min).div_(s_max.sub_(s_min).add_(HIDDEN_STATE_SCALE_EPS)).reshape(s.shape)


class MuZeroModelV2(TorchModelV2, nn.Module, metaclass=abc.ABCMeta):
    """Base class of every MuZero network: the public extension point for your own architecture.

    Subclass it, build your layers in ``__init__`` (after calling ``super().__init__``) and implement the three MuZero
    functions; ``B`` is the batch, ``H`` your hidden-state shape, ``A = action_space.n``, ``Sv`` / ``Sr`` the value /
    reward support sizes (``self.value_support_size``, ``self.reward_support_size``):

    - ``representation(obs) -> hidden``: ``obs`` ``(B, *obs_shape)`` as the policy receives it (possibly uint8; cast
      yourself) -> ``(B, *H)``. Scale the result with :func:`scale_hidden_state`.
    - ``dynamics(hidden, action) -> (next_hidden, reward_logits)``: ``hidden`` ``(B, *H)``, ``action`` int64 ``(B,)``
      -> ``(B, *H)`` (same shape, scaled) and ``(B, Sr)``. Feed the action as a one-hot vector (vector hidden states)
      or as one-hot planes (image hidden states), not as a scalar.
    - ``prediction(hidden) -> (policy_logits, value_logits)``: ``(B, *H)`` -> ``(B, A)`` and ``(B, Sv)``.

    Logits are unnormalised (the loss and the search apply the softmax). The hidden state is opaque to the rest of the
    library: any shape works as long as ``dynamics`` maps it to the same shape.

    The base class provides ``initial_inference`` / ``recurrent_inference`` (returning :class:`NetworkOutput`) and the
    RLlib ``forward`` (policy logits of the initial inference). Register your class with
    ``ModelCatalog.register_custom_model("my_net", MyNet)`` and select it with ``model={"custom_model": "my_net",
    "custom_model_config": {...}}``; the entries of ``custom_model_config`` arrive as keyword arguments of ``__init__``
    (RLlib's behaviour), next to ``value_support_size`` and ``reward_support_size``. :func:`check_muzero_model` runs
    when the policy is built and reports missing methods or wrong shapes.

    Example::

        class MyNet(MuZeroModelV2):
            def __init__(self, obs_space, action_space, num_outputs, model_config, name, *,
                         value_support_size, reward_support_size, width=128, **kwargs):
                super().__init__(obs_space, action_space, num_outputs, model_config, name,
                                 value_support_size=value_support_size, reward_support_size=reward_support_size)
                n_obs, A = obs_space.shape[0], action_space.n
                self.repr = nn.Linear(n_obs, width)
                self.dyn = nn.Linear(width + A, width)
                self.reward = nn.Linear(width, reward_support_size)
                self.policy = nn.Linear(width, A)
                self.value = nn.Linear(width, value_support_size)

            def representation(self, obs):
                return scale_hidden_state(self.repr(obs.float()))

            def dynamics(self, hidden, action):
                x = torch.cat([hidden, F.one_hot(action, self.num_actions).float()], dim=-1)
                next_hidden = scale_hidden_state(self.dyn(x))
                return next_hidden, self.reward(next_hidden)

            def prediction(self, hidden):
                return self.policy(hidden), self.value(hidden)

    Args:
        obs_space: Observation space (after RLlib's preprocessor, if any).
        action_space: Must be ``gymnasium.spaces.Discrete``.
        num_outputs: ``A`` (what RLlib's action distribution asks for) or ``None``; anything else is an error.
        model_config: RLlib's model config dict.
        name: Model name.
        value_support_size: ``Sv``, outputs of the value head: the atoms of its categorical support (>= 2), or 1 for a
            scalar head (``no_support``).
        reward_support_size: ``Sr``, the same for the reward head.
        **kwargs: Ignored here; subclasses take their options from them (``custom_model_config`` entries).
    """

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
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"MuZero models need a Discrete action space, got {action_space}")
        num_actions = int(action_space.n)
        if num_outputs is not None and num_outputs != num_actions:
            raise ValueError(
                f"`num_outputs` of a MuZero model is the number of actions ({num_actions}) or None, got {num_outputs}"
            )
        for arg, size in (("value_support_size", value_support_size), ("reward_support_size", reward_support_size)):
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise ValueError(
                    f"`{arg}` must be a positive integer (atoms of the support, or 1 for a scalar head), got {size!r}"
                )
        TorchModelV2.__init__(self, obs_space, action_space, num_actions, model_config, name)
        nn.Module.__init__(self)
        self.num_actions: int = num_actions
        self.value_support_size: int = int(value_support_size)
        self.reward_support_size: int = int(reward_support_size)
        self._last_batch_size: int | None = None

    # ---- the three MuZero functions (implement these) ----

    @abc.abstractmethod
    def representation(self, obs: Tensor) -> Tensor:
        """``h``: ``(B, *obs_shape)`` -> scaled hidden state ``(B, *H)``."""

    @abc.abstractmethod
    def dynamics(self, hidden: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """``g``: ``(hidden (B, *H), int64 action (B,))`` -> ``(scaled next hidden (B, *H), reward logits (B, Sr))``."""

    @abc.abstractmethod
    def prediction(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``f``: hidden ``(B, *H)`` -> policy logits ``(B, A)``, value logits ``(B, Sv)``."""

    # ---- what the loss and the search call ----

    def initial_inference(self, obs: Tensor) -> NetworkOutput:
        """Representation then prediction from a real observation (pseudocode ``initial_inference``)."""
        hidden = self.representation(obs)
        policy_logits, value_logits = self.prediction(hidden)
        return NetworkOutput(hidden, None, policy_logits, value_logits)

    def recurrent_inference(self, hidden: Tensor, action: Tensor | np.ndarray) -> NetworkOutput:
        """Dynamics then prediction from a hidden state and an action (pseudocode ``recurrent_inference``).

        ``action``: any integer tensor or array of shape ``(B,)``; it is converted to int64 on ``hidden``'s device.
        """
        action = torch.as_tensor(action, device=hidden.device).long()
        next_hidden, reward_logits = self.dynamics(hidden, action)
        policy_logits, value_logits = self.prediction(next_hidden)
        return NetworkOutput(next_hidden, reward_logits, policy_logits, value_logits)

    def can_batch_prediction_over_unroll(self) -> bool:
        """Whether the training loss may run ``prediction`` once on the hidden states of all ``K + 1`` unroll steps
        stacked along the batch, ``(K+1) B`` rows, instead of once per step (:func:`rllib_muzero.losses.unroll_loss`).

        Same function, fewer and larger matrix products: +8-9 % learner updates/s on the CPU learner benchmark
        under bf16-mixed in paired rounds (+3 % across processes), where the policy uses it (``docs/benchmarks.md``).
        True when this model's training-time ``initial_inference`` / ``recurrent_inference`` are the base class's
        composition of the three functions and no BatchNorm layer would normalise with the statistics of the stacked
        steps instead of each step's (``muzero_resnet`` with ``norm="batch"`` keeps the per-step calls). Override it
        to return False if your ``prediction`` mixes the samples of a batch in another way.
        """
        cls = type(self)
        composed = (cls.initial_inference in _COMPOSED_INITIAL_INFERENCE
                    and cls.recurrent_inference in _COMPOSED_RECURRENT_INFERENCE)
        return composed and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())

    # ---- RLlib's ModelV2 interface ----

    def forward(self, input_dict, state, seq_lens):
        """RLlib entry point: ``(policy_logits (B, A), state)`` of the initial inference on ``input_dict["obs"]``."""
        out = self.initial_inference(input_dict[SampleBatch.OBS])
        self._last_batch_size = out.policy_logits.shape[0]
        return out.policy_logits, state

    def value_function(self) -> Tensor:
        """Zeros of shape ``(B,)`` for the last ``forward`` batch.

        MuZero's values are categorical over a support the model does not know (only its size), so a scalar value is
        computed by the policy (``h_inverse(support_to_scalar(...))``). This method exists only because RLlib's
        generic code may call it; nothing in MuZero uses it.
        """
        if self._last_batch_size is None:
            raise ValueError("value_function() called before forward()")
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        return torch.zeros(self._last_batch_size, device=device)


# ---------------------------------------------------------------------------------------------------------------------
# The built-in fully connected network.

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
}


class ModelOptionError(ValueError):
    """A bad ``custom_model_config`` entry of a built-in network: the option, its value and what is accepted.

    A ``ValueError`` with the networks' own message; the fields let ``MuZeroConfig.validate()`` restate it in the
    config's one-line style (``Invalid MuZero config `model.custom_model_config.<key>`=value: expected ...``), since
    the config checks the options statically, before any network (or worker) is built.
    """

    def __init__(self, message: str, *, key: str, value: Any, expected: str) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.expected = expected


def model_option_error(key: str, value: Any, expected: str) -> ModelOptionError:
    """The error for a bad ``custom_model_config`` value: "`model.custom_model_config.<key>` must be <expected>"."""
    return ModelOptionError(f"`model.custom_model_config.{key}` must be {expected}, got {value!r}", key=key,
                            value=value, expected=expected)


def merge_model_options(model_class: type, model_config: Mapping[str, Any] | None,
                        kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A built-in network's options: ``model_class.DEFAULT_CONFIG`` updated by ``model_config["custom_model_config"]``
    and then by the constructor's keyword arguments (where RLlib passes them). Unknown names are an error: a typo
    would otherwise pass silently. Values are the caller's to check."""
    given = dict((model_config or {}).get("custom_model_config") or {})
    given.update(kwargs)
    unknown = sorted(set(given) - set(model_class.DEFAULT_CONFIG))
    if unknown:
        raise ModelOptionError(
            f"unknown `model.custom_model_config` option(s) {unknown} for {model_class.__name__}; "
            f"known: {sorted(model_class.DEFAULT_CONFIG)}",
            key=unknown[0], value=given[unknown[0]], expected=f"an option of {model_class.__name__}",
        )
    return {**model_class.DEFAULT_CONFIG, **given}


def check_model_options(model_class: type, model_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checks ``model_config["custom_model_config"]`` for a built-in network without building it; returns the
    resolved options.

    ``MuZeroConfig.validate()`` calls it so a misspelled or out-of-range network option fails in the driver, as one
    line, instead of inside every env runner once Ray has started. ``model_class`` must define
    ``_resolve_options(model_config, kwargs)`` (every built-in network does; a user's ``MuZeroModelV2`` is checked
    when it is built). Raises :class:`ModelOptionError`.
    """
    return model_class._resolve_options(model_config, {})


def mlp(in_size: int, layers: Sequence[int], out_size: int, activation: str, *, zero_last: bool) -> nn.Sequential:
    """``Linear -> activation`` for each hidden layer, then a plain ``Linear`` to ``out_size``."""
    modules: list[nn.Module] = []
    size = in_size
    for width in layers:
        modules += [nn.Linear(size, width), _ACTIVATIONS[activation]()]
        size = width
    last = nn.Linear(size, out_size)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    modules.append(last)
    return nn.Sequential(*modules)


def _run_mlp(mlp: Sequence[nn.Module], x: Tensor) -> Tensor:
    """``mlp(x)``, calling each layer's ``forward`` directly: the same result without ``nn.Module.__call__``'s hook
    dispatch (~2 us per layer, about a sixth of a 16-row recurrent inference in the search). Forward hooks registered
    on the layers of the built-in network are therefore not run (hooks on the model itself still are)."""
    for layer in mlp:
        x = layer.forward(x)
    return x


class FullyConnectedMuZeroModel(MuZeroModelV2):
    """MLP MuZero network for 1-D ``Box`` observations, registered as ``"muzero_fc"``.

    - representation: ``obs -> representation_layers -> hidden_size``, then :func:`scale_hidden_state`.
    - dynamics: ``concat[hidden, one_hot(action, A)] -> dynamics_layers -> hidden_size``, then scaled; the reward head
      ``next_hidden -> reward_layers -> Sr`` gives the reward logits.
    - prediction: value head ``hidden -> value_layers -> Sv`` and policy head ``hidden -> policy_layers -> A``.

    Every MLP is ``Linear -> activation`` per listed layer and a final ``Linear`` without activation. Observations are
    cast to float32 and flattened; no normalisation happens here (wrap the env to normalise).

    Acting path (no gradient): ``recurrent_inference`` runs the first layers of the reward, value and policy heads,
    which all read the new hidden state, as one stacked ``Linear`` (one matrix product instead of three; the stacked
    weights are rebuilt whenever a parameter changes, detected by torch's tensor version counters), and feeds the
    action to the dynamics by indexing a cached identity matrix instead of ``F.one_hot``. Each output element is the
    same dot product as in the separate layers (bit-identical on the CPU builds we test,
    ``tests/test_search_cases.py``). With gradients enabled (training) the separate layers run, so autograd sees the
    plain module graph. Subclasses that override ``dynamics`` or ``prediction`` always take the plain path.

    On the CPU the search does not call these torch methods at all: :meth:`numpy_inference` gives the same network in
    numpy (:mod:`rllib_muzero.numpy_inference`), several times cheaper per call at the search's batch sizes.

    The last layers of the value, reward and policy heads are zero-initialised, so a fresh network predicts uniform
    distributions: policy priors are uniform and value / reward are the mean atom, i.e. 0 on the usual symmetric
    supports ``[-m, m]``. This keeps early search and bootstrapped targets free of arbitrary random values (a common
    MuZero initialisation; the paper does not specify one). The gradients of the other layers of those heads are zero
    on the very first update only.

    Options (``model_config["custom_model_config"]``, also accepted as keyword arguments; defaults in
    ``DEFAULT_CONFIG``):

    - ``hidden_size`` (64): width of the hidden state ``H``.
    - ``representation_layers`` ([64]), ``dynamics_layers`` ([64]), ``reward_layers`` ([64]), ``value_layers`` ([64]),
      ``policy_layers`` ([64]): hidden-layer widths of each MLP (may be empty: a single ``Linear``).
    - ``activation`` ("relu"): one of "relu", "elu", "tanh", "leaky_relu", "silu", "swish", "gelu".

    Unknown option names are an error (typos otherwise pass silently). A subclass with more options extends
    ``DEFAULT_CONFIG``.
    """

    DEFAULT_CONFIG: ClassVar[Mapping[str, Any]] = {
        "hidden_size": 64,
        "representation_layers": (64,),
        "dynamics_layers": (64,),
        "reward_layers": (64,),
        "value_layers": (64,),
        "policy_layers": (64,),
        "activation": "relu",
    }

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
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(
                f"`model.custom_model` {DEFAULT_MODEL_NAME!r} ({type(self).__name__}) takes 1-D Box observations, got "
                f"observation space {obs_space}. Flatten the observations with an env wrapper, or write a "
                "MuZeroModelV2 for them (e.g. convolutional for images) and set `model.custom_model` to it."
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
        options = self._resolve_options(model_config, kwargs)
        self.options: dict[str, Any] = options
        act = options["activation"]
        hidden_size = options["hidden_size"]
        obs_size = int(np.prod(obs_space.shape))
        A = self.num_actions

        self.hidden_size: int = hidden_size
        self.representation_net = mlp(obs_size, options["representation_layers"], hidden_size, act, zero_last=False)
        self.dynamics_net = mlp(hidden_size + A, options["dynamics_layers"], hidden_size, act, zero_last=False)
        self.reward_head = mlp(hidden_size, options["reward_layers"], self.reward_support_size, act, zero_last=True)
        self.value_head = mlp(hidden_size, options["value_layers"], self.value_support_size, act, zero_last=True)
        self.policy_head = mlp(hidden_size, options["policy_layers"], A, act, zero_last=True)
        self.register_buffer("_action_eye", torch.eye(A), persistent=False)  # row a = one-hot of action a
        # The fused acting path (see the class docstring): only when every head has a hidden layer to stack and the
        # three MuZero functions are this class's own.
        cls = type(self)
        self._fuse_heads = (
            all(options[key] for key in ("reward_layers", "value_layers", "policy_layers"))
            and cls.dynamics is FullyConnectedMuZeroModel.dynamics
            and cls.prediction is FullyConnectedMuZeroModel.prediction
        )
        self._head_activation = _ACTIVATIONS[act]()
        # The heads' layers after the first Linear and its activation (plain lists: slicing a Sequential builds one).
        self._head_tails = tuple(list(head)[2:] for head in (self.reward_head, self.value_head, self.policy_head))
        self._head_firsts = tuple(head[0] for head in (self.reward_head, self.value_head, self.policy_head))
        self._head_widths = [layer.out_features for layer in self._head_firsts]
        self._stacked_heads: tuple[tuple, Tensor, Tensor] | None = None  # (versions key, weight, bias)
        self._numpy_inference: tuple[tuple, NumpyMLPInference | None] | None = None  # (versions key, engine)
        self._numpy_capable = all(
            getattr(cls, name) is getattr(FullyConnectedMuZeroModel, name)
            for name in ("representation", "dynamics", "prediction", "initial_inference", "recurrent_inference",
                         "_next_hidden")
        )

    @classmethod
    def _resolve_options(cls, model_config: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        options = merge_model_options(cls, model_config, kwargs)

        def positive_int(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise model_option_error(key, value, "a positive integer")
            return int(value)

        options["hidden_size"] = positive_int("hidden_size", options["hidden_size"])
        for key in ("representation_layers", "dynamics_layers", "reward_layers", "value_layers", "policy_layers"):
            layers = options[key]
            if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
                raise model_option_error(key, layers, "a list of layer widths")
            options[key] = [positive_int(key, width) for width in layers]
        if options["activation"] not in _ACTIVATIONS:
            raise model_option_error("activation", options["activation"], f"one of {sorted(_ACTIVATIONS)}")
        return options

    def representation(self, obs: Tensor) -> Tensor:
        x = obs.reshape(obs.shape[0], -1).to(torch.float32)
        return scale_hidden_state(_run_mlp(self.representation_net, x))

    def dynamics(self, hidden: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        next_hidden = self._next_hidden(hidden, action)
        return next_hidden, _run_mlp(self.reward_head, next_hidden)

    def prediction(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return _run_mlp(self.policy_head, hidden), _run_mlp(self.value_head, hidden)

    def _next_hidden(self, hidden: Tensor, action: Tensor) -> Tensor:
        """The dynamics' state transition: ``scale(dynamics_net(concat[hidden, one_hot(action)]))``."""
        action_one_hot = self._action_eye[action.long()].to(hidden.dtype)  # (B, A), rows of the identity
        return scale_hidden_state(_run_mlp(self.dynamics_net, torch.cat([hidden, action_one_hot], dim=-1)))

    def recurrent_inference(self, hidden: Tensor, action: Tensor | np.ndarray) -> NetworkOutput:
        """``dynamics`` then ``prediction``; without gradients the three heads' first layers run as one (see above)."""
        if not self._fuse_heads or torch.is_grad_enabled():
            return super().recurrent_inference(hidden, action)
        action = torch.as_tensor(action, device=hidden.device)
        next_hidden = self._next_hidden(hidden, action)
        weight, bias = self._stacked_first_layers()
        first = self._head_activation.forward(F.linear(next_hidden, weight, bias))
        reward_in, value_in, policy_in = first.split(self._head_widths, dim=1)
        reward_tail, value_tail, policy_tail = self._head_tails
        return NetworkOutput(next_hidden, _run_mlp(reward_tail, reward_in), _run_mlp(policy_tail, policy_in),
                             _run_mlp(value_tail, value_in))

    def _stacked_first_layers(self) -> tuple[Tensor, Tensor]:
        """The reward, value and policy heads' first ``Linear`` layers stacked into one, cached until a parameter
        changes (an optimizer step or ``load_state_dict`` bumps the tensors' versions; ``.to()`` makes new ones)."""
        params = [p for layer in self._head_firsts for p in layer._parameters.values()]  # weight, bias of each
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._stacked_heads is None or self._stacked_heads[0] != key:
            with torch.no_grad():
                weight = torch.cat(params[0::2])
                bias = torch.cat(params[1::2])
            self._stacked_heads = (key, weight, bias)
        return self._stacked_heads[1], self._stacked_heads[2]

    def numpy_inference(self) -> NumpyMLPInference | None:
        """This network as a :class:`~rllib_muzero.numpy_inference.NumpyMLPInference` for the search on the CPU (same
        functions, float32, 8x cheaper per call for one root and 3.5x for 8), holding a copy of the current weights
        that is refreshed when a parameter changes (torch's version counters, as for the stacked heads).

        ``None`` when the search must run through torch: a parameter off the CPU or not float32, an activation without
        a numpy counterpart (GELU), or a subclass overriding one of the MuZero functions.
        """
        if not self._numpy_capable:
            return None
        params = list(self.parameters())
        key = tuple((p.data_ptr(), p._version, p.device.type, p.dtype) for p in params)
        if self._numpy_inference is None or self._numpy_inference[0] != key:
            engine = None
            if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params):
                layers = [dense_layers(net) for net in (self.representation_net, self.dynamics_net, self.reward_head,
                                                        self.value_head, self.policy_head)]
                if all(layer is not None for layer in layers):
                    engine = NumpyMLPInference(*layers, num_actions=self.num_actions)
            self._numpy_inference = (key, engine)
        return self._numpy_inference[1]


# ---------------------------------------------------------------------------------------------------------------------
# Interface check, run when the policy is built.

# Training-time inferences that are the composition of representation / dynamics / prediction (the fully connected
# network's recurrent_inference differs only without gradients, in its fused acting path).
_COMPOSED_INITIAL_INFERENCE = (MuZeroModelV2.initial_inference,)
_COMPOSED_RECURRENT_INFERENCE = (MuZeroModelV2.recurrent_inference, FullyConnectedMuZeroModel.recurrent_inference)

_REQUIRED_METHODS = ("representation", "dynamics", "prediction", "initial_inference", "recurrent_inference")
_OUTPUT_FIELDS = NetworkOutput._fields


def _dummy_obs(obs_space: gym.spaces.Space, batch_size: int, device: torch.device) -> Any:
    """``batch_size`` reproducible samples of ``obs_space`` (a seeded copy, the caller's space is untouched)."""
    space = copy.deepcopy(obs_space)
    space.seed(0)
    samples = [space.sample() for _ in range(batch_size)]
    return tree.map_structure(lambda *xs: torch.as_tensor(np.stack(xs), device=device), *samples)


def _expect_shape(where: str, field: str, value: Any, shape: tuple[int | None, ...], hint: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{where}.{field} must be a torch.Tensor of shape {hint}, got {type(value).__name__}")
    ok = value.dim() == len(shape) and all(e is None or e == s for e, s in zip(shape, value.shape, strict=True))
    if not ok:
        raise ValueError(f"{where}.{field} must have shape {hint}, got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{where}.{field} must be a floating-point tensor, got {value.dtype}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{where}.{field} contains NaN or inf on a dummy batch")


def check_muzero_model(
    model: Any,
    obs_space: gym.spaces.Space,
    action_space: gym.spaces.Space,
    *,
    value_support_size: int | None = None,
    reward_support_size: int | None = None,
    batch_size: int = 2,
) -> None:
    """Check that ``model`` implements the MuZero network interface, by running it on a dummy batch.

    Checks: ``model`` is a ``TorchModelV2`` and ``nn.Module``; it has ``representation``, ``dynamics``, ``prediction``,
    ``initial_inference`` and ``recurrent_inference``; ``initial_inference`` on ``batch_size`` samples of ``obs_space``
    returns a :class:`NetworkOutput` with ``reward_logits=None``, policy logits ``(B, A)`` and value logits ``(B, Sv)``;
    ``recurrent_inference`` with the actions 0 and ``A - 1`` returns a hidden state of the initial one's shape, reward
    logits ``(B, Sr)`` and the same policy / value shapes; all outputs finite floats. The hidden-state scaling is not
    checked (it is the network's choice).

    The model runs in eval mode without gradients (its train/eval mode is restored afterwards).

    Args:
        model: The model to check.
        obs_space: Observation space the model receives (after preprocessing).
        action_space: The Discrete action space.
        value_support_size: ``Sv``; defaults to ``model.value_support_size`` (only the rank is checked if neither).
        reward_support_size: ``Sr``; defaults to ``model.reward_support_size``.
        batch_size: Size of the dummy batch.

    Raises:
        TypeError: naming the missing base class or methods, or an output of the wrong type.
        ValueError: naming the output with the wrong shape (expected and actual) or non-finite values.
    """
    if not isinstance(model, TorchModelV2) or not isinstance(model, nn.Module):
        raise TypeError(
            f"a MuZero model must be a TorchModelV2 and an nn.Module (subclass rllib_muzero.models.MuZeroModelV2), "
            f"got {type(model).__name__}"
        )
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"{type(model).__name__} lacks the MuZero method(s) {missing}; subclass "
            "rllib_muzero.models.MuZeroModelV2 and implement representation, dynamics and prediction"
        )
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"MuZero needs a Discrete action space, got {action_space}")
    B, A = batch_size, int(action_space.n)
    Sv = value_support_size if value_support_size is not None else getattr(model, "value_support_size", None)
    Sr = reward_support_size if reward_support_size is not None else getattr(model, "reward_support_size", None)
    name = type(model).__name__

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            obs = _dummy_obs(obs_space, B, device)
            initial = model.initial_inference(obs)
            where = f"{name}.initial_inference(obs)"
            _check_output_type(where, initial)
            if not isinstance(initial.hidden, Tensor) or initial.hidden.dim() < 2 or initial.hidden.shape[0] != B:
                raise ValueError(
                    f"{where}.hidden must be a tensor (B, *H) with B={B}, got "
                    f"{tuple(initial.hidden.shape) if isinstance(initial.hidden, Tensor) else type(initial.hidden)}"
                )
            if initial.reward_logits is not None:
                raise ValueError(f"{where}.reward_logits must be None (no reward at the root)")
            _expect_shape(where, "policy_logits", initial.policy_logits, (B, A), f"(B, A) = ({B}, {A})")
            _expect_shape(where, "value_logits", initial.value_logits, (B, Sv), f"(B, Sv) = ({B}, {Sv})")

            actions = torch.tensor([0, A - 1] * (B // 2) + [0] * (B % 2), dtype=torch.long, device=device)
            recurrent = model.recurrent_inference(initial.hidden, actions)
            where = f"{name}.recurrent_inference(hidden, action)"
            _check_output_type(where, recurrent)
            hidden_shape = tuple(initial.hidden.shape)
            _expect_shape(where, "hidden", recurrent.hidden, hidden_shape, f"{hidden_shape} (the initial hidden's)")
            _expect_shape(where, "reward_logits", recurrent.reward_logits, (B, Sr), f"(B, Sr) = ({B}, {Sr})")
            _expect_shape(where, "policy_logits", recurrent.policy_logits, (B, A), f"(B, A) = ({B}, {A})")
            _expect_shape(where, "value_logits", recurrent.value_logits, (B, Sv), f"(B, Sv) = ({B}, {Sv})")
    finally:
        model.train(was_training)


def _check_output_type(where: str, out: Any) -> None:
    missing = [f for f in _OUTPUT_FIELDS if not hasattr(out, f)]
    if missing:
        raise TypeError(f"{where} must return a NetworkOutput{_OUTPUT_FIELDS}, got {type(out).__name__}")
