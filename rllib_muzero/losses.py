"""The MuZero loss, paper eq. (1), for one replay batch of K-step unrolls.

For a sampled position ``t`` the network is unrolled ``K`` steps along the actions actually taken,

    k = 0:       s^0, p^0, v^0      = initial_inference(o_t)
    k = 1..K:    s^k, r^k, p^k, v^k = recurrent_inference(s^{k-1}, a_{t+k-1})

and every step is matched with its targets (paper eq. (1)):

    l_t = sum_{k=0..K} [ l^r(u_{t+k}, r^k) + l^v(z_{t+k}, v^k) + l^p(pi_{t+k}, p^k) ]  (+ c ||theta||^2)

- ``l^v``, ``l^r``: cross-entropy between the predicted logits and the two-hot encoding of the target on the value /
  reward support, after the transform ``h`` (paper Appendix F; :mod:`rllib_muzero.support`). With
  ``use_target_transform=False`` the raw target is encoded. The two-hot target is kept sparse
  (:func:`~rllib_muzero.support.scalar_to_two_hot`: two atom indices and masses), so the cross-entropy reads two
  log-probabilities per row instead of multiplying a dense ``(B, K+1, S)`` target: same value and gradient, ~8% less
  forward + backward time at 601 atoms (``benchmarks/learner_speed.py``).
- Scalar heads (``value_support`` / ``reward_support`` ``None``, the reference's ``no_support``): ``l^v``, ``l^r`` are
  the regression loss ``scalar_loss`` between the head's single output and the (transformed) target: ``"mse"``
  ``(y - x)^2`` (the pseudocode's ``scalar_loss`` placeholder for board games) or ``"huber"`` (Huber with delta 1:
  ``0.5 (y - x)^2`` within 1, ``|y - x| - 0.5`` beyond). The target transform applies as for the categorical heads,
  so the network's scalar lives in the same ``h`` scale the search inverts.
- ``l^p``: cross-entropy between the search's visit distribution ``pi`` and the predicted policy.
- Optional, EfficientZero (Ye et al. 2021): the temporal consistency loss ``l^c_k = -cos(Q(P(s^k)),
  sg[P(h(o_{t+k}))])`` at every recurrent step ``k >= 1`` (:mod:`rllib_muzero.consistency`), weighted by
  ``consistency_loss_weight`` inside the step's loss (so it shares the ``1/K`` gradient scaling).
- No reward is predicted at ``k = 0``, so ``l^r`` starts at ``k = 1`` (pseudocode: the initial reward is the constant 0,
  whose loss has no gradient).
- The L2 term ``c ||theta||^2`` is not part of this function: use the optimizer's ``weight_decay`` (with plain
  ``torch.optim.SGD``/``Adam``, ``weight_decay=c`` adds ``c * theta`` to the gradient, exactly the gradient of the
  pseudocode's ``c * tf.nn.l2_loss(theta) = c * ||theta||^2 / 2``; the paper uses ``c = 1e-4``).

Gradient scalings of the pseudocode (paper Appendix G, "Training"), implemented with :func:`scale_gradient`, which
leaves the forward value unchanged and multiplies the backward gradient:

- ``loss += scale_gradient(l, gradient_scale)`` with ``gradient_scale = 1 / len(actions)`` for every recurrent step
  ``k >= 1`` (1 for ``k = 0``): "This ensures the total gradient has similar magnitude irrespective of how many
  steps we unroll for."
- ``hidden_state = scale_gradient(hidden_state, 0.5)``: "we also scale the gradient at the start of the dynamics
  function by 1/2. This ensures that the total gradient applied to the dynamics function stays constant."

Importance-sampling weights ``w_i = (N P(i))^-beta / max_j w_j`` (paper Appendix G, prioritized replay) multiply each
sample's loss ``l_t`` before the batch mean. The replay priorities are recomputed from the current network as
``|v^0_t - z_t|`` in the raw (untransformed) value scale (paper Appendix G: ``P(i) ~ |nu_i - z_i|^alpha``; on a
learner update the current network's value ``v^0`` stands in for the search value ``nu`` stored at acting time).

Deliberate deviations (also listed in the README's implementation details):

1. Per-component weights ``value_loss_weight``, ``reward_loss_weight``, ``policy_loss_weight`` (default 1.0, which is
   eq. (1)): the paper scales the value loss by 0.25 with Reanalyse (Appendix H), and some tasks need other balances.
2. The 0.5 hidden-state scaling is applied at the start of *every* dynamics step, including the first one (whose input
   is the representation's output), as the paper's text says ("at the start of the dynamics function"). The published
   pseudocode applies it after each ``recurrent_inference``, i.e. not to the representation's output; the two differ
   only in the gradient reaching the representation through the first dynamics step.
3. The loss is the *mean* over the batch (the pseudocode sums over the batch); this only rescales the learning rate.
4. Targets that do not exist are masked instead of padded: ``TRAIN_VALUE_MASK``, ``TRAIN_REWARD_MASK`` and
   ``TRAIN_POLICY_MASK`` multiply the per-step losses (see :mod:`rllib_muzero.targets` for where they are 0; past a
   termination the value and reward targets are 0 and trained, the pseudocode's absorbing states). Masked targets may
   hold anything, even NaN: they are zeroed before use.
5. With categorical heads, ``l^v`` / ``l^r`` are the cross-entropy of Appendix F (the pseudocode's ``scalar_loss``
   placeholder says MSE for board games; that is the scalar-head option above).

Everything here is torch only: no Ray, no RLlib policy types. ``model`` is anything with ``initial_inference(obs)`` and
``recurrent_inference(hidden, action)`` returning :class:`~rllib_muzero.models.NetworkOutput`-like tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rllib_muzero.columns import (
    TRAIN_ACTIONS,
    TRAIN_OBS,
    TRAIN_POLICY_MASK,
    TRAIN_REWARD_MASK,
    TRAIN_TARGET_POLICY,
    TRAIN_TARGET_REWARD,
    TRAIN_TARGET_VALUE,
    TRAIN_UNROLL_OBS,
    TRAIN_UNROLL_OBS_MASK,
    TRAIN_VALUE_MASK,
    TRAIN_WEIGHTS,
)
from rllib_muzero.consistency import ConsistencyHeads, unroll_target_hidden
from rllib_muzero.support import DiscreteSupport, h, h_inverse, scalar_to_two_hot, support_to_scalar

__all__ = [
    "HIDDEN_STATE_GRADIENT_SCALE",
    "SCALAR_LOSSES",
    "LossOutput",
    "UnrollLoss",
    "compile_unroll_loss",
    "encode_head_target",
    "muzero_loss",
    "scale_gradient",
    "unroll_loss",
]

HIDDEN_STATE_GRADIENT_SCALE = 0.5  # pseudocode: hidden_state = scale_gradient(hidden_state, 0.5)

# Regression losses of scalar value / reward heads: (prediction (B,), target (B,)) -> (B,).
SCALAR_LOSSES = {
    "mse": lambda prediction, target: (prediction - target).square(),
    "huber": lambda prediction, target: torch.nn.functional.huber_loss(prediction, target, reduction="none", delta=1.0),
}

_REQUIRED_KEYS = (
    TRAIN_OBS,
    TRAIN_ACTIONS,
    TRAIN_TARGET_VALUE,
    TRAIN_TARGET_REWARD,
    TRAIN_TARGET_POLICY,
    TRAIN_VALUE_MASK,
    TRAIN_REWARD_MASK,
    TRAIN_POLICY_MASK,
    TRAIN_WEIGHTS,
)


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass, gradient multiplied by ``scale`` in the backward pass (pseudocode).

    ``x * scale + x.detach() * (1 - scale)``, the pseudocode's
    ``tensor * scale + tf.stop_gradient(tensor) * (1 - scale)``.
    """
    return x * scale + x.detach() * (1.0 - scale)


@dataclass(frozen=True)
class LossOutput:
    """Result of :func:`muzero_loss`.

    Attributes:
        total: Scalar to backpropagate: IS-weighted batch mean of ``l_t`` with the loss weights and gradient scalings.
        value_loss: Detached scalar, ``mean_b sum_k mask * l^v`` (no IS weights, no loss weight).
        reward_loss: Detached scalar, ``mean_b sum_{k>=1} mask * l^r`` (no IS weights, no loss weight).
        policy_loss: Detached scalar, ``mean_b sum_k mask * l^p`` (no IS weights, no loss weight).
        consistency_loss: Detached scalar, ``mean_b sum_{k>=1} mask * l^c`` (0 when the consistency loss is off).
        priorities: ``(B,)`` detached, ``|v^0_t - z_t|`` in the raw value scale, for the replay's priority update
            (computed whatever the value mask; a masked ``z_t`` counts as 0).
        predicted_value: ``(B,)`` detached, ``v^0_t`` in the raw value scale.
        target_value: ``(B,)`` detached, ``z_t`` (the batch's column 0; 0 where its value mask is 0).
        policy_entropy: Detached scalar, mean entropy of the predicted policy ``p^0``.
    """

    total: Tensor
    value_loss: Tensor
    reward_loss: Tensor
    policy_loss: Tensor
    consistency_loss: Tensor
    priorities: Tensor
    predicted_value: Tensor
    target_value: Tensor
    policy_entropy: Tensor

    def stats(self) -> dict[str, float]:
        """Scalars for learner metrics."""
        return {
            "total_loss": float(self.total.detach()),
            "value_loss": float(self.value_loss),
            "reward_loss": float(self.reward_loss),
            "policy_loss": float(self.policy_loss),
            "consistency_loss": float(self.consistency_loss),
            "mean_predicted_value": float(self.predicted_value.mean()),
            "mean_target_value": float(self.target_value.mean()),
            "mean_priority": float(self.priorities.mean()),
            "policy_entropy": float(self.policy_entropy),
        }


def _cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """``-sum_i target_i log softmax(logits)_i`` over the last dimension: ``(B, S), (B, S) -> (B,)``. In float32
    whatever the logits' dtype (bf16 under ``learner_precision`` "bf16-mixed")."""
    return -(target_probs * torch.log_softmax(logits.float(), dim=-1)).sum(-1)


def _two_hot_cross_entropy(logits: Tensor, index: Tensor, mass: Tensor) -> Tensor:
    """:func:`_cross_entropy` against a two-hot target given sparsely (:func:`scalar_to_two_hot`):
    ``(B, S), (B, 2), (B, 2) -> (B,)``. Reads two log-probabilities per row instead of multiplying a dense target."""
    return -(mass * torch.log_softmax(logits.float(), dim=-1).gather(-1, index)).sum(-1)


class _HeadLoss:
    """``l^v`` or ``l^r`` of one head for every unroll step: the two-hot cross-entropy on a support (targets encoded
    once for all ``K + 1`` steps, sparsely, by :func:`encode_head_target`), or ``scalar_loss`` on a scalar head."""

    def __init__(self, encoded: tuple[Tensor, Tensor] | Tensor, scalar_loss: str):
        self.categorical = isinstance(encoded, tuple)
        if self.categorical:
            self.index, self.mass = encoded  # (B, K+1, 2) each
        else:
            self.target = encoded  # (B, K+1), already transformed
            self.scalar_loss = SCALAR_LOSSES[scalar_loss]

    def __call__(self, logits: Tensor, k: int) -> Tensor:
        """``(B, S)`` or ``(B, 1)`` head output at unroll step ``k`` -> ``(B,)`` loss."""
        if self.categorical:
            return _two_hot_cross_entropy(logits, self.index[:, k], self.mass[:, k])
        return self.scalar_loss(logits[:, 0].float(), self.target[:, k])


def encode_head_target(target: Tensor, support: DiscreteSupport | None) -> tuple[Tensor, Tensor] | Tensor:
    """A head's (already transformed) ``(B, K+1)`` targets as the loss reads them: two-hot ``(atom index, mass)``
    pairs, ``(B, K+1, 2)`` each, on a support (the dense ``(B, K+1, S)`` encodings are never built), or the scalars
    themselves for a scalar head (``support=None``)."""
    return target if support is None else scalar_to_two_hot(target, support)


class UnrollLoss(NamedTuple):
    """What :func:`unroll_loss` returns: the batch's loss and per-sample components, ``(B,)`` and detached, summed over
    the unroll steps, and the first step's value and policy entropy (detached, float32) for the priorities and
    metrics."""

    total: Tensor  # () the weighted batch mean, to differentiate
    value_loss: Tensor  # (B,)
    reward_loss: Tensor  # (B,)
    policy_loss: Tensor  # (B,)
    consistency_loss: Tensor  # (B,)
    value_0: Tensor  # (B,) v^0, in the transformed scale when the targets are transformed
    policy_entropy: Tensor  # () mean entropy of p^0


def _check_batch(batch: Mapping[str, Any]) -> None:
    """Refuses a batch whose keys or shapes do not fit :func:`muzero_loss` (a message naming the key)."""
    missing = [key for key in _REQUIRED_KEYS if key not in batch]
    if missing:
        raise ValueError(f"muzero_loss: the batch lacks the key(s) {missing} (see rllib_muzero.columns)")
    actions = batch[TRAIN_ACTIONS]
    if actions.dim() != 2:
        raise ValueError(f"muzero_loss: `{TRAIN_ACTIONS}` must be (B, K), got {tuple(actions.shape)}")
    B, K = actions.shape
    for key in (TRAIN_TARGET_VALUE, TRAIN_TARGET_REWARD, TRAIN_VALUE_MASK, TRAIN_REWARD_MASK, TRAIN_POLICY_MASK):
        if tuple(batch[key].shape) != (B, K + 1):
            raise ValueError(f"muzero_loss: `{key}` must be (B, K+1) = ({B}, {K + 1}), got {tuple(batch[key].shape)}")
    policy = batch[TRAIN_TARGET_POLICY]
    if policy.dim() != 3 or tuple(policy.shape[:2]) != (B, K + 1):
        raise ValueError(f"muzero_loss: `{TRAIN_TARGET_POLICY}` must be (B, K+1, A), got {tuple(policy.shape)}")
    if tuple(batch[TRAIN_WEIGHTS].shape) != (B,):
        shape = tuple(batch[TRAIN_WEIGHTS].shape)
        raise ValueError(f"muzero_loss: `{TRAIN_WEIGHTS}` must be (B,) = ({B},), got {shape}")


def muzero_loss(
    model: Any,
    batch: Mapping[str, Tensor],
    *,
    value_support: DiscreteSupport | None,
    reward_support: DiscreteSupport | None,
    use_target_transform: bool = True,
    scalar_loss: str = "mse",
    value_loss_weight: float = 1.0,
    reward_loss_weight: float = 1.0,
    policy_loss_weight: float = 1.0,
    consistency_heads: ConsistencyHeads | None = None,
    consistency_loss_weight: float = 0.0,
    unroll: Callable[..., UnrollLoss] | None = None,
    batch_prediction: bool = False,
) -> LossOutput:
    """MuZero's training loss (paper eq. (1)) on a batch of K-step unrolls; see the module docstring.

    Three parts: the targets are checked and encoded here (``h``, two-hot), the network is unrolled and the losses
    summed by :func:`unroll_loss` (``unroll``: that function, or the same one compiled, :func:`compile_unroll_loss`),
    and the priorities and metrics are read out here from its first-step logits.

    Args:
        model: Has ``initial_inference(obs)`` and ``recurrent_inference(hidden, action)`` (a ``MuZeroModelV2``).
        batch: Tensors under the ``TRAIN_*`` keys of :mod:`rllib_muzero.columns`: observations ``(B, *obs)``, actions
            ``(B, K)``, value / reward targets and the three masks ``(B, K+1)``, policy targets ``(B, K+1, A)``,
            importance-sampling weights ``(B,)``. Other keys are ignored.
        value_support: Atoms of the value head; ``None`` for a scalar head (one output).
        reward_support: Atoms of the reward head; ``None`` for a scalar head.
        use_target_transform: Encode ``h(target)`` (paper) instead of the raw target; predictions are mapped back with
            ``h_inverse`` for the priorities and metrics.
        scalar_loss: Loss of scalar heads, one of :data:`SCALAR_LOSSES` (``"mse"``, ``"huber"``); unused by
            categorical heads.
        value_loss_weight: Multiplies ``l^v`` (1.0 = eq. (1); the paper uses 0.25 with Reanalyse).
        reward_loss_weight: Multiplies ``l^r``.
        policy_loss_weight: Multiplies ``l^p``.
        consistency_heads: EfficientZero's projection / prediction heads; with them (and a positive
            ``consistency_loss_weight``) the batch must also hold ``TRAIN_UNROLL_OBS`` and ``TRAIN_UNROLL_OBS_MASK``.
        consistency_loss_weight: Multiplies ``l^c`` (EfficientZero: 2).
        unroll: Runs the unroll and the losses in place of :func:`unroll_loss` (same signature): the policy passes
            :func:`compile_unroll_loss`'s compiled version under ``torch_compile_learner``. ``None``: the eager one.
        batch_prediction: Run ``prediction`` once on the stacked hidden states of all unroll steps when the model
            allows it (:meth:`~rllib_muzero.models.MuZeroModelV2.can_batch_prediction_over_unroll`); see
            :func:`unroll_loss`. The policy asks for it under bf16-mixed autocast, where it is faster.

    Returns:
        A :class:`LossOutput`.
    """
    for arg, weight in (
        ("value_loss_weight", value_loss_weight),
        ("reward_loss_weight", reward_loss_weight),
        ("policy_loss_weight", policy_loss_weight),
        ("consistency_loss_weight", consistency_loss_weight),
    ):
        if not weight >= 0.0:
            raise ValueError(f"`{arg}` must be >= 0, got {weight!r}")
    if scalar_loss not in SCALAR_LOSSES:
        raise ValueError(f"`scalar_loss` must be one of {sorted(SCALAR_LOSSES)}, got {scalar_loss!r}")
    _check_batch(batch)

    obs = batch[TRAIN_OBS]
    actions = batch[TRAIN_ACTIONS].long()  # (B, K)
    target_value = batch[TRAIN_TARGET_VALUE].float()  # (B, K+1)
    target_reward = batch[TRAIN_TARGET_REWARD].float()  # (B, K+1), column 0 unused
    target_policy = batch[TRAIN_TARGET_POLICY].float()  # (B, K+1, A)
    value_mask = batch[TRAIN_VALUE_MASK].float()  # (B, K+1)
    reward_mask = batch[TRAIN_REWARD_MASK].float()  # (B, K+1)
    policy_mask = batch[TRAIN_POLICY_MASK].float()  # (B, K+1)
    weights = batch[TRAIN_WEIGHTS].float()  # (B,)

    # Masked targets are undefined (possibly NaN): zero them so they cannot leak into the loss or its gradient.
    target_value = torch.where(value_mask > 0, target_value, 0.0)
    target_reward = torch.where(reward_mask > 0, target_reward, 0.0)
    target_policy = torch.where(policy_mask.unsqueeze(-1) > 0, target_policy, 0.0)

    transform = h if use_target_transform else (lambda x: x)
    value_target = encode_head_target(transform(target_value), value_support)
    reward_target = encode_head_target(transform(target_reward), reward_support)

    consistent = consistency_heads is not None and consistency_loss_weight > 0.0
    target_hidden = unroll_mask = None
    if consistent:
        if TRAIN_UNROLL_OBS not in batch or TRAIN_UNROLL_OBS_MASK not in batch:
            raise ValueError(f"muzero_loss: the consistency loss needs `{TRAIN_UNROLL_OBS}` and "
                             f"`{TRAIN_UNROLL_OBS_MASK}` in the batch (replay sample with with_unroll_obs=True)")
        target_hidden = unroll_target_hidden(model, batch[TRAIN_UNROLL_OBS])  # (B, K, *H), no gradient
        unroll_mask = batch[TRAIN_UNROLL_OBS_MASK].float()  # (B, K)

    out = (unroll or unroll_loss)(
        model,
        obs,
        actions,
        value_target,
        reward_target,
        target_policy,
        value_mask,
        reward_mask,
        policy_mask,
        weights,
        scalar_loss=scalar_loss,
        value_loss_weight=value_loss_weight,
        reward_loss_weight=reward_loss_weight,
        policy_loss_weight=policy_loss_weight,
        consistency_heads=consistency_heads if consistent else None,
        consistency_loss_weight=consistency_loss_weight,
        target_hidden=target_hidden,
        unroll_mask=unroll_mask,
        value_support=value_support,
        batch_prediction=batch_prediction and _can_batch_prediction(model),
    )

    # Priorities and metrics from the current network, in the raw value scale.
    with torch.no_grad():
        predicted_value = h_inverse(out.value_0) if use_target_transform else out.value_0  # (B,)
        target_value_0 = target_value[:, 0]
        priorities = (predicted_value - target_value_0).abs()

    return LossOutput(
        total=out.total,
        value_loss=out.value_loss.mean(),
        reward_loss=out.reward_loss.mean(),
        policy_loss=out.policy_loss.mean(),
        consistency_loss=out.consistency_loss.mean(),
        priorities=priorities,
        predicted_value=predicted_value,
        target_value=target_value_0,
        policy_entropy=out.policy_entropy,
    )


def _can_batch_prediction(model: Any) -> bool:
    """:meth:`~rllib_muzero.models.MuZeroModelV2.can_batch_prediction_over_unroll`, False for a model without it."""
    method = getattr(model, "can_batch_prediction_over_unroll", None)
    return bool(method()) if method is not None else False


def unroll_loss(
    model: Any,
    obs: Tensor,
    actions: Tensor,
    value_target: tuple[Tensor, Tensor] | Tensor,
    reward_target: tuple[Tensor, Tensor] | Tensor,
    target_policy: Tensor,
    value_mask: Tensor,
    reward_mask: Tensor,
    policy_mask: Tensor,
    weights: Tensor,
    *,
    scalar_loss: str,
    value_loss_weight: float,
    reward_loss_weight: float,
    policy_loss_weight: float,
    consistency_heads: ConsistencyHeads | None,
    consistency_loss_weight: float,
    target_hidden: Tensor | None,
    unroll_mask: Tensor | None,
    value_support: DiscreteSupport | None,
    batch_prediction: bool = False,
) -> UnrollLoss:
    """The network unrolled ``K`` steps along the actions taken and eq. (1) summed over the steps, weighted by the
    importance-sampling weights and averaged over the batch:

        total = mean_i w_i [ l^v_0 + l^p_0 + sum_{k=1..K} (1/K) (l^r_k + l^v_k + l^p_k (+ l^c_k)) ]

    with the pseudocode's gradient scalings (``1/K`` per recurrent step, 0.5 at the start of every dynamics step).
    Tensors in, tensors out, no host synchronisation and no numpy: the part of the update that ``torch.compile``
    can capture as one graph (``torch_compile_learner``). The targets come encoded (:func:`encode_head_target`) and
    masked (zero where their mask is 0); ``actions`` ``(B, K)`` int64; the masks, ``target_policy`` ``(B, K+1, A)``
    and ``weights`` ``(B,)`` float32. With ``consistency_heads``, ``target_hidden`` ``(B, K, *H)`` (no gradient) and
    ``unroll_mask`` ``(B, K)`` give EfficientZero's consistency loss (:func:`muzero_loss` builds them).

    With ``batch_prediction`` (:meth:`~rllib_muzero.models.MuZeroModelV2.can_batch_prediction_over_unroll`) the
    network is called through its three functions, ``prediction`` once on the ``K + 1`` hidden states stacked along
    the batch; otherwise ``model`` may be anything with ``initial_inference`` / ``recurrent_inference``, called once
    per step. Same losses (each row's logits are the same function of its hidden state; bit-identical forward on the
    CPU); in floating point the prediction heads' weight gradients are one product over ``(K+1) B`` rows instead of
    a sum of ``K + 1`` products (a rounding-level difference, less rounding in bf16). Measured on the CPU learner
    benchmark (paired rounds in one process, ``docs/benchmarks.md``; +3 % across processes, where the host's drift
    blurs it): +8-9 % updates/s under bf16-mixed autocast, eager or compiled;
    -7 % in float32, probably because the ``(K+1) B x Sv`` float32 logits and their gradients no longer fit the
    core's L2 cache. So the policy batches under bf16-mixed only.

    It also reads out the first step's predictions for the priorities and metrics, without gradient: the value
    ``v^0`` (:func:`support_to_scalar` on ``value_support``, still in the transformed scale) and the policy's
    entropy. Here rather than in the caller so that, compiled, the soft-max over the value atoms fuses with the
    cross-entropy's.
    """
    B, K = actions.shape
    value_head_loss = _HeadLoss(value_target, scalar_loss)
    reward_head_loss = _HeadLoss(reward_target, scalar_loss)

    # The network unrolled along the actions taken: s^k and the logits of every step k = 0..K.
    if batch_prediction:  # prediction once on the K + 1 stacked hidden states (same function, larger products)
        hiddens, reward_logits = [model.representation(obs)], [None]
        for k in range(1, K + 1):
            next_hidden, r = model.dynamics(scale_gradient(hiddens[-1], HIDDEN_STATE_GRADIENT_SCALE),
                                            actions[:, k - 1])
            hiddens.append(next_hidden)
            reward_logits.append(r)
        policy_all, value_all = model.prediction(torch.cat(hiddens))  # ((K+1) B, A), ((K+1) B, Sv)
        policy_logits, value_logits = policy_all.split(B), value_all.split(B)
    else:  # the duck-typed interface, one step at a time
        outs = [model.initial_inference(obs)]
        for k in range(1, K + 1):
            outs.append(model.recurrent_inference(scale_gradient(outs[-1].hidden, HIDDEN_STATE_GRADIENT_SCALE),
                                                  actions[:, k - 1]))
        hiddens, reward_logits = [o.hidden for o in outs], [o.reward_logits for o in outs]
        policy_logits, value_logits = [o.policy_logits for o in outs], [o.value_logits for o in outs]
    if policy_logits[0].shape[-1] != target_policy.shape[-1]:
        raise ValueError(f"muzero_loss: policy logits have {policy_logits[0].shape[-1]} actions, targets have "
                         f"{target_policy.shape[-1]}")

    # k = 0: from the real observation.
    value_loss_k = value_head_loss(value_logits[0], 0) * value_mask[:, 0]
    policy_loss_k = _cross_entropy(policy_logits[0], target_policy[:, 0]) * policy_mask[:, 0]  # (B,)
    loss = value_loss_weight * value_loss_k + policy_loss_weight * policy_loss_k  # (B,); gradient scale 1

    value_loss = value_loss_k.detach()
    policy_loss = policy_loss_k.detach()
    reward_loss = torch.zeros_like(value_loss)
    consistency_loss = torch.zeros_like(value_loss)
    value_0 = support_to_scalar(value_logits[0].detach().float(), value_support)  # (B,), transformed scale
    log_p = torch.log_softmax(policy_logits[0].detach().float(), dim=-1)
    policy_entropy = -(log_p.exp() * log_p).sum(-1).mean()

    # k = 1..K: from the previous hidden state and the action taken.
    for k in range(1, K + 1):
        value_loss_k = value_head_loss(value_logits[k], k) * value_mask[:, k]
        reward_loss_k = reward_head_loss(reward_logits[k], k) * reward_mask[:, k]
        policy_loss_k = _cross_entropy(policy_logits[k], target_policy[:, k]) * policy_mask[:, k]
        l_k = value_loss_weight * value_loss_k + reward_loss_weight * reward_loss_k + policy_loss_weight * policy_loss_k
        if consistency_heads is not None:  # EfficientZero: -cos(Q(P(s^k)), sg[P(h(o_{t+k}))])
            consistency_loss_k = consistency_heads.loss(hiddens[k], target_hidden[:, k - 1]) * unroll_mask[:, k - 1]
            l_k = l_k + consistency_loss_weight * consistency_loss_k
            consistency_loss = consistency_loss + consistency_loss_k.detach()
        loss = loss + scale_gradient(l_k, 1.0 / K)  # pseudocode: gradient_scale = 1 / len(actions)

        value_loss = value_loss + value_loss_k.detach()
        reward_loss = reward_loss + reward_loss_k.detach()
        policy_loss = policy_loss + policy_loss_k.detach()

    return UnrollLoss((weights * loss).mean(), value_loss, reward_loss, policy_loss, consistency_loss,
                      value_0, policy_entropy)


def compile_unroll_loss(
    *, backend: str = "inductor", mode: str | None = None, cpp_wrapper: bool = False
) -> Callable[..., UnrollLoss]:
    """:func:`unroll_loss` compiled by ``torch.compile`` (one graph, static shapes), for :func:`muzero_loss`'s
    ``unroll``; compiled on its first call (tens of seconds for inductor on a CPU), again if a shape, a dtype, the
    autocast state or the model changes.

    Why only this part: the target encoding (``h`` and its inverse run in float64 through numpy) and the priorities
    need the host, and a graph break inside the compiled function would split it anyway. What it gains is the fusion
    of the elementwise work around the matrix products (activations, hidden-state scaling, soft-maxes, casts), which
    torch's eager mode runs as hundreds of small kernels per update: on the CPU learner benchmark with
    ``learner_precision`` "bf16-mixed" that is most of the difference (``docs/benchmarks.md``, "Learner speed").

    ``cpp_wrapper`` (inductor only; the policy sets it for a CPU learner): inductor emits the code that calls the
    graph's kernels and matrix products, forward and backward, as C++ instead of Python: +2-7 % updates/s on the CPU
    learner benchmark (bf16-mixed, three runs of paired rounds in one process; ``docs/benchmarks.md``). It is merged
    into ``mode``'s options (``torch._inductor.list_mode_options``), since ``torch.compile`` takes a mode or options,
    not both. Not set for a GPU learner, where it is unmeasured here.

    Raises (on the first call):
        RuntimeError: naming ``torch_compile_learner`` when ``torch.compile`` cannot capture the network's functions
            in one graph (``.item()``, numpy, Python branches on tensor values) or its backend fails (inductor needs a
            C++ compiler on CPU).
    """
    options = None
    if backend == "inductor" and cpp_wrapper:
        from torch._inductor import list_mode_options

        options = {**list_mode_options(mode or "default"), "cpp_wrapper": True}
    mode_or_options = {"options": options} if options is not None else {"mode": mode}
    compiled = torch.compile(unroll_loss, fullgraph=True, dynamic=False, backend=backend, **mode_or_options)

    def run(model: Any, *args: Any, **kwargs: Any) -> UnrollLoss:
        try:
            return compiled(model, *args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:
            raise RuntimeError(
                f"`torch_compile_learner`: torch.compile (backend {backend!r}, mode {mode!r}) could not compile the "
                f"MuZero loss of {type(model).__name__}. Set torch_compile_learner=False (the eager learner computes "
                "the same loss), or make the network's representation / dynamics / prediction traceable in one graph "
                "(no .item(), numpy or Python branches on tensor values). torch.compile said: "
                f"{type(error).__name__}: {str(error).strip()[:2000]}"
            ) from error

    run.inductor_options = options  # what torch.compile was given besides the mode (None: the mode alone)
    return run
