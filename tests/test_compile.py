"""``torch_compile_learner`` (RLlib's option, honoured by MuZero): the loss's unroll compiled by ``torch.compile``
computes the same loss and gradients as the eager one, a network it cannot capture gets an error naming the option,
and a training run uses it end to end (the driver's learner in float32, the asynchronous learner thread in
bf16-mixed).

The inductor compiles take tens of seconds each on a 2-core machine: each test compiles once."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from rllib_muzero.columns import TRAIN_UNROLL_OBS, TRAIN_UNROLL_OBS_MASK
from rllib_muzero.consistency import ConsistencyHeads
from rllib_muzero.losses import compile_unroll_loss
from rllib_muzero.models import FullyConnectedMuZeroModel
from tests.test_algorithm import tiny_config
from tests.test_async import async_config
from tests.test_losses import fc_model, loss, make_batch


def _loss_and_grads(model, heads, batch, **kwargs):
    model.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    out = loss(model, batch, consistency_heads=heads, consistency_loss_weight=2.0, **kwargs)
    out.total.backward()
    grads = [p.grad.clone() for p in [*model.parameters(), *heads.parameters()]]
    return out, grads


@pytest.mark.parametrize("cpp_wrapper", [False, True])
def test_compiled_unroll_matches_the_eager_loss_and_gradients(cpp_wrapper):
    """Inductor (the default backend), categorical heads and the consistency loss on: the fullest graph. Same total,
    components, priorities and gradients as eager, to float32 rounding; masked and NaN targets stay out as eagerly.
    With inductor's C++ wrapper (what a CPU learner gets) and without (its Python wrapper, the GPU learner's)."""
    model, batch = fc_model(), make_batch(B=8, K=3)
    batch["value_mask"][0, 2:] = 0.0
    batch["target_value"][0, 2:] = float("nan")  # masked targets may hold anything
    rng = np.random.default_rng(1)
    batch[TRAIN_UNROLL_OBS] = torch.as_tensor(rng.normal(size=(8, 3, 6)).astype(np.float32))
    batch[TRAIN_UNROLL_OBS_MASK] = torch.ones(8, 3)
    torch.manual_seed(1)
    heads = ConsistencyHeads((16,), projection_size=16)
    heads.eval()  # BatchNorm statistics would otherwise move between the two runs
    eager, eager_grads = _loss_and_grads(model, heads, batch)
    unroll = compile_unroll_loss(cpp_wrapper=cpp_wrapper)
    assert unroll.inductor_options == ({"cpp_wrapper": True} if cpp_wrapper else None)
    compiled, compiled_grads = _loss_and_grads(model, heads, batch, unroll=unroll)
    for name in ("total", "value_loss", "reward_loss", "policy_loss", "consistency_loss", "policy_entropy"):
        torch.testing.assert_close(getattr(compiled, name), getattr(eager, name), rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(compiled.priorities, eager.priorities, rtol=1e-5, atol=1e-5)
    assert float(eager.consistency_loss) != 0.0
    for g_compiled, g_eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-6)


def test_the_cpp_wrapper_keeps_the_mode_options():
    """torch.compile takes a mode or options, not both: the C++ wrapper is merged into the mode's options, and only
    inductor gets it (other backends take the mode as given)."""
    assert compile_unroll_loss(mode="max-autotune-no-cudagraphs", cpp_wrapper=True).inductor_options == {
        "max_autotune": True, "coordinate_descent_tuning": True, "cpp_wrapper": True}
    assert compile_unroll_loss(mode="default", cpp_wrapper=True).inductor_options == {"cpp_wrapper": True}
    assert compile_unroll_loss(backend="aot_eager", cpp_wrapper=True).inductor_options is None


def test_compiled_unroll_with_scalar_heads():
    """Scalar heads (``no_support``) take the regression branch of the same compiled function (backend aot_eager:
    dynamo's capture and AOT autograd without inductor's code generation, a quick check of the graph)."""
    torch.manual_seed(0)
    model = FullyConnectedMuZeroModel(gym.spaces.Box(-np.inf, np.inf, (6,), np.float32), gym.spaces.Discrete(3), 3,
                                      {"custom_model_config": {"hidden_size": 8}}, "scalar",
                                      value_support_size=1, reward_support_size=1)
    batch = make_batch(B=8, K=3)
    kwargs = dict(value_support=None, reward_support=None, scalar_loss="huber")
    eager = loss(model, batch, **kwargs)
    compiled = loss(model, batch, unroll=compile_unroll_loss(backend="aot_eager"), **kwargs)
    torch.testing.assert_close(compiled.total, eager.total, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(compiled.priorities, eager.priorities, rtol=1e-6, atol=1e-6)


class _BranchOnValues(FullyConnectedMuZeroModel):
    """A network with a Python branch on a tensor's value: torch.compile cannot capture it in one graph."""

    def representation(self, obs):
        hidden = super().representation(obs)
        return hidden if float(hidden.sum()) > 0 else -hidden


def test_a_network_compile_cannot_capture_gets_an_error_naming_the_option():
    model = _BranchOnValues(gym.spaces.Box(-np.inf, np.inf, (6,), np.float32), gym.spaces.Discrete(3), 3,
                            {"custom_model_config": {"hidden_size": 8}}, "branch",
                            value_support_size=21, reward_support_size=11)
    with pytest.raises(RuntimeError, match="(?s)`torch_compile_learner`.*_BranchOnValues.*=False.*data-dependent"):
        loss(model, make_batch(), unroll=compile_unroll_loss(backend="eager"))


@pytest.mark.integration
def test_training_with_torch_compile_learner(ray_session):
    """``.framework(torch_compile_learner=True)`` end to end, the learner in the driver: the policy runs the compiled
    unroll (inductor), its update from a given state and batch matches the eager policy's to float32 rounding, and
    training keeps every loss finite."""
    config = tiny_config(reanalyse_value=True, consistency_loss_weight=1.0)
    algo = config.framework(torch_compile_learner=True).build_algo()
    try:
        policy = algo.get_policy()
        assert policy._unroll_loss.inductor_options == {"cpp_wrapper": True}  # a CPU learner: the C++ wrapper
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        results = [algo.train() for _ in range(3)]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it compiled
        stats = results[-1]["info"]["learner"]["default_policy"]["learner_stats"]
        assert policy.num_grad_updates > 0
        for name in ("total_loss", "value_loss", "reward_loss", "policy_loss", "consistency_loss"):
            assert np.isfinite(stats[name]), name

        batch = algo.replays["default_policy"].sample(16, num_unroll_steps=3, td_steps=5, discount=0.997,
                                                      rng=np.random.default_rng(0), value_fn=policy.reanalyse_values,
                                                      with_unroll_obs=True)
        state = copy.deepcopy(policy.get_state())  # on the CPU, get_state's arrays share the live weights
        out = {}
        compiled_unroll = policy._unroll_loss
        for compiled in (True, False):
            policy.set_state(copy.deepcopy(state))  # the optimizer keeps the tensors it is given
            policy._unroll_loss = compiled_unroll if compiled else None
            out[compiled] = policy.learn_on_replay_batch({k: v.copy() for k, v in batch.items()})
            assert out[compiled]["finite"]
        loss_c, loss_e = (out[c]["learner_stats"]["total_loss"] for c in (True, False))
        assert loss_c == pytest.approx(loss_e, rel=1e-5), (loss_c, loss_e)
        np.testing.assert_allclose(out[True]["priorities"], out[False]["priorities"], rtol=1e-4, atol=1e-4)
        weights = {}
        for compiled in (True, False):  # the updated weights agree too
            policy.set_state(copy.deepcopy(state))  # the optimizer keeps the tensors it is given
            policy._unroll_loss = compiled_unroll if compiled else None
            policy.learn_on_replay_batch({k: v.copy() for k, v in batch.items()})
            weights[compiled] = [p.detach().clone() for p in policy.model.parameters()]
        for w_c, w_e in zip(weights[True], weights[False], strict=True):
            torch.testing.assert_close(w_c, w_e, rtol=1e-4, atol=1e-6)
    finally:
        algo.stop()


@pytest.mark.integration
def test_async_learner_thread_with_torch_compile_learner_and_bf16(ray_session):
    """The asynchronous pipeline's learner thread compiles and runs the unroll under bf16-mixed autocast."""
    config = async_config(num_env_runners=1, learner_precision="bf16-mixed")
    algo = config.framework(torch_compile_learner=True).build_algo()
    try:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        results = [algo.train() for _ in range(4)]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
        assert algo.get_policy().num_grad_updates > 0
        stats = results[-1]["info"]["learner"]["default_policy"]["learner_stats"]
        for name in ("total_loss", "value_loss", "reward_loss", "policy_loss"):
            assert np.isfinite(stats[name]), name
    finally:
        algo.stop()
