"""Categorical supports and the invertible value transform of MuZero (paper Appendix F).

MuZero predicts values and rewards as categorical distributions over a fixed set of integer *atoms* (the
*support*) instead of as scalars, after squashing the scalar with an invertible transform ``h``:

- ``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x`` (Pohlen et al. 2018, "Observe and Look Further", arXiv 1805.11593,
  Proposition A.2; the paper uses ``eps = 0.001``), with the closed-form inverse :func:`h_inverse`.
- A scalar target ``x`` becomes a *two-hot* distribution: mass on the two atoms next to ``x`` such that the expectation
  is ``x`` (paper Appendix F: "3.7 is represented as 0.3 on atom 3 and 0.7 on atom 4").
- A predicted distribution becomes a scalar by its expectation under the softmax (:func:`support_to_scalar`).

The transform is applied by the callers (loss, policy), so switching it off (``use_target_transform=False``) is their
flag, not this module's.

Scalar heads (the reference's ``no_support``): a head without a support outputs one number, the value or reward
itself (after ``h`` when the targets are transformed). Everywhere in this package such a head's support is ``None``:
:func:`head_size` gives 1, :func:`support_to_scalar` reads the single output, and the loss uses a regression loss
(``scalar_loss``) instead of the cross-entropy. Search, targets and priorities see the same raw-scale scalars either
way: ``h^-1`` is applied to a scalar head exactly as to a categorical one, so transformed and raw values never mix.

Everything here is torch (with two small numba loops, see below), without Ray.

Speed: the search calls :func:`support_to_scalar` and :func:`h_inverse` once per simulation on a handful of rows,
where the fixed cost of each operator call, not the arithmetic, is the price (and inside the search loop, with the
network's and the tree's code in between, each small torch or numpy call costs several times what a microbenchmark
shows). Hence :func:`support_to_scalar` multiplies by a cached atom vector (one ``matmul``, no ``arange`` per call),
and :func:`h` / :func:`h_inverse` evaluate small CPU tensors that need no gradient in one compiled numba loop (about
9 us in the search loop against about 50 us for the 14 torch operators). Both paths run the same float64 operations
in the same order; they can differ in the last float64 bit (torch's vectorised ``sqrt`` is not always correctly
rounded, LLVM's is), far below float32 resolution. :func:`support_to_scalar_numpy` is the whole acting path (logits to
float32 numpy scalars) with the inverse transform written straight into the numpy result.

Example::

    support = DiscreteSupport(-300, 300)           # 601 atoms, the paper's Atari value support
    target = scalar_to_support(h(returns), support)  # (B,) -> (B, 601), each row sums to 1
    value = h_inverse(support_to_scalar(value_logits, support))  # (B, 601) -> (B,)
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DiscreteSupport",
    "head_size",
    "h",
    "h_inverse",
    "scalar_to_support",
    "scalar_to_two_hot",
    "support_to_scalar",
    "support_to_scalar_numpy",
]

DEFAULT_EPS = 0.001  # paper Appendix F: eps = 0.001

# h / h_inverse run as a numba loop for CPU tensors without gradient up to this many elements (the search's and the
# loss's target / priority path); larger or differentiable inputs stay in torch.
_NUMPY_MAX_NUMEL = 1 << 16
_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


@dataclass(frozen=True)
class DiscreteSupport:
    """The integer atoms ``min, min + 1, ..., max`` of a categorical value or reward head.

    Args:
        min: Smallest atom (inclusive); an integer.
        max: Largest atom (inclusive); an integer greater than ``min``.

    The paper uses ``DiscreteSupport(-300, 300)`` for values and rewards on Atari (Appendix F). A support of a single
    atom is rejected: scalar heads are not a degenerate support.
    """

    min: int
    max: int

    def __post_init__(self) -> None:
        for field in ("min", "max"):
            value = getattr(self, field)
            if isinstance(value, bool):
                raise ValueError(f"DiscreteSupport `{field}` must be an integer, got {value!r}")
            try:
                object.__setattr__(self, field, operator.index(value))  # accepts numpy integers, rejects 1.5
            except TypeError:
                raise ValueError(f"DiscreteSupport `{field}` must be an integer, got {value!r}") from None
        if not self.min < self.max:
            raise ValueError(
                f"DiscreteSupport needs `min` < `max`, got min={self.min}, max={self.max} "
                "(e.g. DiscreteSupport(-300, 300) as in the paper)"
            )

    @property
    def size(self) -> int:
        """Number of atoms, ``max - min + 1``."""
        return self.max - self.min + 1

    def atoms(self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """The atom values ``[min, ..., max]`` as a tensor of shape ``(size,)``."""
        return torch.arange(self.min, self.max + 1, dtype=dtype, device=device)


def head_size(support: DiscreteSupport | None) -> int:
    """Outputs of a value or reward head: the support's atoms, or 1 for a scalar head (``support=None``)."""
    return 1 if support is None else support.size


def _check_eps(eps: float) -> None:
    if not eps >= 0.0:
        raise ValueError(f"`eps` of the value transform must be >= 0, got {eps!r}")


@numba.njit(cache=True, nogil=True)
def _sign(v: float) -> float:
    """torch.sign / np.sign of a float64: -1, 1, or ``v`` itself for zeros and NaN."""
    return 1.0 if v > 0.0 else (-1.0 if v < 0.0 else v)


@numba.njit(cache=True, nogil=True)
def _h_kernel(x: np.ndarray, eps: float, out: np.ndarray) -> None:
    """``out[i] = h(x[i])`` in float64 (1-D arrays); the operations of :func:`h`'s torch path, in its order."""
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        out[i] = _sign(v) * (np.sqrt(abs(v) + 1.0) - 1.0) + eps * v


@numba.njit(cache=True, nogil=True)
def _h_inverse_kernel(y: np.ndarray, eps: float, out: np.ndarray) -> None:
    """``out[i] = h^-1(y[i])`` in float64 (1-D arrays); the operations of :func:`h_inverse`'s torch path, in order."""
    for i in range(y.shape[0]):
        v = np.float64(y[i])
        a = abs(v) + 1.0 + eps
        t = 2.0 * a / (np.sqrt(1.0 + 4.0 * eps * a) + 1.0)
        out[i] = _sign(v) * (t * t - 1.0)


def _float64_map(x: Tensor, eps: float, kernel: Any, fn_torch: Callable[[Tensor], Tensor]) -> Tensor:
    """An elementwise float64 function of ``x``, returned in ``x``'s floating dtype (float32 for integer inputs).

    Small CPU float32/float64 tensors that need no gradient go through the numba ``kernel`` (one call instead of
    ~14 operators; equal to the torch path up to the last float64 bit); everything else through ``fn_torch``.
    """
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    if (
        x.dtype in _NUMPY_FLOATS
        and not x.requires_grad
        and x.device.type == "cpu"
        and x.numel() <= _NUMPY_MAX_NUMEL
        and not (x.is_neg() or x.is_conj())
    ):
        try:
            array = x.numpy()
        except RuntimeError:  # e.g. a functorch-wrapped tensor without storage: the torch path handles it
            array = None
        if array is not None:
            out = np.empty(array.shape, dtype=_NUMPY_FLOATS[out_dtype])
            kernel(np.ascontiguousarray(array).reshape(-1), eps, out.reshape(-1))
            return torch.from_numpy(out)
    return fn_torch(x.to(torch.float64)).to(out_dtype)


def h(x: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The invertible value transform ``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x``.

    Paper Appendix F ("Network Architecture"), from Pohlen et al. 2018 (arXiv 1805.11593), with ``eps = 0.001``.
    Computed in float64 and returned in the input's floating dtype (float32 for integer inputs).
    """
    _check_eps(eps)
    return _float64_map(
        x, float(eps), _h_kernel, lambda x64: torch.sign(x64) * (torch.sqrt(x64.abs() + 1.0) - 1.0) + eps * x64
    )


def h_inverse(y: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Closed-form inverse of :func:`h` (Pohlen et al. 2018, Proposition A.2).

    ``h^-1(y) = sign(y) [ ((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1 ]``.

    It is evaluated in float64 in the algebraically equal form
    ``t = 2 (|y| + 1 + eps) / (sqrt(1 + 4 eps (|y| + 1 + eps)) + 1)``, ``h^-1(y) = sign(y) (t^2 - 1)``, which has no
    division by ``eps`` (so ``eps = 0`` gives the exact inverse ``sign(y) ((|y| + 1)^2 - 1)``) and no catastrophic
    cancellation for small ``eps``.
    """
    _check_eps(eps)

    def inverse_torch(y64: Tensor) -> Tensor:
        a = y64.abs() + 1.0 + eps
        t = 2.0 * a / (torch.sqrt(1.0 + 4.0 * eps * a) + 1.0)
        return torch.sign(y64) * (t * t - 1.0)

    return _float64_map(y, float(eps), _h_inverse_kernel, inverse_torch)


def scalar_to_two_hot(x: Tensor, support: DiscreteSupport) -> tuple[Tensor, Tensor]:
    """The two-hot encoding of :func:`scalar_to_support` in sparse form: atom indices and their masses.

    Returns ``(index, mass)``, both of shape ``(..., 2)``: ``index`` (int64, in ``[0, support.size)``) holds the
    positions of atoms ``floor(x)`` and ``floor(x) + 1`` (the same position twice when ``x`` is ``support.max``), and
    ``mass`` (``x``'s floating dtype, float32 for integer inputs) their masses ``1 - (x - floor(x))`` and
    ``x - floor(x)``, after clamping ``x`` to ``[support.min, support.max]``. A cross-entropy against the two-hot
    target is then ``-(mass * log_probs.gather(-1, index)).sum(-1)``, without the dense ``(..., size)`` target.
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    x = x.to(dtype).clamp(support.min, support.max)
    floor = torch.floor(x)
    upper_mass = x - floor  # in [0, 1); 0 for integer x
    lower_index = (floor - support.min).long()  # in [0, size - 1]
    upper_index = (lower_index + 1).clamp(max=support.size - 1)  # x == max: mass 0 lands on the same atom
    index = torch.stack([lower_index, upper_index], dim=-1)
    mass = torch.stack([1.0 - upper_mass, upper_mass], dim=-1)
    return index, mass


def scalar_to_support(x: Tensor, support: DiscreteSupport) -> Tensor:
    """Two-hot encoding of scalars on the integer atoms of ``support`` (paper Appendix F).

    ``x`` is clamped to ``[support.min, support.max]`` first. A value between atoms ``f = floor(x)`` and ``f + 1`` puts
    mass ``1 - (x - f)`` on ``f`` and ``x - f`` on ``f + 1``; an integer value (including ``support.max``) puts all its
    mass on one atom, so every row sums to exactly 1 (never a zero-mass row). The "0" target is the one-hot at atom 0.

    Args:
        x: Scalars of any shape ``(...)``; already transformed by :func:`h` if the caller uses the transform.
        support: The atoms.

    Returns:
        ``(..., support.size)`` probabilities, in ``x``'s floating dtype (float32 for integer inputs).
        :func:`scalar_to_two_hot` gives the same encoding as two (index, mass) pairs.
    """
    index, mass = scalar_to_two_hot(x, support)
    probs = torch.zeros(*index.shape[:-1], support.size, dtype=mass.dtype, device=mass.device)
    probs.scatter_add_(-1, index[..., :1], mass[..., :1])
    probs.scatter_add_(-1, index[..., 1:], mass[..., 1:])
    return probs


def support_to_scalar(logits: Tensor, support: DiscreteSupport | None) -> Tensor:
    """Expected atom under ``softmax(logits)``: ``(..., support.size) -> (...)`` (paper Appendix F).

    The result is in the transformed scale when the targets were transformed; apply :func:`h_inverse` to get back to
    rewards / returns. With ``support=None`` (a scalar head) ``logits`` is ``(..., 1)``: its single output is the value.
    """
    if support is None:
        if logits.shape[-1] != 1:
            raise ValueError(f"a scalar head (no support) has 1 output in its last dimension, got {logits.shape[-1]}")
        return logits[..., 0]
    if logits.shape[-1] != support.size:
        raise ValueError(
            f"logits have {logits.shape[-1]} atoms in their last dimension but the support "
            f"[{support.min}, {support.max}] has {support.size}"
        )
    probs = torch.softmax(logits, dim=-1)
    if torch.compiler.is_compiling():  # in a graph (the compiled learner loss): a constant there, no cache to consult
        atoms = torch.arange(support.min, support.max + 1, dtype=probs.dtype, device=probs.device)
    else:  # eager, e.g. once per search simulation: built once
        atoms = _cached_atoms(support.min, support.max, probs.dtype, probs.device)
    return probs @ atoms


def support_to_scalar_numpy(
    logits: Tensor, support: DiscreteSupport | None, *, inverse_transform: bool, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """``h_inverse(support_to_scalar(logits, support))`` (or without ``h_inverse``) as float32 numpy, for acting.

    The search's per-simulation path: one softmax and one matmul in torch, then the inverse transform in one compiled
    loop written straight into the numpy result (no tensor round trip). The result equals
    ``h_inverse(support_to_scalar(logits, support), eps).float().cpu().numpy()`` for float32 and float64 logits.
    No gradient flows through it.

    Args:
        logits: ``(..., support.size)`` logits, any device.
        support: The atoms; ``None`` for a scalar head (``logits`` ``(..., 1)``).
        inverse_transform: Apply :func:`h_inverse` (the caller trained on ``h``-transformed targets).
        eps: The transform's epsilon.

    Returns:
        ``(...)`` float32 numpy array.
    """
    _check_eps(eps)
    value = support_to_scalar(logits.detach(), support)
    if value.device.type != "cpu" or value.dtype not in _NUMPY_FLOATS:
        value = value.to(device="cpu", dtype=value.dtype if value.dtype in _NUMPY_FLOATS else torch.float32)
    array = value.numpy()
    if not inverse_transform:
        return array.astype(np.float32, copy=False)
    out = np.empty(array.shape, dtype=np.float32)
    _h_inverse_kernel(np.ascontiguousarray(array).reshape(-1), float(eps), out.reshape(-1))
    return out


@functools.lru_cache(maxsize=64)
def _cached_atoms(lo: int, hi: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``DiscreteSupport(lo, hi).atoms()``, built once per dtype and device; never handed out, never written to.

    Built outside inference mode, so it can be saved for backward even when first requested during a search.
    """
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(lo, hi + 1, dtype=dtype, device=device)
