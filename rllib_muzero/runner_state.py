"""Exact resume: what an env runner holds between two samples, carried through a checkpoint or cut by a rule.

RLlib's old stack saves an env runner's policies and filters (``RolloutWorker.get_state``), but not the episodes it is
playing. Between two ``sample()`` calls a runner (``RolloutWorker`` -> ``SyncSampler`` -> ``EnvRunnerV2``) holds:

- its sub-environments, inside its ``BaseEnv`` (``VectorEnvWrapper`` over ``_VectorizedGymEnv``, or
  ``MultiAgentEnvWrapper``), and that wrapper's *pending step*: ``EnvRunnerV2.step`` ends by sending the actions
  chosen for ``o_t``, so when ``sample()`` returns the envs have already stepped and ``o_{t+1}, u_{t+1}`` wait in the
  wrapper for the next ``poll()``;
- the episodes in progress (``EnvRunnerV2._active_episodes``: id, length, return, per-agent collectors) and the batch
  builders;
- each policy's agent connectors: ``ViewRequirementAgentConnector.agent_collectors`` (the episode's rows since the
  last fragment, ``o_t`` among them) and ``StateBufferConnector._states`` (``a_t`` and the search outputs for
  ``o_t``, which become the first row of the episode's next fragment);
- the sampler's generator (``EnvRunnerV2.run()``), suspended between two steps: it holds no data of its own, so a
  fresh generator over the state above continues where it stopped;
- the acting randomness: each policy's generator (root noise, action sampling) and Python's ``random`` module,
  from which ``EpisodeV2`` draws episode ids (the replay stitches an episode's fragments by its id).

A checkpoint of the synchronous pipeline resumes exactly by one of two means, chosen per checkpoint by the algorithm:

1. **The runners travel** (:func:`capture_runner` / :func:`restore_runner`) when every sub-environment's state is
   captured by pickling (:func:`env_state_pickles`): all of the above is pickled, with references to the runner's own
   objects (worker, policies, callbacks, env factory) stored by name and bound to the restoring runner's, and put back
   into the restored runner. Episodes in progress go on, the replay's open episodes are continued, and saving changes
   nothing in the running algorithm.
2. **Episode boundary** (:func:`episode_boundary`) otherwise: a pickled env may not hold its state (an ALE env pickles
   without its emulator state), so the checkpoint becomes an episode boundary in both runs alike. When saving, the
   replay's open episodes are closed as truncated (their targets bootstrap, as at a time limit); before the next
   sample, every runner drops its episodes in progress (they are never reported), resets its sub-environments from
   seeds derived from the config seed and the env steps sampled at the save, and re-seeds its policies' generators
   and ``random`` from the same seeds. The uninterrupted run and the restored one then sample the same data.

The policies' acting state that RLlib's own policy state does not carry per runner (weights and learner-update count
of a remote runner, which may lag the learner's by ``send_weights_frequency``; acting generators) travels in both
cases, so a restored remote runner acts with what the saved one had.
"""

from __future__ import annotations

import io
import logging
import pickle
import random
import zlib
from typing import Any

import numpy as np
from ray import cloudpickle
from ray.rllib.env.multi_agent_env import MultiAgentEnvWrapper
from ray.rllib.env.vector_env import VectorEnvWrapper

logger = logging.getLogger(__name__)

PICKLES_STATE_ATTRIBUTE = "muzero_pickles_state"
"""Env class attribute (on the unwrapped env): True when pickling the env captures its whole state (its future
observations and rewards depend on nothing else), False when it does not. Overrides :data:`STATE_PICKLING_MODULES`."""

STATE_PICKLING_MODULES = ("gymnasium.envs.classic_control.", "gymnasium.envs.toy_text.")
"""Modules whose envs pickle their whole state (pure-Python physics and the env's own ``np_random``)."""

_SUPPORTED_BASE_ENVS = (VectorEnvWrapper, MultiAgentEnvWrapper)


def episode_key(episode_id: int, agent_index: int) -> int:
    """The replay's key of one agent's trajectory in one RLlib episode (fragments with the same key are stitched)."""
    return hash((int(episode_id), int(agent_index)))


def env_state_pickles(env: Any) -> bool:
    """Whether pickling ``env`` (a sub-environment, wrappers included) captures its whole state.

    Decided by the unwrapped env: its :data:`PICKLES_STATE_ATTRIBUTE` when it declares one, otherwise whether its class
    comes from :data:`STATE_PICKLING_MODULES`. A successful pickle proves nothing: ALE envs pickle, but restore without
    the emulator's state. Wrappers are pickled with their attributes (gymnasium's and rllib_muzero's keep their state
    there, random draws from the wrapped env's ``np_random``).
    """
    unwrapped = getattr(env, "unwrapped", env)
    declared = getattr(unwrapped, PICKLES_STATE_ATTRIBUTE, None)
    if declared is not None:
        return bool(declared)
    return type(unwrapped).__module__.startswith(STATE_PICKLING_MODULES)


def capture_runner(worker: Any, *, with_weights: bool) -> dict[str, Any]:
    """What ``worker`` (an old-stack ``RolloutWorker``) holds between two samples, for :func:`restore_runner`.

    Returns ``{"worker_index", "policies", "random_state", "sampler", "reason", "layout"}``: per policy the acting
    state (learner updates and env steps seen, acting generator, and the weights when ``with_weights``: a remote
    runner's may lag the learner's); Python's ``random`` state (the next episode ids); ``sampler``, the pickled envs
    and episodes in progress (bytes), or None with ``reason`` saying why they cannot travel (``reason`` is None for a
    runner without envs: nothing to carry); ``layout``, what a restoring runner must match to take the episodes.
    """
    policies: dict[str, dict[str, Any]] = {}
    for pid, policy in worker.policy_map.items():
        entry: dict[str, Any] = {
            "global_timestep": int(policy.global_timestep),
            "num_grad_updates": int(getattr(policy, "num_grad_updates", 0)),
        }
        rng = getattr(policy, "rng", None)
        if isinstance(rng, np.random.Generator):
            entry["rng_state"] = rng.bit_generator.state
        if with_weights:
            entry["weights"] = policy.get_weights()
        policies[pid] = entry
    sampler, reason = None, None
    if worker.sampler is not None:
        sampler, reason = _capture_sampler(worker)
    return {"worker_index": int(worker.worker_index), "policies": policies, "random_state": random.getstate(),
            "sampler": sampler, "reason": reason, "layout": _layout(worker)}


def restore_runner(worker: Any, captured: dict[str, Any]) -> bool:
    """Puts :func:`capture_runner`'s output back into ``worker`` (after RLlib restored the policies' state).

    Returns whether the episodes in progress were put back: not when none were captured, nor when ``worker`` samples
    differently from the runner that was saved (another number or kind of sub-environments, other agent connectors,
    e.g. an algorithm restored for evaluation with one env); its own episodes then stay as they are.
    """
    for pid, entry in captured["policies"].items():
        if pid not in worker.policy_map:
            continue
        policy = worker.policy_map[pid]
        if "weights" in entry:
            policy.set_weights(entry["weights"])
        policy.global_timestep = entry["global_timestep"]
        if hasattr(policy, "num_grad_updates"):
            policy.num_grad_updates = entry["num_grad_updates"]
        rng = getattr(policy, "rng", None)
        if "rng_state" in entry and isinstance(rng, np.random.Generator):
            rng.bit_generator.state = entry["rng_state"]
    if captured["sampler"] is None or captured.get("layout") != _layout(worker):
        return False
    _restore_sampler(worker, captured["sampler"])
    random.setstate(captured["random_state"])  # the ids of the episodes that follow these
    return True


def episode_boundary(worker: Any, entropy: list[int] | None) -> None:
    """Ends every episode in progress of ``worker`` and starts the next ones from seeds (the episode-boundary rule).

    The episodes in progress are dropped (no fragment, no metrics, no ``on_episode_end``), every sub-environment is
    reset with a seed, and the policies' acting generators and Python's ``random`` are re-seeded, all from
    ``SeedSequence(entropy + [worker_index])``; with ``entropy=None`` (no config seed) the envs are reset without a seed
    and nothing is re-seeded. The resets take effect at the next ``sample()``. Runners whose ``BaseEnv`` is neither a
    ``VectorEnvWrapper`` nor a ``MultiAgentEnvWrapper`` (``remote_worker_envs``) go on with their episodes (warned).
    """
    policies = sorted(worker.policy_map.items(), key=lambda item: str(item[0]))
    env_seeds: list[int | None] | None = None
    if entropy is not None:
        root = np.random.SeedSequence([*entropy, int(worker.worker_index)])
        env_seq, random_seq = root.spawn(2)
        for pid, policy in policies:
            if isinstance(getattr(policy, "rng", None), np.random.Generator):
                policy.rng = np.random.default_rng(
                    np.random.SeedSequence([*entropy, int(worker.worker_index), zlib.crc32(str(pid).encode())]))
        random.seed(int.from_bytes(random_seq.generate_state(4, dtype=np.uint32).tobytes(), "little"))
    sampler, base_env = worker.sampler, worker.async_env
    if sampler is None or base_env is None:
        return
    if not isinstance(base_env, _SUPPORTED_BASE_ENVS):  # e.g. remote_worker_envs: its episodes just go on
        logger.warning("MuZero: cannot reset the sub-environments of a %s at a checkpoint's episode boundary, so a "
                       "run resumed from that checkpoint does not sample exactly what this one samples (exact resume "
                       "supports %s).", type(base_env).__name__, [t.__name__ for t in _SUPPORTED_BASE_ENVS])
        return
    envs = base_env.get_sub_environments()
    if entropy is not None:
        env_seeds = [int(s) for s in env_seq.generate_state(len(envs), dtype=np.uint32)]
    for env, seed in zip(envs, env_seeds or [None] * len(envs), strict=True):
        env.reset(seed=seed)  # seeds the env's generator; the wrapper's next poll() resets from it again
    base_env._init_env_state(idx=None)
    if isinstance(base_env, VectorEnvWrapper):
        base_env.first_reset_done = False
    else:
        base_env.terminateds.clear()
        base_env.truncateds.clear()
    runner = sampler._env_runner_obj
    runner._active_episodes.clear()
    runner._batch_builders.clear()
    for _, policy in policies:
        connectors = getattr(policy, "agent_connectors", None)
        if connectors is not None:
            for env_id in range(len(envs)):
                connectors.reset(env_id)
    sampler._env_runner = runner.run()


def active_episode_keys(worker: Any) -> set[int]:
    """Replay keys (:func:`episode_key`) of the agents in the episodes ``worker`` is playing."""
    if worker.sampler is None:
        return set()
    episodes = worker.sampler._env_runner_obj._active_episodes.values()
    return {episode_key(e.episode_id, index) for e in episodes for index in e._agent_to_index.values()}


# --------------------------------------------------------------------------------------------------- pickling
def _references(worker: Any) -> dict[str, Any]:
    """The runner's own objects that its episodes and envs point at: pickled by name, bound to the restorer's."""
    refs: dict[str, Any] = {
        "worker": worker,
        "policy_map": worker.policy_map,
        "callbacks": worker.callbacks,
        "policy_mapping_fn": worker.policy_mapping_fn,
    }
    for pid, policy in worker.policy_map.items():
        refs[f"policy:{pid}"] = policy
        refs[f"view_requirements:{pid}"] = policy.view_requirements
    base_env = worker.async_env
    for name, holder in (("base_env", base_env), ("vector_env", getattr(base_env, "vector_env", None))):
        if getattr(holder, "make_env", None) is not None:
            refs[f"make_env:{name}"] = holder.make_env
    return {name: obj for name, obj in refs.items() if obj is not None}


class _RunnerPickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, refs: dict[str, Any]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._names = {id(obj): name for name, obj in refs.items()}
        self._refs = refs  # keeps the objects (and so their ids) alive while pickling

    def persistent_id(self, obj: Any) -> str | None:
        return self._names.get(id(obj))


class _RunnerUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, refs: dict[str, Any]):
        super().__init__(file)
        self._refs = refs

    def persistent_load(self, pid: str) -> Any:
        if pid not in self._refs:
            raise pickle.UnpicklingError(f"The restoring env runner has no `{pid}` (the checkpoint's runner had one).")
        return self._refs[pid]


def _capture_sampler(worker: Any) -> tuple[bytes | None, str | None]:
    base_env = worker.async_env
    if not isinstance(base_env, _SUPPORTED_BASE_ENVS):
        return None, f"its env is a {type(base_env).__name__}"
    for env in base_env.get_sub_environments():
        if not env_state_pickles(env):
            name = type(getattr(env, "unwrapped", env)).__name__
            return None, (f"pickling {name} may not capture its state (declare `{PICKLES_STATE_ATTRIBUTE} = True` on "
                          "the env class when it does)")
    runner = worker.sampler._env_runner_obj
    payload = {
        "base_env": dict(vars(base_env)),
        "episodes": dict(runner._active_episodes),
        "batch_builders": dict(runner._batch_builders),
        "connectors": {pid: [dict(vars(c)) for c in policy.agent_connectors.connectors]
                       for pid, policy in worker.policy_map.items() if getattr(policy, "agent_connectors", None)},
    }
    buffer = io.BytesIO()
    try:
        _RunnerPickler(buffer, _references(worker)).dump(payload)
    except Exception as e:  # an env or a user callback's episode data that does not pickle
        return None, f"its episodes do not pickle ({type(e).__name__}: {e})"
    return buffer.getvalue(), None


def _restore_sampler(worker: Any, blob: bytes) -> None:
    payload = _RunnerUnpickler(io.BytesIO(blob), _references(worker)).load()
    base_env = worker.async_env
    replaced = base_env.get_sub_environments()
    vars(base_env).update(payload["base_env"])
    for env in replaced:
        try:
            env.close()
        except Exception as e:  # closing a replaced env is best effort
            logger.debug("closing a replaced sub-environment failed: %s", e)
    worker.env = base_env.get_sub_environments()[0]
    runner = worker.sampler._env_runner_obj
    runner._active_episodes.clear()
    runner._active_episodes.update(payload["episodes"])
    runner._batch_builders.clear()
    runner._batch_builders.update(payload["batch_builders"])
    for pid, states in payload["connectors"].items():
        for connector, state in zip(worker.policy_map[pid].agent_connectors.connectors, states, strict=True):
            vars(connector).update(state)
    worker.sampler._env_runner = runner.run()



def _layout(worker: Any) -> dict[str, Any] | None:
    """How ``worker`` samples, as far as its captured episodes depend on it: the kind and number of sub-environments
    and each policy's agent connectors (None: no envs)."""
    if worker.sampler is None or worker.async_env is None:
        return None
    return {
        "base_env": type(worker.async_env).__name__,
        "num_envs": len(worker.async_env.get_sub_environments()),
        "connectors": {str(pid): [type(c).__name__ for c in policy.agent_connectors.connectors]
                       for pid, policy in worker.policy_map.items() if getattr(policy, "agent_connectors", None)},
    }
