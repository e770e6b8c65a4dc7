"""The numpy engine of ``muzero_fc`` (rllib_muzero/numpy_inference.py) computes the torch network's functions and the
search's read-outs, follows weight changes, and is used by the search only where it applies."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from rllib_muzero.acting import numpy_root_and_recurrent_fn, search_with_model, to_scalar
from rllib_muzero.models import FullyConnectedMuZeroModel
from rllib_muzero.numpy_inference import COMPILED_STEP_MAX_ROWS, Readout, _k_exp_shifted
from rllib_muzero.support import DiscreteSupport

OBS_DIM, NUM_ACTIONS = 5, 3
SEARCH_CONFIG = {"num_simulations": 12, "gamma": 0.99, "pb_c_init": 1.25, "pb_c_base": 19652.0,
                 "unvisited_value": "zero", "root_counts_as_visit": True, "root_dirichlet_alpha": 0.25,
                 "root_exploration_fraction": 0.25}


def build(options=None, value_support=(-20, 20), reward_support=(-20, 20), seed=0):
    torch.manual_seed(seed)
    sizes = [1 if s is None else s[1] - s[0] + 1 for s in (value_support, reward_support)]
    model = FullyConnectedMuZeroModel(
        gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32), gym.spaces.Discrete(NUM_ACTIONS), NUM_ACTIONS,
        {"custom_model_config": dict(options or {})}, "m", value_support_size=sizes[0], reward_support_size=sizes[1])
    with torch.no_grad():  # non-zero last layers (muzero_fc zero-initialises them)
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    supports = [None if s is None else DiscreteSupport(*s) for s in (value_support, reward_support)]
    return model.eval(), supports[0], supports[1]


def torch_outputs(model, obs, actions, value_support, reward_support, transform):
    with torch.inference_mode():
        initial = model.initial_inference(torch.from_numpy(obs))
        recurrent = model.recurrent_inference(initial.hidden, torch.from_numpy(actions))
        return {
            "hidden": initial.hidden.numpy(), "policy": initial.policy_logits.numpy(),
            "value": to_scalar(initial.value_logits, value_support, transform),
            "next_hidden": recurrent.hidden.numpy(), "next_policy": recurrent.policy_logits.numpy(),
            "reward": to_scalar(recurrent.reward_logits, reward_support, transform),
            "next_value": to_scalar(recurrent.value_logits, value_support, transform),
        }


def numpy_outputs(engine, obs, actions, value_support, reward_support, transform):
    value_readout = Readout(value_support, transform)
    reward_readout = value_readout if reward_support == value_support else Readout(reward_support, transform)
    hidden, policy, value = (x.copy() for x in engine.initial_inference(obs, value_readout))
    next_hidden, reward, next_policy, next_value = (
        x.copy() for x in engine.recurrent_inference(hidden, actions, reward_readout, value_readout))
    return {"hidden": hidden, "policy": policy, "value": value, "next_hidden": next_hidden,
            "next_policy": next_policy, "reward": reward, "next_value": next_value}


def assert_same(expected, actual):
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=2e-5, atol=2e-5, err_msg=key)


CASES = {
    "default (paired reward / value)": ({}, (-20, 20), (-20, 20)),
    "elu, deeper heads": ({"activation": "elu", "value_layers": [16, 8], "reward_layers": [16, 8]}, (-20, 20),
                          (-20, 20)),
    "tanh, different supports": ({"activation": "tanh"}, (-30, 30), (-5, 5)),
    "every width different": ({"hidden_size": 24, "representation_layers": [48, 40], "dynamics_layers": [40, 56],
                               "reward_layers": [20], "value_layers": [20], "policy_layers": [12]}, (-20, 20),
                              (-20, 20)),
    "leaky_relu, no hidden head layers": ({"activation": "leaky_relu", "reward_layers": [], "value_layers": [],
                                           "policy_layers": []}, (-20, 20), (-20, 20)),
    "silu, mixed head depths, no dynamics hidden layer": (
        {"activation": "silu", "dynamics_layers": [], "policy_layers": [], "value_layers": [32, 16]}, (-20, 20),
        (-20, 20)),
    "swish, scalar heads": ({"activation": "swish", "representation_layers": [32, 32]}, None, None),
    "relu, no hidden layers after the first, scalar heads": (
        {"dynamics_layers": [], "reward_layers": [], "value_layers": [], "policy_layers": []}, None, None),
    "relu, deeper tails, different supports": ({"value_layers": [32, 16], "policy_layers": [8, 8],
                                                "dynamics_layers": [48, 40]}, (-30, 30), (-6, 6)),
}


@pytest.mark.parametrize("transform", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 7])
@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_matches_the_torch_network(case, batch_size, transform):
    options, value_bounds, reward_bounds = CASES[case]
    model, value_support, reward_support = build(options, value_bounds, reward_bounds)
    engine = model.numpy_inference()
    assert engine is not None
    # ReLU networks run batches of up to COMPILED_STEP_MAX_ROWS rows as one compiled kernel (batch sizes 1 and 3
    # here), larger ones (7, 9) through numpy: both are compared with torch.
    assert 3 <= COMPILED_STEP_MAX_ROWS < 7
    assert (engine._compiled is not None) == (options.get("activation", "relu") == "relu")
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((batch_size, OBS_DIM)).astype(np.float32)
    actions = rng.integers(0, NUM_ACTIONS, batch_size)
    expected = torch_outputs(model, obs, actions, value_support, reward_support, transform)
    assert_same(expected, numpy_outputs(engine, obs, actions, value_support, reward_support, transform))
    # A second batch size has its own buffers; the first one's results stay right afterwards.
    other = rng.standard_normal((batch_size + 2, OBS_DIM)).astype(np.float32)
    other_actions = rng.integers(0, NUM_ACTIONS, batch_size + 2)
    assert_same(torch_outputs(model, other, other_actions, value_support, reward_support, transform),
                numpy_outputs(engine, other, other_actions, value_support, reward_support, transform))
    assert_same(expected, numpy_outputs(engine, obs, actions, value_support, reward_support, transform))


def test_engine_follows_weight_changes():
    model, support, _ = build()
    engine = model.numpy_inference()
    assert model.numpy_inference() is engine  # cached while no parameter changes
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((4, OBS_DIM)).astype(np.float32)
    actions = rng.integers(0, NUM_ACTIONS, 4)
    before = numpy_outputs(engine, obs, actions, support, support, True)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    out = model.recurrent_inference(model.initial_inference(torch.from_numpy(obs)).hidden, torch.from_numpy(actions))
    (out.value_logits.logsumexp(1).sum() + out.reward_logits.pow(2).sum() + out.policy_logits.sum()).backward()
    optimizer.step()
    model.eval()
    engine_after = model.numpy_inference()
    assert engine_after is not engine
    after = numpy_outputs(engine_after, obs, actions, support, support, True)
    assert not np.allclose(after["next_value"], before["next_value"])
    assert_same(torch_outputs(model, obs, actions, support, support, True), after)

    model.load_state_dict(build(seed=5)[0].state_dict())  # load_state_dict writes in place: versions change too
    assert_same(torch_outputs(model, obs, actions, support, support, True),
                numpy_outputs(model.numpy_inference(), obs, actions, support, support, True))


def test_no_engine_where_numpy_cannot_compute_the_network():
    assert build({"activation": "gelu"})[0].numpy_inference() is None  # erf has no numpy counterpart
    assert build()[0].double().numpy_inference() is None

    class OwnDynamics(FullyConnectedMuZeroModel):
        def dynamics(self, hidden, action):
            next_hidden, reward = super().dynamics(hidden, action)
            return next_hidden * 0.5, reward

    model = OwnDynamics(gym.spaces.Box(-1, 1, (OBS_DIM,), np.float32), gym.spaces.Discrete(NUM_ACTIONS), NUM_ACTIONS,
                        {}, "own", value_support_size=41, reward_support_size=41)
    assert model.numpy_inference() is None


@pytest.mark.parametrize("options", [{}, {"activation": "gelu"}])
def test_search_gives_the_same_visit_counts_through_numpy_and_torch(options):
    model, support, _ = build(options)
    obs = torch.from_numpy(np.random.default_rng(3).standard_normal((6, OBS_DIM)).astype(np.float32))
    results = [
        search_with_model(model, obs, SEARCH_CONFIG, value_support=support, reward_support=support,
                          use_target_transform=True, explore=True, rng=np.random.default_rng(7),
                          numpy_inference=numpy_path)
        for numpy_path in (True, False)
    ]
    np.testing.assert_array_equal(results[0].visit_counts, results[1].visit_counts)
    np.testing.assert_allclose(results[0].root_value, results[1].root_value, rtol=1e-5, atol=1e-5)


def _numpy_blas_threads() -> list[int]:
    """Thread counts of numpy's own BLAS (pip wheels keep it in ``numpy.libs``; other BLAS libraries loaded by other
    packages are not the search's)."""
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and os.path.basename(os.path.dirname(lib["filepath"])).startswith("numpy")]


def test_search_limits_numpy_blas_threads_to_torchs():
    if not _numpy_blas_threads():
        pytest.skip("numpy's BLAS library is not identifiable in this install")
    model, support, _ = build()
    engine = model.numpy_inference()
    seen = []
    original = engine.recurrent_inference

    def recording(*args):
        seen.append(_numpy_blas_threads())
        return original(*args)

    engine.recurrent_inference = recording
    obs = torch.zeros((2, OBS_DIM))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        search_with_model(model, obs, SEARCH_CONFIG, value_support=support, reward_support=support,
                          use_target_transform=True, explore=False, rng=None)
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == SEARCH_CONFIG["num_simulations"]
    assert all(counts == [1] * len(counts) for counts in seen)


def test_root_and_recurrent_fn_give_the_trees_shapes_and_dtypes():
    model, support, _ = build()
    obs = torch.from_numpy(np.random.default_rng(0).standard_normal((3, OBS_DIM)).astype(np.float32))
    root, recurrent_fn = numpy_root_and_recurrent_fn(model.numpy_inference(), obs, value_support=support,
                                                     reward_support=support, use_target_transform=True)
    assert root.embedding.shape == (3, 64) and root.embedding.dtype == np.float32
    assert root.prior_logits.shape == (3, NUM_ACTIONS) and root.value.shape == (3,)
    out = recurrent_fn(root.embedding.copy(), np.array([0, 1, 2]))
    assert out.embedding.shape == (3, 64) and out.reward.shape == (3,) and out.value.shape == (3,)
    assert out.prior_logits.shape == (3, NUM_ACTIONS)
    assert all(x.dtype == np.float32 for x in (out.embedding, out.reward, out.value, out.prior_logits))


def test_engine_refuses_layers_that_do_not_fit_together():
    from rllib_muzero.numpy_inference import NumpyMLPInference, dense_layers

    model, _, _ = build()
    nets = [dense_layers(net) for net in (model.representation_net, model.dynamics_net, model.reward_head,
                                          model.value_head, model.policy_head)]
    with pytest.raises(ValueError, match="inconsistent layers.*expected hidden 64 \\+ 4 actions"):
        NumpyMLPInference(*nets, num_actions=NUM_ACTIONS + 1)


@pytest.mark.parametrize("batch_size", [1, 3])  # the compiled single-row kernel and the numpy path
def test_reward_and_value_read_out_each_with_their_own_transform(batch_size):
    from rllib_muzero.numpy_inference import readout

    model, support, _ = build()
    engine = model.numpy_inference()
    rng = np.random.default_rng(2)
    obs = rng.standard_normal((batch_size, OBS_DIM)).astype(np.float32)
    actions = rng.integers(0, NUM_ACTIONS, batch_size)
    assert readout(support, True) is readout(support, True)  # cached: equal supports share one read-out
    hidden = engine.initial_inference(obs, readout(support, True))[0].copy()
    _, reward, _, value = engine.recurrent_inference(hidden, actions, readout(support, False), readout(support, True))
    with torch.inference_mode():
        out = model.recurrent_inference(torch.from_numpy(hidden), torch.from_numpy(actions))
    np.testing.assert_allclose(reward, to_scalar(out.reward_logits, support, False), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(value, to_scalar(out.value_logits, support, True), rtol=2e-5, atol=2e-5)


def test_compiled_exp_is_float32_accurate_and_keeps_nan():
    """The compiled read-out's exp (``_k_exp_shifted``, a vectorisable Cephes expf): relative error <= 1.2e-7 against
    float64 exp over the whole range a softmax uses, exact at 0, NaN kept, and arguments below -87 floored at
    exp(-87) (still positive and far below any term that counts)."""
    x = np.concatenate([np.linspace(-87.0, 0.0, 200_001), -np.logspace(-8, 1, 1_001), [0.0]]).astype(np.float32)
    mantissa, bits = np.empty_like(x), np.empty(x.shape, np.int32)
    _k_exp_shifted(x, np.float32(0.0), mantissa, bits)
    got = mantissa.astype(np.float64) * bits.view(np.float32)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) <= 1.2e-7
    assert got[-1] == 1.0
    edge = np.array([np.nan, -np.inf, -200.0, 3.0], np.float32)
    mantissa, bits = np.empty_like(edge), np.empty(edge.shape, np.int32)
    _k_exp_shifted(edge, np.float32(3.0), mantissa, bits)
    got = mantissa * bits.view(np.float32)
    assert np.isnan(got[0])
    assert got[1] == got[2] == np.float32(np.exp(np.float32(-87.0))) > 0
    assert got[3] == 1.0
