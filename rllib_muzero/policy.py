"""``MuZeroTorchPolicy``: acting by batched MCTS and learning by the MuZero loss, on RLlib's old API stack.

RLlib glue only: the search is :func:`rllib_muzero.mcts.muzero_search`, the loss
:func:`rllib_muzero.losses.muzero_loss`, the networks implement :class:`rllib_muzero.models.MuZeroModelV2`.
This class turns network outputs into the search's plain arrays, picks actions from visit counts, and applies
optimizer steps.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.models import ModelCatalog
from ray.rllib.models.modelv2 import restore_original_dimensions
from ray.rllib.policy.sample_batch import SampleBatch
from ray.rllib.policy.torch_policy_v2 import TorchPolicyV2
from ray.rllib.policy.view_requirement import ViewRequirement
from ray.rllib.utils.typing import AlgorithmConfigDict, TensorType

from rllib_muzero import columns
from rllib_muzero.acting import (
    AnySearchOutput,
    make_supports,
    policy_targets,
    search_actions,
    search_with_model,
    to_scalar,
)
from rllib_muzero.consistency import ConsistencyHeads
from rllib_muzero.losses import LossOutput, compile_unroll_loss, muzero_loss
from rllib_muzero.mcts import SearchWorkspace
from rllib_muzero.models import MuZeroModelV2, check_muzero_model
from rllib_muzero.support import DiscreteSupport, head_size

# The learner's options that this module implements; MuZeroConfig.validate() checks against these same names.
BF16_MIXED = "bf16-mixed"
LEARNER_PRECISIONS = ("float32", BF16_MIXED)
OPTIMIZERS = {
    "sgd": lambda params, c, **kw: torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"],
                                                   weight_decay=c["weight_decay"], **kw),
    "rmsprop": lambda params, c, **kw: torch.optim.RMSprop(params, lr=c["lr"], momentum=c["momentum"],
                                                           weight_decay=c["weight_decay"], **kw),
    "adam": lambda params, c, **kw: torch.optim.Adam(params, lr=c["lr"], weight_decay=c["weight_decay"], **kw),
    "adamw": lambda params, c, **kw: torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["weight_decay"], **kw),
}
_FUSED_OPTIMIZERS = ("sgd", "adam", "adamw")  # torch's fused (single-kernel) implementations exist for these


def make_optimizer(name: str, params: list[torch.nn.Parameter], config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The learner's optimizer ``name`` (``optimizer_type``) over ``params``, in torch's fused implementation where
    torch has one for this optimizer and these parameters' device, else its default one.

    Why fused: on the CPU, torch's default for Adam/AdamW/SGD is a Python loop over the parameters (its multi-tensor
    "foreach" path is CUDA-only by default); the fused kernel does the same arithmetic in one call per group, 0.63 ms
    -> 0.15 ms per step on the CartPole network (``docs/benchmarks.md``, learner speed). Same update rule; results
    agree to float32 rounding, not bit for bit. Fused CPU kernels do not bump the parameters' version counters, on
    which the acting copies are keyed: :meth:`MuZeroTorchPolicy.learn_on_replay_batch` bumps them after each step.
    """
    # torch checks a fused optimizer's parameters only at its first step (this torch) or at construction (older
    # ones, which also had no fused CPU kernels): decide here, for the devices and dtypes that have the kernels.
    if name in _FUSED_OPTIMIZERS and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return OPTIMIZERS[name](params, config, fused=True)
        except (RuntimeError, TypeError):  # a device or dtype without fused kernels, or a torch without the option
            pass
    return OPTIMIZERS[name](params, config)


def split_action_mask_space(observation_space: gym.Space, mask_key: str, num_actions: int
                            ) -> tuple[str | None, gym.Space]:
    """``(mask key or None, the space the network sees)`` for a (possibly RLlib-flattened) observation space.

    A Dict observation with ``mask_key`` must hold exactly one other entry (RLlib's convention: "observations") and a
    mask of shape (num_actions,); anything else is refused with a message.
    """
    original = getattr(observation_space, "original_space", observation_space)
    if not isinstance(original, gym.spaces.Dict) or mask_key not in original.spaces:
        return None, observation_space
    mask_space = original.spaces[mask_key]
    if mask_space.shape != (num_actions,):
        raise ValueError(f"The action mask `{mask_key}` has shape {mask_space.shape}; expected ({num_actions},): one "
                         "entry per action of the Discrete action space (1 = legal).")
    others = [k for k in original.spaces if k != mask_key]
    if len(others) != 1:
        raise ValueError(f"A Dict observation with an action mask `{mask_key}` must have exactly one other entry (e.g. "
                         f"'observations'), got {others}.")
    return mask_key, original.spaces[others[0]]


class PreStepCopy:
    """What one learner update may change, copied before the update so that a non-finite update can be undone.

    An update changes the trained parameters (optimizer step), the networks' buffers (BatchNorm running statistics,
    moved by the forward pass in training mode) and the optimizer's per-parameter state (Adam's moments and step
    count, SGD's momentum). The guard in :meth:`MuZeroTorchPolicy.learn_on_replay_batch` calls :meth:`take` before
    the forward pass and, when the loss, the gradient, the priorities or anything the step produced is not finite,
    :meth:`restore`: the policy is then exactly as before the update (bit for bit), whatever made it non-finite
    (``lr`` far too high, an overflowing second moment, an inf observation that reached BatchNorm's statistics).

    This runs on every learner update, so the copy goes into buffers allocated once and reused (reallocated only
    when the set of tensors changes, i.e. after the optimizer's first step creates its state), with one fused
    ``torch._foreach_copy_``; :meth:`all_finite` is one fused reduction and a single host sync. :meth:`restore` is
    the rare path and may allocate.
    """

    def __init__(self) -> None:
        self._sources: list[torch.Tensor] = []  # tensors copied, in place: parameters, buffers, optimizer state
        self._buffers: list[torch.Tensor] = []  # their copies (reused from update to update)
        self._shapes: list[tuple[torch.Size, torch.dtype]] = []
        self._num_module_tensors = 0  # parameters and buffers come first in _sources, optimizer state after
        # Per optimized parameter: (parameter, keys of its tensor state in _sources order, its non-tensor state).
        self._optimizer_layout: list[tuple[torch.Tensor, tuple[str, ...], dict[str, Any]]] = []
        self._optimizer: torch.optim.Optimizer | None = None

    @staticmethod
    def _module_tensors(modules: list[torch.nn.Module]) -> list[torch.Tensor]:
        return [t for m in modules for t in (*m.parameters(), *m.buffers())]

    @torch.no_grad()
    def take(self, modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> None:
        """Copies the parameters and buffers of ``modules`` and ``optimizer``'s state (call before the update)."""
        sources = self._module_tensors(modules)
        num_module_tensors = len(sources)
        layout = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p) or {}  # .get: the state is a defaultdict, do not create entries
                tensor_keys = tuple(k for k, v in state.items() if isinstance(v, torch.Tensor))
                layout.append((p, tensor_keys, {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}))
                sources.extend(state[k] for k in tensor_keys)
        shapes = [(s.shape, s.dtype) for s in sources]
        if shapes != self._shapes:
            self._buffers = [torch.empty_like(s, memory_format=torch.preserve_format) for s in sources]
            self._shapes = shapes
        torch._foreach_copy_(self._buffers, sources)
        self._sources, self._num_module_tensors = sources, num_module_tensors
        self._optimizer_layout, self._optimizer = layout, optimizer

    @torch.no_grad()
    def all_finite(self, modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> bool:
        """Whether every floating-point parameter, buffer and optimizer-state tensor is finite (NaN/inf-free)."""
        tensors = self._module_tensors(modules)
        for state in optimizer.state.values():  # read now: the first step creates the state
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        tensors = [t for t in tensors if t.is_floating_point() and t.numel() > 0]
        if not tensors:
            return True
        # The 2-norm of each tensor: NaN or inf anywhere makes it non-finite (~4x faster than ord=inf on CPU). In
        # the tensors' own dtype first (one fused kernel); a finite result proves every entry finite. A non-finite
        # one is either a NaN/inf entry or an overflow of finite values beyond float32's range: only then, again
        # accumulated in float64, which finite float32 values cannot overflow (numel * (3.4e38)^2 << 1.8e308).
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, 2))).all()):
            return True
        norms = torch._foreach_norm(tensors, 2, dtype=torch.float64)
        return bool(torch.isfinite(torch.stack(norms)).all())

    @torch.no_grad()
    def restore(self) -> None:
        """Puts back what :meth:`take` copied: parameters and buffers in place (the optimizer keeps its Parameter
        objects), the optimizer state as it was (state the update created is dropped)."""
        for source, copy_ in zip(self._sources[:self._num_module_tensors], self._buffers):
            source.copy_(copy_)
        optimizer = self._optimizer
        if optimizer is None:
            return
        copies = iter(self._buffers[self._num_module_tensors:])
        for p, tensor_keys, others in self._optimizer_layout:
            state = {k: next(copies).clone() for k in tensor_keys}
            state.update(others)
            if state:
                optimizer.state[p] = state
            else:
                optimizer.state.pop(p, None)


class MuZeroTorchPolicy(TorchPolicyV2):
    """Old-stack RLlib policy whose action computation runs MuZero's search over the whole observation batch.

    Extra outputs written into the sample batch (declared as view requirements, so the sampler keeps them):
    ``columns.SEARCH_ROOT_VALUE`` (nu_t), ``columns.SEARCH_POLICY`` (pi_t, normalised visit counts),
    ``columns.SEARCH_Q_MAX`` and ``columns.SEARCH_MAX_DEPTH``.
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, config: AlgorithmConfigDict):
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"MuZero needs a Discrete action space, got {action_space!r}.")
        self.value_support, self.reward_support = make_supports(config)  # None: scalar heads (`no_support`)
        self.action_mask_key, self.model_observation_space = split_action_mask_space(
            observation_space, config.get("action_mask_key", "action_mask"), int(action_space.n))
        super().__init__(observation_space, action_space, config, max_seq_len=1)
        check_muzero_model(self.model, self.model_observation_space, action_space)
        if self.consistency_heads is not None:  # RLlib's optimizer bookkeeping only knows the network's parameters
            self.consistency_heads.to(self.device)  # once: .to() keeps the Parameter objects the optimizer holds
            self._optimizers[0].add_param_group({"params": list(self.consistency_heads.parameters())})
        num_actions = int(action_space.n)
        self.view_requirements[columns.SEARCH_ROOT_VALUE] = ViewRequirement(
            space=gym.spaces.Box(-np.inf, np.inf, (), np.float32), used_for_compute_actions=False)
        self.view_requirements[columns.SEARCH_POLICY] = ViewRequirement(
            space=gym.spaces.Box(0.0, 1.0, (num_actions,), np.float32), used_for_compute_actions=False)
        self.view_requirements[columns.SEARCH_Q_MAX] = ViewRequirement(
            space=gym.spaces.Box(-np.inf, np.inf, (), np.float32), used_for_compute_actions=False)
        self.view_requirements[columns.SEARCH_MAX_DEPTH] = ViewRequirement(
            space=gym.spaces.Box(0, np.iinfo(np.int32).max, (), np.int32), used_for_compute_actions=False)
        self.view_requirements[columns.STEP_INFOS] = ViewRequirement(
            data_col=SampleBatch.INFOS, shift=1, used_for_compute_actions=False)
        # The search reads the observations only: RLlib need not assemble the other columns for every action
        # computation, and nothing downstream (the replay) reads previous actions / rewards or next observations
        # (o_{t+1} is the next row's o_t): ~25% less sampler time.
        for key in (SampleBatch.PREV_ACTIONS, SampleBatch.PREV_REWARDS, SampleBatch.NEXT_OBS):
            self.view_requirements.pop(key, None)
        for key, requirement in self.view_requirements.items():
            if key != SampleBatch.OBS:
                requirement.used_for_compute_actions = False
        # One generator per policy instance, derived from the config seed and this runner's index, so runners
        # never share noise streams; without a seed, fresh OS entropy.
        seed = config.get("seed")
        entropy = [int(seed), int(config.get("worker_index", 0))] if seed is not None else None
        self.rng = np.random.default_rng(np.random.SeedSequence(entropy))
        self._workspace = SearchWorkspace()
        self.num_nonfinite_updates = 0
        self._pre_step = PreStepCopy()  # the learner's undo copy of a non-finite update (learn_on_replay_batch)
        self.last_search: AnySearchOutput | None = None
        self._target_model: MuZeroModelV2 | None = None  # built by the learner on first use (target_model())
        self._target_updated_at = 0  # num_grad_updates when the target network was last refreshed
        self._reanalyse_rng: np.random.Generator | None = None  # root noise of policy reanalyse, made on first use
        # `torch_compile_learner` (RLlib's option): the loss's unroll compiled on the first learner update, here only
        # (acting never runs it); None: eager.
        self._unroll_loss = compile_unroll_loss(
            backend=config.get("torch_compile_learner_dynamo_backend", "inductor"),
            mode=config.get("torch_compile_learner_dynamo_mode"),
            cpp_wrapper=self.device.type == "cpu",
        ) if config.get("torch_compile_learner") else None

    # ------------------------------------------------------------------ building
    def make_model(self) -> MuZeroModelV2:
        """The MuZero network; with ``consistency_loss_weight > 0`` also EfficientZero's projection / prediction
        heads (``self.consistency_heads``, beside the network: acting, weight sync and serving never see them)."""
        model = self._make_network()
        self.consistency_heads: ConsistencyHeads | None = None
        if float(self.config.get("consistency_loss_weight", 0.0)) > 0.0:
            dummy = torch.zeros((2, *self.model_observation_space.shape),
                                dtype=torch.as_tensor(self.model_observation_space.sample()).dtype)
            training = model.training
            model.eval()  # no BatchNorm statistics from the dummy batch
            with torch.no_grad():
                hidden_shape = tuple(model.representation(dummy).shape[1:])
            model.train(training)
            self.consistency_heads = ConsistencyHeads(hidden_shape, int(self.config["consistency_projection_size"]))
        return model

    def _init_model_and_dist_class(self) -> tuple[MuZeroModelV2, type]:
        """RLlib's, without its whole-model ``torch.compile`` under ``torch_compile_learner``: on the old stack RLlib
        would wrap the network itself (with the *worker* backend, "onnxrt" by default, on the local runner), which
        the search's numpy inference and the network's own methods bypass anyway. MuZero compiles the learner's loss
        instead (:func:`~rllib_muzero.losses.compile_unroll_loss`, ``self._unroll_loss``)."""
        dist_class, _ = ModelCatalog.get_action_dist(self.action_space, self.config["model"], framework="torch")
        return self.make_model(), dist_class

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        """Everything the optimizer updates: the network, plus the consistency heads when they exist."""
        params = list(self.model.parameters())
        if self.consistency_heads is not None:
            params += list(self.consistency_heads.parameters())
        return params

    def _trained_modules(self) -> list[torch.nn.Module]:
        """The modules a learner update changes: the network, plus the consistency heads when they exist."""
        return [self.model] if self.consistency_heads is None else [self.model, self.consistency_heads]

    def _make_network(self) -> MuZeroModelV2:
        return ModelCatalog.get_model_v2(
            obs_space=self.model_observation_space,
            action_space=self.action_space,
            num_outputs=int(self.action_space.n),
            model_config=self.config["model"],
            framework="torch",
            name="muzero_model",
            value_support_size=head_size(self.value_support),
            reward_support_size=head_size(self.reward_support),
        )

    def optimizer(self) -> torch.optim.Optimizer:
        name = str(self.config["optimizer_type"]).lower()
        return make_optimizer(name, list(self.model.parameters()), self.config)

    # ------------------------------------------------------------------ acting
    def split_observations(self, obs: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
        """(model observations, invalid-action mask [B, A] or None) of a batch of (flattened) observations.

        With a Dict observation holding ``action_mask_key`` (RLlib's convention), RLlib flattens it; this restores
        the parts: the network sees only the other entry, the search gets ``mask == 0`` as illegal root actions.
        """
        if self.action_mask_key is None:
            return obs, None
        parts = restore_original_dimensions(obs, self.observation_space, "torch")
        mask = parts[self.action_mask_key].reshape(len(obs), -1)
        model_obs = next(v for k, v in parts.items() if k != self.action_mask_key)
        return model_obs, (mask <= 0.5).cpu().numpy()

    def current_temperature(self) -> float:
        """Visit-softmax temperature for acting.

        With ``fixed_temperatures`` (one per env runner, reference's per-actor temperatures) runner ``i`` (1-based;
        the local runner 0 when it samples alone) always uses entry ``i - 1`` (entry 0 for the local runner).
        Otherwise the schedule ``visit_softmax_temperatures`` over ``visit_softmax_steps`` learner updates applies
        (paper Appendix D).
        """
        fixed = self.config.get("fixed_temperatures")
        if fixed:
            # Evaluation runners (their own numbering) clamp into the list.
            index = min(max(int(self.config.get("worker_index", 0)) - 1, 0), len(fixed) - 1)
            return float(fixed[index])
        temperatures = self.config["visit_softmax_temperatures"]
        steps = self.config["visit_softmax_steps"]
        index = int(np.searchsorted(np.asarray(steps), self.num_grad_updates, side="right"))
        return float(temperatures[index])

    def to_scalar(self, logits: torch.Tensor, support: DiscreteSupport | None) -> np.ndarray:
        """Scalar (B,) numpy values of categorical logits (B, S): softmax expectation, then h^-1 if transformed."""
        return to_scalar(logits, support, bool(self.config["use_target_transform"]))

    def search(self, obs: np.ndarray, *, explore: bool, num_simulations: int | None = None,
               rng: np.random.Generator | None = None, model: MuZeroModelV2 | None = None) -> AnySearchOutput:
        """Runs one batched search from the observations ``obs`` [B, *obs_shape] (paper Appendix B).

        ``rng`` supplies the root noise when exploring (default: this policy's own generator); ``model`` searches
        with another network of the same architecture (the target network, for reanalyse).
        """
        model = self.model if model is None else model
        model.eval()
        obs_t, invalid_actions = self.split_observations(torch.as_tensor(np.asarray(obs), device=self.device))
        return search_with_model(
            model, obs_t, self.config,
            value_support=self.value_support, reward_support=self.reward_support,
            use_target_transform=bool(self.config["use_target_transform"]),
            explore=explore, rng=self.rng if rng is None else rng, invalid_actions=invalid_actions,
            workspace=self._workspace, num_simulations=num_simulations,
        )

    def compute_actions_from_input_dict(
        self,
        input_dict: dict[str, TensorType],
        explore: bool | None = None,
        timestep: int | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, list, dict[str, np.ndarray]]:
        """Searches all observations of the batch at once and acts on the result
        (:func:`~rllib_muzero.acting.search_actions`: visit counts at the scheduled temperature for pUCT, the search's
        own action for Gumbel; greedy and noise-free when not exploring)."""
        explore = self.config["explore"] if explore is None else explore
        obs = input_dict[SampleBatch.OBS]
        if isinstance(obs, torch.Tensor):
            obs = obs.cpu().numpy()
        result = self.search(obs, explore=explore)
        self.last_search = result
        temperature = self.current_temperature() if explore else 0.0
        actions = search_actions(result, temperature, self.rng)
        policy = policy_targets(result)
        visited = result.visit_counts > 0
        q_max = np.where(visited, result.q_values, -np.inf).max(axis=1).astype(np.float32)
        self.global_timestep += len(actions)
        extras = {
            columns.SEARCH_ROOT_VALUE: result.root_value.astype(np.float32),
            columns.SEARCH_POLICY: policy,
            columns.SEARCH_Q_MAX: q_max,
            columns.SEARCH_MAX_DEPTH: result.max_depth.astype(np.int32),
        }
        return actions, [], extras

    def postprocess_trajectory(self, sample_batch: SampleBatch, other_agent_batches: Any = None,
                               episode: Any = None) -> SampleBatch:
        """Records the action the env executed where a wrapper replaced the agent's (``info["executed_action"]``,
        :data:`~rllib_muzero.columns.INFO_EXECUTED_ACTION`, e.g. ``avoid_repeat``): the replay trains the dynamics
        on ``(s_t, a_t) -> r_{t+1}, s_{t+1}``, so ``a_t`` must be the action that produced them."""
        infos = sample_batch.get(columns.STEP_INFOS)
        if infos is not None and len(infos):
            replaced = [(t, info[columns.INFO_EXECUTED_ACTION]) for t, info in enumerate(infos)
                        if isinstance(info, dict) and columns.INFO_EXECUTED_ACTION in info]
            if replaced:
                actions = np.array(sample_batch[SampleBatch.ACTIONS], copy=True)
                for t, action in replaced:
                    actions[t] = action
                sample_batch[SampleBatch.ACTIONS] = actions
        return sample_batch

    # ------------------------------------------------------------------ target network and reanalyse
    def target_model(self) -> MuZeroModelV2:
        """The target network: a frozen copy of the network, refreshed every ``target_update_interval`` learner
        updates (:meth:`learn_on_replay_batch`). Built from the current weights on first use, so env runners, which
        never reanalyse, never hold one. Used for the reanalysed bootstrap values (MuZero Appendix H, "Reanalyze":
        "we use a target network ... to compute the value targets"; EfficientZero refreshes it every 200 updates)."""
        if self._target_model is None:
            self._target_model = copy.deepcopy(self.model)
            self._target_model.requires_grad_(False)
            self._target_model.eval()
            self._target_updated_at = self.num_grad_updates
        return self._target_model

    def _refresh_target_model(self) -> None:
        interval = int(self.config["target_update_interval"])
        if self._target_model is not None and self.num_grad_updates - self._target_updated_at >= interval:
            self._target_model.load_state_dict(self.model.state_dict())
            self._target_updated_at = self.num_grad_updates

    def target_network_version(self) -> int:
        """The learner update count at the target network's last refresh: a new number means new weights (what the
        reanalyse workers key their copies on)."""
        self.target_model()
        return int(self._target_updated_at)

    def target_network_weights(self) -> dict[str, np.ndarray]:
        """The target network's weights in :meth:`get_weights`' format (numpy arrays), for the reanalyse workers."""
        return {name: tensor.detach().cpu().numpy() for name, tensor in self.target_model().state_dict().items()}

    @torch.no_grad()
    def reanalyse_values(self, obs: np.ndarray) -> np.ndarray:
        """Value reanalyse: ``(M, *obs) -> (M,)`` scalar values of stored observations by the target network (one
        batched ``initial_inference``; softmax expectation over the value support, then h^-1), the replay's
        ``value_fn`` (:meth:`~rllib_muzero.replay.SequenceReplayBuffer.build_batch`)."""
        model = self.target_model()
        obs_t = self.split_observations(torch.as_tensor(np.asarray(obs), device=self.device))[0]
        with self.learner_autocast():
            out = model.initial_inference(obs_t)
        return self.to_scalar(out.value_logits.float(), self.value_support)

    def reanalyse_policies(self, obs: np.ndarray) -> np.ndarray:
        """Policy reanalyse: ``(M, *obs) -> (M, A)`` fresh policy targets from one batched search with the target
        network, root noise as when acting (EfficientZero), from a generator of its own (the acting noise stream is
        untouched); the ``search_fn`` of :func:`~rllib_muzero.reanalyse.reanalyse_policy_targets`."""
        result = self.search(obs, explore=True, rng=self._reanalyse_generator(), model=self.target_model())
        return policy_targets(result)

    def _reanalyse_generator(self) -> np.random.Generator:
        """The generator of policy reanalyse's root noise, made on first use from the config seed and runner index."""
        if self._reanalyse_rng is None:
            seed = self.config.get("seed")
            entropy = [int(seed), int(self.config.get("worker_index", 0)), 7] if seed is not None else None
            self._reanalyse_rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return self._reanalyse_rng

    # ------------------------------------------------------------------ learning
    def learner_autocast(self) -> contextlib.AbstractContextManager:
        """The precision of the learner's forward passes (``learner_precision``): ``torch.autocast`` to bfloat16 on
        the learner's device for "bf16-mixed" (matrix products in bf16, the losses cast back to float32 by
        :func:`~rllib_muzero.losses.muzero_loss`), a no-op for "float32"."""
        if self.config.get("learner_precision", "float32") == BF16_MIXED:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, model: MuZeroModelV2, dist_class: Any, train_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The MuZero loss (paper eq. 1) of a replay batch (keys in :mod:`rllib_muzero.columns`)."""
        out = muzero_loss(
            model,
            train_batch,
            value_support=self.value_support,
            reward_support=self.reward_support,
            use_target_transform=bool(self.config["use_target_transform"]),
            scalar_loss=str(self.config["scalar_loss"]),
            value_loss_weight=float(self.config["value_loss_weight"]),
            reward_loss_weight=float(self.config["reward_loss_weight"]),
            policy_loss_weight=float(self.config["policy_loss_weight"]),
            consistency_heads=self.consistency_heads,
            consistency_loss_weight=float(self.config["consistency_loss_weight"]),
            unroll=self._unroll_loss,
            # prediction once on all unroll steps: faster in bf16, slower in float32 (losses.unroll_loss)
            batch_prediction=self.config.get("learner_precision", "float32") == BF16_MIXED,
        )
        model.tower_stats["muzero_loss_output"] = out
        return out.total

    def current_lr(self) -> float:
        """Learning rate of the next update, t = learner updates so far (paper pseudocode's ExponentialDecay):

            lr(t) = lr * min(1, (t + 1) / lr_warmup_steps) * lr_decay_rate ^ (t / lr_decay_steps)

        (the warm-up factor is 1 when ``lr_warmup_steps`` is 0; ``lr_decay_rate`` 1 keeps ``lr`` constant).
        """
        c = self.config
        t = self.num_grad_updates
        warmup = min(1.0, (t + 1) / c["lr_warmup_steps"]) if c["lr_warmup_steps"] else 1.0
        return float(c["lr"] * warmup * c["lr_decay_rate"] ** (t / c["lr_decay_steps"]))

    def learn_on_replay_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """One learner update on a replay batch: loss, backward, clip, step.

        The non-finite guard: a non-finite loss, gradient norm or new priority skips the optimizer step, and a step
        that leaves any parameter, buffer or optimizer-state tensor non-finite (e.g. a learning rate far too high)
        is undone. Either way the policy is left exactly as before the update (:class:`PreStepCopy`), the update is
        counted in ``num_nonfinite_updates`` and ``"finite"`` is False, and it does not count as a learner update:
        ``num_grad_updates``, which drives the learning-rate schedule, the target-network refresh and the
        temperature schedule, does not advance.

        Returns:
            ``{"learner_stats": {...}, "priorities": [B] |v_t^0 - z_t| from the current network, "finite": bool}``.
        """
        self.model.train()
        skip = (columns.TRAIN_INDICES, columns.TRAIN_GENERATIONS)
        tensors = {k: torch.as_tensor(v, device=self.device) for k, v in batch.items() if k not in skip}
        tensors[columns.TRAIN_OBS] = self.split_observations(tensors[columns.TRAIN_OBS])[0]
        if columns.TRAIN_UNROLL_OBS in tensors:  # (B, K, *flat obs): split as one (B * K) batch
            unroll = tensors[columns.TRAIN_UNROLL_OBS]
            model_obs = self.split_observations(unroll.reshape(-1, *unroll.shape[2:]))[0]
            tensors[columns.TRAIN_UNROLL_OBS] = model_obs.reshape(*unroll.shape[:2], *model_obs.shape[1:])
        if self.consistency_heads is not None:
            self.consistency_heads.train()
        optimizer = self._optimizers[0]
        for group in optimizer.param_groups:
            group["lr"] = self.current_lr()
        optimizer.zero_grad(set_to_none=True)
        trained_modules = self._trained_modules()
        self._pre_step.take(trained_modules, optimizer)  # before the forward pass: it moves BatchNorm statistics
        with self.learner_autocast():  # the forward pass only: backward runs in the dtypes the forward chose
            total = self.loss(self.model, None, tensors)
        out: LossOutput = self.model.tower_stats["muzero_loss_output"]
        total.backward()
        clip = self.config["grad_clip"]
        trained_parameters = self._trained_parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(trained_parameters, clip if clip else math.inf)
        priorities = out.priorities.detach()
        # A NaN/inf anywhere (loss, gradient, or the new priorities, e.g. from an inf target that the support clamps)
        # skips the step: nothing non-finite reaches the weights or the replay's sum tree. A step that makes the
        # weights or the optimizer state non-finite is undone.
        finite = bool(torch.isfinite(total)) and bool(torch.isfinite(grad_norm)) and bool(
            torch.isfinite(priorities).all())
        if finite:
            optimizer.step()
            # Fused CPU optimizers write the parameters without bumping their version counters, which key the
            # acting copies (numpy inference, stacked heads): bump them, so every step reaches acting.
            for param in trained_parameters:
                torch.autograd.graph.increment_version(param)
            finite = self._pre_step.all_finite(trained_modules, optimizer)
        if finite:
            self.num_grad_updates += 1  # only applied updates advance the schedules
            self._refresh_target_model()
        else:
            self._pre_step.restore()
            optimizer.zero_grad(set_to_none=True)
            self.num_nonfinite_updates += 1
        stats = {
            "total_loss": float(total.detach()),
            "value_loss": float(out.value_loss),
            "reward_loss": float(out.reward_loss),
            "policy_loss": float(out.policy_loss),
            "consistency_loss": float(out.consistency_loss),
            "grad_gnorm": float(grad_norm),
            "cur_lr": float(optimizer.param_groups[0]["lr"]),
            "num_nonfinite_updates": self.num_nonfinite_updates,
            "num_grad_updates": self.num_grad_updates,
            "weights_min": float(tensors[columns.TRAIN_WEIGHTS].min()),
            "weights_max": float(tensors[columns.TRAIN_WEIGHTS].max()),
        }
        stats.update(out.stats())
        return {"learner_stats": stats, "priorities": priorities.cpu().numpy(), "finite": finite}

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict:
        state = super().get_state()
        state["muzero"] = {
            "num_grad_updates": self.num_grad_updates,
            "num_nonfinite_updates": self.num_nonfinite_updates,
            "rng_state": self.rng.bit_generator.state,
            "worker_index": int(self.config.get("worker_index", 0)),
        }
        if self.consistency_heads is not None:
            state["muzero"]["consistency_heads"] = {k: v.cpu() for k, v in self.consistency_heads.state_dict().items()}
        if self._target_model is not None:  # learner side only: exact resume of the reanalysed targets
            state["muzero"]["target_model"] = {k: v.cpu() for k, v in self._target_model.state_dict().items()}
            state["muzero"]["target_updated_at"] = self._target_updated_at
        if self._reanalyse_rng is not None:  # learner side: the root noise of policy reanalyse, for exact resume
            state["muzero"]["reanalyse_rng_state"] = self._reanalyse_rng.bit_generator.state
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        extra = state.get("muzero")
        if extra:
            self.num_grad_updates = extra["num_grad_updates"]
            self.num_nonfinite_updates = extra["num_nonfinite_updates"]
            # RLlib broadcasts the driver's policy state to every runner: only the runner that wrote this generator
            # state takes it, so runners never end up sharing one noise stream.
            if extra.get("worker_index") == int(self.config.get("worker_index", 0)):
                self.rng.bit_generator.state = extra["rng_state"]
            if "consistency_heads" in extra and self.consistency_heads is not None:
                self.consistency_heads.load_state_dict(extra["consistency_heads"])
            if "target_model" in extra and int(self.config.get("worker_index", 0)) == 0:  # the learner's policy
                self.target_model().load_state_dict(extra["target_model"])
                self._target_updated_at = extra["target_updated_at"]
            if "reanalyse_rng_state" in extra and int(self.config.get("worker_index", 0)) == 0:
                self._reanalyse_generator().bit_generator.state = extra["reanalyse_rng_state"]
