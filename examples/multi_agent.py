"""Multi-agent training: two independent MuZero policies, each with its own network, replay buffer and learner.

RLlib's ``.multi_agent(policies=..., policy_mapping_fn=..., policies_to_train=...)`` works as for any algorithm:
here agent 0 of a two-agent CartPole (``ray.rllib.env.multi_agent_env.make_multi_agent``) plays with policy
``"p0"`` and agent 1 with ``"p1"``. MuZero keeps one sequence replay per policy (``algo.replays[policy_id]``), stores
each agent's steps in its policy's replay, and runs each trained policy's learner updates from its own replay; a
policy left out of ``policies_to_train`` still acts (and its replay fills) but its weights stay as they are.
Per-policy figures are under ``result["info"]["learner"][policy_id]``.

Run it::

    python examples/multi_agent.py --iterations 3
    python examples/multi_agent.py --iterations 3 --train p0      # p1 acts but does not learn
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.rllib.env.multi_agent_env import make_multi_agent

from rllib_muzero import MuZeroConfig

TwoAgentCartPole = make_multi_agent("CartPole-v1")  # a MultiAgentEnv class: num_agents copies of CartPole
POLICIES = ("p0", "p1")


def policy_for(agent_id: Any, episode: Any = None, **kwargs: Any) -> str:
    """Agent 0 -> "p0", agent 1 -> "p1" (a module-level function, so remote env runners can unpickle it)."""
    return f"p{agent_id}"


def make_config(*, train: Sequence[str] = POLICIES, seed: int = 0) -> MuZeroConfig:
    """Two agents, two MuZero policies (same settings, separate weights); everything in the driver process."""
    return (
        MuZeroConfig()
        .environment(TwoAgentCartPole, env_config={"num_agents": 2})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=10)
        .multi_agent(policies=set(POLICIES), policy_mapping_fn=policy_for, policies_to_train=list(train))
        .training(num_simulations=4, num_unroll_steps=3, td_steps=5, train_batch_size=16,
                  num_steps_sampled_before_learning_starts=20, replay_capacity=2000,
                  value_support=(-10, 10), reward_support=(-3, 3),
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        .debugging(seed=seed)
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--train", nargs="+", default=list(POLICIES), choices=POLICIES,
                        help="the policies that learn (default: both)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    algo = make_config(train=args.train, seed=args.seed).build_algo()
    try:
        # Copies: on the CPU get_weights() returns arrays that share memory with the parameters.
        initial = {pid: {k: np.array(v, copy=True) for k, v in algo.get_policy(pid).get_weights().items()}
                   for pid in POLICIES}
        for _ in range(args.iterations):
            result = algo.train()
        summary: dict[str, Any] = {
            "iterations": args.iterations,
            "trained": sorted(args.train),
            "learner_results_for": sorted(result["info"]["learner"]),
            "env_steps": int(result["num_env_steps_sampled_lifetime"]),
        }
        for pid in POLICIES:
            policy = algo.get_policy(pid)
            weights = policy.get_weights()
            summary[pid] = {
                "replay_size": len(algo.replays[pid]),
                "num_grad_updates": int(policy.num_grad_updates),
                "weights_changed": any(not np.array_equal(weights[k], initial[pid][k]) for k in weights),
            }
        p0, p1 = (algo.get_policy(pid).get_weights() for pid in POLICIES)
        summary["policies_share_weights"] = all(np.array_equal(p0[k], p1[k]) for k in p0)
    finally:
        algo.stop()
    for key, value in summary.items():
        print(f"{key}: {value}")
    return summary


if __name__ == "__main__":
    main()
