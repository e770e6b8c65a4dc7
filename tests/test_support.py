"""Value transform and categorical supports (paper Appendix F)."""

import numpy as np
import pytest
import torch

from rllib_muzero.support import (
    DiscreteSupport,
    h,
    h_inverse,
    scalar_to_support,
    scalar_to_two_hot,
    support_to_scalar,
    support_to_scalar_numpy,
)


def test_h_matches_formula_at_hand_checked_points():
    x = torch.tensor([0.0, 3.0, -3.0, 8.0])
    # sign(x) (sqrt(|x| + 1) - 1) + 0.001 x: h(3) = 1 + 0.003, h(8) = 2 + 0.008.
    expected = torch.tensor([0.0, 1.003, -1.003, 2.008])
    torch.testing.assert_close(h(x), expected)
    # eps is honoured.
    torch.testing.assert_close(h(torch.tensor([3.0]), eps=0.0), torch.tensor([1.0]))


def test_h_inverse_round_trips_over_a_wide_range():
    magnitudes = np.concatenate([[0.0], np.logspace(-6, 5, 300)])
    x = torch.tensor(np.concatenate([-magnitudes[::-1], magnitudes]), dtype=torch.float32)
    torch.testing.assert_close(h_inverse(h(x)), x, rtol=2e-6, atol=1e-6)
    # and in the other direction, on the transformed scale.
    y = torch.linspace(-400.0, 400.0, 1001)
    torch.testing.assert_close(h(h_inverse(y)), y, rtol=2e-6, atol=1e-5)
    assert h_inverse(torch.tensor([0.0])).item() == 0.0
    assert h_inverse(h(torch.tensor([0.0]))).item() == 0.0


def test_h_inverse_exact_in_float64_and_with_eps_zero():
    x = torch.tensor([-1e5, -12.5, -1.0, 0.0, 0.3, 7.0, 1e5], dtype=torch.float64)
    torch.testing.assert_close(h_inverse(h(x)), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_inverse(h(x, eps=0.0), eps=0.0), x, rtol=1e-12, atol=1e-12)
    assert h_inverse(h(x)).dtype == torch.float64


def test_h_rejects_negative_eps():
    with pytest.raises(ValueError, match="eps"):
        h(torch.tensor([1.0]), eps=-0.1)


def test_two_hot_of_non_integer_value():
    support = DiscreteSupport(-2, 5)
    probs = scalar_to_support(torch.tensor([3.7]), support)
    expected = torch.zeros(1, 8)
    expected[0, 3 + 2] = 0.3  # atom 3
    expected[0, 4 + 2] = 0.7  # atom 4
    torch.testing.assert_close(probs, expected)


def test_two_hot_of_negative_non_integer_value():
    support = DiscreteSupport(-3, 3)
    probs = scalar_to_support(torch.tensor([-1.25]), support)
    expected = torch.zeros(1, 7)
    expected[0, -2 + 3] = 0.25  # atom -2
    expected[0, -1 + 3] = 0.75  # atom -1
    torch.testing.assert_close(probs, expected)


@pytest.mark.parametrize("value", [-3.0, -1.0, 0.0, 2.0, 3.0])
def test_two_hot_of_integer_value_is_one_hot(value):
    support = DiscreteSupport(-3, 3)
    probs = scalar_to_support(torch.tensor([value]), support)
    expected = torch.zeros(1, 7)
    expected[0, int(value) + 3] = 1.0
    torch.testing.assert_close(probs, expected)


def test_zero_is_one_hot_at_atom_zero_not_an_all_zero_row():
    support = DiscreteSupport(-10, 10)
    probs = scalar_to_support(torch.zeros(4), support)
    assert probs.shape == (4, 21)
    assert torch.all(probs[:, 10] == 1.0)
    assert torch.all(probs.sum(-1) == 1.0)


def test_values_beyond_the_support_are_clamped_to_its_ends():
    support = DiscreteSupport(-5, 5)
    probs = scalar_to_support(torch.tensor([1e6, -7.5, 5.0, -5.0]), support)
    assert probs[0, -1] == 1.0 and probs[1, 0] == 1.0
    assert probs[2, -1] == 1.0 and probs[3, 0] == 1.0
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_two_hot_keeps_leading_shape_and_decodes_to_the_clamped_value():
    support = DiscreteSupport(-20, 20)
    x = torch.linspace(-25.0, 25.0, 120).reshape(3, 40)
    probs = scalar_to_support(x, support)
    assert probs.shape == (3, 40, 41)
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 40))
    decoded = (probs * support.atoms()).sum(-1)
    torch.testing.assert_close(decoded, x.clamp(-20, 20))


def test_support_to_scalar_of_two_hot_logits_recovers_the_value():
    support = DiscreteSupport(-300, 300)
    x = torch.tensor([-123.45, -0.5, 0.0, 0.01, 7.0, 299.9])
    logits = torch.log(scalar_to_support(x, support) + 1e-12)
    # The floor puts ~1e-12 mass on each of 599 other atoms: |error| <= 600 * 300 * 1e-12.
    torch.testing.assert_close(support_to_scalar(logits, support), x, rtol=0, atol=1e-5)


def test_support_to_scalar_of_uniform_logits_is_the_mean_atom():
    assert support_to_scalar(torch.zeros(2, 21), DiscreteSupport(-10, 10)).abs().max() < 1e-6
    torch.testing.assert_close(support_to_scalar(torch.zeros(1, 5), DiscreteSupport(0, 4)), torch.tensor([2.0]))


def test_support_to_scalar_rejects_wrong_number_of_atoms():
    with pytest.raises(ValueError, match="atoms"):
        support_to_scalar(torch.zeros(2, 20), DiscreteSupport(-10, 10))


def test_discrete_support_size_and_atoms():
    support = DiscreteSupport(-300, 300)
    assert support.size == 601
    atoms = support.atoms()
    assert atoms.shape == (601,) and atoms[0] == -300 and atoms[-1] == 300
    assert DiscreteSupport(np.int64(0), np.int64(3)).size == 4


@pytest.mark.parametrize(("lo", "hi"), [(0, 0), (5, -5), (3, 2)])
def test_discrete_support_rejects_min_not_below_max(lo, hi):
    with pytest.raises(ValueError, match=r"`min` < `max`"):
        DiscreteSupport(lo, hi)


@pytest.mark.parametrize(("lo", "hi", "field"), [(0.5, 3, "min"), (-3, 2.5, "max"), (True, 4, "min"), ("0", 3, "min")])
def test_discrete_support_rejects_non_integers(lo, hi, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        DiscreteSupport(lo, hi)


def test_discrete_support_is_frozen():
    support = DiscreteSupport(-1, 1)
    with pytest.raises(AttributeError):
        support.min = -2  # type: ignore[misc]
    assert support.size == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn", [h, h_inverse])
def test_compiled_fast_path_matches_the_torch_path(fn, dtype):
    # Small CPU tensors without gradient take a numba path; one that requires grad takes the torch path.
    rng = np.random.default_rng(0)
    values = np.concatenate([[0.0, -0.0, 1.0, -1.0], rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 8, 2000)])
    x = torch.tensor(values, dtype=dtype)
    fast = fn(x)
    slow = fn(x.clone().requires_grad_(True)).detach()
    assert fast.dtype == slow.dtype == dtype
    # Equal up to the last float64 bit (torch's vectorised sqrt is not always correctly rounded).
    torch.testing.assert_close(fast, slow, rtol=1e-14, atol=1e-15)
    assert fn(torch.tensor([0.0], dtype=dtype)).item() == 0.0
    # Any shape, and non-contiguous inputs.
    grid = x[: 2000].reshape(40, 50).t()
    torch.testing.assert_close(fn(grid), fn(grid.clone().requires_grad_(True)).detach(), rtol=1e-14, atol=1e-15)
    assert torch.isnan(fn(torch.tensor([float("nan")], dtype=dtype))).all()


def test_fast_paths_work_in_inference_mode_and_keep_gradients_outside_it():
    support = DiscreteSupport(-5, 5)
    with torch.inference_mode():
        value = h_inverse(support_to_scalar(torch.randn(3, 11), support))
    assert value.shape == (3,) and value.dtype == torch.float32
    # The cached atoms were first built inside inference mode; they must still be usable under autograd.
    logits = torch.randn(3, 11, requires_grad=True)
    h_inverse(support_to_scalar(logits, support)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # Integer and float16 inputs keep their documented output dtypes.
    assert h(torch.tensor([1, 2])).dtype == torch.float32
    assert h_inverse(torch.tensor([1.0], dtype=torch.float16)).dtype == torch.float16


def test_sparse_two_hot_matches_the_dense_encoding():
    support = DiscreteSupport(-5, 5)
    x = torch.tensor([[-7.0, -5.0, -1.25, 0.0], [0.3, 3.7, 5.0, 9.0]])
    index, mass = scalar_to_two_hot(x, support)
    assert index.shape == mass.shape == (2, 4, 2) and index.dtype == torch.int64
    assert int(index.min()) >= 0 and int(index.max()) <= support.size - 1
    dense = torch.zeros(2, 4, support.size).scatter_add_(-1, index, mass)
    torch.testing.assert_close(dense, scalar_to_support(x, support), rtol=0, atol=0)
    # A cross-entropy read through the indices equals the dense one.
    logits = torch.randn(2, 4, support.size)
    log_p = torch.log_softmax(logits, -1)
    torch.testing.assert_close(-(mass * log_p.gather(-1, index)).sum(-1), -(dense * log_p).sum(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inverse_transform", [True, False])
def test_support_to_scalar_numpy_equals_the_tensor_path(dtype, inverse_transform):
    support = DiscreteSupport(-300, 300)
    logits = torch.randn(16, support.size, dtype=dtype) * 3.0
    expected = support_to_scalar(logits, support)
    if inverse_transform:
        expected = h_inverse(expected)
    expected = expected.float().numpy()
    with torch.inference_mode():
        got = support_to_scalar_numpy(logits, support, inverse_transform=inverse_transform)
    assert got.dtype == np.float32 and got.shape == (16,)
    np.testing.assert_array_equal(got, expected)
    # Leading dimensions are kept; logits that require grad are detached.
    grid = logits.reshape(2, 8, support.size).clone().requires_grad_(True)
    got = support_to_scalar_numpy(grid, support, inverse_transform=inverse_transform)
    np.testing.assert_array_equal(got, expected.reshape(2, 8))
