"""Writes ``tests/data/search_cases.npz``: fixed searches whose results must never change (issue: speed never
changes the visit counts for the same seed). Run it only when the search's *semantics* change on purpose, and say so
in the commit; ``tests/test_search_cases.py`` compares the current code with the stored results.

    python tests/data/make_search_cases.py

Each case: a FullyConnectedMuZeroModel (weights stored here, so torch's initialisation may change freely), a batch of
observations, search options, and the results (visit counts, root values, Q values, depths).
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import torch

from rllib_muzero.acting import search_with_model
from rllib_muzero.models import FullyConnectedMuZeroModel
from rllib_muzero.support import DiscreteSupport

PATH = os.path.join(os.path.dirname(__file__), "search_cases.npz")
MODEL_OPTIONS = {"hidden_size": 32, "representation_layers": [32], "dynamics_layers": [32], "reward_layers": [32],
                 "value_layers": [32], "policy_layers": [32]}
NUM_ACTIONS = 3
OBS_DIM = 4
SUPPORT = (-20, 20)
BASE = {"num_simulations": 30, "gamma": 0.997, "pb_c_init": 1.25, "pb_c_base": 19652.0, "unvisited_value": "zero",
        "root_counts_as_visit": True, "root_dirichlet_alpha": 0.25, "root_exploration_fraction": 0.25}
# name -> (batch size, config overrides, explore, noise seed, mask an action)
CASES = {
    "one_root_greedy": (1, {}, False, None, False),
    "eight_roots_noise": (8, {}, True, 1, False),
    "parent_value_pseudocode_root": (8, {"unvisited_value": "parent", "root_counts_as_visit": False}, False, None,
                                     False),
    "masked_and_deep": (16, {"num_simulations": 60, "gamma": 0.9}, True, 2, True),
}


def build_model(state: dict[str, np.ndarray] | None = None) -> FullyConnectedMuZeroModel:
    size = SUPPORT[1] - SUPPORT[0] + 1
    model = FullyConnectedMuZeroModel(gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
                                      gym.spaces.Discrete(NUM_ACTIONS), NUM_ACTIONS, {}, "cases",
                                      value_support_size=size, reward_support_size=size, **MODEL_OPTIONS)
    if state is None:  # random weights, including the zero-initialised last layers, so every output matters
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    else:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model.eval()


def run_case(model: FullyConnectedMuZeroModel, obs: np.ndarray, name: str, numpy_inference: bool = True):
    batch, overrides, explore, seed, mask = CASES[name]
    invalid = None
    if mask:
        invalid = np.zeros((batch, NUM_ACTIONS), bool)
        invalid[::2, 1] = True
    return search_with_model(
        model, torch.from_numpy(obs[:batch]), {**BASE, **overrides},
        value_support=DiscreteSupport(*SUPPORT), reward_support=DiscreteSupport(*SUPPORT), use_target_transform=True,
        explore=explore, rng=np.random.default_rng(seed) if seed is not None else None, invalid_actions=invalid,
        numpy_inference=numpy_inference)


def main() -> None:
    torch.set_num_threads(1)
    model = build_model()
    obs = np.random.default_rng(0).normal(size=(16, OBS_DIM)).astype(np.float32)
    arrays = {f"weight/{k}": v.numpy() for k, v in model.state_dict().items()}
    arrays["obs"] = obs
    for name in CASES:
        out = run_case(model, obs, name)
        arrays[f"{name}/visit_counts"] = out.visit_counts
        arrays[f"{name}/root_value"] = out.root_value
        arrays[f"{name}/q_values"] = out.q_values
        arrays[f"{name}/max_depth"] = out.max_depth
    np.savez_compressed(PATH, **arrays)
    print(f"wrote {PATH}: {len(CASES)} cases")


if __name__ == "__main__":
    main()
