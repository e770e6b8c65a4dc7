"""Lean numpy inference of the fully connected MuZero network, for the search on the CPU.

Why it exists: the search calls the network once per simulation on a handful of rows (one row per root). At that size a
torch forward pass costs its ~25 operators' dispatch overhead (3-8 us each), not their arithmetic; the same forward
pass in numpy, on output buffers preallocated per batch size, costs about 1 us per operator, and its matrix products go
to an optimised BLAS ``sgemm`` just as torch's do. On issue #7's comparison network (64-wide layers, 601-atom value and
reward heads) one recurrent inference with its scalar read-out drops from 119 to 11 us at 1 row, from 154 to 45 us at
8 rows and from 238 to 136 us at 32 rows (``benchmarks/search_speed.py``'s network-only bound; docs/benchmarks.md).
The elementwise steps that run once per simulation (hidden-state scaling, bias + ReLU) are small numba kernels, one
pass each instead of several numpy calls; for up to 3 rows, a ReLU network's whole recurrent step is one numba kernel
(23 us through numpy -> 11 us at 1 row: see ``COMPILED_STEP_MAX_ROWS``). This is hand-written on purpose:
``torch.compile`` needs a C++ toolchain at run time and still pays a per-call guard cost of the same order, and
TorchScript is deprecated.

What it computes: exactly the functions of :class:`~rllib_muzero.models.FullyConnectedMuZeroModel` (representation,
dynamics with the one-hot action, min-max scaling, the three heads), in float32, followed by the search's read-out of
the categorical heads (softmax expectation over the support, then h^-1; paper Appendix F). The sums run in a different
order than torch's (other BLAS kernels; the expectation as ``exp(l - max) . atoms / sum``), so outputs agree with the
torch path to float32 rounding, not bit for bit; the fixed search cases of ``tests/test_search_cases.py`` give the same
visit counts through both paths.

Matrix products run in numpy's BLAS (OpenBLAS), whose thread pool is not torch's: :meth:`NumpyMLPInference.blas_threads`
limits it, for the duration of a search, to ``torch.get_num_threads()`` (what RLlib configured for the process), so a
runner never uses more cores than it was given.

Outputs are written into buffers owned by the engine and reused by the next call with the same batch size; the search
copies what it keeps before calling again (:func:`rllib_muzero.mcts.muzero_search`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from torch import nn

from rllib_muzero.support import DEFAULT_EPS, DiscreteSupport, _h_inverse_kernel

# Batches of at most this many rows run the whole recurrent step as one compiled kernel (ReLU networks). For a few rows
# (a single search: serving, evaluation, compute_single_action; a runner with 2 or 3 envs) the ~20 numpy calls' fixed
# costs outweigh the work. On the comparison network (benchmarks/search_speed.py's bound, 2026-11-30, 50 calls):
# 0.54 ms at 1 row, 0.89 vs 1.57 ms through numpy at 2 rows, 1.22 vs 1.97 at 3, even at 4 (1.67 vs 1.65), and numpy's
# BLAS products win from there (3.01 vs 2.21 at 8). Before the kernel's exp vectorised (``_k_exp_shifted``) only one
# row paid off (26 vs 25 us per step at 2 rows).
COMPILED_STEP_MAX_ROWS = 3
# The epsilon of the hidden-state min-max scaling (paper Appendix G), shared with models.scale_hidden_state (torch):
# defined here, the lower of the two modules, so that models.py imports it and not the other way round.
HIDDEN_STATE_SCALE_EPS = 1e-8
# Reassociation and FMA only: loops vectorise, while NaN and inf keep their meaning.
_FAST = {"reassoc", "contract"}

# Activations with an exact numpy counterpart (nn.Module type -> in-place function of (x, scratch)). GELU (erf) has
# none in numpy: networks using it search through torch.
_LEAKY_SLOPE = np.float32(0.01)  # nn.LeakyReLU's default, the one `mlp` builds


def _relu(x: np.ndarray, scratch: np.ndarray) -> None:
    np.maximum(x, 0.0, out=x)


def _leaky_relu(x: np.ndarray, scratch: np.ndarray) -> None:
    np.multiply(x, _LEAKY_SLOPE, out=scratch)  # x > 0 ? x : 0.01 x  ==  max(x, 0.01 x)
    np.maximum(x, scratch, out=x)


def _tanh(x: np.ndarray, scratch: np.ndarray) -> None:
    np.tanh(x, out=x)


def _elu(x: np.ndarray, scratch: np.ndarray) -> None:
    np.minimum(x, 0.0, out=scratch)  # x > 0 ? x : expm1(x)  ==  max(x, 0) + expm1(min(x, 0))
    np.expm1(scratch, out=scratch)
    np.maximum(x, 0.0, out=x)
    x += scratch


def _silu(x: np.ndarray, scratch: np.ndarray) -> None:
    np.multiply(x, 0.5, out=scratch)  # x * sigmoid(x), sigmoid(x) = (1 + tanh(x / 2)) / 2: no overflow for x << 0
    np.tanh(scratch, out=scratch)
    scratch += 1.0
    scratch *= 0.5
    x *= scratch


_NUMPY_ACTIVATIONS: dict[type, Callable[[np.ndarray, np.ndarray], None]] = {
    nn.ReLU: _relu,
    nn.LeakyReLU: _leaky_relu,
    nn.Tanh: _tanh,
    nn.ELU: _elu,
    nn.SiLU: _silu,
}


def numpy_activation(module: nn.Module) -> Callable[[np.ndarray, np.ndarray], None] | None:
    """The in-place numpy version of an activation module built by ``models.mlp``; ``None`` if there is none."""
    fn = _NUMPY_ACTIVATIONS.get(type(module))
    if fn is None:
        return None
    if isinstance(module, nn.LeakyReLU) and module.negative_slope != 0.01:
        return None
    if isinstance(module, nn.ELU) and module.alpha != 1.0:
        return None
    return fn


@dataclass
class Dense:
    """One ``Linear`` (weight transposed to ``[in, out]``, C-contiguous, so ``x @ weight_t`` is one ``sgemm``),
    optionally followed by an activation."""

    weight_t: np.ndarray  # [in, out] float32
    bias: np.ndarray  # [out] float32
    activation: Callable[[np.ndarray, np.ndarray], None] | None

    @property
    def out_features(self) -> int:
        return self.bias.shape[-1]


def dense_layers(mlp: Sequence[nn.Module]) -> list[Dense] | None:
    """A ``models.mlp`` Sequential as :class:`Dense` layers (weights copied); ``None`` if an activation has no numpy
    counterpart or the layers are not ``Linear [-> activation]`` pairs."""
    layers: list[Dense] = []
    modules = list(mlp)
    i = 0
    while i < len(modules):
        linear = modules[i]
        if not isinstance(linear, nn.Linear) or linear.bias is None:
            return None
        activation = None
        if i + 1 < len(modules) and not isinstance(modules[i + 1], nn.Linear):
            activation = numpy_activation(modules[i + 1])
            if activation is None:
                return None
            i += 1
        weight = linear.weight.detach()
        layers.append(Dense(np.ascontiguousarray(weight.numpy().T, dtype=np.float32),
                            linear.bias.detach().numpy().astype(np.float32, copy=True), activation))
        i += 1
    return layers


class Readout:
    """The search's scalar from a head's output rows: softmax expectation over the support (categorical heads), then
    ``h^-1`` when targets are transformed (paper Appendix F). Same function as :func:`support_to_scalar_numpy`."""

    def __init__(self, support: DiscreteSupport | None, use_target_transform: bool, eps: float = DEFAULT_EPS) -> None:
        self.atoms = None if support is None else np.arange(support.min, support.max + 1, dtype=np.float32)
        self.kernel_atoms = np.zeros(0, np.float32) if self.atoms is None else self.atoms  # empty: a scalar head
        self.use_target_transform = bool(use_target_transform)
        self.eps = float(eps)

    def __call__(self, logits: np.ndarray, row_scratch: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``logits`` [B, S] (overwritten), ``row_scratch`` [B, 1], ``out`` [B] float32 (returned)."""
        if self.atoms is None:
            value = np.ascontiguousarray(logits[:, 0])
        else:
            np.maximum.reduce(logits, axis=1, keepdims=True, out=row_scratch)
            logits -= row_scratch  # softmax(l) = exp(l - max) / sum(exp(l - max))
            np.exp(logits, out=logits)
            np.matmul(logits, self.atoms, out=out)
            sums = np.add.reduce(logits, axis=1, out=row_scratch[:, 0])
            out /= sums
            value = out
        if self.use_target_transform:
            _h_inverse_kernel(value, self.eps, out)
        elif value is not out:
            out[...] = value
        return out


@functools.lru_cache(maxsize=16)
def readout(support: DiscreteSupport | None, use_target_transform: bool) -> Readout:
    """A :class:`Readout`, built once per support and transform (a read-out never writes its atoms): the search asks
    for one per call."""
    return Readout(support, use_target_transform)


@numba.njit(cache=True, nogil=True)
def _scale_rows(s: np.ndarray, eps: np.float32) -> None:
    """In place, per row of ``s`` [B, H] float32: ``(s - min) / (max - min + eps)`` in float32, the operations of
    :func:`~rllib_muzero.models.scale_hidden_state` in the same order (one compiled pass instead of six numpy calls:
    this runs once per simulation)."""
    for b in range(s.shape[0]):
        lo = s[b, 0]
        hi = s[b, 0]
        for j in range(1, s.shape[1]):
            v = s[b, j]
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        denominator = (hi - lo) + eps
        for j in range(s.shape[1]):
            s[b, j] = (s[b, j] - lo) / denominator


@numba.njit(cache=True, nogil=True)
def _bias_relu(x: np.ndarray, bias: np.ndarray) -> None:
    """In place ``x = max(x + bias, 0)`` for ``x`` [B, W]: one pass instead of two numpy calls."""
    zero = np.float32(0.0)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            v = x[i, j] + bias[j]
            x[i, j] = v if v > zero else zero


@numba.njit(cache=True, nogil=True)
def _action_rows_bias_relu(x: np.ndarray, rows: np.ndarray, actions: np.ndarray, bias: np.ndarray) -> None:
    """In place ``x = max(x + rows[actions] + bias, 0)``: the dynamics' first layer after ``hidden @ W_h``."""
    zero = np.float32(0.0)
    for i in range(x.shape[0]):
        a = actions[i]
        for j in range(x.shape[1]):
            v = (x[i, j] + rows[a, j]) + bias[j]
            x[i, j] = v if v > zero else zero


def _bias_and_activation(x: np.ndarray, bias: np.ndarray, activation: Callable | None,
                         scratch: np.ndarray | None) -> None:
    """``x += bias`` then the activation, in place (ReLU on 2-D rows fused into one compiled pass)."""
    if activation is _relu and x.ndim == 2:
        _bias_relu(x, bias)
        return
    x += bias
    if activation is not None:
        activation(x, scratch)


def _run_dense(layers: Sequence[Dense], start: int, x: np.ndarray, outs: list[np.ndarray],
               scratch: list[np.ndarray | None]) -> np.ndarray:
    """``layers[start:]`` applied to ``x``; layer ``i`` writes into ``outs[i]``, its activation uses ``scratch[i]``."""
    for i in range(start, len(layers)):
        layer = layers[i]
        out = outs[i]
        np.matmul(x, layer.weight_t, out=out)
        _bias_and_activation(out, layer.bias, layer.activation, scratch[i])
        x = out
    return x


def _layer_buffers(layers: Sequence[Dense], batch_size: int) -> tuple[list, list]:
    outs = [np.empty((batch_size, layer.out_features), np.float32) for layer in layers]
    scratch = [np.empty_like(out) if layer.activation is not None else None for layer, out in zip(layers, outs,
                                                                                                  strict=True)]
    return outs, scratch


class _Plan:
    """Every intermediate and output array of one batch size (allocated once, reused by every later call)."""

    def __init__(self, engine: NumpyMLPInference, batch_size: int) -> None:
        B = batch_size
        self.repr_outs, self.repr_scratch = _layer_buffers(engine.representation, B)
        width = engine.dynamics_hidden.out_features
        self.dyn_first = np.empty((B, width), np.float32)
        self.dyn_action = np.empty((B, width), np.float32)
        self.dyn_first_scratch = np.empty((B, width), np.float32)
        self.dyn_outs, self.dyn_scratch = _layer_buffers(engine.dynamics_rest, B)
        self.heads_first = np.empty((B, engine.head_first_bias.shape[0]), np.float32)
        self.head_inputs = [self.heads_first[:, s] for s in engine.head_slices]
        self.head_input_scratch = [np.empty(x.shape, np.float32) for x in self.head_inputs]
        self.heads_first_scratch = np.empty_like(self.heads_first)
        self.head_outs, self.head_scratch = [], []
        for head in engine.heads:
            outs, scratch = _layer_buffers(head, B)
            self.head_outs.append(outs)
            self.head_scratch.append(scratch)
        if engine.paired_tail is not None:
            # [2, B, w] view of the reward and value heads' first outputs (adjacent column blocks of heads_first).
            width = engine.head_slices[0].stop
            self.pair_input = self.heads_first[:, : 2 * width].reshape(B, 2, width).transpose(1, 0, 2)
            if not np.shares_memory(self.pair_input, self.heads_first):  # reshape copies when it cannot view
                raise AssertionError("the paired head input must be a view of heads_first")
            self.pair_outs = [np.empty((2, B, layer.out_features), np.float32) for layer in engine.paired_tail]
            self.pair_scratch = [np.empty_like(out) if layer.activation is not None else None
                                 for layer, out in zip(engine.paired_tail, self.pair_outs, strict=True)]
            self.pair_row = np.empty((2 * B, 1), np.float32)
            self.pair_scalars = np.empty(2 * B, np.float32)  # [reward..., value...]
        self.readout_row = np.empty((B, 1), np.float32)
        self.next_hidden = np.empty((B, engine.dynamics_rest[-1].out_features if engine.dynamics_rest
                                     else engine.dynamics_hidden.out_features), np.float32)
        self.policy = np.empty((B, engine.heads[2][-1].out_features), np.float32)
        self.reward = np.empty(B, np.float32)
        self.value = np.empty(B, np.float32)


# ---- the compiled recurrent step for small batches (ReLU networks) ----

@numba.njit(cache=True, nogil=True)
def _k_relu(x: np.ndarray) -> None:
    """In place ``x = max(x, 0)`` for ``x`` [B, W] (any strides)."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if x[i, j] < 0.0:
                x[i, j] = 0.0


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _k_dense(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    """``max(x @ weight_t + bias, 0)`` (or without the max) for a few rows, as plain loops."""
    out = np.empty((x.shape[0], weight_t.shape[1]), np.float32)
    for i in range(x.shape[0]):
        row = out[i]
        row[:] = bias
        for k in range(weight_t.shape[0]):
            xv = x[i, k]
            w = weight_t[k]
            for j in range(row.shape[0]):
                row[j] += xv * w[j]
    if relu:
        _k_relu(out)
    return out


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _k_mlp(x: np.ndarray, params: np.ndarray, layers: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Layers ``start:stop`` of the table ``layers`` (rows: weight offset, bias offset, in, out into the flat
    ``params``), ReLU after every layer but the last."""
    for i in range(start, stop):
        w_at, b_at, n_in, n_out = layers[i, 0], layers[i, 1], layers[i, 2], layers[i, 3]
        weight_t = params[w_at:w_at + n_in * n_out].reshape((n_in, n_out))
        x = _k_dense(x, weight_t, params[b_at:b_at + n_out], i < stop - 1)
    return x


# exp in float32 as the compiled read-out computes it (Cephes' expf: Moshier, "Methods and Programs for Mathematical
# Functions", 1989): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, 2^n by writing n + 127 into the
# exponent bits. Hand-written because numba's np.exp is a scalar libm call (no SVML without Intel's icc_rt), while this
# loop vectorises: the read-out of two 601-atom rows takes 0.8 us instead of 2.8 us. Relative error <= 1.2e-7 over
# [-87, 0] (checked in tests/test_numpy_inference.py); arguments below -87 give exp(-87) ~ 1.6e-38 instead of a
# smaller number or 0, which no softmax over fewer than 1e30 atoms can notice; NaN stays NaN.
_EXP_LOG2E = np.float32(1.4426950408889634)
_EXP_LN2_HI = np.float32(0.693359375)
_EXP_LN2_LO = np.float32(-2.12194440e-4)
_EXP_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                           1.6666665459e-1, 5.0000001201e-1))
_EXP_MIN_ARG = np.float32(-87.0)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _k_exp_shifted(row: np.ndarray, top: np.float32, mantissa: np.ndarray, exponent_bits: np.ndarray) -> None:
    """``exp(row[j] - top)`` for a float32 row, as ``mantissa[j] * exponent_bits.view(float32)[j]`` (scratch rows of
    at least the row's length; see ``_EXP_POLY``). Split in two so that both loops vectorise."""
    p5, p4, p3, p2, p1, p0 = _EXP_POLY
    for j in range(row.shape[0]):
        x = np.float32(row[j] - top)
        if x < _EXP_MIN_ARG:
            x = _EXP_MIN_ARG
        n = np.floor(x * _EXP_LOG2E + np.float32(0.5))
        r = x - n * _EXP_LN2_HI - n * _EXP_LN2_LO
        y = ((((p5 * r + p4) * r + p3) * r + p2) * r + p1) * r + p0
        mantissa[j] = y * r * r + r + np.float32(1.0)
        exponent_bits[j] = (np.int32(n) + np.int32(127)) << np.int32(23)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _k_readout(rows: np.ndarray, atoms: np.ndarray, transform: bool, eps: float, out: np.ndarray,
               mantissa: np.ndarray, exponent_bits: np.ndarray) -> None:
    """:class:`Readout` for a few rows: softmax expectation over ``atoms`` (empty: a scalar head), then h^-1.
    ``mantissa`` (float32) and ``exponent_bits`` (int32) are scratch rows at least as long as ``atoms``."""
    powers = exponent_bits.view(np.float32)
    for i in range(rows.shape[0]):
        if atoms.shape[0] == 0:
            out[i] = rows[i, 0]
            continue
        row = rows[i]
        top = row[0]
        for j in range(row.shape[0]):
            if row[j] > top:
                top = row[j]
        _k_exp_shifted(row, top, mantissa, exponent_bits)
        total = 0.0
        weighted = 0.0
        for j in range(row.shape[0]):
            p = mantissa[j] * powers[j]
            total += p
            weighted += p * atoms[j]
        out[i] = weighted / total
    if transform:
        _h_inverse_kernel(out, eps, out)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _k_recurrent(hidden, actions, dyn_wh, dyn_wa, dyn_b, dyn_relu, head_w, head_b, widths, params, layers, ranges,
                 reward_atoms, reward_transform, reward_eps, value_atoms, value_transform, value_eps, scale_eps,
                 next_hidden, reward, policy, value, mantissa, exponent_bits):
    """:meth:`NumpyMLPInference.recurrent_inference` for a few rows in one call (same functions, ReLU network)."""
    x = _k_dense(hidden, dyn_wh, dyn_b, False)
    for i in range(x.shape[0]):  # concat[hidden, one_hot(a)] @ W + b  ==  hidden @ W_h + b + W_a[a]
        x[i] += dyn_wa[actions[i]]
    if dyn_relu:
        _k_relu(x)
    s = _k_mlp(x, params, layers, ranges[0, 0], ranges[0, 1])
    _scale_rows(s, scale_eps)
    next_hidden[:, :] = s
    first = _k_dense(next_hidden, head_w, head_b, False)
    start = 0
    for h in range(3):  # reward, value, policy: first-layer columns, ReLU if the head has more layers, then the rest
        block = first[:, start:start + widths[h]]
        start += widths[h]
        if ranges[h + 1, 1] > ranges[h + 1, 0]:
            _k_relu(block)
            block = _k_mlp(block, params, layers, ranges[h + 1, 0], ranges[h + 1, 1])
        if h == 0:
            _k_readout(block, reward_atoms, reward_transform, reward_eps, reward, mantissa, exponent_bits)
        elif h == 1:
            _k_readout(block, value_atoms, value_transform, value_eps, value, mantissa, exponent_bits)
        else:
            policy[:, :] = block


class _CompiledStep:
    """The engine's weights as :func:`_k_recurrent` reads them: the layers after the dynamics' first and after the
    heads' first packed into one flat array with a table of offsets (a few arrays to pass per call instead of a
    list per network part; built once per weight snapshot)."""

    def __init__(self, engine: NumpyMLPInference) -> None:
        parts = [engine.dynamics_rest, *(head[1:] for head in engine.heads)]
        chunks, rows, ranges, offset = [], [], [], 0
        for part in parts:
            ranges.append((len(rows), len(rows) + len(part)))
            for layer in part:
                n_in, n_out = layer.weight_t.shape
                rows.append((offset, offset + n_in * n_out, n_in, n_out))
                chunks += [layer.weight_t.reshape(-1), layer.bias]
                offset += n_in * n_out + n_out
        self.params = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        self.layers = np.array(rows, np.int64).reshape(-1, 4)
        self.ranges = np.array(ranges, np.int64)
        self.dyn = (engine.dynamics_hidden.weight_t, engine.dynamics_action_rows, engine.dynamics_hidden.bias,
                    engine.dynamics_hidden.activation is _relu)
        self.heads = (engine.head_first_weight_t, engine.head_first_bias,
                      np.array([s.stop - s.start for s in engine.head_slices], np.int64))
        # Scratch rows of the read-out's exp (_k_exp_shifted), as wide as the widest of the reward and value heads.
        width = max(engine.heads[0][-1].out_features, engine.heads[1][-1].out_features)
        self.exp_scratch = (np.empty(width, np.float32), np.empty(width, np.int32))

    @staticmethod
    def supports(engine: NumpyMLPInference) -> bool:
        """Every hidden layer ReLU (the kernel's only activation), every output layer plain."""
        mlps = [[engine.dynamics_hidden, *engine.dynamics_rest], *engine.heads]
        return all(layer.activation is (_relu if i < len(mlp) - 1 else None)
                   for mlp in mlps for i, layer in enumerate(mlp))

    def recurrent(self, hidden: np.ndarray, actions: np.ndarray, reward_readout: Readout, value_readout: Readout,
                  plan: _Plan, scale_eps: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        _k_recurrent(np.ascontiguousarray(hidden), np.ascontiguousarray(actions, dtype=np.int64), *self.dyn,
                     *self.heads, self.params, self.layers, self.ranges,
                     reward_readout.kernel_atoms, reward_readout.use_target_transform, reward_readout.eps,
                     value_readout.kernel_atoms, value_readout.use_target_transform, value_readout.eps,
                     scale_eps, plan.next_hidden, plan.reward, plan.policy, plan.value, *self.exp_scratch)
        return plan.next_hidden, plan.reward, plan.policy, plan.value


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded in this process (inspecting them takes ~20 ms: done once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


class NumpyMLPInference:
    """Initial and recurrent inference of an MLP MuZero network in numpy, with the search's scalar read-outs.

    Layers (lists of :class:`Dense`, the last without activation): ``representation`` obs -> H; ``dynamics``
    [H + A] -> H, whose first layer is split into the hidden rows and the action rows (adding the action's row equals
    multiplying its one-hot vector); ``reward``, ``value``, ``policy`` heads H -> Sr / Sv / A. The three heads' first
    layers run as one product on the stacked weights.

    Built and refreshed by :meth:`FullyConnectedMuZeroModel.numpy_inference`. Not thread-safe: its output buffers
    are shared by all calls of one batch size (like a :class:`~rllib_muzero.mcts.SearchWorkspace`).
    """

    def __init__(self, representation: list[Dense], dynamics: list[Dense], reward: list[Dense], value: list[Dense],
                 policy: list[Dense], num_actions: int) -> None:
        hidden_size = representation[-1].out_features
        first = dynamics[0]
        if first.weight_t.shape[0] != hidden_size + num_actions or policy[-1].out_features != num_actions:
            raise ValueError(
                f"inconsistent layers: the dynamics takes {first.weight_t.shape[0]} inputs and the policy head gives "
                f"{policy[-1].out_features} outputs, expected hidden {hidden_size} + {num_actions} actions and "
                f"{num_actions}")
        self.representation = representation
        self.dynamics_hidden = Dense(np.ascontiguousarray(first.weight_t[:hidden_size]), first.bias, first.activation)
        self.dynamics_action_rows = np.ascontiguousarray(first.weight_t[hidden_size:])  # [A, out]: one_hot(a) @ W
        self.dynamics_rest = dynamics[1:]
        self.heads = (reward, value, policy)
        # The heads' first layers stacked into one [H, r1 + v1 + p1] product.
        firsts = [head[0] for head in self.heads]
        self.head_first_weight_t = np.ascontiguousarray(np.concatenate([d.weight_t for d in firsts], axis=1))
        self.head_first_bias = np.concatenate([d.bias for d in firsts])
        bounds = np.cumsum([0] + [d.out_features for d in firsts])
        self.head_slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.head_first_activations = [d.activation for d in firsts]
        # One activation call for all three when they share it.
        self.shared_first_activation = (firsts[0].activation if all(d.activation is firsts[0].activation
                                                                    for d in firsts) else None)
        # Reward and value heads of the same shape (the default) run their later layers as one batched product on
        # stacked [2, in, out] weights and are read out together: fewer, larger calls.
        self.paired_tail: list[Dense] | None = None
        if len(reward) >= 2 and len(reward) == len(value) and firsts[0].activation is firsts[1].activation and all(
            r.weight_t.shape == v.weight_t.shape and r.activation is v.activation
            for r, v in zip(reward, value, strict=True)
        ):
            self.paired_tail = [Dense(np.stack([r.weight_t, v.weight_t]), np.stack([r.bias, v.bias])[:, None, :],
                                      r.activation) for r, v in zip(reward[1:], value[1:], strict=True)]
        self._scale_eps = np.float32(HIDDEN_STATE_SCALE_EPS)
        self._plans: dict[int, _Plan] = {}
        self._compiled = _CompiledStep(self) if _CompiledStep.supports(self) else None

    # ---- buffers: every intermediate and output array of one batch size, allocated on first use ----

    def _plan(self, batch_size: int) -> _Plan:
        plan = self._plans.get(batch_size)
        if plan is None:
            plan = self._plans[batch_size] = _Plan(self, batch_size)
        return plan

    def _scale(self, s: np.ndarray, plan: _Plan) -> np.ndarray:
        """:func:`~rllib_muzero.models.scale_hidden_state` in place: (s - min) / (max - min + 1e-8) per row."""
        _scale_rows(s, self._scale_eps)
        return s

    def _head_first_layers(self, hidden: np.ndarray, plan: _Plan) -> None:
        """The three heads' first layers as one product on the stacked weights, into ``plan.heads_first`` (each head
        reads its columns through ``plan.head_inputs``)."""
        first = plan.heads_first
        np.matmul(hidden, self.head_first_weight_t, out=first)
        if self.shared_first_activation is not None:
            _bias_and_activation(first, self.head_first_bias, self.shared_first_activation, plan.heads_first_scratch)
            return
        first += self.head_first_bias
        for x, activation, scratch in zip(plan.head_inputs, self.head_first_activations, plan.head_input_scratch,
                                          strict=True):
            if activation is not None:
                activation(x, scratch)

    def _heads(self, hidden: np.ndarray, which: tuple[int, ...], plan: _Plan) -> list[np.ndarray]:
        """Output rows of the heads ``which`` (0 reward, 1 value, 2 policy) from ``hidden`` [B, H]."""
        self._head_first_layers(hidden, plan)
        return [_run_dense(self.heads[i], 1, plan.head_inputs[i], plan.head_outs[i], plan.head_scratch[i])
                for i in which]

    def _paired_heads(self, hidden: np.ndarray, plan: _Plan,
                      readout: Readout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(reward [B], policy_logits [B, A], value [B])``: the heads with the reward and value tails paired."""
        self._head_first_layers(hidden, plan)
        rows = _run_dense(self.paired_tail, 0, plan.pair_input, plan.pair_outs, plan.pair_scratch)  # [2, B, S]
        batch_size = hidden.shape[0]
        scalars = readout(rows.reshape(2 * batch_size, -1), plan.pair_row, plan.pair_scalars)
        policy_logits = _run_dense(self.heads[2], 1, plan.head_inputs[2], plan.head_outs[2], plan.head_scratch[2])
        return scalars[:batch_size], policy_logits, scalars[batch_size:]

    # ---- inference ----

    def initial_inference(self, obs: np.ndarray, value_readout: Readout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hidden [B, H], policy_logits [B, A], value [B])`` from observations [B, *obs_shape]."""
        batch_size = obs.shape[0]
        plan = self._plan(batch_size)
        x = np.ascontiguousarray(obs.reshape(batch_size, -1), dtype=np.float32)
        hidden = self._scale(_run_dense(self.representation, 0, x, plan.repr_outs, plan.repr_scratch), plan)
        value_rows, policy_logits = self._heads(hidden, (1, 2), plan)
        value = value_readout(value_rows, plan.readout_row, plan.value)
        return hidden, policy_logits, value

    def recurrent_inference(self, hidden: np.ndarray, actions: np.ndarray, reward_readout: Readout,
                            value_readout: Readout) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(next_hidden [B, H], reward [B], policy_logits [B, A], value [B])`` from hidden states [B, H] and actions
        int [B]: the dynamics' first layer is ``hidden @ W_h + W_a[action] + b``, i.e. ``concat[hidden,
        one_hot(action)] @ W + b``."""
        plan = self._plan(hidden.shape[0])
        if self._compiled is not None and hidden.shape[0] <= COMPILED_STEP_MAX_ROWS:
            return self._compiled.recurrent(hidden, actions, reward_readout, value_readout, plan, self._scale_eps)
        layer = self.dynamics_hidden
        x = plan.dyn_first
        np.matmul(hidden, layer.weight_t, out=x)
        if layer.activation is _relu:
            _action_rows_bias_relu(x, self.dynamics_action_rows, actions, layer.bias)
        else:
            x += np.take(self.dynamics_action_rows, actions, axis=0, out=plan.dyn_action)
            x += layer.bias
            if layer.activation is not None:
                layer.activation(x, plan.dyn_first_scratch)
        next_hidden = self._scale(_run_dense(self.dynamics_rest, 0, x, plan.dyn_outs, plan.dyn_scratch), plan)
        if self.paired_tail is not None and reward_readout is value_readout:
            return (next_hidden, *self._paired_heads(next_hidden, plan, value_readout))
        reward_rows, value_rows, policy_logits = self._heads(next_hidden, (0, 1, 2), plan)
        reward = reward_readout(reward_rows, plan.readout_row, plan.reward)
        value = value_readout(value_rows, plan.readout_row, plan.value)
        return next_hidden, reward, policy_logits, value

    @staticmethod
    @contextlib.contextmanager
    def blas_threads(limit: int) -> Iterator[None]:
        """numpy's BLAS limited to ``limit`` threads inside the block (restored after)."""
        with _blas_controller().limit(limits=max(1, int(limit)), user_api="blas"):
            yield
