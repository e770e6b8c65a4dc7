"""EfficientZero's temporal consistency loss (Ye et al. 2021, "Mastering Atari Games with Limited Data", section 4.1).

MuZero trains its dynamics only through the reward, value and policy heads, so nothing asks the hidden state
``s^k = g(s^{k-1}, a)`` unrolled from ``o_t`` to resemble the representation of the observation the env actually
produced, ``h(o_{t+k})``. EfficientZero adds that supervision SimSiam-style (Chen & He 2021): a projection ``P`` and a
prediction head ``Q`` on the online branch, the projection alone on the target branch, and a stop-gradient there:

    l^c_k = -cos( Q(P(s^k)),  sg[P(h(o_{t+k}))] ),     k = 1..K

added to the step-``k`` loss of eq. (1) with weight ``consistency_loss_weight`` (EfficientZero: 2 on Atari 100k) and
the same ``1/K`` gradient scaling as the other recurrent terms; masked where ``o_{t+k}`` does not exist (past the end of
the stored episode).

Implementation details (deliberate):

1. The heads live beside the MuZero network, not inside it (:class:`ConsistencyHeads`): any network implementing the
   MuZero interface gets the loss without changes, acting and serving never see the heads, and exported weights keep
   the network's own layout. The heads flatten the hidden state, so vector and image hidden states alike work.
2. Layer layout as EfficientZero's: projection ``Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN``, prediction
   ``Linear-BN-ReLU-Linear``; widths from ``projection_size`` (EfficientZero's Atari sizes: 1024 projection, 256
   prediction hidden) scaled down by default for small networks.
3. The target branch runs the online representation under ``torch.no_grad()`` (EfficientZero: the same network,
   detached), in the network's current train/eval mode.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ConsistencyHeads", "negative_cosine_similarity"]


class ConsistencyHeads(nn.Module):
    """SimSiam projection ``P`` and prediction ``Q`` heads on flattened hidden states ``(B, *H)``.

    Args:
        hidden_shape: ``H``, the shape of one hidden state (without the batch dimension).
        projection_size: width of the projection's layers and of its output; the prediction's hidden layer is a
            quarter of it (EfficientZero's ratio).
    """

    def __init__(self, hidden_shape: tuple[int, ...], projection_size: int = 128):
        super().__init__()
        if projection_size < 4:
            raise ValueError(f"`projection_size` must be >= 4, got {projection_size}")
        in_size = int(math.prod(hidden_shape))
        p = int(projection_size)
        self.projection = nn.Sequential(
            nn.Linear(in_size, p), nn.BatchNorm1d(p), nn.ReLU(),
            nn.Linear(p, p), nn.BatchNorm1d(p), nn.ReLU(),
            nn.Linear(p, p), nn.BatchNorm1d(p),
        )
        self.prediction = nn.Sequential(nn.Linear(p, p // 4), nn.BatchNorm1d(p // 4), nn.ReLU(), nn.Linear(p // 4, p))

    def project(self, hidden: Tensor) -> Tensor:
        """``P(s)``: ``(B, *H) -> (B, projection_size)``."""
        return self.projection(hidden.reshape(hidden.shape[0], -1))

    def online(self, hidden: Tensor) -> Tensor:
        """``Q(P(s))``, the online branch."""
        return self.prediction(self.project(hidden))

    def loss(self, predicted_hidden: Tensor, target_hidden: Tensor) -> Tensor:
        """``l^c = -cos(Q(P(s^k)), sg[P(h(o_{t+k}))])`` per sample: ``(B, *H), (B, *H) -> (B,)``."""
        target = self.project(target_hidden).detach()
        return negative_cosine_similarity(self.online(predicted_hidden), target)


def negative_cosine_similarity(x: Tensor, y: Tensor) -> Tensor:
    """``-<x, y> / (|x| |y|)`` over the last dimension (each norm clamped at 1e-8, as ``F.normalize``): ``(B, P) ->
    (B,)``, in [-1, 1]."""
    return -(F.normalize(x.float(), dim=-1) * F.normalize(y.float(), dim=-1)).sum(-1)


def unroll_target_hidden(model: nn.Module, unroll_obs: Tensor) -> Tensor:
    """``h(o_{t+k})`` for ``k = 1..K`` without gradients: ``(B, K, *obs) -> (B, K, *H)`` in one batched call."""
    B, K = unroll_obs.shape[:2]
    with torch.no_grad():
        hidden = model.representation(unroll_obs.reshape(B * K, *unroll_obs.shape[2:]))
    return hidden.reshape(B, K, *hidden.shape[1:])
