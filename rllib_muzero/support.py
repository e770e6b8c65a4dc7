"""Categorical supports and the invertible value transform of MuZero (paper Appendix F).

MuZero predicts values and rewards as categorical distributions over a fixed set of integer *atoms* (the
*support*) instead of as scalars, after squashing the scalar with an invertible transform ``h``:

- ``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x`` (Pohlen et al. 2018, "Observe and Look Further", arXiv 1805.11593,
  Proposition A.2; the paper uses ``eps = 0.001``), with the closed-form inverse :func:`h_inverse`.
- A scalar target ``x`` becomes a *two-hot* distribution: mass on the two atoms next to ``x`` such that the expectation
  is ``x`` (paper Appendix F: "3.7 is represented as 0.3 on atom 3 and 0.7 on atom 4").
- A predicted distribution becomes a scalar by its expectation under the softmax (:func:`support_to_scalar`).

The transform is applied by the callers (loss, policy), so switching it off (``use_target_transform=False``) is their
flag, not this module's. Everything here is plain torch, without Ray.

Speed: the search calls :func:`support_to_scalar` and :func:`h_inverse` once per head and simulation on a handful of
rows, where the ~2 us fixed cost of each torch operator dominates. Hence :func:`support_to_scalar` multiplies by a
cached atom vector (one ``matmul``, no ``arange`` per call), and :func:`h` / :func:`h_inverse` evaluate small CPU
tensors that need no gradient with the same float64 operations in numpy (about 3x faster at 32 elements). Both paths
run the same operations in the same order; they can differ in the last float64 bit (torch's vectorised ``sqrt`` is
not always correctly rounded, numpy's is), far below float32 resolution.

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

import numpy as np
import torch
from torch import Tensor

__all__ = ["DiscreteSupport", "h", "h_inverse", "scalar_to_support", "support_to_scalar"]

DEFAULT_EPS = 0.001  # paper Appendix F: eps = 0.001

# h / h_inverse run in numpy for CPU tensors without gradient up to this many elements (the search's and the loss's
# priority path); larger or differentiable inputs stay in torch.
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


def _check_eps(eps: float) -> None:
    if not eps >= 0.0:
        raise ValueError(f"`eps` of the value transform must be >= 0, got {eps!r}")


def _float64_map(
    x: Tensor, fn_numpy: Callable[[np.ndarray], np.ndarray], fn_torch: Callable[[Tensor], Tensor]
) -> Tensor:
    """``fn(x)`` evaluated in float64 and returned in ``x``'s floating dtype (float32 for integer inputs).

    Small CPU float32/float64 tensors that need no gradient go through ``fn_numpy`` (the same operations at a fraction
    of torch's per-operator overhead; equal up to the last float64 bit); everything else through ``fn_torch``.
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
            with np.errstate(all="ignore"):  # overflow / NaN pass through silently, as in torch
                result = fn_numpy(array.astype(np.float64)).astype(_NUMPY_FLOATS[out_dtype], copy=False)
            return torch.from_numpy(np.ascontiguousarray(result))
    return fn_torch(x.to(torch.float64)).to(out_dtype)


def h(x: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The invertible value transform ``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x``.

    Paper Appendix F ("Network Architecture"), from Pohlen et al. 2018 (arXiv 1805.11593), with ``eps = 0.001``.
    Computed in float64 and returned in the input's floating dtype (float32 for integer inputs).
    """
    _check_eps(eps)
    return _float64_map(
        x,
        lambda x64: np.sign(x64) * (np.sqrt(np.abs(x64) + 1.0) - 1.0) + eps * x64,
        lambda x64: torch.sign(x64) * (torch.sqrt(x64.abs() + 1.0) - 1.0) + eps * x64,
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

    def inverse_numpy(y64: np.ndarray) -> np.ndarray:
        a = np.abs(y64) + 1.0 + eps
        t = 2.0 * a / (np.sqrt(1.0 + 4.0 * eps * a) + 1.0)
        return np.sign(y64) * (t * t - 1.0)

    def inverse_torch(y64: Tensor) -> Tensor:
        a = y64.abs() + 1.0 + eps
        t = 2.0 * a / (torch.sqrt(1.0 + 4.0 * eps * a) + 1.0)
        return torch.sign(y64) * (t * t - 1.0)

    return _float64_map(y, inverse_numpy, inverse_torch)


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
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    x = x.to(dtype).clamp(support.min, support.max)
    floor = torch.floor(x)
    upper_mass = x - floor  # in [0, 1); 0 for integer x
    lower_index = (floor - support.min).long()  # in [0, size - 1]
    upper_index = (lower_index + 1).clamp(max=support.size - 1)  # x == max: mass 0 lands on the same atom
    probs = torch.zeros(*x.shape, support.size, dtype=dtype, device=x.device)
    probs.scatter_add_(-1, lower_index.unsqueeze(-1), (1.0 - upper_mass).unsqueeze(-1))
    probs.scatter_add_(-1, upper_index.unsqueeze(-1), upper_mass.unsqueeze(-1))
    return probs


def support_to_scalar(logits: Tensor, support: DiscreteSupport) -> Tensor:
    """Expected atom under ``softmax(logits)``: ``(..., support.size) -> (...)`` (paper Appendix F).

    The result is in the transformed scale when the targets were transformed; apply :func:`h_inverse` to get back to
    rewards / returns.
    """
    if logits.shape[-1] != support.size:
        raise ValueError(
            f"logits have {logits.shape[-1]} atoms in their last dimension but the support "
            f"[{support.min}, {support.max}] has {support.size}"
        )
    probs = torch.softmax(logits, dim=-1)
    return probs @ _cached_atoms(support.min, support.max, probs.dtype, probs.device)


@functools.lru_cache(maxsize=64)
def _cached_atoms(lo: int, hi: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``DiscreteSupport(lo, hi).atoms()``, built once per dtype and device; never handed out, never written to.

    Built outside inference mode, so it can be saved for backward even when first requested during a search.
    """
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(lo, hi + 1, dtype=dtype, device=device)
