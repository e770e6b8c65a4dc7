"""Train with RLlib, then act in plain Python without Ray: ``export_for_serving`` + ``ServingAgent``.

Two steps, usually in two programs:

1. In the training process: ``export_for_serving(algo, "agent.muzero.pt")`` writes the network weights and the few
   settings acting needs (model class and config, spaces, supports, search hyperparameters) with ``torch.save``.
2. Anywhere else: ``ServingAgent.load("agent.muzero.pt").act(obs)`` rebuilds the network and runs MuZero's search
   greedily (no root noise, most visited action): the action ``algo.compute_single_action(obs, explore=False)`` gives.

The serving side never starts or joins a Ray cluster (``ray.is_initialized()`` stays False). It does import
``ray.rllib`` modules, because MuZero networks are RLlib ``TorchModelV2`` classes, so Ray must be installed where
you serve. The file loads with ``torch.load(weights_only=True)``: no arbitrary unpickling, unlike RLlib checkpoints.

Run it (trains for a few iterations, exports, then acts in a fresh Python process that never starts Ray)::

    python examples/serve_without_ray.py --iterations 3 --path /tmp/cartpole.muzero.pt

The tiny default budget teaches CartPole little (the point here is that the served actions equal RLlib's). To serve
a real agent, export a checkpoint of the CartPole tuned example instead of training here::

    rllib-muzero train tuned_examples/cartpole-muzero.yaml
    python examples/serve_without_ray.py --checkpoint ~/ray_results/cartpole-muzero/<trial>/checkpoint_000XYZ
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from rllib_muzero import MuZeroConfig
from rllib_muzero.serving import ServingAgent, export_for_serving

# The serving program: plain Python, no ray.init. Prints the greedy return of one CartPole episode and the actions
# for the observations passed as JSON.
SERVE_SCRIPT = """
import json, sys
import gymnasium as gym
import numpy as np
import ray
from rllib_muzero.serving import ServingAgent

agent = ServingAgent.load(sys.argv[1])
observations = [np.asarray(o, np.float32) for o in json.loads(sys.argv[2])]
env = gym.make("CartPole-v1")
obs, _ = env.reset(seed=0)
episode_return, done = 0.0, False
while not done:
    obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
    episode_return += reward
    done = terminated or truncated
print(json.dumps({"actions": [agent.act(o) for o in observations], "episode_return": episode_return,
                  "ray_initialized": ray.is_initialized()}))
"""


def make_config(*, seed: int = 0) -> MuZeroConfig:
    """CartPole, sized for a 2-core machine (everything in the driver process)."""
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=10)
        .training(num_simulations=8, num_unroll_steps=3, td_steps=5, train_batch_size=32, training_intensity=4.0,
                  num_steps_sampled_before_learning_starts=40, replay_capacity=2000,
                  value_support=(-10, 10), reward_support=(-3, 3),
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        .debugging(seed=seed)
    )


def sample_observations(num: int, seed: int = 0) -> np.ndarray:
    """``num`` CartPole-like observations (states near the upright pole, where actions matter)."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1.0, 1.0, size=(num, 4)) * np.array([0.5, 1.0, 0.1, 1.0])).astype(np.float32)


def serve_in_subprocess(path: str, observations: np.ndarray) -> dict[str, Any]:
    """Runs ``SERVE_SCRIPT`` in a fresh Python process (no Ray session) and returns what it printed."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, path, json.dumps(observations.tolist())],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"serving process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="training iterations (without --checkpoint)")
    parser.add_argument("--checkpoint", default=None, help="export this CartPole MuZero checkpoint instead of training")
    parser.add_argument("--path", default=None, help="where to write the serving file (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray
    from ray.rllib.algorithms.algorithm import Algorithm

    import rllib_muzero  # noqa: F401  (registers MuZero, which Algorithm.from_checkpoint needs)

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    path = args.path or os.path.join(tempfile.mkdtemp(prefix="muzero-serving-"), "cartpole.muzero.pt")
    if args.checkpoint:
        algo = Algorithm.from_checkpoint(os.path.expanduser(args.checkpoint))
    else:
        algo = make_config(seed=args.seed).build_algo()
    observations = sample_observations(8, seed=args.seed)
    try:
        if not args.checkpoint:
            for _ in range(args.iterations):
                algo.train()
        export_for_serving(algo, path)
        expected = [int(algo.compute_single_action(o, explore=False)) for o in observations]
    finally:
        algo.stop()

    in_process = [ServingAgent.load(path).act(o) for o in observations]
    served = serve_in_subprocess(path, observations)
    summary = {"path": path, "rllib_actions": expected, "served_actions_in_process": in_process,
               "served_actions_without_ray": served["actions"], "served_episode_return": served["episode_return"],
               "serving_process_ray_initialized": served["ray_initialized"]}
    print(json.dumps(summary))
    return summary

if __name__ == "__main__":
    main()
