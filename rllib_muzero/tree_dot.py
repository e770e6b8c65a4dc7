"""Graphviz DOT text of a MuZero search tree, and PNGs of it where Graphviz ``dot`` is installed.

Below :mod:`rllib_muzero.play`, which records each step's tree as DOT text while it plays (the tree arrays are reused
by the next search); :mod:`rllib_muzero.visualize` re-exports both functions with the other pictures.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Sequence

from rllib_muzero.mcts import ROOT_INDEX, UNVISITED, Tree

__all__ = ["dot_to_png", "tree_to_dot"]

CHOSEN_COLOR = "#d62728"  # edges of the played path
CHOSEN_FILL = "#fde0c5"  # nodes of the played path


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tree_to_dot(tree: Tree, b: int, chosen_actions: Sequence[int] = (), *, title: str = "") -> str:
    """Graphviz DOT text of search tree ``b`` (a :class:`~rllib_muzero.mcts.Tree` right after the search).

    Nodes ``n{i}`` (``i`` = the simulation that created it, ``n0`` the root) show ``N`` = visit count,
    ``V`` = mean backed-up value (``value_sum / N``) and ``v`` = the network's value at the node. Edges show the
    action ``a``, its prior ``P`` (at the root: after mask and noise) and the predicted reward ``r``. Only expanded
    nodes are drawn. The path of ``chosen_actions`` from the root (the played action, then any open-loop plan) is
    drawn in red with bold edges and filled nodes.
    """
    visits = tree.node_visits[b]
    value_sum = tree.node_value_sum[b]
    parent = tree.parent[b]
    action = tree.action_from_parent[b]
    chosen_nodes = {ROOT_INDEX}
    node = ROOT_INDEX
    for a in chosen_actions:
        node = int(tree.children_index[b, node, a])
        if node == UNVISITED:
            break
        chosen_nodes.add(node)
    lines = [
        "digraph mcts {",
        f"  graph [label={_quote(title)}, labelloc=t, fontname=Helvetica, rankdir=TB];",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname=Helvetica, fontsize=10];',
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    for i in range(tree.num_nodes):
        if i != ROOT_INDEX and parent[i] == UNVISITED:
            continue  # never created (a search always creates every node; kept for safety)
        n = int(visits[i])
        mean = value_sum[i] / n if n > 0 else math.nan
        name = "root" if i == ROOT_INDEX else f"node {i}"
        label = f"{name}\nN={n}  V={mean:.3f}\nv={tree.node_raw_value[b, i]:.3f}"
        style = f", fillcolor={_quote(CHOSEN_FILL)}, color={_quote(CHOSEN_COLOR)}, penwidth=2" \
            if i in chosen_nodes else ""
        lines.append(f"  n{i} [label={_quote(label)}{style}];")
    for i in range(tree.num_nodes):
        if i == ROOT_INDEX or parent[i] == UNVISITED:
            continue
        p, a = int(parent[i]), int(action[i])
        label = f"a={a}\nP={tree.children_prior[b, p, a]:.3f}  r={tree.node_reward[b, i]:.3f}"
        style = f", color={_quote(CHOSEN_COLOR)}, fontcolor={_quote(CHOSEN_COLOR)}, penwidth=3" \
            if p in chosen_nodes and i in chosen_nodes else ""
        lines.append(f"  n{p} -> n{i} [label={_quote(label)}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_to_png(dot_path: str, png_path: str | None = None, *, timeout_s: float = 60.0) -> str | None:
    """Renders a DOT file to PNG with the Graphviz ``dot`` program; returns the PNG path, or None when ``dot`` is
    not installed. A ``dot`` failure raises ``subprocess.CalledProcessError``."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    if png_path is None:
        png_path = (dot_path[:-4] if dot_path.endswith(".dot") else dot_path) + ".png"
    subprocess.run([exe, "-Tpng", dot_path, "-o", png_path], check=True, capture_output=True, timeout=timeout_s)
    return png_path
