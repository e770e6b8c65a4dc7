"""Playing whole games with a trained policy, outside RLlib's sampler: the engine behind ``rllib-muzero evaluate``
(:mod:`rllib_muzero.evaluate`), the benchmarks and the tests. (This module was ``rllib_muzero.evaluation``; that path
still imports, as a deprecated alias.)

Two ways to play:

- :func:`play_games` returns the undiscounted returns only (benchmarks): all games in lockstep, one batched search
  per move.
- :func:`run_games` records, per step, what the agent did and what its model believed (:class:`GameTrace`): the
  action, the real reward, the model's predicted reward for that action, the network value and search value of the
  state acted from, the search depth, the action distribution acted on, optional rendered frames and search trees.

How :func:`run_games` acts (``EvaluationOptions.mode``):

=========  ============================================================================================================
``mcts``   MuZero's search from each real observation; the action is sampled from the root visit counts at the
           temperature (``T = 0``: most visited, lowest index on ties). Gumbel search plays its own action (a
           temperature above 0 is an error, :func:`check_options_for`); ``use_exploration_noise`` adds its Gumbel
           noise. With ``apply_mcts_steps = n > 1`` one search also plans the next ``n - 1`` actions open-loop:
           from the child of the action taken, follow the most visited child (lowest index on ties) as long as the
           tree goes on, and play those actions without searching again.
``prior``  The network's prior alone, ``p(s) ** (1 / T)`` normalised (``T = 0``: argmax), no search. Root noise
           (``use_exploration_noise``) is mixed into the prior as in the search (mcts.py convention 9).
``value``  One-step lookahead through one recurrent step for every action: ``Q(s, a) = r(s, a) + gamma * v(s')``;
           ``T = 0``: argmax (lowest index on ties), ``T > 0``: sampled from ``softmax(Q / T)``.
``random`` Uniformly random legal actions (the action mask where the env has one), no network call: the baseline the
           reference shows beside each trained agent. The temperature is ignored; the model columns of the
           record (predicted reward, network and search value) are NaN.
=========  ============================================================================================================

Reproducibility: games are played in batches of ``games_per_batch`` games (lockstep, one batched network call per
move). Game ``i`` is reset with seed ``seed + i``; the randomness of a batch (root noise, temperature sampling)
comes from a generator seeded with ``(seed, index of the batch's first game)``. A batch's result therefore depends
only on the seed, the batch and the options: ``parallel=True`` (each batch a Ray task) gives exactly the results of
serial play, and with ``games_per_batch=1`` (the default) game ``i`` is the same however many games are played.
Every batch plays with one torch thread (serial and parallel alike), so the floating point of the network calls is
the same in both modes.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rllib_muzero.acting import sample_from_visits, search_actions
from rllib_muzero.mcts import ROOT_INDEX, UNVISITED, SearchOutput, Tree
from rllib_muzero.policy import MuZeroTorchPolicy
from rllib_muzero.tree_dot import tree_to_dot

__all__ = [
    "ACTING_MODES",
    "EvaluationError",
    "EvaluationOptions",
    "EvaluationResult",
    "GameTrace",
    "ObservationPipeline",
    "most_visited_path",
    "play_games",
    "play_traced_games",
    "run_games",
    "subtree_heights",
]

ACTING_MODES = ("mcts", "prior", "value", "random")  # accepted values of EvaluationOptions.mode (module docstring)


class EvaluationError(ValueError):
    """A problem with what the user asked for (options, checkpoints, env): reported as one line, no traceback."""


def play_games(
    policy: MuZeroTorchPolicy,
    make_env: Callable[[], gym.Env],
    num_games: int,
    *,
    seed: int,
    explore: bool = False,
    temperature: float = 0.0,
    max_steps: int | None = None,
) -> np.ndarray:
    """Plays ``num_games`` games to their end and returns their undiscounted returns, shape [num_games].

    Game ``i`` is reset with seed ``seed + i``. With ``explore=False`` the search adds no root noise and, at
    ``temperature`` 0, the most visited action is played (the paper's evaluation). Gumbel search plays its own
    action: a temperature above 0 is an error there (``explore=True`` gives its Gumbel noise).
    """
    _check_search_temperature(policy, temperature)
    envs = [make_env() for _ in range(num_games)]
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
        returns = np.zeros(num_games)
        steps = np.zeros(num_games, dtype=np.int64)
        alive = np.ones(num_games, dtype=bool)
        while alive.any():
            idx = np.flatnonzero(alive)
            result = policy.search(obs[idx], explore=explore)
            actions = search_actions(result, temperature, policy.rng)
            for j, i in enumerate(idx):
                next_obs, reward, terminated, truncated, _ = envs[i].step(int(actions[j]))
                returns[i] += reward
                steps[i] += 1
                obs[i] = next_obs
                if terminated or truncated or (max_steps is not None and steps[i] >= max_steps):
                    alive[i] = False
        return returns
    finally:
        for env in envs:
            env.close()


# ----------------------------------------------------------------------------------------------------------------------
# Options and records.

# The `rllib-muzero evaluate` flag of each option, so one validation serves the Python API and the command line.
_FLAGS = {
    "num_games": "--games-per-evaluation",
    "temperature": "--eval-temperatures",
    "mode": "--only-prior / --only-value / --random-agent",
    "num_simulations": "--num-simulations",
    "apply_mcts_steps": "--apply-mcts-steps",
    "seed": "--seed",
    "max_steps": "--max-steps",
    "save_mcts_after_step": "--save-mcts-after-step",
    "games_per_batch": "--games-per-batch",
    "use_exploration_noise": "--use-exploration-noise",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _bad(name: str, value: Any, accepted: str) -> EvaluationError:
    return EvaluationError(f"`{name}` ({_FLAGS.get(name, name)}) must be {accepted}, got {value!r}")


@dataclass(frozen=True)
class EvaluationOptions:
    """How :func:`run_games` plays (validated on construction; errors name the option and its CLI flag).

    Attributes:
        num_games: games to play (game ``i`` is reset with seed ``seed + i``).
        temperature: ``T >= 0`` of the action choice (0 = greedy), see the module docstring per mode.
        mode: ``"mcts"`` (search), ``"prior"`` (network prior only) or ``"value"`` (one-step lookahead).
        num_simulations: simulations per search; None = the policy's ``num_simulations``.
        use_exploration_noise: the search's training-time root noise (Dirichlet noise on the root prior for pUCT,
            the Gumbel noise for Gumbel search; ``prior`` mode: Dirichlet); off = the paper's evaluation.
        apply_mcts_steps: actions played from one search (open-loop along the most visited path); ``mcts`` only.
        seed: base seed of env resets and of each batch's generator.
        max_steps: stop each game after this many steps (counted as truncated); None = play to the end.
        render: keep ``env.render()`` frames (the env must be made with ``render_mode="rgb_array"``): one after the
            reset and one after every step, so ``length + 1`` frames per game.
        save_mcts_after_step: keep the search tree of every step ``>= this`` as Graphviz DOT text
            (``GameTrace.trees_dot``); None = keep none. ``mcts`` only.
        games_per_batch: games played in lockstep with batched searches; the unit of work of ``parallel``.
        parallel: play the batches as Ray tasks (Ray must be initialised, or is started with defaults).
    """

    num_games: int = 1
    temperature: float = 0.0
    mode: str = "mcts"
    num_simulations: int | None = None
    use_exploration_noise: bool = False
    apply_mcts_steps: int = 1
    seed: int = 0
    max_steps: int | None = None
    render: bool = False
    save_mcts_after_step: int | None = None
    games_per_batch: int = 1
    parallel: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.num_games) or self.num_games < 1:
            raise _bad("num_games", self.num_games, "an integer >= 1")
        if not _is_number(self.temperature) or not self.temperature >= 0 or math.isinf(self.temperature):
            raise _bad("temperature", self.temperature, "a finite number >= 0 (0 = greedy)")
        if self.mode not in ACTING_MODES:
            raise _bad("mode", self.mode, f"one of {list(ACTING_MODES)}")
        if self.num_simulations is not None and (not _is_int(self.num_simulations) or self.num_simulations < 1):
            raise _bad("num_simulations", self.num_simulations, "None or an integer >= 1")
        if not _is_int(self.apply_mcts_steps) or self.apply_mcts_steps < 1:
            raise _bad("apply_mcts_steps", self.apply_mcts_steps, "an integer >= 1")
        if not _is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer >= 0")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            raise _bad("max_steps", self.max_steps, "None or an integer >= 1")
        if self.save_mcts_after_step is not None and (
            not _is_int(self.save_mcts_after_step) or self.save_mcts_after_step < 0
        ):
            raise _bad("save_mcts_after_step", self.save_mcts_after_step, "None or an integer >= 0")
        if not _is_int(self.games_per_batch) or self.games_per_batch < 1:
            raise _bad("games_per_batch", self.games_per_batch, "an integer >= 1")
        if self.mode != "mcts":
            flag = {"prior": "--only-prior", "value": "--only-value", "random": "--random-agent"}[self.mode]
            if self.apply_mcts_steps != 1:
                raise EvaluationError(f"--apply-mcts-steps needs a search tree; it cannot be used with {flag}")
            if self.save_mcts_after_step is not None:
                raise EvaluationError(f"--save-mcts needs a search tree; it cannot be used with {flag}")
            if self.num_simulations is not None:
                raise EvaluationError(f"--num-simulations has no effect with {flag}; leave it out")
        if self.mode in ("value", "random") and self.use_exploration_noise:
            raise EvaluationError(f"--use-exploration-noise has no effect with {flag} (no prior is used)")


def check_options_for(policy: MuZeroTorchPolicy, options: EvaluationOptions) -> None:
    """The checks of ``options`` that need the policy's config (:class:`EvaluationOptions` checks the rest on its
    own): Gumbel search (``search_algorithm="gumbel"``) plays the search's own action (Danihelka et al. 2022,
    Algorithm 2), not a sample of the visit counts, so a temperature above 0 would silently play the greedy games;
    its exploration is its Gumbel noise (``use_exploration_noise``)."""
    if options.mode == "mcts":
        _check_search_temperature(policy, options.temperature)


def _check_search_temperature(policy: MuZeroTorchPolicy, temperature: float) -> None:
    """Gumbel search ignores the temperature (:func:`~rllib_muzero.acting.search_actions`): above 0 it is an error,
    for :func:`check_options_for` and :func:`play_games` alike."""
    if temperature != 0 and policy.config.get("search_algorithm") == "gumbel":
        raise EvaluationError(
            f"`temperature` ({_FLAGS['temperature']}) has no effect with the checkpoint's search_algorithm "
            f"'gumbel', which plays the search's own action: use 0, or use_exploration_noise "
            f"({_FLAGS['use_exploration_noise']}) for the Gumbel noise it explores with in training; got "
            f"{temperature!r}")


@dataclass
class GameTrace:
    """One game as played: per step ``t`` (``T`` steps), what happened and what the model believed.

    "The state acted from" is the real observation's root for searched steps and the open-loop tree node for
    planned steps (``open_loop``).
    """

    game_index: int
    env_seed: int
    actions: np.ndarray  # [T] int64
    rewards: np.ndarray  # [T] float64, real rewards u_{t+1}
    predicted_rewards: np.ndarray  # [T] float64, the dynamics' r(s, a_t) for the action taken
    network_values: np.ndarray  # [T] float64, network value v(s) of the state acted from
    search_values: np.ndarray  # [T] float64: mcts: mean backed-up value of that node (root_value at a root);
    #                                  value: max_a Q(s, a) of the lookahead; prior: NaN
    search_depths: np.ndarray  # [T] int32, depth of the tree below the state acted from (value: 1, prior: 0)
    policies: np.ndarray  # [T, A] float64: mcts: visit shares; prior: the (noised) prior;
    #                                  value: softmax(Q / T) (one-hot at T = 0)
    open_loop: np.ndarray  # [T] bool, True where the action came from an earlier search's plan
    terminated: bool
    truncated: bool  # time limit of the env, or `max_steps`
    frames: list[np.ndarray] | None = None  # T + 1 rgb frames (after reset, after each step) when rendering
    trees_dot: dict[int, str] = field(default_factory=dict)  # step -> DOT text of the search run at that step

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum())

    def returns_so_far(self) -> np.ndarray:
        """[T] undiscounted return up to and including step t's reward."""
        return np.cumsum(self.rewards)

    def predicted_returns(self) -> np.ndarray:
        """[T] the model's predicted rewards summed up to step t."""
        return np.cumsum(self.predicted_rewards)

    def values_to_go(self, discount: float) -> np.ndarray:
        """[T] actual discounted return from step t: ``sum_{i >= t} discount^(i - t) u_{i+1}`` (no bootstrap)."""
        out = np.zeros(self.length)
        g = 0.0
        for t in range(self.length - 1, -1, -1):
            g = self.rewards[t] + discount * g
            out[t] = g
        return out


@dataclass
class EvaluationResult:
    """The games of one agent under one set of options (one row of the comparison table)."""

    label: str
    options: EvaluationOptions
    discount: float  # the policy's gamma
    num_simulations: int  # simulations per search (0 when no search: prior / value modes)
    games: list[GameTrace]
    render_fps: float | None = None  # the env's metadata["render_fps"], for GIF timing
    baseline: EvaluationResult | None = None  # the same games played by a random agent (GIFs side by side)

    @property
    def returns(self) -> np.ndarray:
        return np.array([g.total_return for g in self.games])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([g.length for g in self.games])

    def summary(self) -> dict[str, Any]:
        """Plain-number summary (JSON-ready): mean +- std return, mean length, first-step value predictions (network,
        search) vs the actual discounted return from the start, and each game's return and length."""
        returns = self.returns
        first = [g for g in self.games if g.length > 0]

        def mean(values: list[float]) -> float:
            values = [v for v in values if not math.isnan(v)]
            return float(np.mean(values)) if values else math.nan

        return {
            "label": self.label,
            "temperature": float(self.options.temperature),
            "mode": self.options.mode,
            "num_simulations": self.num_simulations,
            "apply_mcts_steps": self.options.apply_mcts_steps,
            "exploration_noise": self.options.use_exploration_noise,
            "num_games": len(self.games),
            "seed": self.options.seed,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "length_mean": float(self.lengths.mean()),
            "network_value_s0_mean": mean([float(g.network_values[0]) for g in first]),
            "search_value_s0_mean": mean([float(g.search_values[0]) for g in first]),
            "discounted_return_mean": mean([float(g.values_to_go(self.discount)[0]) for g in first]),
            "discount": self.discount,
            "returns": [float(x) for x in returns],
            "lengths": [int(x) for x in self.lengths],
        }


class ObservationPipeline:
    """What RLlib's env runner does to an observation before the policy sees it: the preprocessor (``transform``)
    and the observation filter (applied with ``update=False``: evaluation does not move its statistics)."""

    def __init__(self, preprocessor: Any = None, obs_filter: Any = None):
        self.preprocessor = preprocessor
        self.obs_filter = obs_filter

    def __call__(self, obs: Any) -> np.ndarray:
        if self.preprocessor is not None:
            obs = self.preprocessor.transform(obs)
        if self.obs_filter is not None:
            obs = self.obs_filter(obs, update=False)
        return np.asarray(obs)


# ----------------------------------------------------------------------------------------------------------------------
# Tree helpers (framework-free: only the Tree arrays).


def subtree_heights(tree: Tree) -> np.ndarray:
    """[B, N] int32: depth of the deepest descendant below each node (0 for a leaf); row ``b``'s root entry equals
    ``tree.max_depth[b]``. Node ``i`` is created by simulation ``i`` from an existing node, so parents always have
    smaller indices than their children and one backward sweep suffices."""
    batch, num_nodes = tree.node_visits.shape
    heights = np.zeros((batch, num_nodes), dtype=np.int32)
    rows = np.arange(batch)
    for node in range(num_nodes - 1, ROOT_INDEX, -1):
        parent = tree.parent[:, node]  # [B]
        valid = parent != UNVISITED
        p = np.where(valid, parent, ROOT_INDEX)
        candidate = np.where(valid, heights[:, node] + 1, 0)
        heights[rows, p] = np.maximum(heights[rows, p], candidate)
    return heights


def most_visited_path(tree: Tree, b: int, node: int, max_actions: int) -> list[int]:
    """Actions of the most visited path below ``node`` in tree ``b`` (lowest action on ties), at most
    ``max_actions`` long; it stops where a node has no expanded child."""
    path: list[int] = []
    while len(path) < max_actions and node != UNVISITED:
        children = tree.children_index[b, node]  # [A]
        expanded = children != UNVISITED
        if not expanded.any():
            break
        visits = np.where(expanded, tree.node_visits[b, np.where(expanded, children, ROOT_INDEX)], -1)
        action = int(np.argmax(visits))
        path.append(action)
        node = int(children[action])
    return path


def _visit_shares(tree: Tree, b: int, node: int) -> np.ndarray:
    children = tree.children_index[b, node]
    expanded = children != UNVISITED
    visits = np.where(expanded, tree.node_visits[b, np.where(expanded, children, ROOT_INDEX)], 0).astype(np.float64)
    total = visits.sum()
    return visits / total if total > 0 else visits


# ----------------------------------------------------------------------------------------------------------------------
# Playing with traces.


@dataclass
class _Step:
    """One planned action and the beliefs it was chosen with."""

    action: int
    predicted_reward: float
    network_value: float
    search_value: float
    depth: int
    policy: np.ndarray  # [A]
    open_loop: bool


@dataclass
class _Recorder:
    game_index: int
    env_seed: int
    steps: list[_Step] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    frames: list[np.ndarray] | None = None
    trees_dot: dict[int, str] = field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False

    def trace(self, num_actions: int) -> GameTrace:
        s = self.steps
        return GameTrace(
            game_index=self.game_index,
            env_seed=self.env_seed,
            actions=np.array([x.action for x in s], dtype=np.int64),
            rewards=np.array(self.rewards, dtype=np.float64),
            predicted_rewards=np.array([x.predicted_reward for x in s], dtype=np.float64),
            network_values=np.array([x.network_value for x in s], dtype=np.float64),
            search_values=np.array([x.search_value for x in s], dtype=np.float64),
            search_depths=np.array([x.depth for x in s], dtype=np.int32),
            policies=np.array([x.policy for x in s], dtype=np.float64).reshape(len(s), num_actions),
            open_loop=np.array([x.open_loop for x in s], dtype=bool),
            terminated=self.terminated,
            truncated=self.truncated,
            frames=self.frames,
            trees_dot=self.trees_dot,
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _plan_from_search(
    out: SearchOutput, temperature: float, apply_mcts_steps: int, rng: np.random.Generator
) -> list[list[_Step]]:
    """Per root: the action chosen at the temperature, then (open-loop) the most visited path below it."""
    tree = out.tree
    first = search_actions(out, temperature, rng)  # [B]
    heights = subtree_heights(tree)
    plans = []
    for b in range(tree.batch_size):
        actions = [int(first[b])]
        child = int(tree.children_index[b, ROOT_INDEX, actions[0]])
        actions += most_visited_path(tree, b, child, apply_mcts_steps - 1)
        plan, node = [], ROOT_INDEX
        for k, action in enumerate(actions):
            nxt = int(tree.children_index[b, node, action])
            visits = tree.node_visits[b, node]
            plan.append(_Step(
                action=action,
                predicted_reward=float(tree.node_reward[b, nxt]) if nxt != UNVISITED else math.nan,
                network_value=float(tree.node_raw_value[b, node]),
                search_value=float(tree.node_value_sum[b, node] / visits) if visits > 0 else math.nan,
                depth=int(heights[b, node]),
                policy=_visit_shares(tree, b, node),
                open_loop=k > 0,
            ))
            node = nxt
        plans.append(plan)
    return plans


@torch.inference_mode()
def _plan_from_network(
    policy: MuZeroTorchPolicy, obs: np.ndarray, options: EvaluationOptions, rng: np.random.Generator
) -> list[list[_Step]]:
    """``prior`` and ``value`` modes: one initial inference (+ recurrent steps), no search; ``random``: none."""
    if options.mode == "random":
        return _plan_at_random(policy, obs, rng)
    model = policy.model
    model.eval()
    c = policy.config
    root = model.initial_inference(torch.as_tensor(obs, device=policy.device))
    values = policy.to_scalar(root.value_logits, policy.value_support)  # [B]
    batch, num_actions = root.policy_logits.shape
    temperature = float(options.temperature)
    if options.mode == "prior":
        prior = _softmax(root.policy_logits.float().cpu().numpy())  # [B, A]
        if options.use_exploration_noise:  # as mcts.py convention 9 (no illegal actions here)
            noise = rng.gamma(float(c["root_dirichlet_alpha"]), size=prior.shape)
            total = noise.sum(axis=1, keepdims=True)
            noise = np.where(total > 0, noise / np.where(total > 0, total, 1.0), 1.0 / num_actions)
            fraction = float(c["root_exploration_fraction"])
            prior = (1.0 - fraction) * prior + fraction * noise
        actions = sample_from_visits(prior, temperature, rng)
        step = model.recurrent_inference(root.hidden, torch.as_tensor(actions, device=policy.device))
        rewards = policy.to_scalar(step.reward_logits, policy.reward_support)
        return [[_Step(int(actions[b]), float(rewards[b]), float(values[b]), math.nan, 0, prior[b], False)]
                for b in range(batch)]
    # value: Q(s, a) = r(s, a) + gamma * v(s') for every action, through one recurrent step.
    hidden = root.hidden.repeat_interleave(num_actions, dim=0)  # [B * A, *H]
    all_actions = np.tile(np.arange(num_actions), batch)  # [B * A]
    step = model.recurrent_inference(hidden, torch.as_tensor(all_actions, device=policy.device))
    rewards = policy.to_scalar(step.reward_logits, policy.reward_support).reshape(batch, num_actions)
    next_values = policy.to_scalar(step.value_logits, policy.value_support).reshape(batch, num_actions)
    q = rewards.astype(np.float64) + float(c["gamma"]) * next_values  # [B, A]
    if temperature == 0.0:
        actions = np.argmax(q, axis=1)
        dist = np.eye(num_actions)[actions]
    else:
        dist = _softmax(q / temperature)
        actions = sample_from_visits(dist, 1.0, rng)  # sampling proportional to dist
    return [[_Step(int(actions[b]), float(rewards[b, actions[b]]), float(values[b]), float(q[b].max()), 1, dist[b],
                   False)] for b in range(batch)]


def _plan_at_random(policy: MuZeroTorchPolicy, obs: np.ndarray, rng: np.random.Generator) -> list[list[_Step]]:
    """``random`` mode: each action uniform over the legal ones (all actions when the env has no action mask; all
    of them too in the degenerate case of a mask that allows none, as the search does)."""
    num_actions = int(policy.action_space.n)
    _, illegal = policy.split_observations(torch.as_tensor(obs))
    legal = np.ones((len(obs), num_actions), dtype=bool) if illegal is None else ~illegal
    legal[~legal.any(axis=1)] = True
    shares = legal / legal.sum(axis=1, keepdims=True)  # [B, A]
    actions = [int(rng.choice(num_actions, p=row)) for row in shares]
    return [[_Step(a, math.nan, math.nan, math.nan, 0, shares[b], False)] for b, a in enumerate(actions)]


@contextlib.contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _policy_rng(policy: MuZeroTorchPolicy, rng: np.random.Generator) -> Iterator[None]:
    """``policy.search`` draws root noise from ``policy.rng``: lend it the batch's generator."""
    before = policy.rng
    policy.rng = rng
    try:
        yield
    finally:
        policy.rng = before


def _batch_rng(seed: int, first_game: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x6D757A, int(first_game)]))


def play_traced_games(
    policy: MuZeroTorchPolicy,
    make_env: Callable[[], gym.Env],
    game_indices: Sequence[int],
    options: EvaluationOptions,
    *,
    obs_fn: Callable[[Any], np.ndarray] | None = None,
    title: str = "",
) -> list[GameTrace]:
    """Plays the games ``game_indices`` in lockstep (one batched decision per move) and records them.

    Args:
        policy: the MuZero policy; its ``rng`` is replaced during play by the batch's generator and restored.
        make_env: builds one env (with ``render_mode="rgb_array"`` when ``options.render``).
        game_indices: which games (game ``i`` is reset with seed ``options.seed + i``).
        options: how to act and what to record.
        obs_fn: the env runner's observation pipeline (preprocessor, filter); identity when None.
        title: prefix of the search-tree titles (e.g. the checkpoint and temperature).
    """
    obs_fn = obs_fn or np.asarray
    rng = _batch_rng(options.seed, game_indices[0])
    num_actions = int(policy.action_space.n)
    envs = [make_env() for _ in game_indices]
    records = [_Recorder(i, options.seed + i) for i in game_indices]
    plans: list[deque[_Step]] = [deque() for _ in game_indices]
    try:
        obs = []
        for env, rec in zip(envs, records):
            o, _ = env.reset(seed=rec.env_seed)
            obs.append(obs_fn(o))
            if options.render:
                rec.frames = [_frame(env)]
        alive = [True] * len(envs)
        with _policy_rng(policy, rng):
            while any(alive):
                # --- decide: one batched search (or network call) for every live game without a plan
                need = [j for j, a in enumerate(alive) if a and not plans[j]]
                if need:
                    batch_obs = np.stack([obs[j] for j in need])
                    if options.mode == "mcts":
                        out = policy.search(batch_obs, explore=options.use_exploration_noise,
                                            num_simulations=options.num_simulations)
                        new_plans = _plan_from_search(out, float(options.temperature), options.apply_mcts_steps, rng)
                        after = options.save_mcts_after_step
                        for row, j in enumerate(need):
                            step = len(records[j].steps)
                            if after is not None and step >= after:
                                records[j].trees_dot[step] = tree_to_dot(
                                    out.tree, row, [s.action for s in new_plans[row]],
                                    title=f"{title}game {records[j].game_index}, step {step}")
                    else:
                        new_plans = _plan_from_network(policy, batch_obs, options, rng)
                    for row, j in enumerate(need):
                        plans[j].extend(new_plans[row])
                # --- act: every live game plays its next planned action
                for j, env in enumerate(envs):
                    if not alive[j]:
                        continue
                    step = plans[j].popleft()
                    rec = records[j]
                    o, reward, terminated, truncated, _ = env.step(step.action)
                    rec.steps.append(step)
                    rec.rewards.append(float(reward))
                    obs[j] = obs_fn(o)
                    if options.render:
                        rec.frames.append(_frame(env))
                    capped = options.max_steps is not None and len(rec.steps) >= options.max_steps
                    if terminated or truncated or capped:
                        alive[j] = False
                        plans[j].clear()
                        rec.terminated = bool(terminated)
                        rec.truncated = bool(truncated or (capped and not terminated))
        return [rec.trace(num_actions) for rec in records]
    finally:
        for env in envs:
            env.close()


def _frame(env: gym.Env) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise EvaluationError(f"env {env.spec.id if env.spec else type(env).__name__} did not return an rgb_array "
                              f"frame from render() (got {type(frame).__name__}); it cannot be rendered")
    return np.array(frame[..., :3], dtype=np.uint8)


def _batches(options: EvaluationOptions) -> list[list[int]]:
    n, size = options.num_games, options.games_per_batch
    return [list(range(start, min(start + size, n))) for start in range(0, n, size)]


def run_games(
    policy: MuZeroTorchPolicy,
    make_env: Callable[[], gym.Env],
    options: EvaluationOptions,
    *,
    obs_fn: Callable[[Any], np.ndarray] | None = None,
    title: str = "",
) -> list[GameTrace]:
    """Plays ``options.num_games`` games in batches of ``options.games_per_batch``, serially or as Ray tasks
    (``options.parallel``); returns their traces in game order. Both ways give identical results (module
    docstring). ``make_env`` and ``obs_fn`` must be picklable for ``parallel``."""
    check_options_for(policy, options)
    batches = _batches(options)
    if not options.parallel:
        with _torch_threads(1):
            return [trace for games in batches
                    for trace in play_traced_games(policy, make_env, games, options, obs_fn=obs_fn, title=title)]
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    payload = ray.put(_policy_payload(policy))
    task = ray.remote(num_cpus=1)(_play_batch_task)
    refs = [task.remote(payload, make_env, games, options, obs_fn, title) for games in batches]
    return [trace for result in ray.get(refs) for trace in result]


def _policy_payload(policy: MuZeroTorchPolicy) -> dict[str, Any]:
    return {"cls": type(policy), "observation_space": policy.observation_space, "action_space": policy.action_space,
            "config": policy.config, "weights": policy.get_weights()}


def _play_batch_task(payload: dict[str, Any], make_env: Callable[[], gym.Env], games: list[int],
                     options: EvaluationOptions, obs_fn: Callable | None, title: str) -> list[GameTrace]:
    """Ray task body: rebuilds the policy from its weights and plays one batch of games with one torch thread."""
    from rllib_muzero.registry import register_models

    register_models()  # the policy builds its network through RLlib's ModelCatalog in this worker

    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    with _torch_threads(1):
        policy = payload["cls"](payload["observation_space"], payload["action_space"], payload["config"])
        policy.set_weights(payload["weights"])
        return play_traced_games(policy, make_env, games, options, obs_fn=obs_fn, title=title)
