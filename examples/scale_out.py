"""The same MuZero config, scaled out: remote env runners search and act in parallel, the driver learns.

Every env runner is a Ray actor with its own copy of the network; it steps ``num_envs_per_env_runner`` envs and
searches all of their observations as one batch (one network call per simulation). With remote runners MuZero runs
its asynchronous pipeline (docs/design.md, "The asynchronous pipeline"): the runners sample continuously through
RLlib's asynchronous requests, the driver stitches each fragment into the replay by episode id as it arrives, and a
learner thread trains at the same time, as many updates as ``training_intensity`` owes for the stored env steps (new
sample requests wait while the learner owes more than ``max_learner_lag``); every request carries the latest weights.
An iteration ends after as many fragments as there are runners (a fast runner may deliver more of them than a slow
one). ``.training(async_sampling=False)`` restores the synchronous loop (one fragment from every runner, then the
updates, then the weights), which reproduces a seeded run exactly. Nothing in the config changes between one process
and a cluster but these knobs:

==============================================  ====================================================================
knob                                            role
==============================================  ====================================================================
``.env_runners(num_env_runners=N)``             N remote actors acting by search (the paper's ``num_actors``)
``.env_runners(num_envs_per_env_runner=E)``     envs per actor, searched as one batch (larger E: better throughput)
``.env_runners(num_cpus_per_env_runner=c)``     CPUs each actor reserves; fractional values pack actors on few cores
``.env_runners(rollout_fragment_length=T)``     steps per env per sample call (each iteration adds N * E * T steps)
``.resources(num_cpus_for_main_process=c)``     CPUs reserved for the driver (the learner) under Tune
``.resources(num_gpus=1)``                      a GPU for the learner (install the CUDA build of torch); env runners
                                                keep searching on their CPUs
``.training(training_intensity=r)``             replayed positions per new env step: keeps the replay ratio fixed
                                                when more runners add more steps per iteration
``.training(async_sampling=None)``              None: asynchronous with remote runners; False: synchronous loop
``.training(max_learner_lag=L)``                updates the learner may owe before sampling is held back
``max_requests_in_flight_per_env_runner=m``     ``.env_runners``: sample requests queued per runner (default 1)
==============================================  ====================================================================

On a multi-node cluster start Ray on every node (``ray start --head`` / ``ray start --address=HEAD:6379``), then
connect the driver with ``ray.init(address="auto")`` (or ``--address auto`` here) and raise ``num_env_runners`` to
the CPUs you have (e.g. 2 CPUs per runner: ``num_cpus_per_env_runner=2``). Every node needs ``rllib-muzero``
installed and your own env / network / callback modules importable (install them, or ship them with
``ray.init(address="auto", runtime_env={"py_modules": [my_package]})``).

On a 2-core machine the defaults below fit: 2 runners at 0.5 CPU each, 0.5 CPU for the driver.

Run it::

    python examples/scale_out.py --iterations 2
    python examples/scale_out.py --address auto --num-env-runners 16 --num-cpus-per-env-runner 1   # on a cluster
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

from rllib_muzero import MuZeroConfig


class CountSampledSteps(RLlibCallback):
    """Counts the env steps each env runner sampled (read with :func:`steps_per_runner`)."""

    def __init__(self):
        super().__init__()
        self.sampled_steps = 0

    def on_sample_end(self, *, samples, worker=None, **kwargs) -> None:
        self.sampled_steps += samples.env_steps()


def steps_per_runner(algo: Any) -> dict[int, int]:
    """``{worker_index: env steps sampled}`` over the local (index 0) and every remote env runner."""
    pairs = algo.env_runner_group.foreach_env_runner(
        lambda runner: (runner.worker_index, runner.callbacks.sampled_steps))
    return dict(pairs)


def make_config(*, num_env_runners: int = 2, num_envs_per_env_runner: int = 2, num_cpus_per_env_runner: float = 0.5,
                num_cpus_for_main_process: float = 0.5, num_gpus: int = 0, seed: int = 0) -> MuZeroConfig:
    """CartPole with remote env runners."""
    return (
        MuZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=num_envs_per_env_runner,
                     num_cpus_per_env_runner=num_cpus_per_env_runner, rollout_fragment_length=10)
        .resources(num_cpus_for_main_process=num_cpus_for_main_process, num_gpus=num_gpus)
        .training(num_simulations=4, num_unroll_steps=3, td_steps=5, train_batch_size=16, training_intensity=2.0,
                  num_steps_sampled_before_learning_starts=20, replay_capacity=2000,
                  value_support=(-10, 10), reward_support=(-3, 3),
                  model={"custom_model": "muzero_fc", "custom_model_config": {"hidden_size": 16}})
        .callbacks(CountSampledSteps)
        .debugging(seed=seed)
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--address", default=None, help='Ray cluster to join, e.g. "auto" (default: start one)')
    parser.add_argument("--num-env-runners", type=int, default=2)
    parser.add_argument("--num-envs-per-env-runner", type=int, default=2)
    parser.add_argument("--num-cpus-per-env-runner", type=float, default=0.5)
    parser.add_argument("--num-cpus-for-main-process", type=float, default=0.5)
    parser.add_argument("--num-gpus", type=int, default=0, help="GPUs for the learner (needs the CUDA torch build)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import ray

    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    algo = make_config(num_env_runners=args.num_env_runners, num_envs_per_env_runner=args.num_envs_per_env_runner,
                       num_cpus_per_env_runner=args.num_cpus_per_env_runner,
                       num_cpus_for_main_process=args.num_cpus_for_main_process, num_gpus=args.num_gpus,
                       seed=args.seed).build_algo()
    try:
        results = [algo.train() for _ in range(args.iterations)]
        summary = {
            "steps_per_runner": steps_per_runner(algo),
            "replay_num_added": algo.replays["default_policy"].num_added,
            "num_env_steps_sampled_lifetime": results[-1]["num_env_steps_sampled_lifetime"],
            "num_updates": algo.get_policy().num_grad_updates,
        }
    finally:
        algo.stop()
    print(summary)
    return summary


if __name__ == "__main__":
    main()
