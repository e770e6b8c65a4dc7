"""Searching with a network: the glue between a MuZero network and :func:`rllib_muzero.mcts.muzero_search`.

Turns the network's categorical outputs into the search's plain scalar arrays (softmax expectation over the support,
then h^-1 when targets are transformed, paper Appendix F) and runs one batched search (paper Appendix B). No Ray:
the RLlib policy, the serving agent and a future RLModule port all act through :func:`search_with_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from rllib_muzero.gumbel import GumbelSearchOutput, gumbel_muzero_search
from rllib_muzero.mcts import RecurrentFn, RecurrentOutput, RootOutput, SearchOutput, SearchWorkspace, muzero_search
from rllib_muzero.numpy_inference import NumpyMLPInference, readout
from rllib_muzero.support import DiscreteSupport, support_to_scalar_numpy

# The config keys the search reads (MuZeroConfig names).
SEARCH_KEYS = ("num_simulations", "gamma", "pb_c_init", "pb_c_base", "unvisited_value", "root_counts_as_visit",
               "root_dirichlet_alpha", "root_exploration_fraction", "search_algorithm", "max_num_considered_actions",
               "gumbel_scale", "c_visit", "c_scale")
SEARCH_ALGORITHMS = ("muzero", "gumbel")  # accepted values of `search_algorithm`
# Defaults of the keys a config saved before they existed lacks (serving files, old checkpoints): the pUCT search.
SEARCH_DEFAULTS = {"search_algorithm": "muzero", "max_num_considered_actions": 16, "gumbel_scale": 1.0,
                   "c_visit": 50.0, "c_scale": 0.1}

AnySearchOutput = SearchOutput | GumbelSearchOutput


def search_actions(result: AnySearchOutput, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """The actions ``[B]`` int64 to play after a search.

    pUCT (:class:`~rllib_muzero.mcts.SearchOutput`): sampled from the visit counts at ``temperature``,
    ``N(s, a)^(1/T)`` normalised (paper Appendix D); ``T = 0`` is the most visited action (lowest index on ties).
    Gumbel (:class:`~rllib_muzero.gumbel.GumbelSearchOutput`): the search's own ``action`` (Danihelka et al. 2022,
    Algorithm 2): exploration comes from the Gumbel noise of a search run with ``explore=True``, so ``temperature``
    is not used, and a search without noise gives the greedy action.
    """
    if isinstance(result, GumbelSearchOutput):
        return result.action.astype(np.int64, copy=True)
    return sample_from_visits(result.visit_counts, temperature, rng)


def policy_targets(result: AnySearchOutput) -> np.ndarray:
    """The policy target of each searched root, ``(B, A)`` float32.

    pUCT: the normalised root visit counts ``pi = N(s, a) / sum_b N(s, b)`` (paper Appendix B). Gumbel: the improved
    policy ``pi' = softmax(logits + sigma(completed_q))`` (Danihelka et al. 2022, eq. 11), which improves on the prior
    even when few actions were visited.
    """
    if isinstance(result, GumbelSearchOutput):
        return result.action_weights.astype(np.float32, copy=True)
    counts = result.visit_counts.astype(np.float32)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def sample_from_visits(visit_counts: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Samples a_t ~ N(s, a)^(1/T) / sum_b N(s, b)^(1/T) (paper Appendix D); T == 0 is argmax (lowest index on ties).

    Args:
        visit_counts: [B, A] root visit counts (or any non-negative weights).
        temperature: T >= 0.
        rng: consumed only when T > 0.
    Returns:
        [B] int64 actions.
    """
    if temperature == 0.0:
        return np.argmax(visit_counts, axis=1).astype(np.int64)
    counts = visit_counts.astype(np.float64)
    # N^(1/T) computed in log space so small T does not overflow; unvisited actions keep probability 0.
    with np.errstate(divide="ignore"):
        logits = np.log(counts) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    cumulative = probs.cumsum(axis=1)
    draws = rng.random(len(counts))[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative <= draws).sum(axis=1), counts.shape[1] - 1).astype(np.int64)


def make_supports(config: Mapping[str, Any]) -> tuple[DiscreteSupport | None, DiscreteSupport | None]:
    """``(value_support, reward_support)`` of a MuZeroConfig dict: ``None`` for scalar heads (``no_support``)."""
    if config.get("no_support", False):
        return None, None
    return DiscreteSupport(*config["value_support"]), DiscreteSupport(*config["reward_support"])


def support_from_plain(bounds: Any) -> DiscreteSupport | None:
    """A support saved as ``[min, max]`` (``None``: a scalar head)."""
    return None if bounds is None else DiscreteSupport(*bounds)


def to_scalar(logits: torch.Tensor, support: DiscreteSupport | None, use_target_transform: bool) -> np.ndarray:
    """Scalar (B,) numpy values of categorical logits (B, S): softmax expectation, then h^-1 if transformed.

    ``support=None``: a scalar head, logits (B, 1); its output (after h^-1 if transformed) is the value."""
    return support_to_scalar_numpy(logits, support, inverse_transform=use_target_transform)


def reward_and_value(
    reward_logits: torch.Tensor,
    value_logits: torch.Tensor,
    reward_support: DiscreteSupport | None,
    value_support: DiscreteSupport | None,
    use_target_transform: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Scalar (B,) reward and value of one recurrent inference.

    With equal supports (the default) both heads go through one softmax and one h^-1: the search calls this once per
    simulation on a few rows, where torch's per-operator overhead, not the arithmetic, is the cost.
    """
    if reward_support != value_support:
        return (to_scalar(reward_logits, reward_support, use_target_transform),
                to_scalar(value_logits, value_support, use_target_transform))
    both = to_scalar(torch.cat([reward_logits, value_logits]), value_support, use_target_transform)  # (2B,)
    batch_size = reward_logits.shape[0]
    return both[:batch_size], both[batch_size:]


def root_output(model: Any, obs: torch.Tensor, *, value_support: DiscreteSupport | None,
                use_target_transform: bool) -> RootOutput:
    """The search's root arrays from ``model.initial_inference(obs)`` (call under ``torch.inference_mode()``)."""
    out = model.initial_inference(obs)
    return RootOutput(
        prior_logits=out.policy_logits.float().cpu().numpy(),
        value=to_scalar(out.value_logits, value_support, use_target_transform),
        embedding=out.hidden,
    )


def make_recurrent_fn(model: Any, device: torch.device, *, value_support: DiscreteSupport | None,
                      reward_support: DiscreteSupport | None, use_target_transform: bool) -> RecurrentFn:
    """The search's ``recurrent_fn``: one batched ``model.recurrent_inference`` per simulation, its outputs turned into
    the tree's numpy scalars (call it under ``torch.inference_mode()``)."""
    on_cpu = device.type == "cpu"

    def recurrent_fn(embedding: torch.Tensor, actions: np.ndarray) -> RecurrentOutput:
        actions_t = torch.from_numpy(actions) if on_cpu else torch.as_tensor(actions, device=device)
        out = model.recurrent_inference(embedding, actions_t)
        reward, value = reward_and_value(out.reward_logits, out.value_logits, reward_support, value_support,
                                         use_target_transform)
        return RecurrentOutput(reward=reward, prior_logits=out.policy_logits.float().cpu().numpy(), value=value,
                               embedding=out.hidden)

    return recurrent_fn


def numpy_root_and_recurrent_fn(
    engine: NumpyMLPInference,
    obs: torch.Tensor,
    *,
    value_support: DiscreteSupport | None,
    reward_support: DiscreteSupport | None,
    use_target_transform: bool,
) -> tuple[RootOutput, RecurrentFn]:
    """:func:`root_output` and :func:`make_recurrent_fn` through the network's numpy engine (CPU ``obs``): the
    embeddings are numpy arrays and the engine reads out the scalars itself."""
    value_readout = readout(value_support, bool(use_target_transform))
    reward_readout = readout(reward_support, bool(use_target_transform))  # the same object for equal supports
    hidden, prior_logits, value = engine.initial_inference(obs.numpy(), value_readout)
    root = RootOutput(prior_logits=prior_logits, value=value, embedding=hidden)

    def recurrent_fn(embedding: np.ndarray, actions: np.ndarray) -> RecurrentOutput:
        next_hidden, reward, logits, value = engine.recurrent_inference(embedding, actions, reward_readout,
                                                                        value_readout)
        return RecurrentOutput(reward=reward, prior_logits=logits, value=value, embedding=next_hidden)

    return root, recurrent_fn


@torch.inference_mode()
def search_with_model(
    model: Any,
    obs: torch.Tensor,
    config: Mapping[str, Any],
    *,
    value_support: DiscreteSupport | None,
    reward_support: DiscreteSupport | None,
    use_target_transform: bool,
    explore: bool,
    rng: np.random.Generator | None,
    invalid_actions: np.ndarray | None = None,
    workspace: SearchWorkspace | None = None,
    num_simulations: int | None = None,
    numpy_inference: bool = True,
) -> AnySearchOutput:
    """One batched search from the model observations ``obs`` [B, *obs_shape] (already on the model's device).

    On the CPU, a network that offers a numpy engine (``model.numpy_inference()``, e.g. the built-in ``muzero_fc``) is
    searched through it (:mod:`rllib_muzero.numpy_inference`: the same functions without torch's per-operator
    overhead, numpy's BLAS limited to ``torch.get_num_threads()`` threads); every other network, and every network on
    an accelerator, runs through torch.

    Args:
        model: anything with ``initial_inference(obs)`` / ``recurrent_inference(hidden, action)`` returning
            :class:`~rllib_muzero.models.NetworkOutput` (the :class:`~rllib_muzero.models.MuZeroModelV2` interface).
        config: the search's hyperparameters under :data:`SEARCH_KEYS` (MuZeroConfig names).
        explore: add root noise (drawn from ``rng``): Dirichlet noise on the prior (pUCT), Gumbel noise (Gumbel).
        invalid_actions: [B, A] bool, True where a root action is illegal.
        num_simulations: overrides ``config["num_simulations"]``.
        numpy_inference: ``False`` searches through torch even when a numpy engine is offered.
    """
    engine = None
    if numpy_inference and obs.device.type == "cpu" and hasattr(model, "numpy_inference"):
        engine = model.numpy_inference()
    if engine is None:
        root = root_output(model, obs, value_support=value_support, use_target_transform=use_target_transform)
        recurrent_fn = make_recurrent_fn(model, obs.device, value_support=value_support,
                                         reward_support=reward_support, use_target_transform=use_target_transform)
        return _search(root, recurrent_fn, config, explore, rng, invalid_actions, workspace, num_simulations)
    with engine.blas_threads(torch.get_num_threads()):
        root, recurrent_fn = numpy_root_and_recurrent_fn(engine, obs, value_support=value_support,
                                                         reward_support=reward_support,
                                                         use_target_transform=use_target_transform)
        return _search(root, recurrent_fn, config, explore, rng, invalid_actions, workspace, num_simulations)


def _search(root: RootOutput, recurrent_fn: RecurrentFn, config: Mapping[str, Any], explore: bool,
            rng: np.random.Generator | None, invalid_actions: np.ndarray | None, workspace: SearchWorkspace | None,
            num_simulations: int | None) -> AnySearchOutput:
    def option(key: str) -> Any:  # configs saved before Gumbel existed lack its keys: SEARCH_DEFAULTS
        return config.get(key, SEARCH_DEFAULTS[key])

    algorithm = option("search_algorithm")
    if algorithm == "gumbel":
        return gumbel_muzero_search(
            root,
            recurrent_fn,
            num_simulations=int(num_simulations or config["num_simulations"]),
            discount=float(config["gamma"]),
            max_num_considered_actions=int(option("max_num_considered_actions")),
            gumbel_scale=float(option("gumbel_scale")),
            c_visit=float(option("c_visit")),
            c_scale=float(option("c_scale")),
            add_gumbel_noise=explore,
            rng=rng,
            invalid_actions=invalid_actions,
            workspace=workspace,
        )
    if algorithm != "muzero":
        raise ValueError(f"`search_algorithm` must be one of {list(SEARCH_ALGORITHMS)}, got {algorithm!r}")
    return muzero_search(
        root,
        recurrent_fn,
        num_simulations=int(num_simulations or config["num_simulations"]),
        discount=float(config["gamma"]),
        pb_c_init=float(config["pb_c_init"]),
        pb_c_base=float(config["pb_c_base"]),
        add_exploration_noise=explore,
        root_dirichlet_alpha=float(config["root_dirichlet_alpha"]),
        root_exploration_fraction=float(config["root_exploration_fraction"]),
        rng=rng,
        unvisited_value=config["unvisited_value"],
        root_counts_as_visit=bool(config["root_counts_as_visit"]),
        invalid_actions=invalid_actions,
        workspace=workspace,
    )
