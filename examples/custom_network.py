"""Your own MuZero network as an RLlib custom model: subclass ``MuZeroModelV2``, register it, select it by name.

``ResidualMLPNet`` below implements the three functions of the documented interface (``rllib_muzero.MuZeroModelV2``,
see its docstring and ``docs/design.md``):

- ``representation(obs) -> hidden``                      ``(B, *obs)`` -> ``(B, H)``, min-max scaled
- ``dynamics(hidden, action) -> (next_hidden, reward)``  ``(B, H), (B,)`` -> ``(B, H)`` scaled, ``(B, Sr)`` logits
- ``prediction(hidden) -> (policy, value)``              ``(B, H)`` -> ``(B, A)`` logits, ``(B, Sv)`` logits

It is registered with ``ModelCatalog.register_custom_model`` and selected with RLlib's usual
``model={"custom_model": "residual_mlp", "custom_model_config": {...}}``; the ``custom_model_config`` entries
arrive as keyword arguments of ``__init__`` (RLlib's behaviour), next to ``value_support_size`` and
``reward_support_size`` which MuZero passes from ``value_support`` / ``reward_support``.

When the policy is built, ``rllib_muzero.models.check_muzero_model`` runs the network on a dummy batch: a model that
lacks part of the interface or returns wrong shapes is refused by ``config.build_algo()`` with a message naming what
is missing or wrong (e.g. ``... lacks the MuZero method(s) ['dynamics', ...]`` or
``...recurrent_inference(hidden, action).reward_logits must have shape (B, Sr) = (2, 7), got (2, 3)``).

Run it::

    python examples/custom_network.py --iterations 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.models import ModelCatalog
from torch import Tensor, nn
from torch.nn import functional as F

from rllib_muzero import MuZeroConfig, MuZeroModelV2
from rllib_muzero.models import scale_hidden_state

MODEL_NAME = "residual_mlp"


class ResidualBlock(nn.Module):
    """``x + W2 relu(LayerNorm(W1 x))``."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


class ResidualMLPNet(MuZeroModelV2):
    """A residual MLP MuZero network for 1-D observations.

    Options (``custom_model_config``): ``width`` (hidden-state size, default 32) and ``num_blocks`` (residual blocks in
    the representation and in the dynamics, default 1).
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
        width: int = 32,
        num_blocks: int = 1,
        **kwargs: Any,
    ):
        super().__init__(obs_space, action_space, num_outputs, model_config, name,
                         value_support_size=value_support_size, reward_support_size=reward_support_size)
        obs_size = int(np.prod(obs_space.shape))
        A = self.num_actions
        self.representation_net = nn.Sequential(
            nn.Linear(obs_size, width), *[ResidualBlock(width) for _ in range(num_blocks)])
        self.dynamics_net = nn.Sequential(
            nn.Linear(width + A, width), *[ResidualBlock(width) for _ in range(num_blocks)])
        self.reward_head = nn.Linear(width, reward_support_size)
        self.policy_head = nn.Linear(width, A)
        self.value_head = nn.Linear(width, value_support_size)
        for head in (self.reward_head, self.policy_head, self.value_head):  # uniform first predictions
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def representation(self, obs: Tensor) -> Tensor:
        x = obs.reshape(obs.shape[0], -1).to(torch.float32)  # (B, obs_size)
        return scale_hidden_state(self.representation_net(x))  # (B, H)

    def dynamics(self, hidden: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        action_one_hot = F.one_hot(action.long(), self.num_actions).to(hidden.dtype)  # (B, A)
        next_hidden = scale_hidden_state(self.dynamics_net(torch.cat([hidden, action_one_hot], dim=-1)))  # (B, H)
        return next_hidden, self.reward_head(next_hidden)  # (B, H), (B, Sr)

    def prediction(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy_head(hidden), self.value_head(hidden)  # (B, A), (B, Sv)


def register() -> None:
    """Makes ``"residual_mlp"`` selectable as ``model={"custom_model": "residual_mlp"}``."""
    ModelCatalog.register_custom_model(MODEL_NAME, ResidualMLPNet)


def make_config(*, width: int = 32, num_blocks: int = 1, seed: int = 0) -> MuZeroConfig:
    """CartPole with the custom network, sized for a 2-core machine (everything in the driver process)."""
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(
            num_simulations=4, num_unroll_steps=3, td_steps=5, train_batch_size=16,
            num_steps_sampled_before_learning_starts=20, replay_capacity=2000,
            value_support=(-10, 10), reward_support=(-3, 3),
            model={"custom_model": MODEL_NAME, "custom_model_config": {"width": width, "num_blocks": num_blocks}},
        )
        .debugging(seed=seed)
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--num-blocks", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    register()
    algo = make_config(width=args.width, num_blocks=args.num_blocks, seed=args.seed).build_algo()
    try:
        results = [algo.train() for _ in range(args.iterations)]
        model = algo.get_policy().model
        summary = {
            "model_class": type(model).__name__,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "iterations": results[-1]["training_iteration"],
            "learner_stats": results[-1]["info"]["learner"].get("default_policy", {}).get("learner_stats", {}),
        }
    finally:
        algo.stop()
    print({k: v for k, v in summary.items() if k != "learner_stats"},
          "total_loss:", summary["learner_stats"].get("total_loss"))
    return summary


if __name__ == "__main__":
    main()
