"""Acting with a trained MuZero policy in plain Python, without Ray: export once, then load + search + act.

:func:`export_for_serving` writes one file with ``torch.save``: the network weights (``state_dict``) and a small dict
of plain values (numbers, strings, lists) with everything acting needs: the network class and its model config, the
observation and action spaces, the value / reward supports and the search hyperparameters. The file loads with
``torch.load(..., weights_only=True)``, so loading it never unpickles arbitrary objects (unlike RLlib checkpoints).

:class:`ServingAgent` rebuilds the network from that file and acts like ``algo.compute_single_action(obs,
explore=False)``: RLlib's observation preprocessor (e.g. one-hot for ``Discrete`` observations), one greedy search
(:func:`rllib_muzero.mcts.muzero_search`, no root noise) and the most visited action (lowest index on ties)::

    from rllib_muzero.serving import ServingAgent, export_for_serving

    export_for_serving(algo, "cartpole.muzero.pt")          # in the training process (Algorithm or Policy)

    agent = ServingAgent.load("cartpole.muzero.pt")           # anywhere else: no Ray cluster is started
    action = agent.act(obs)

What serving needs from Ray: the network is a ``TorchModelV2``, so this module imports ``ray.rllib`` (and importing
``rllib_muzero`` also imports ``ray.tune`` to register the algorithm). Nothing here calls ``ray.init`` or connects
to a cluster: ``ray.is_initialized()`` stays False. The network class is found again by its import path (a class
defined in a script's ``__main__`` is looked up under its ``custom_model`` name in RLlib's ``ModelCatalog`` instead,
or passed as ``ServingAgent.load(path, model_class=...)``).

Not exported: observation filters (``observation_filter`` other than ``"NoFilter"`` is refused at export) and
recurrent state (MuZero's networks have none).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.models.preprocessors import NoPreprocessor, Preprocessor, get_preprocessor

from rllib_muzero.acting import (
    SEARCH_DEFAULTS,
    SEARCH_KEYS,
    make_supports,
    search_actions,
    search_with_model,
    support_from_plain,
)
from rllib_muzero.mcts import SearchOutput, SearchWorkspace
from rllib_muzero.models import MuZeroModelV2
from rllib_muzero.support import head_size

__all__ = ["SERVING_FORMAT", "SERVING_FORMAT_VERSION", "ServingAgent", "export_for_serving"]

SERVING_FORMAT = "rllib-muzero-serving"  # the "format" entry of an exported file
SERVING_FORMAT_VERSION = 1  # bump (and read older versions) when the layout of the file changes



# ---------------------------------------------------------------------------------------------------- export
def export_for_serving(algo_or_policy: Any, path: str | os.PathLike, *, policy_id: str = "default_policy") -> str:
    """Writes what :meth:`ServingAgent.load` needs to act with the policy, as one ``torch.save`` file.

    Args:
        algo_or_policy: A MuZero ``Algorithm`` (its local policy ``policy_id`` is exported) or a
            ``MuZeroTorchPolicy``.
        path: File to write (parent directories are created).
        policy_id: Which policy of an Algorithm.

    Returns:
        The path written.

    Raises:
        ValueError: the policy uses an observation filter, its model is not a ``MuZeroModelV2``, or its model
            config holds values that are not plain data.
    """
    policy = algo_or_policy.get_policy(policy_id) if hasattr(algo_or_policy, "get_policy") else algo_or_policy
    if policy is None:
        raise ValueError(f"export_for_serving: the algorithm has no policy `{policy_id}`")
    config = policy.config
    if config.get("observation_filter", "NoFilter") != "NoFilter":
        raise ValueError(f"export_for_serving: `observation_filter`={config['observation_filter']!r} is not "
                         "supported (its running statistics are not exported); train with \"NoFilter\" and "
                         "normalise in an env wrapper instead.")
    model = policy.model
    if not isinstance(model, MuZeroModelV2):
        raise ValueError(f"export_for_serving: the policy's model {type(model).__name__} is not a MuZeroModelV2")

    model_config = dict(config["model"])
    value_support, reward_support = make_supports(config)
    custom_model = model_config.get("custom_model")
    if isinstance(custom_model, type):
        model_config["custom_model"] = _class_path(custom_model)
    spec = {
        "format": SERVING_FORMAT,
        "version": SERVING_FORMAT_VERSION,
        "model_class": _class_path(type(model)),
        "model_config": _plain(model_config, "model config"),
        "observation_space": space_to_plain(policy.observation_space),
        # The env's own space, which RLlib's preprocessor maps to `observation_space` (as RLlib's
        # ObsPreprocessorConnector does: the policy space's `original_space` if it has one, else itself).
        "raw_observation_space": space_to_plain(getattr(policy.observation_space, "original_space",
                                                        policy.observation_space)),
        "action_space": space_to_plain(policy.action_space),
        # [min, max] of each support; None for scalar heads (`no_support`).
        "value_support": None if value_support is None else [value_support.min, value_support.max],
        "reward_support": None if reward_support is None else [reward_support.min, reward_support.max],
        "use_target_transform": bool(config["use_target_transform"]),
        "search": _plain({key: config[key] for key in SEARCH_KEYS}, "search config"),
    }
    state_dict = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"spec": spec, "state_dict": state_dict}, path)
    return path


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _plain(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, numbers, bools, None); tuples become lists."""
    try:
        return json.loads(json.dumps(value, default=_to_plain))
    except TypeError as e:
        raise ValueError(f"export_for_serving: the {what} holds a value that is not plain data ({e}); use names "
                         "(e.g. a registered `custom_model` name) instead of objects") from None


def _to_plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------------- spaces
def space_to_plain(space: gym.Space) -> dict:
    """A gymnasium space as plain data (no pickles): Box, Discrete, MultiDiscrete, MultiBinary, Tuple, Dict."""
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": _bound(space.low), "high": _bound(space.high), "shape": list(space.shape),
                "dtype": np.dtype(space.dtype).str}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": np.dtype(space.dtype).str}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_plain(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_plain(s) for k, s in space.spaces.items()}}
    raise ValueError(f"export_for_serving: observation/action space {space} is not supported")


def _bound(values: np.ndarray) -> Any:
    """A Box bound as one number when all its entries are equal (images), else as nested lists."""
    flat = values.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()
    return values.tolist()


def space_from_plain(data: Mapping[str, Any]) -> gym.Space:
    """Inverse of :func:`space_to_plain`."""
    kind = data["type"]
    if kind == "Box":
        dtype, shape = np.dtype(data["dtype"]), tuple(data["shape"])
        low = np.broadcast_to(np.asarray(data["low"], dtype), shape).copy()
        high = np.broadcast_to(np.asarray(data["high"], dtype), shape).copy()
        return gym.spaces.Box(low, high, shape, dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(data["n"], start=data["start"])
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(data["nvec"], dtype=np.dtype(data["dtype"]))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(data["n"])
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_plain(s) for s in data["spaces"]])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_plain(s) for k, s in data["spaces"].items()})
    raise ValueError(f"unknown space type {kind!r} in a serving file")


# ---------------------------------------------------------------------------------------------------- serving
class ServingAgent:
    """A MuZero network plus its search settings, acting greedily; no Ray, no RLlib policy.

    Build it with :meth:`load`. ``act`` / ``act_batch`` give what ``compute_single_action(obs, explore=False)`` gives
    in RLlib for the exported policy; ``search`` returns the whole :class:`~rllib_muzero.mcts.SearchOutput` (visit
    counts, root values, Q values, the tree).

    Args:
        model: The network (put in eval mode here).
        spec: The ``spec`` dict of an exported file.
        device: Where the network runs.
    """

    def __init__(self, model: MuZeroModelV2, spec: Mapping[str, Any], device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.spec = dict(spec)
        self.device = torch.device(device)
        self.value_support = support_from_plain(spec["value_support"])
        self.reward_support = support_from_plain(spec["reward_support"])
        self.use_target_transform = bool(spec["use_target_transform"])
        self.search_config = {**SEARCH_DEFAULTS, **spec["search"]}  # files from before Gumbel: the pUCT search
        self.observation_space = space_from_plain(spec["observation_space"])
        self.action_space = space_from_plain(spec["action_space"])
        # RLlib's preprocessor for the raw observations (one-hot for Discrete, flattening for Dict / Tuple, ...),
        # chosen exactly as RLlib's ObsPreprocessorConnector chooses it; None when it is the identity.
        self.raw_observation_space = space_from_plain(spec["raw_observation_space"])
        preprocessor = get_preprocessor(self.raw_observation_space)(self.raw_observation_space, spec["model_config"])
        self.preprocessor: Preprocessor | None = None if isinstance(preprocessor, NoPreprocessor) else preprocessor
        self._workspace = SearchWorkspace()

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
             model_class: type[MuZeroModelV2] | None = None) -> ServingAgent:
        """Loads a file written by :func:`export_for_serving` (``torch.load(weights_only=True)``).

        Args:
            path: The exported file.
            device: Where the network runs.
            model_class: The network class, when it cannot be imported by the path stored in the file (e.g. it was
                defined in a script's ``__main__``); by default the stored path, then the ``custom_model`` name
                registered with RLlib's ``ModelCatalog`` in this process.
        """
        data = torch.load(os.fspath(path), map_location=device, weights_only=True)
        spec = data.get("spec") if isinstance(data, dict) else None
        if not isinstance(spec, dict) or spec.get("format") != SERVING_FORMAT:
            raise ValueError(f"{path} is not an rllib-muzero serving file (written by export_for_serving)")
        if spec.get("version", 0) > SERVING_FORMAT_VERSION:
            raise ValueError(f"{path} has serving format version {spec['version']}; this rllib-muzero reads versions "
                             f"<= {SERVING_FORMAT_VERSION}. Upgrade rllib-muzero to load it.")
        model_cls = model_class or _resolve_model_class(spec)
        observation_space = space_from_plain(spec["observation_space"])
        action_space = space_from_plain(spec["action_space"])
        model_config = spec["model_config"]
        # Exactly how RLlib's ModelCatalog.get_model_v2 builds a custom torch model for the policy.
        model = model_cls(
            observation_space,
            action_space,
            int(action_space.n),
            model_config,
            "muzero_model",
            value_support_size=head_size(support_from_plain(spec["value_support"])),
            reward_support_size=head_size(support_from_plain(spec["reward_support"])),
            **(model_config.get("custom_model_config") or {}),
        )
        model.load_state_dict(data["state_dict"])
        return cls(model, spec, device=device)

    # ------------------------------------------------------------------ acting
    def preprocess(self, obs: Any) -> np.ndarray:
        """One raw env observation as the network takes it (after RLlib's preprocessor, if it has one)."""
        if self.preprocessor is not None:
            obs = self.preprocessor.transform(obs)
        return np.asarray(obs)

    def search(self, obs_batch: np.ndarray, *, num_simulations: int | None = None) -> SearchOutput:
        """One greedy (noise-free) batched search from preprocessed observations ``[B, *obs_shape]``."""
        obs_t = torch.as_tensor(np.asarray(obs_batch), device=self.device)
        return search_with_model(
            self.model, obs_t, self.search_config,
            value_support=self.value_support, reward_support=self.reward_support,
            use_target_transform=self.use_target_transform, explore=False, rng=None,
            workspace=self._workspace, num_simulations=num_simulations,
        )

    def act_batch(self, observations: Any) -> np.ndarray:
        """Greedy actions ``[B]`` int64 for a sequence of raw env observations, searched as one batch."""
        obs_batch = np.stack([self.preprocess(obs) for obs in observations])
        result = self.search(obs_batch)
        return search_actions(result, 0.0, None)  # pUCT: most visited, lowest index on ties; Gumbel: its action

    def act(self, obs: Any) -> int:
        """The greedy action for one raw env observation (what ``compute_single_action(obs, explore=False)`` gives)."""
        return int(self.act_batch([obs])[0])


def _resolve_model_class(spec: Mapping[str, Any]) -> type:
    module_name, _, qualname = spec["model_class"].partition(":")
    if module_name != "__main__":
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            return obj
        except (ImportError, AttributeError):
            pass
    name = spec["model_config"].get("custom_model")
    if isinstance(name, str):
        from ray.rllib.models.catalog import RLLIB_MODEL
        from ray.tune.registry import _global_registry

        if _global_registry.contains(RLLIB_MODEL, name):
            return _global_registry.get(RLLIB_MODEL, name)
    raise ValueError(f"cannot find the network class {spec['model_class']} (custom_model {name!r}): make its module "
                     "importable, register it with ModelCatalog.register_custom_model, or pass "
                     "ServingAgent.load(path, model_class=...)")
