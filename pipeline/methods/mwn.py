"""Meta-Weight-Net (Shu et al., 2019) through this project's meta step.

A weighting net V (1-100-1 MLP, ReLU, sigmoid output) maps each training sample's loss
ℓ_i = CE(z_i, y_i) to a weight w_i = V(ℓ_i) ∈ (0, 1). Per step, as Meta-IADA's (method.md §5
with V in Ω's place): pseudo step θ' = θ − η ∇_θ L(θ, V), meta loss CE(f_θ'(x_meta), y_meta) on
the clean meta batch, a step of V's optimizer, real step on L with the weights of the updated V
(no graph). L = Σ_i w_i ℓ_i / Σ_j w_j (``normalise``, MWN's class-imbalance code) or
mean_i w_i ℓ_i (its noisy-label code). The meta gradient is
:func:`pipeline.methods.meta_gradient.meta_gradient`'s (exact second order, ``meta_scope`` full or
head, ``meta_interval``).

``recipe`` picks V's optimizer and what V sees in the pseudo step, after MWN's two codes:

- ``noisy`` (xjtushujun/meta-weight-net, MW-Net.py): Adam on V; V's input is the detached loss
  (``vnet(cost_v.data)``), so ∇_θ L = Σ_i w_i ∇_θ ℓ_i / (Σ_j w_j or B) with the w_i constant;
- ``imbalance`` (xjtushujun/Meta-weight-net_class-imbalance, meta-weight-net-class-imbalance.py):
  SGD with momentum 0.9 and Nesterov on V; V's input is the loss with its graph
  (``vnet(cost_v)``), so the pseudo step's gradient also flows through w_i = V(ℓ_i(θ)) and
  ∇_V L_meta gains the terms through V's input (V' ·∇_θ ℓ_i). The real step uses the weights
  without graph in both codes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.methods.base import Batch, Method, StepContext, TrainInfo, register, step_metrics
from pipeline.methods.forward_primals import ForwardPrimals
from pipeline.methods.meta_gradient import MetaInputs, MetaScope, PseudoUpdate, TrainForward, meta_features, meta_step
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


MWNRecipe = Literal["noisy", "imbalance"]

# V's SGD in the class-imbalance code (meta-weight-net-class-imbalance.py:112-114): momentum and
# Nesterov from its --momentum 0.9 and --nesterov True (lines 38-39); lr 1e-5 and weight decay
# 5e-4 (--weight-decay, line 40) are ``lr`` and ``weight_decay`` here.
IMBALANCE_MOMENTUM = 0.9


@dataclass
class MWNConfig:
    # True: MWN's class-imbalance code (w / Σw, meta-weight-net-class-imbalance.py:161-168 and
    # 195-202); false: its noisy-label code (mean of w·ℓ, MW-Net.py:207 and 237).
    normalise: bool = True
    hidden: int = bounded(100, ge=1)  # V's hidden units (MWN: VNet(1, 100, 1))
    # V's optimizer's lr and weight decay: noisy (Adam) 1e-3 and 1e-4 (MW-Net.py:274-275);
    # imbalance (SGD) 1e-5 and 5e-4 (meta-weight-net-class-imbalance.py:112-114, line 40).
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(1e-4, ge=0)
    meta_scope: MetaScope = "full"  # pseudo-update the whole network (MWN), or only W, b
    meta_interval: int = bounded(1, ge=1)  # meta step every k iterations, V reused between
    # V's optimizer and input after MWN's two codes (module docstring): noisy = Adam, detached
    # loss (MW-Net.py:206, 274-275); imbalance = SGD momentum 0.9 Nesterov, the loss with its
    # graph (meta-weight-net-class-imbalance.py:112-114, 155-159). The reference runs used noisy.
    recipe: MWNRecipe = bounded("noisy", added=True)


def weighting_optimizer(weighting_net: WeightingNet, cfg: MWNConfig) -> torch.optim.Optimizer:
    """V's optimizer of ``cfg.recipe``: Adam (noisy) or SGD with momentum 0.9 and Nesterov
    (imbalance), with ``cfg.lr`` and L2 weight decay ``cfg.weight_decay``."""
    params = weighting_net.parameters()
    if cfg.recipe == "imbalance":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=IMBALANCE_MOMENTUM, nesterov=True,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register
class MetaWeightNet(Method):
    """Meta-Weight-Net: per-sample weights w_i = V(ℓ_i) meta-learned on the clean meta set."""

    name = "mwn"
    Config = MWNConfig

    def __init__(self, cfg: MWNConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        self.weighting_net = WeightingNet(cfg.hidden).to(info.device)
        self.weighting_optimizer = weighting_optimizer(self.weighting_net, cfg)
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

        def pseudo_loss(z: torch.Tensor, weight: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            """The pseudo step's per-sample terms; w = V(detached ℓ) from the meta step, or, with
            the imbalance recipe, V(ℓ(z)) recomputed here with its graph (the same values)."""
            if cfg.recipe == "imbalance":
                w = self.weighting_net(F.cross_entropy(z, batch.y, reduction="none")[:, None])
            return weighted_loss(z, batch.y, w, cfg.normalise)

        if meta is not None:
            primals = self.primals if cfg.meta_scope == "full" else None
            meta_loss = meta_step(net, self.weighting_net, self.weighting_optimizer, pseudo_loss,
                                  batch=TrainForward(batch.x, features, logits, cost, primals),
                                  meta=MetaInputs(meta.x, meta.y, meta_h), pseudo=PseudoUpdate(ctx.lr, cfg.meta_scope))
            self.epoch_sums[2] += meta_loss
            self.epoch_sums[3] += 1
        with torch.no_grad():
            w = self.weighting_net(cost)
        loss = weighted_loss(logits, batch.y, w, cfg.normalise).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.last_weight[batch.index] = w.float()
            self.epoch_sums[0] += len(w)
            self.epoch_sums[1] += w.double().sum()
        return step_metrics(loss, logits, batch.y)

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
