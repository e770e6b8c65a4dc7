"""The loss's batched prediction: ``prediction`` once on the hidden states of all unroll steps, stacked along the
batch (``muzero_loss(batch_prediction=True)``, what the policy asks for under bf16-mixed), where the model allows it
(``MuZeroModelV2.can_batch_prediction_over_unroll``)."""

import numpy as np
import pytest
import torch

from rllib_muzero.columns import TRAIN_UNROLL_OBS, TRAIN_UNROLL_OBS_MASK
from rllib_muzero.consistency import ConsistencyHeads
from rllib_muzero.conv_models import ResidualMuZeroModel
from rllib_muzero.models import FullyConnectedMuZeroModel
from tests.test_conv_models import RESNET_SMALL, SMALL, make_model
from tests.test_conv_models import REWARD_SUPPORT as CONV_REWARD_SUPPORT
from tests.test_conv_models import VALUE_SUPPORT as CONV_VALUE_SUPPORT
from tests.test_losses import ToyModel, fc_model, loss, make_batch


class CountingPrediction:
    """Wraps a model's ``prediction`` (an instance attribute shadows the method) and counts the rows it sees."""

    def __init__(self, model):
        self.rows = []
        self._prediction = model.prediction
        model.prediction = self

    def __call__(self, hidden):
        self.rows.append(hidden.shape[0])
        return self._prediction(hidden)


def test_which_models_can_batch_their_prediction():
    assert fc_model().can_batch_prediction_over_unroll()  # its recurrent_inference differs only without gradients
    for norm, expected in (("batch", False), ("layer", True), ("none", True)):  # BatchNorm: per-step statistics
        model = make_model(ResidualMuZeroModel, SMALL, {**RESNET_SMALL, "downsample": False, "norm": norm})
        assert model.can_batch_prediction_over_unroll() == expected, norm

    class OwnInference(FullyConnectedMuZeroModel):  # a training-time inference that is not the composition
        def recurrent_inference(self, hidden, action):
            return super().recurrent_inference(hidden, action)

    model = fc_model()
    model.__class__ = OwnInference
    assert not model.can_batch_prediction_over_unroll()


@pytest.mark.parametrize("consistency", [False, True])
def test_batched_prediction_gives_the_per_step_loss_and_gradients(consistency):
    """Same total, components, priorities (bit for bit: each row's logits are the same function of its hidden
    state) and gradients (to float32 rounding: one weight-gradient product instead of a sum of K + 1), with one call
    of ``prediction`` on (K+1) B rows instead of K + 1 calls on B."""
    B, K = 8, 3
    batch = make_batch(B=B, K=K)
    batch["value_mask"][0, 2:] = 0.0
    batch["target_value"][0, 2:] = float("nan")  # masked targets may hold anything
    kwargs = {}
    if consistency:
        rng = np.random.default_rng(1)
        batch[TRAIN_UNROLL_OBS] = torch.as_tensor(rng.normal(size=(B, K, 6)).astype(np.float32))
        batch[TRAIN_UNROLL_OBS_MASK] = torch.ones(B, K)
        torch.manual_seed(1)
        heads = ConsistencyHeads((16,), projection_size=16)
        heads.eval()  # BatchNorm statistics would otherwise move between the two runs
        kwargs = {"consistency_heads": heads, "consistency_loss_weight": 2.0}
    results = {}
    for batched in (False, True):
        model = fc_model()
        calls = CountingPrediction(model)
        out = loss(model, {k: torch.as_tensor(v) for k, v in batch.items()}, batch_prediction=batched, **kwargs)
        out.total.backward()
        assert calls.rows == ([(K + 1) * B] if batched else [B] * (K + 1))
        results[batched] = out, [p.grad for p in model.parameters()]
    (per_step, grads_step), (batched, grads_batched) = results[False], results[True]
    for name in ("total", "value_loss", "reward_loss", "policy_loss", "consistency_loss", "priorities",
                 "policy_entropy"):
        assert torch.equal(getattr(batched, name), getattr(per_step, name)), name
    assert float(per_step.consistency_loss) != 0.0 or not consistency
    for g_batched, g_step in zip(grads_batched, grads_step, strict=True):
        torch.testing.assert_close(g_batched, g_step, rtol=1e-5, atol=1e-7)


def test_models_that_cannot_batch_keep_per_step_calls():
    """A BatchNorm network and a duck-typed model (no ``can_batch_prediction_over_unroll``) are called step by
    step even when batching is asked for."""
    model = make_model(ResidualMuZeroModel, SMALL, {**RESNET_SMALL, "downsample": False, "norm": "batch"})
    calls = CountingPrediction(model)
    B, K = 4, 2
    rng = np.random.default_rng(0)
    batch = {k: torch.as_tensor(v) for k, v in make_batch(B=B, K=K).items()}
    batch["obs"] = torch.as_tensor(rng.uniform(size=(B, *SMALL.shape)).astype(np.float32))
    out = loss(model, batch, batch_prediction=True, value_support=CONV_VALUE_SUPPORT,
               reward_support=CONV_REWARD_SUPPORT)
    assert torch.isfinite(out.total)
    assert calls.rows == [B] * (K + 1)

    toy = ToyModel()  # initial_inference / recurrent_inference only
    out = loss(toy, {k: torch.as_tensor(v) for k, v in make_batch(B=B, K=K).items()}, batch_prediction=True)
    assert torch.isfinite(out.total)
