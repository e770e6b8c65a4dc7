"""Reanalyse workers: policy reanalyse (MuZero paper, Appendix H "Reanalyze"; EfficientZero) in Ray actors.

Policy reanalyse searches ``reanalyse_policy_fraction * B * (K + 1)`` roots per learner update, which on CartPole costs
1.7x (Gumbel, 8 simulations) to 6.3x (pUCT, 50) a plain update when the learner does it (docs/benchmarks.md). The
MuZero paper and EfficientZero run it in separate actors so the learner only trains. ``num_reanalyse_workers`` Ray
actors (each ``num_cpus_per_reanalyse_worker`` CPUs, scheduled by Ray like env runners, so they scale out with the
cluster) do the searches here, while the learner keeps ``reanalyse_batches_in_flight`` replay batches ahead of the one
it trains on:

    learner:  sample batch i+D, choose its positions, send them  |  train on batch i (its targets arrived)
    workers:  search batch i+1 .. i+D with the target network

:class:`ReanalysePipeline` (in the learner) samples a batch (the caller's ``sample_fn``: the replay sample with value
reanalyse), draws the positions to reanalyse (:func:`~rllib_muzero.reanalyse.select_reanalyse_positions`) and sends
their observations to the next worker, round robin; :meth:`ReanalysePipeline.next_batch` returns the oldest batch
with its fresh targets written in (:func:`~rllib_muzero.reanalyse.apply_policy_targets`). A
:class:`ReanalyseWorker` holds one policy per policy id, built from the learner's policy class, spaces and config,
whose network carries the learner's *target network* weights (the network the learner's own reanalyse would use).

Implementation details (deliberate choices):

1. Weights go out as one ``ray.put`` per refresh of the target network (every ``target_update_interval`` updates),
   tagged with the update count of the refresh (its *version*); every request carries the version and the object
   reference inside a list (so Ray does not fetch it for every call), and a worker loads the weights only when the
   version changes. A batch's targets are therefore those of the target network at the time it was sent, at most
   ``reanalyse_batches_in_flight`` updates older than the learner's own reanalyse would use; the lag is reported
   (``reanalyse_target_lag``, in learner updates).
2. Batches are sampled when they are sent, up to ``reanalyse_batches_in_flight`` updates before they are trained on:
   their priorities, value targets and importance weights are those of that moment. Priority updates of positions
   overwritten meanwhile are dropped by the replay's generation check, as always.
3. Root noise: each worker draws from its own generator, seeded from the config seed and the worker index (stream
   11); results are deterministic for a seed as long as no worker is restarted.
4. Faults: workers are Ray actors with ``max_restarts=-1`` and ``max_task_retries=3``: Ray restarts a worker that dies
   and retries its pending searches (a restarted worker reloads the weights of the next request it serves). A request
   that still fails is searched by the learner's own policy instead, with a warning, so no batch is lost.
5. The batches in flight are not part of a checkpoint: a restored run samples new ones. With reanalyse workers,
   resume is therefore exact only up to which batches the first updates after the restore train on.
6. Off (``num_reanalyse_workers=0``, the default): the learner reanalyses in line, as before.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from rllib_muzero.acting import policy_targets
from rllib_muzero.reanalyse import ReanalysePositions, apply_policy_targets, select_reanalyse_positions

__all__ = ["ReanalysePipeline", "ReanalyseWorker", "make_reanalyse_workers"]

logger = logging.getLogger(__name__)

# Root-noise stream of the reanalyse workers' generators (the algorithm's and policies' own streams differ).
_NOISE_STREAM = 11
# A worker's policy gets a runner index above any env runner's, so it never takes a GPU or a runner's seed.
_WORKER_INDEX_BASE = 1_000_000


class ReanalyseWorker:
    """One reanalyse worker (a Ray actor when made by :func:`make_reanalyse_workers`).

    Args:
        policy_specs: ``{policy id: (policy class, observation space, action space, config dict)}``, as the
            learner's policies were built.
        worker_index: this worker's index (1-based), for its seed and its policies' runner index.
        seed: the config seed (None: unseeded noise).
        num_threads: torch threads of the searches (the CPUs Ray gave this worker).
    """

    def __init__(self, policy_specs: Mapping[Any, tuple[type, Any, Any, dict]], worker_index: int,
                 seed: int | None, num_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        self._specs = dict(policy_specs)
        self._policies: dict[Any, Any] = {}
        self._versions: dict[Any, int] = {}
        entropy = None if seed is None else [int(seed), int(worker_index), _NOISE_STREAM]
        self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
        self._worker_index = int(worker_index)
        self.num_searched = 0

    def _policy(self, pid: Any) -> Any:
        policy = self._policies.get(pid)
        if policy is None:
            policy_class, observation_space, action_space, config = self._specs[pid]
            config = {**config, "worker_index": _WORKER_INDEX_BASE + self._worker_index, "num_gpus": 0,
                      "num_gpus_per_env_runner": 0}
            policy = self._policies[pid] = policy_class(observation_space, action_space, config)
        return policy

    def reanalyse(self, pid: Any, version: int, weights_box: list, obs: np.ndarray) -> np.ndarray:
        """``(M, *obs) -> (M, A)`` policy targets from one batched search (root noise as when acting) with the
        target-network weights of ``version`` (``weights_box[0]``: the weights, or a Ray object reference to them)."""
        policy = self._policy(pid)
        if self._versions.get(pid) != version:
            weights = weights_box[0]
            if not isinstance(weights, Mapping):
                weights = ray.get(weights)
            policy.set_weights(weights)
            self._versions[pid] = version
        result = policy.search(obs, explore=True, rng=self._rng)
        self.num_searched += len(obs)
        return policy_targets(result)

    def stats(self) -> dict[str, Any]:
        """Positions searched so far and the weights version loaded per policy."""
        return {"num_searched": self.num_searched, "versions": dict(self._versions)}


def make_reanalyse_workers(num_workers: int, num_cpus: float, policy_specs: Mapping[Any, tuple[type, Any, Any, dict]],
                           seed: int | None) -> list[Any]:
    """``num_workers`` :class:`ReanalyseWorker` Ray actors of ``num_cpus`` CPUs each (restarted by Ray on failure)."""
    actor_class = ray.remote(ReanalyseWorker).options(num_cpus=num_cpus, max_restarts=-1, max_task_retries=3)
    threads = max(1, int(num_cpus))
    return [actor_class.remote(dict(policy_specs), i + 1, seed, threads) for i in range(num_workers)]


@dataclass
class _InFlight:
    batch: MutableMapping[str, np.ndarray]
    positions: ReanalysePositions | None
    result: Any  # Ray object reference of the fresh targets (None: nothing to search)
    version: int  # target-network version the request carries
    worker: int


class ReanalysePipeline:
    """Keeps ``depth`` replay batches per policy in flight to the reanalyse workers (see the module docstring).

    Args:
        workers: the worker actors (:func:`make_reanalyse_workers`).
        depth: batches in flight per policy (``reanalyse_batches_in_flight``).
        fraction: ``reanalyse_policy_fraction``.
    """

    def __init__(self, workers: list[Any], depth: int, fraction: float) -> None:
        if not workers:
            raise ValueError("a reanalyse pipeline needs at least one worker")
        self.workers = list(workers)
        self.depth = int(depth)
        self.fraction = float(fraction)
        self._queues: dict[Any, collections.deque[_InFlight]] = collections.defaultdict(collections.deque)
        self._weights: dict[Any, tuple[int, list]] = {}  # pid -> (version, [object reference])
        self._next_worker = 0
        self.num_fallbacks = 0
        self.last_target_lag = 0

    def next_batch(self, pid: Any, sample_fn: Callable[[], MutableMapping[str, np.ndarray]], rng: np.random.Generator,
                   target_version: int, target_weights: Callable[[], Mapping[str, np.ndarray]],
                   local_search: Callable[[np.ndarray], np.ndarray]) -> MutableMapping[str, np.ndarray]:
        """The oldest batch in flight for ``pid``, with its reanalysed policy targets; tops the queue up first.

        Args:
            pid: the policy id.
            sample_fn: samples one replay batch (with ``TRAIN_UNROLL_OBS``).
            rng: draws the positions (the learner's replay generator, as in-line reanalyse).
            target_version: the learner's target network's version now (the update count of its last refresh).
            target_weights: ``() -> weights`` of the learner's target network; called only for a new version.
            local_search: the learner's own ``search_fn``, used when a worker cannot answer.
        """
        version = int(target_version)
        if pid not in self._weights or self._weights[pid][0] != version:
            self._weights[pid] = (version, [ray.put(dict(target_weights()))])
        queue = self._queues[pid]
        while len(queue) < self.depth:
            batch = sample_fn()
            positions = select_reanalyse_positions(batch, self.fraction, rng)
            worker = self._next_worker
            result = None
            if positions is not None:
                self._next_worker = (self._next_worker + 1) % len(self.workers)
                result = self.workers[worker].reanalyse.remote(pid, version, self._weights[pid][1], positions.obs)
            queue.append(_InFlight(batch, positions, result, version, worker))
        item = queue.popleft()
        self.last_target_lag = version - item.version
        if item.positions is not None:
            try:
                fresh = ray.get(item.result)
            except (ray.exceptions.RayError, OSError) as error:
                logger.warning("reanalyse worker %d failed (%s); the learner searches this batch itself",
                               item.worker + 1, type(error).__name__)
                self.num_fallbacks += 1
                fresh = local_search(item.positions.obs)
            apply_policy_targets(item.batch, item.positions, fresh)
        return item.batch

    def in_flight(self) -> int:
        """Batches sent and not yet trained on, over all policies."""
        return sum(len(queue) for queue in self._queues.values())

    def stop(self) -> None:
        """Drops the batches in flight and ends the workers."""
        self._queues.clear()
        self._weights.clear()
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
