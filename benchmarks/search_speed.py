"""Search speed of :func:`rllib_muzero.mcts.muzero_search` (or :func:`rllib_muzero.gumbel.gumbel_muzero_search`): node
expansions per second vs. a network-only bound.

For each batch size B it times one search of ``--simulations`` simulations from B roots (expansions/s =
B * simulations / search wall time) and the SAME batched network calls without any tree work: ``--simulations`` calls
of the same ``recurrent_fn`` (network + conversion of its outputs to numpy) on B rows, the bound any search with this
network can reach. It prints search/bound. Medians over ``--repeats`` interleaved runs, after warm-up runs (numba
compilation or cache load, allocator, workspace).

The network is fixed so results compare across implementations: representation 4->64->64, dynamics on
[hidden, one-hot action] 66->64->64 (ReLU between the layers, per-sample min-max scaling of hidden states), reward and
value heads 64->64->601 (categorical support -300..300, scalar = expectation under the softmax), policy head 64->64->2.
Single thread, CPU, all network calls under ``torch.inference_mode()``; the search explores (Dirichlet noise on).

``--search gumbel`` times Gumbel MuZero's search instead (16 considered actions, Gumbel noise on); ``--num-actions A``
widens the action space of either network (one-hot action input and policy head of A instead of 2), e.g. to give
Gumbel's Sequential Halving more than 2 actions to halve.

``--network default`` times the package's default CartPole network instead: ``muzero_fc`` with its defaults (the same
shapes as the comparison network, random weights, targets transformed so h^-1 is applied) through the package's own
acting glue, what the policy's search runs.

``--inference`` picks how the network is evaluated: ``numpy`` (default; the package's lean inference,
:mod:`rllib_muzero.numpy_inference`, which the policy uses for ``muzero_fc`` on the CPU; for the comparison network it
is built from the same torch layers) or ``torch`` (eager torch under ``inference_mode``, the policy's path for other
networks and on GPUs).

Reproduce::

    python benchmarks/search_speed.py                       # batch sizes 1 8 32 128, 50 simulations
    python benchmarks/search_speed.py --batch-sizes 1 32 --repeats 15
    python benchmarks/search_speed.py --profile 32          # cProfile of searches with 32 roots
    python benchmarks/search_speed.py --network default     # the package's muzero_fc through its acting glue
    python benchmarks/search_speed.py --inference torch     # the networks in eager torch
    python benchmarks/search_speed.py --inference torch --device cuda   # ... on a GPU
    python benchmarks/search_speed.py --search gumbel --simulations 16  # Gumbel MuZero, 16 simulations
    python benchmarks/search_speed.py --search gumbel --num-actions 18  # ... with 18 actions
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    import rllib_muzero  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gymnasium as gym  # noqa: E402

from rllib_muzero.acting import make_recurrent_fn, numpy_root_and_recurrent_fn, root_output  # noqa: E402
from rllib_muzero.gumbel import gumbel_muzero_search  # noqa: E402
from rllib_muzero.mcts import RecurrentOutput, RootOutput, SearchWorkspace, muzero_search  # noqa: E402
from rllib_muzero.models import FullyConnectedMuZeroModel  # noqa: E402
from rllib_muzero.numpy_inference import NumpyMLPInference, dense_layers  # noqa: E402
from rllib_muzero.support import DiscreteSupport  # noqa: E402

OBS_DIM, HIDDEN, NUM_ACTIONS, SUPPORT = 4, 64, 2, 300


def _mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, n_out))


def _scale(hidden: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling of hidden states to [0, 1] (paper Appendix G)."""
    lo = hidden.min(dim=1, keepdim=True).values
    hi = hidden.max(dim=1, keepdim=True).values
    return (hidden - lo) / (hi - lo + 1e-8)


class BenchNet(nn.Module):
    """The fixed comparison network (see the module docstring)."""

    def __init__(self, num_actions: int = NUM_ACTIONS) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.representation = _mlp(OBS_DIM, HIDDEN)
        self.dynamics = _mlp(HIDDEN + num_actions, HIDDEN)
        self.reward_head = _mlp(HIDDEN, 2 * SUPPORT + 1)
        self.value_head = _mlp(HIDDEN, 2 * SUPPORT + 1)
        self.policy_head = _mlp(HIDDEN, num_actions)
        self.register_buffer("atoms", torch.arange(-SUPPORT, SUPPORT + 1, dtype=torch.float32))
        self.register_buffer("one_hot", torch.eye(num_actions))

    def _scalar(self, logits: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(logits, dim=1) * self.atoms).sum(dim=1)

    def initial_inference(self, obs: torch.Tensor) -> RootOutput:
        hidden = _scale(self.representation(obs))
        return RootOutput(
            prior_logits=self.policy_head(hidden).cpu().numpy(),
            value=self._scalar(self.value_head(hidden)).cpu().numpy(),
            embedding=hidden,
        )

    def recurrent_inference(self, hidden: torch.Tensor, actions: np.ndarray) -> RecurrentOutput:
        x = torch.cat([hidden, self.one_hot[torch.from_numpy(actions).to(hidden.device)]], dim=1)
        next_hidden = _scale(self.dynamics(x))
        return RecurrentOutput(
            reward=self._scalar(self.reward_head(next_hidden)).cpu().numpy(),
            prior_logits=self.policy_head(next_hidden).cpu().numpy(),
            value=self._scalar(self.value_head(next_hidden)).cpu().numpy(),
            embedding=next_hidden,
        )


class PackageNet:
    """The default CartPole network (``muzero_fc`` defaults, supports -300..300) through the package's acting glue."""

    def __init__(self, device: torch.device, num_actions: int = NUM_ACTIONS) -> None:
        size = 2 * SUPPORT + 1
        self.num_actions = num_actions
        self.model = FullyConnectedMuZeroModel(
            gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), gym.spaces.Discrete(num_actions), num_actions,
            {}, "search_speed", value_support_size=size, reward_support_size=size).eval()
        with torch.no_grad():  # non-zero heads (a fresh muzero_fc predicts uniform distributions)
            for parameter in self.model.parameters():
                parameter.normal_(0.0, 0.1)
        self.model.to(device)
        self.support = DiscreteSupport(-SUPPORT, SUPPORT)
        self.recurrent_inference = make_recurrent_fn(self.model, device, value_support=self.support,
                                                     reward_support=self.support, use_target_transform=True)

    def initial_inference(self, obs: torch.Tensor) -> RootOutput:
        return root_output(self.model, obs, value_support=self.support, use_target_transform=True)


class NumpyNet:
    """A network evaluated by its numpy engine (:mod:`rllib_muzero.numpy_inference`) through the package's glue
    (:func:`rllib_muzero.acting.numpy_root_and_recurrent_fn`)."""

    def __init__(self, engine: NumpyMLPInference, use_target_transform: bool, num_actions: int) -> None:
        self.engine = engine
        self.num_actions = num_actions
        self.support = DiscreteSupport(-SUPPORT, SUPPORT)
        self.use_target_transform = use_target_transform
        self.recurrent_inference = None

    @classmethod
    def comparison(cls, net: BenchNet) -> NumpyNet:
        layers = [dense_layers(m) for m in (net.representation, net.dynamics, net.reward_head, net.value_head,
                                            net.policy_head)]
        return cls(NumpyMLPInference(*layers, num_actions=net.num_actions), use_target_transform=False,
                   num_actions=net.num_actions)

    @classmethod
    def default(cls, net: PackageNet) -> NumpyNet:
        return cls(net.model.numpy_inference(), use_target_transform=True, num_actions=net.num_actions)

    def initial_inference(self, obs: torch.Tensor) -> RootOutput:
        root, self.recurrent_inference = numpy_root_and_recurrent_fn(
            self.engine, obs, value_support=self.support, reward_support=self.support,
            use_target_transform=self.use_target_transform)
        return root


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


GUMBEL_CONSIDERED_ACTIONS = 16  # `max_num_considered_actions` of --search gumbel (the paper's and mctx's default)


def measure(net: BenchNet | PackageNet | NumpyNet, batch_size: int, simulations: int, repeats: int,
            seed: int = 0, device: str | torch.device = "cpu", search_kind: str = "muzero") -> dict[str, float]:
    rng = np.random.default_rng(seed)
    workspace = SearchWorkspace()
    with torch.inference_mode():
        obs = torch.from_numpy(rng.standard_normal((batch_size, OBS_DIM)).astype(np.float32)).to(device)
        root = net.initial_inference(obs)
        actions = rng.integers(0, net.num_actions, size=batch_size).astype(np.int64)

        def search() -> None:
            if search_kind == "gumbel":
                gumbel_muzero_search(
                    root,
                    net.recurrent_inference,
                    num_simulations=simulations,
                    discount=0.997,
                    max_num_considered_actions=GUMBEL_CONSIDERED_ACTIONS,
                    add_gumbel_noise=True,
                    rng=rng,
                    workspace=workspace,
                )
                return
            muzero_search(
                root,
                net.recurrent_inference,
                num_simulations=simulations,
                discount=0.997,
                add_exploration_noise=True,
                rng=rng,
                workspace=workspace,
            )

        def bound() -> None:
            for _ in range(simulations):
                net.recurrent_inference(root.embedding, actions)

        for _ in range(3):  # warm-up: numba compile / cache load, allocator, workspace
            search()
            bound()
        # Interleave so both see the same machine state.
        search_times, bound_times = [], []
        for _ in range(repeats):
            search_times.append(_time(search))
            bound_times.append(_time(bound))
    t_search, t_bound = float(np.median(search_times)), float(np.median(bound_times))
    expansions = batch_size * simulations
    return {
        "search_s": t_search,
        "bound_s": t_bound,
        "search_eps": expansions / t_search,
        "bound_eps": expansions / t_bound,
        "ratio": t_bound / t_search,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--simulations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per measurement (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search", choices=("muzero", "gumbel"), default="muzero",
                        help="muzero_search (pUCT, Dirichlet noise) or gumbel_muzero_search "
                             f"({GUMBEL_CONSIDERED_ACTIONS} considered actions, Gumbel noise)")
    parser.add_argument("--num-actions", type=int, default=NUM_ACTIONS,
                        help=f"size of the network's action space (default {NUM_ACTIONS})")
    parser.add_argument("--network", choices=("comparison", "default"), default="comparison",
                        help="issue #7's fixed comparison network, or the package's default CartPole network")
    parser.add_argument("--inference", choices=("numpy", "torch"), default="numpy",
                        help="the package's lean numpy inference (the policy's CPU path for muzero_fc) or eager torch")
    parser.add_argument("--device", default="cpu",
                        help="torch device of the network and embeddings with --inference torch, e.g. cuda "
                             "(the numpy inference is CPU-only)")
    parser.add_argument(
        "--profile",
        type=int,
        default=None,
        metavar="B",
        help="instead of the table, cProfile 20 searches with this batch size",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cpu" and args.inference == "numpy":
        parser.error(f"--device {args.device} needs --inference torch (the numpy inference runs on the CPU)")
    if args.num_actions < 1:
        parser.error(f"--num-actions must be >= 1, got {args.num_actions}")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if args.network == "comparison":
        net = BenchNet(args.num_actions).eval().to(device)
    else:
        net = PackageNet(device, args.num_actions)
    if args.inference == "numpy":
        net = NumpyNet.comparison(net) if args.network == "comparison" else NumpyNet.default(net)
    with NumpyMLPInference.blas_threads(1):  # one thread for numpy's BLAS too
        run(net, args, device)


def run(net: BenchNet | PackageNet | NumpyNet, args: argparse.Namespace, device: torch.device) -> None:
    if args.profile is not None:
        measure(net, args.profile, args.simulations, repeats=1, seed=args.seed, device=device,
                search_kind=args.search)  # warm-up
        profiler = cProfile.Profile()
        profiler.enable()
        measure(net, args.profile, args.simulations, repeats=20, seed=args.seed, device=device,
                search_kind=args.search)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return

    name = "muzero_search" if args.search == "muzero" else (
        f"gumbel_muzero_search ({GUMBEL_CONSIDERED_ACTIONS} considered actions)")
    print(f"{name}, {args.network} network, {args.num_actions} actions, {args.inference} inference on {device}, "
          f"{args.simulations} simulations, 1 thread, torch {torch.__version__}")
    print(f"{'roots':>6} {'search ms':>10} {'bound ms':>10} {'search exp/s':>13} {'bound exp/s':>12} {'ratio':>6}")
    for batch_size in args.batch_sizes:
        r = measure(net, batch_size, args.simulations, args.repeats, seed=args.seed, device=device,
                    search_kind=args.search)
        print(
            f"{batch_size:>6} {1e3 * r['search_s']:>10.2f} {1e3 * r['bound_s']:>10.2f} {r['search_eps']:>13,.0f} "
            f"{r['bound_eps']:>12,.0f} {r['ratio']:>6.2f}"
        )


if __name__ == "__main__":
    main()
