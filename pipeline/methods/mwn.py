"""Meta-Weight-Net (Shu et al., 2019) through this project's meta step.

A weighting net V (1-100-1 MLP, ReLU, sigmoid output) maps each training sample's loss
ℓ_i = CE(z_i, y_i) to a weight w_i = V(ℓ_i) ∈ (0, 1). Per step, as Meta-IADA's (method.md §5
with V in Ω's place): pseudo step θ' = θ − η ∇_θ L(θ, V), meta loss CE(f_θ'(x_meta), y_meta) on
the clean meta batch, Adam step on V, real step on L with the weights of the updated V (no
graph). L = Σ_i w_i ℓ_i / Σ_j w_j (``normalise``, MWN's class-imbalance code) or mean_i w_i ℓ_i
(its noisy-label code). The meta gradient is :func:`pipeline.methods.meta_gradient.meta_gradient`'s
(exact second order, ``meta_scope`` full or head, ``meta_interval``); V's input is the
detached loss, as in MWN (``cost_v = cost.reshape(-1, 1)`` of the forward under θ).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.methods.base import Batch, Method, StepContext, TrainInfo, register
from pipeline.methods.meta_gradient import (ForwardPrimals, MetaInputs, MetaScope, PseudoUpdate, TrainForward,
                                            meta_features, meta_step)
from pipeline.networks import FeatureClassifier
from pipeline.params.schema import bounded


class WeightingNet(nn.Module):
    """V: ℓ [B, 1] -> w [B] = sigmoid(W2 relu(W1 ℓ + b1) + b2), MWN's ``VNet(1, 100, 1)``."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(loss)).squeeze(1)


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  normalise: bool) -> torch.Tensor:
    """Per-sample terms [B] whose mean is Σ_i w_i ℓ_i / Σ_j w_j (``normalise``) or mean_i w_i ℓ_i."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    if normalise:
        return len(ce) * weights * ce / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
    return weights * ce


@dataclass
class MWNConfig:
    # True: MWN's class-imbalance code (w / Σw); false: its noisy-label code (mean of w·ℓ).
    normalise: bool = True
    hidden: int = bounded(100, ge=1)  # V's hidden units (MWN: VNet(1, 100, 1))
    lr: float = bounded(1e-3, gt=0)  # Adam on V (MWN: 1e-3)
    weight_decay: float = bounded(1e-4, ge=0)  # on V (MWN: 1e-4)
    meta_scope: MetaScope = "full"  # pseudo-update the whole network (MWN), or only W, b
    meta_interval: int = bounded(1, ge=1)  # meta step every k iterations, V reused between


@register
class MetaWeightNet(Method):
    """Meta-Weight-Net: per-sample weights w_i = V(ℓ_i) meta-learned on the clean meta set."""

    name = "mwn"
    Config = MWNConfig

    def __init__(self, cfg: MWNConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        self.weighting_net = WeightingNet(cfg.hidden).to(info.device)
        self.weighting_optimizer = torch.optim.Adam(self.weighting_net.parameters(), lr=cfg.lr,
                                                    weight_decay=cfg.weight_decay)
        self.primals = ForwardPrimals(net)
        # This epoch's sums: [#samples, Σ w, Σ L_meta, #meta steps].
        self.register_buffer("epoch_sums", torch.zeros(4, dtype=torch.float64, device=info.device))
        self.register_buffer("last_weight", torch.full((info.num_train,), float("nan"), device=info.device))

    def update(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        net, cfg = self.network, self.cfg
        due = ctx.step % cfg.meta_interval == 0
        meta, meta_h = (ctx.meta_batch(), None) if due else (None, None)
        if meta is not None and cfg.meta_scope == "head":
            meta_h = meta_features(net, meta.x)
        with self.primals.record() if due and cfg.meta_scope == "full" else contextlib.nullcontext():
            features = net.features(batch.x)
        logits = net.classifier(features)
        cost = F.cross_entropy(logits.detach(), batch.y, reduction="none")[:, None]  # V's input [B, 1]

        def train_loss(z: torch.Tensor, weight: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return weighted_loss(z, batch.y, w, cfg.normalise)

        if meta is not None:
            primals = self.primals if cfg.meta_scope == "full" else None
            meta_loss = meta_step(net, self.weighting_net, self.weighting_optimizer, train_loss,
                                  batch=TrainForward(batch.x, features, logits, cost, primals),
                                  meta=MetaInputs(meta.x, meta.y, meta_h), pseudo=PseudoUpdate(ctx.lr, cfg.meta_scope))
            self.epoch_sums[2] += meta_loss
            self.epoch_sums[3] += 1
        with torch.no_grad():
            w = self.weighting_net(cost)
        loss = train_loss(logits, net.classifier.weight, w).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.last_weight[batch.index] = w.float()
            self.epoch_sums[0] += len(w)
            self.epoch_sums[1] += w.double().sum()
        acc = (logits.argmax(1) == batch.y).float().mean()
        return {"loss": loss.item(), "acc": acc.item()}

    def epoch_metrics(self) -> dict[str, float]:
        """The mean weight ``mwn_weight_mean`` and the mean ``meta_loss`` of the epoch."""
        n, w_sum, meta_sum, meta_n = self.epoch_sums.tolist()
        self.epoch_sums.zero_()
        metrics = {"mwn_weight_mean": w_sum / n} if n else {}
        if meta_n:
            metrics["meta_loss"] = meta_sum / meta_n
        return metrics

    def sample_scores(self) -> dict[str, np.ndarray]:
        return {"weight": self.last_weight.cpu().numpy().astype(np.float32)}

    def extra_state_dict(self) -> dict[str, Any]:
        return {"weighting_optimizer": self.weighting_optimizer.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.weighting_optimizer.load_state_dict(state["weighting_optimizer"])
