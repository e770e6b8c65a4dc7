"""Search results never change under optimisation: fixed cases kept as test data (``tests/data/search_cases.npz``,
written by ``tests/data/make_search_cases.py`` before the speed work) must give the same visit counts and depths, and
the same root and Q values up to float32 rounding, through the full acting path (network, glue, tree), with the network
evaluated by its numpy engine (the CPU default, added after the cases were written) and by torch."""

import numpy as np
import pytest
import torch

from tests.data.make_search_cases import CASES, PATH, build_model, run_case


@pytest.fixture(scope="module")
def stored():
    with np.load(PATH) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("inference", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_search_matches_the_stored_results(stored, name, inference):
    torch.set_num_threads(1)
    model = build_model({k.split("/", 1)[1]: v for k, v in stored.items() if k.startswith("weight/")})
    assert model.numpy_inference() is not None
    out = run_case(model, stored["obs"], name, numpy_inference=inference == "numpy")
    np.testing.assert_array_equal(out.visit_counts, stored[f"{name}/visit_counts"])
    np.testing.assert_array_equal(out.max_depth, stored[f"{name}/max_depth"])
    np.testing.assert_allclose(out.root_value, stored[f"{name}/root_value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.q_values, stored[f"{name}/q_values"], rtol=1e-5, atol=1e-6)
    assert out.visit_counts.sum(axis=1).max() > 1  # a real search, not a degenerate one
