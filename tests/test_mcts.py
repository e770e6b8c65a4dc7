"""Batched MuZero search (rllib_muzero.mcts): hand-computed visit sequences, a pure-Python pseudocode reference,
a chain MDP with a known optimum, batch independence, noise, masks, torch embeddings, workspace reuse, validation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rllib_muzero.mcts import (
    ROOT_INDEX,
    UNVISITED,
    RecurrentOutput,
    RootOutput,
    SearchWorkspace,
    muzero_search,
)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------------
# Models. All are row-independent (elementwise numpy only), so a root's result cannot depend on its batch-mates.


class BanditModel:
    """Embedding [depth, first action]; reward R[a] for every action a at every depth, value 0, fixed prior logits.

    Records, for each call, the first action of every simulated path (the root child it went through).
    """

    def __init__(self, rewards, logits=(0.0, 0.0), value=0.0):
        self.rewards = np.asarray(rewards, dtype=np.float32)
        self.logits = np.asarray(logits, dtype=np.float32)
        self.value = value
        self.first_actions = []  # one [B] array per call

    def root(self, batch_size=1, root_value=0.0):
        return RootOutput(
            prior_logits=np.tile(self.logits, (batch_size, 1)),
            value=np.full(batch_size, root_value, np.float32),
            embedding=np.zeros((batch_size, 2), np.float32),
        )

    def __call__(self, embedding, actions):
        depth, first = embedding[:, 0], embedding[:, 1]
        first = np.where(depth == 0, actions, first)
        self.first_actions.append(first.astype(int))
        b = len(actions)
        return RecurrentOutput(
            reward=self.rewards[actions],
            prior_logits=np.tile(self.logits, (b, 1)),
            value=np.full(b, self.value, np.float32),
            embedding=np.stack([depth + 1, first], axis=1).astype(np.float32),
        )


class RandomModel:
    """A fixed random deterministic model on 4-d embeddings; per-row `scale` (embedding column 0 of the root, carried
    along) multiplies rewards and values, so roots of one batch live on very different value scales."""

    def __init__(self, num_actions=3, seed=0, torch_embeddings=False, prior_scale=1.0):
        rng = np.random.default_rng(seed)
        self.A = num_actions
        self.prior_scale = prior_scale  # root logits ~ prior_scale * N(0, 1)
        self.w = rng.normal(size=(num_actions, 3)) * 1.5
        self.c = rng.normal(size=(num_actions, 3))
        self.torch = torch_embeddings
        self.calls = []  # (embedding shape, actions copy, output)

    def root(self, scales, seed=1):
        rng = np.random.default_rng(seed)
        b = len(scales)
        emb = np.concatenate([np.asarray(scales, np.float64)[:, None], rng.normal(size=(b, 3))], axis=1)
        emb = emb.astype(np.float32)
        return RootOutput(
            prior_logits=(self.prior_scale * rng.normal(size=(b, self.A))).astype(np.float32),
            value=(rng.normal(size=b) * np.asarray(scales)).astype(np.float32),
            embedding=torch.from_numpy(emb) if self.torch else emb,
        )

    def __call__(self, embedding, actions):
        e = embedding.numpy() if self.torch else embedding
        e = e.astype(np.float64)
        scale, x = e[:, :1], e[:, 1:]
        nxt = np.tanh(np.roll(x, 1, axis=1) * self.w[actions] + self.c[actions])  # [B, 3]
        logits = np.stack([nxt[:, i % 3] * (i + 1) for i in range(self.A)], axis=1)
        out_emb = np.concatenate([scale, nxt], axis=1).astype(np.float32)
        out = RecurrentOutput(
            reward=(scale[:, 0] * nxt[:, 0]).astype(np.float32),
            prior_logits=logits.astype(np.float32),
            value=(scale[:, 0] * nxt[:, 1]).astype(np.float32),
            embedding=torch.from_numpy(out_emb) if self.torch else out_emb,
        )
        self.calls.append((tuple(embedding.shape), actions.copy(), out))
        return out


class ChainModel:
    """Deterministic chain MDP: states 0..L-1, absorbing state L. In state s < L, action 1 moves right (reward 1 when
    leaving s = L-1, else 0) and action 0 ends the episode with reward `bait`. Value net 0, uniform prior."""

    def __init__(self, length=3, bait=0.3):
        self.length, self.bait = length, bait

    def optimal(self, discount):
        return max(discount ** (self.length - 1), self.bait), 1

    def root(self):
        return RootOutput(
            prior_logits=np.zeros((1, 2), np.float32),
            value=np.zeros(1, np.float32),
            embedding=np.zeros((1, 1), np.float32),
        )

    def __call__(self, embedding, actions):
        s = embedding[:, 0]
        alive = s < self.length
        right = actions == 1
        reward = np.where(alive & right & (s == self.length - 1), 1.0, 0.0) + np.where(alive & ~right, self.bait, 0.0)
        nxt = np.where(alive & right, s + 1, self.length)
        b = len(actions)
        return RecurrentOutput(
            reward=reward.astype(np.float32),
            prior_logits=np.zeros((b, 2), np.float32),
            value=np.zeros(b, np.float32),
            embedding=nxt[:, None].astype(np.float32),
        )


def search(root, fn, **kwargs):
    kwargs.setdefault("num_simulations", 20)
    kwargs.setdefault("discount", 0.9)
    return muzero_search(root, fn, **kwargs)


def take_rows(root, rows):
    return RootOutput(prior_logits=root.prior_logits[rows], value=root.value[rows], embedding=root.embedding[rows])


def assert_same_result(a, b):
    np.testing.assert_array_equal(a.visit_counts, b.visit_counts)
    np.testing.assert_array_equal(a.root_value, b.root_value)
    np.testing.assert_array_equal(a.q_values, b.q_values)
    np.testing.assert_array_equal(a.max_depth, b.max_depth)


# ----------------------------------------------------------------------------------------------------------------------
# A pure-Python transcription of the published pseudocode (Node objects), with this module's documented conventions.


class RefNode:
    def __init__(self, prior):
        self.prior, self.visits, self.value_sum, self.reward = prior, 0, 0.0, 0.0
        self.children, self.hidden = {}, None

    def value(self):
        return self.value_sum / self.visits if self.visits else 0.0


def reference_search(
    fn,
    root_logits,
    root_value,
    root_hidden,
    *,
    num_simulations,
    discount,
    unvisited_value,
    root_counts_as_visit,
    known_bounds=None,
    legal=None,
    pb_c_init=1.25,
    pb_c_base=19652.0,
):
    """One root. Returns (visit counts [A], root value, q [A], max depth)."""
    num_actions = len(root_logits)
    legal = np.ones(num_actions, bool) if legal is None else legal
    lo, hi = (math.inf, -math.inf) if known_bounds is None else known_bounds

    def normalise(q):
        return (q - lo) / (hi - lo) if hi > lo else q

    def expand(node, logits, hidden, allowed):
        p = np.exp(logits - logits[allowed].max()) * allowed
        p = p / p.sum()
        node.hidden = hidden
        node.children = {a: RefNode(float(p[a])) for a in range(num_actions) if allowed[a]}

    def ucb(parent, child):
        pb_c = math.log((parent.visits + pb_c_base + 1) / pb_c_base) + pb_c_init
        pb_c *= math.sqrt(parent.visits) / (child.visits + 1)
        if child.visits > 0:
            value_score = normalise(child.reward + discount * child.value())
        elif unvisited_value == "parent" and parent.visits > 0:
            value_score = normalise(parent.value())
        else:
            value_score = 0.0
        return pb_c * child.prior + value_score

    root = RefNode(1.0)
    expand(root, np.asarray(root_logits, np.float64), root_hidden, legal)
    if root_counts_as_visit:
        root.visits, root.value_sum = 1, float(root_value)
    max_depth = 0
    for _ in range(num_simulations):
        node, path, action = root, [root], None
        while node.children:
            best = None
            for a, child in node.children.items():  # increasing a: strict > keeps the lowest index on ties
                score = ucb(node, child)
                if best is None or score > best[0]:
                    best = (score, a, child)
            _, action, node = best
            path.append(node)
        max_depth = max(max_depth, len(path) - 1)
        out = fn(path[-2].hidden[None], np.array([action], np.int64))
        node.reward = float(out.reward[0])
        expand(node, np.asarray(out.prior_logits[0], np.float64), out.embedding[0], np.ones(num_actions, bool))
        g = float(out.value[0])
        for n in reversed(path):
            n.value_sum += g
            n.visits += 1
            if n is not root:
                q = n.reward + discount * n.value()
                lo, hi = min(lo, q), max(hi, q)
            g = n.reward + discount * g
    counts = np.array([root.children[a].visits if a in root.children else 0 for a in range(num_actions)])
    q = np.array(
        [
            c.reward + discount * c.value() if (c := root.children.get(a)) and c.visits else 0.0
            for a in range(num_actions)
        ]
    )
    return counts, root.value(), q, max_depth


# ----------------------------------------------------------------------------------------------------------------------
# Hand-computed visit sequences (bandits: the decisions below are worked out in the comments).


def test_prior_only_bandit_visits_follow_prior_ratio():
    # All rewards and values 0 -> every Q is 0 and normalise(0) = 0: score = c(N) * P / (n + 1), c(N) common to both
    # children, so only P / (n + 1) decides. P = (0.7, 0.3):
    # sim1 .7 vs .3 -> 0; sim2 .35 vs .3 -> 0; sim3 .233 vs .3 -> 1; sim4 .233 vs .15 -> 0; sim5 .175 vs .15 -> 0;
    # sim6 .14 vs .15 -> 1.
    logits = np.log([0.7, 0.3])
    model = BanditModel(rewards=[0.0, 0.0], logits=logits)
    out = search(model.root(), model, num_simulations=6, discount=1e-3)
    assert [int(f[0]) for f in model.first_actions] == [0, 0, 1, 0, 0, 1]
    np.testing.assert_array_equal(out.visit_counts, [[4, 2]])
    assert out.visit_counts.dtype == np.int32


@pytest.mark.parametrize("counts_as_visit, first", [(True, 1), (False, 0)])
def test_first_simulation_prior_decides_only_if_root_counts_as_visit(counts_as_visit, first):
    # P = (0.3, 0.7). Root visit 1: sqrt(1) = 1 and the larger prior wins (action 1). Root visit 0 (pseudocode): every
    # score is 0 and the documented tie rule takes the lowest index (action 0).
    model = BanditModel(rewards=[0.0, 0.0], logits=np.log([0.3, 0.7]))
    out = search(model.root(root_value=10.0), model, num_simulations=1, root_counts_as_visit=counts_as_visit)
    assert int(model.first_actions[0][0]) == first
    # root_value = value_sum / visits: the root network value counts once only with the extra visit.
    assert out.root_value[0] == pytest.approx(10.0 / 2 if counts_as_visit else 0.0)


@pytest.mark.parametrize(
    "unvisited_value, counts_as_visit, expected",
    [
        # known_bounds (0, 1) and all Q in [0, 0.51] -> normalise is the identity; uniform P; c(N) ~= 1.25 sqrt(N).
        # "zero", root visit 1: sim1 tie -> 0 (Q0 = .5); sim2 a0 .442 + .5 = .942 vs a1 .884 + 0 -> 0;
        #   sim3 a0 .361 + .5025 = .863 vs a1 1.083 -> 1.
        ("zero", True, [0, 0, 1]),
        # "parent", root visit 1: sim2 V(root) = (0 + .5) / 2 = .25: a1 .884 + .25 = 1.134 > .942 -> 1;
        #   sim3 both visited once: a0 .541 + .5 vs a1 .541 + 0 -> 0.
        ("parent", True, [0, 1, 0]),
        # root visit 0: sim1 all scores 0 -> 0; sim2 N = 1: a0 .3125 + .5 vs a1 .625 (+ .5 for parent: V = .5/1);
        #   sim3 N = 2: zero: a0 .295 + .5025 vs a1 .884 -> 1; parent (each once): a0 .442 + .5 vs a1 .442 + 0 -> 0.
        ("zero", False, [0, 0, 1]),
        ("parent", False, [0, 1, 0]),
    ],
)
def test_unvisited_value_options_hand_computed(unvisited_value, counts_as_visit, expected):
    model = BanditModel(rewards=[0.5, 0.0])
    search(
        model.root(),
        model,
        num_simulations=3,
        discount=0.01,
        known_bounds=(0.0, 1.0),
        unvisited_value=unvisited_value,
        root_counts_as_visit=counts_as_visit,
    )
    assert [int(f[0]) for f in model.first_actions] == expected


def test_q_values_root_value_and_tree_arrays_hand_computed():
    # Bandit R = (0.5, 0), discount 0.01, known bounds: the sequence is [0, 0, 1] (see above); node 1 = root child 0,
    # node 2 = its child 0, node 3 = root child 1.
    model = BanditModel(rewards=[0.5, 0.0])
    out = search(model.root(root_value=1.0), model, num_simulations=3, discount=0.01, known_bounds=(0.0, 1.0))
    t = out.tree
    np.testing.assert_array_equal(t.children_index[0, ROOT_INDEX], [1, 3])
    np.testing.assert_array_equal(t.children_index[0, 1], [2, UNVISITED])
    np.testing.assert_array_equal(t.parent[0], [UNVISITED, 0, 1, 0])
    np.testing.assert_array_equal(t.action_from_parent[0], [UNVISITED, 0, 0, 1])
    np.testing.assert_array_equal(t.node_visits[0], [4, 2, 1, 1])
    np.testing.assert_array_equal(out.visit_counts, [[2, 1]])
    # V(node1) = (0 + 0.5) / 2 = .25 -> Q(root, 0) = .5 + .01 * .25; Q(root, 1) = 0.
    np.testing.assert_allclose(out.q_values, [[0.5 + 0.01 * 0.25, 0.0]], rtol=1e-6)
    # root: 1 (network value, counted visit) + 0.5 (sim1) + (0.5 + .01 * .5) (sim2) + 0 (sim3), over 4 visits.
    assert out.root_value[0] == pytest.approx((1.0 + 0.5 + 0.505 + 0.0) / 4, rel=1e-6)
    np.testing.assert_array_equal(out.max_depth, [2])
    assert (t.min_value[0], t.max_value[0]) == (0.0, 1.0)  # known bounds, every Q inside them


def test_minmax_tracks_q_not_the_root():
    # Bandit R = (.5, .2), value 0, discount .01, no bounds, uniform prior, c(N) ~= 1.25 sqrt(N).
    # sim1: tie -> a0, node1 (Q = .5; min = max = .5).
    # sim2: root a0 .442 + normalise(.5) (no range yet: .5) = .942 vs a1 .884 -> node1; tie there -> a0: node2 below
    #   node1 (Q = .5); node1's Q becomes .5 + .01 * V(node1) = .5 + .01 * .5 / 2 = .5025.
    # sim3: root a0 .361 + normalise(.5025) = 1.361 vs a1 1.083 -> node1; there a0 .442 + normalise(.5) = .442 + 0
    #   vs a1 .884 -> node3 (Q = .2) below node1; node1's Q drops to .5 + .01 * .7 / 3.
    # The statistics are the running min / max of exactly these Qs: [.2, .5025]. Feeding the root's own
    # 0 + .01 * V(root) (V(root) ~ -50 after sim1, root network value -100) would have pushed the min below -.4.
    model = BanditModel(rewards=[0.5, 0.2])
    out = search(model.root(root_value=-100.0), model, num_simulations=3, discount=0.01)
    t = out.tree
    np.testing.assert_array_equal(t.parent[0], [UNVISITED, 0, 1, 1])
    q_nodes = t.node_q[0, 1:]  # the current Q of each node's incoming edge
    np.testing.assert_allclose(q_nodes, t.node_reward[0, 1:] + 0.01 * t.node_value_sum[0, 1:] / t.node_visits[0, 1:])
    np.testing.assert_allclose(q_nodes, [0.5 + 0.01 * 0.7 / 3, 0.5, 0.2], rtol=1e-6)
    assert t.min_value[0] == pytest.approx(0.2, rel=1e-6)
    assert t.max_value[0] == pytest.approx(0.5025, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Against the pseudocode reference, on random models.


@pytest.mark.parametrize("unvisited_value", ["zero", "parent"])
@pytest.mark.parametrize("counts_as_visit", [True, False])
@pytest.mark.parametrize("known_bounds", [None, (-2.0, 2.0)])
def test_matches_pseudocode_reference(unvisited_value, counts_as_visit, known_bounds):
    model = RandomModel(num_actions=3, seed=3)
    root = model.root(scales=[1.0, 3.0, 0.5], seed=4)
    legal = np.array([[True, True, True], [True, False, True], [False, True, True]])
    kwargs = dict(
        num_simulations=25,
        discount=0.95,
        unvisited_value=unvisited_value,
        root_counts_as_visit=counts_as_visit,
        known_bounds=known_bounds,
    )
    out = muzero_search(root, model, invalid_actions=~legal, **kwargs)
    for b in range(3):
        counts, value, q, depth = reference_search(
            model, root.prior_logits[b], root.value[b], root.embedding[b], legal=legal[b], **kwargs
        )
        np.testing.assert_array_equal(out.visit_counts[b], counts)
        assert out.root_value[b] == pytest.approx(value, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(out.q_values[b], q, rtol=1e-5, atol=1e-6)
        assert out.max_depth[b] == depth


# ----------------------------------------------------------------------------------------------------------------------
# Planning in a chain MDP with a known optimum.


def test_chain_mdp_finds_optimal_action_and_value_converges():
    # Going right twice earns 1 after one zero-reward step: V* = 0.9; the bait (action 0) pays 0.3 at once. With a
    # zero value network the search first prefers the bait, then finds the delayed reward as simulations grow.
    model = ChainModel(length=2, bait=0.3)
    v_star, a_star = model.optimal(discount=0.9)
    assert (v_star, a_star) == (pytest.approx(0.9), 1)
    errors = {}
    for n in (10, 50, 200):
        out = search(model.root(), model, num_simulations=n, discount=0.9)
        errors[n] = abs(float(out.root_value[0]) - v_star)
        assert out.q_values[0, 0] == pytest.approx(0.3)  # the bait's Q is exact: absorbing state, value 0
        if n >= 50:
            assert int(out.visit_counts[0].argmax()) == a_star
    assert errors[10] > errors[50] > errors[200]
    assert errors[200] < 0.1
    assert out.q_values[0, a_star] == pytest.approx(v_star, abs=0.05)


# ----------------------------------------------------------------------------------------------------------------------
# Batch independence, call contract, torch, workspace.


def test_batch_equals_roots_searched_alone():
    # Scales differing by 10^4 make any sharing of min-max statistics (or other per-root state) visible.
    model = RandomModel(num_actions=3, seed=5)
    root = model.root(scales=[1.0, 100.0, 0.01, -5.0], seed=6)
    kwargs = dict(num_simulations=30, discount=0.97, unvisited_value="parent")
    together = search(root, model, **kwargs)
    for b in range(4):
        alone = search(take_rows(root, [b]), model, **kwargs)
        np.testing.assert_array_equal(together.visit_counts[b], alone.visit_counts[0])
        np.testing.assert_array_equal(together.root_value[b], alone.root_value[0])
        np.testing.assert_array_equal(together.q_values[b], alone.q_values[0])
        np.testing.assert_array_equal(together.max_depth[b], alone.max_depth[0])
        assert together.tree.min_value[b] == alone.tree.min_value[0]


def test_recurrent_fn_called_once_per_simulation_with_full_batch():
    model = RandomModel(num_actions=3)
    root = model.root(scales=[1.0, 2.0, 3.0, 4.0, 5.0])
    search(root, model, num_simulations=17)
    assert len(model.calls) == 17
    for shape, actions, _ in model.calls:
        assert shape == (5, 4)
        assert actions.dtype == np.int64 and actions.shape == (5,)
        assert ((0 <= actions) & (actions < 3)).all()


def test_expanded_node_uses_its_parents_embedding():
    # Node k was created by call k-1 from its parent's embedding (the one produced by the parent's own edge).
    model = RandomModel(num_actions=2)
    root = model.root(scales=[1.0, 2.0])
    out = search(root, model, num_simulations=12)
    emb = out.tree.embeddings  # [B, N, H]
    assert emb.shape == (2, 13, 4)
    np.testing.assert_array_equal(emb[:, ROOT_INDEX], root.embedding)
    fresh = RandomModel(num_actions=2)
    for k, (_, actions, o) in enumerate(model.calls, start=1):
        np.testing.assert_array_equal(emb[:, k], o.embedding)
        np.testing.assert_array_equal(out.tree.action_from_parent[:, k], actions)
        parent_emb = emb[np.arange(2), out.tree.parent[:, k]]
        np.testing.assert_array_equal(fresh(parent_emb, actions).embedding, o.embedding)


def test_torch_embeddings_match_numpy_embeddings():
    kwargs = dict(num_simulations=20, discount=0.95)
    np_model, torch_model = RandomModel(seed=7), RandomModel(seed=7, torch_embeddings=True)
    out_np = search(np_model.root(scales=[1.0, 2.0], seed=8), np_model, **kwargs)
    out_t = search(torch_model.root(scales=[1.0, 2.0], seed=8), torch_model, **kwargs)
    assert_same_result(out_np, out_t)
    assert isinstance(out_t.tree.embeddings, torch.Tensor) and out_t.tree.embeddings.shape == (2, 21, 4)
    np.testing.assert_array_equal(out_t.tree.embeddings.numpy(), out_np.tree.embeddings)
    with torch.inference_mode():  # also inside inference mode, reusing a workspace allocated outside it
        ws = SearchWorkspace()
        search(torch_model.root(scales=[1.0, 2.0], seed=8), torch_model, workspace=ws, **kwargs)
    out_ws = search(torch_model.root(scales=[1.0, 2.0], seed=8), torch_model, workspace=ws, **kwargs)
    assert_same_result(out_np, out_ws)


def test_workspace_reuse_across_batch_sizes_matches_fresh_searches():
    model = RandomModel(num_actions=3, seed=9)
    ws = SearchWorkspace()
    cases = [([1.0, 2.0, 3.0], 10, 20), ([4.0], 11, 20), ([0.5, 1.5, 2.5], 12, 20), ([1.0, 1.0], 13, 7)]
    for scales, seed, sims in cases + cases[:1]:
        root = model.root(scales=scales, seed=seed)
        assert_same_result(
            search(root, model, num_simulations=sims, workspace=ws), search(root, model, num_simulations=sims)
        )
    assert len(ws) == 3  # (3, 21, 3), (1, 21, 3), (2, 8, 3)


def test_results_identical_with_numba_jit_disabled():
    script = (
        "import json, sys; sys.path.insert(0, 'tests'); from test_mcts import jit_probe; print(json.dumps(jit_probe()))"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == jit_probe()


def jit_probe():
    """A search touching every kernel branch; returns its outputs and tree arrays as JSON-able lists."""
    model = RandomModel(num_actions=3, seed=11)
    root = model.root(scales=[1.0, -2.0], seed=12)
    invalid = np.array([[False, True, False], [False, False, False]])
    out = search(
        root,
        model,
        num_simulations=15,
        unvisited_value="parent",
        invalid_actions=invalid,
        add_exploration_noise=True,
        rng=np.random.default_rng(0),
    )
    t = out.tree
    arrays = [
        out.visit_counts,
        out.root_value,
        out.q_values,
        out.max_depth,
        t.children_index,
        t.children_prior,
        t.node_visits,
        t.node_value_sum,
        t.node_q,
        t.min_value,
        t.max_value,
    ]
    return [a.tolist() for a in arrays]


# ----------------------------------------------------------------------------------------------------------------------
# Exploration noise.


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_dirichlet_noise_only_at_root_and_only_when_exploring():
    model = RandomModel(num_actions=3, seed=13)
    root = model.root(scales=[1.0, 2.0], seed=14)
    noisy = search(root, model, add_exploration_noise=True, rng=np.random.default_rng(0))
    t = noisy.tree
    root_prior = t.children_prior[:, ROOT_INDEX].astype(np.float64)
    assert not np.allclose(root_prior, softmax(root.prior_logits.astype(np.float64)), atol=1e-3)
    np.testing.assert_allclose(root_prior.sum(axis=1), 1.0, rtol=1e-6)
    # every other node's prior is the plain softmax of the logits the network returned for it
    for k, (_, _, o) in enumerate(model.calls, start=1):
        np.testing.assert_allclose(t.children_prior[:, k], softmax(o.prior_logits.astype(np.float64)), rtol=1e-6)

    quiet = search(root, model)
    np.testing.assert_allclose(
        quiet.tree.children_prior[:, ROOT_INDEX], softmax(root.prior_logits.astype(np.float64)), rtol=1e-6
    )


def test_noise_off_ignores_and_does_not_consume_rng():
    model = RandomModel(num_actions=3, seed=15)
    root = model.root(scales=[1.0, 2.0], seed=16)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    a = search(root, model, rng=rng)
    assert rng.bit_generator.state == state
    assert_same_result(a, search(root, model, rng=np.random.default_rng(2)))
    assert_same_result(a, search(root, model))


def test_noise_is_reproducible_from_the_seed():
    model = RandomModel(num_actions=3, seed=17)
    root = model.root(scales=[1.0, 2.0, 3.0], seed=18)
    runs = [
        search(root, model, add_exploration_noise=True, rng=np.random.default_rng(s), root_exploration_fraction=0.5)
        for s in (5, 5, 6)
    ]
    assert_same_result(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0].tree.children_prior, runs[1].tree.children_prior)
    assert not np.array_equal(runs[0].tree.children_prior[:, ROOT_INDEX], runs[2].tree.children_prior[:, ROOT_INDEX])


def test_noise_without_rng_raises():
    model = RandomModel()
    with pytest.raises(ValueError, match="`rng`"):
        search(model.root(scales=[1.0]), model, add_exploration_noise=True)


# ----------------------------------------------------------------------------------------------------------------------
# Invalid actions.


def test_illegal_root_actions_get_no_prior_and_no_visits():
    # Action 2 has a huge prior logit and the best reward: without the mask it would take most visits.
    model = BanditModel(rewards=[0.1, 0.2, 1.0], logits=[0.0, 0.0, 5.0])
    root = model.root(batch_size=2)
    unmasked = search(root, model)
    assert unmasked.visit_counts[0, 2] > 10
    invalid = np.array([[False, False, True], [True, False, True]])
    for noise in (False, True):
        out = search(root, model, invalid_actions=invalid, add_exploration_noise=noise, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(out.visit_counts * invalid, 0)
        np.testing.assert_array_equal(out.visit_counts.sum(axis=1), [20, 20])
        prior = out.tree.children_prior[:, ROOT_INDEX]
        np.testing.assert_array_equal(prior * invalid, 0)
        np.testing.assert_allclose(prior.sum(axis=1), 1.0, rtol=1e-6)
        if not noise:
            np.testing.assert_allclose(prior[0], [0.5, 0.5, 0.0])
    # Masking acts at the root only: deeper nodes may still take action 2.
    assert 2 in out.tree.action_from_parent[0, out.tree.parent[0] != ROOT_INDEX]


def test_row_without_legal_action_raises():
    model = BanditModel(rewards=[0.0, 0.0])
    with pytest.raises(ValueError, match="`invalid_actions`"):
        search(model.root(batch_size=2), model, invalid_actions=np.array([[False, True], [True, True]]))


# ----------------------------------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_simulations=0), "num_simulations"),
        (dict(num_simulations=2.5), "num_simulations"),
        (dict(discount=0.0), "discount"),
        (dict(discount=1.5), "discount"),
        (dict(pb_c_base=0.0), "pb_c_base"),
        (dict(pb_c_init=-1.0), "pb_c_init"),
        (dict(unvisited_value="mean"), "unvisited_value"),
        (
            dict(add_exploration_noise=True, rng=np.random.default_rng(0), root_dirichlet_alpha=0.0),
            "root_dirichlet_alpha",
        ),
        (
            dict(add_exploration_noise=True, rng=np.random.default_rng(0), root_exploration_fraction=1.5),
            "root_exploration_fraction",
        ),
        (dict(discount="0.9"), "discount"),
        (dict(discount=float("nan")), "discount"),
        (dict(known_bounds=(1.0, 0.0)), "known_bounds"),
        (dict(known_bounds=(0.0, float("inf"))), "known_bounds"),
        (dict(known_bounds=0.5), "known_bounds"),
        (dict(invalid_actions=np.zeros((3, 2), bool)), "invalid_actions"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    model = BanditModel(rewards=[0.0, 0.0])
    with pytest.raises(ValueError, match=f"`{name}`"):
        search(model.root(batch_size=2), model, **kwargs)


def test_inconsistent_root_shapes_raise():
    model = BanditModel(rewards=[0.0, 0.0])
    root = model.root(batch_size=2)
    with pytest.raises(ValueError, match="`root.value`"):
        search(RootOutput(root.prior_logits, np.zeros(3, np.float32), root.embedding), model)
    with pytest.raises(ValueError, match="`root.embedding`"):
        search(RootOutput(root.prior_logits, root.value, np.zeros((1, 2), np.float32)), model)
    with pytest.raises(ValueError, match="`root.prior_logits`"):
        search(RootOutput(np.zeros(2, np.float32), root.value, root.embedding), model)


def test_wrong_recurrent_output_shape_raises():
    model = BanditModel(rewards=[0.0, 0.0])

    def bad(embedding, actions):
        out = model(embedding, actions)
        return RecurrentOutput(out.reward, out.prior_logits[:, :1], out.value, out.embedding)

    with pytest.raises(ValueError, match="`recurrent_fn`"):
        search(model.root(batch_size=2), bad)


def test_softmax_is_stable_for_huge_logits():
    model = BanditModel(rewards=[0.1, 0.0], logits=[1000.0, 990.0])
    root = model.root()
    out = search(RootOutput(root.prior_logits + 5000.0, root.value, root.embedding), model, num_simulations=5)
    prior = out.tree.children_prior[0]
    assert np.isfinite(prior).all()
    np.testing.assert_allclose(prior[:3].sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(prior[1], softmax(np.array([10.0, 0.0])), rtol=1e-6)
