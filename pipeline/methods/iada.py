"""Feature-space augmentation methods: ``isda``, ``iada`` (fixed ε) and ``meta_iada``.

All three minimise the closed-form loss of :mod:`pipeline.methods.losses` (method.md §2) with the
class covariance Σ of :mod:`pipeline.methods.covariance` and the ramp α_t = α·epoch/total_epochs over
the global epoch; they differ in the per-sample strategy ε:

- ``isda``: ε ≡ 0 (ISDA, Wang et al. 2019) [related];
- ``iada``: one fixed ε for every sample (an ablation without meta-learning) [choice];
- ``meta_iada``: ε_i = Ω(c_i), Ω meta-learned online on the clean meta set (method.md §5).

A step: forward (h, z) under θ; [meta_iada: meta step on Ω every ``meta_interval`` iterations,
see :mod:`pipeline.methods.meta_gradient`]; the IADA loss with the detached ε; SGD step on θ; then bookkeeping:
Σ is updated with the detached h of this batch *after* its use (as MetaSAug; ISDA itself merges
the batch into Σ first), [meta_iada: the characteristics' history and class losses are
recorded]. Σ is therefore the same constant in the pseudo and the real step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pipeline.methods.characteristics import CHARACTERISTICS, Characteristics, check_names
from pipeline.params.schema import ParamError, bounded
from pipeline.methods.covariance import ClassCovariance, CovarianceMode
from pipeline.methods.losses import Direction, alpha_at, class_balanced_weights, iada_loss
from pipeline.methods.forward_primals import ForwardPrimals
from pipeline.methods.meta_gradient import (MetaInputs, MetaScope, PseudoStep, PseudoUpdate, TrainForward, TrainLoss,
                                            meta_cross_entropy, meta_features, meta_step)
from pipeline.methods.base import Batch, Method, StepContext, TrainInfo, register, step_metrics
from pipeline.networks import FeatureClassifier
from pipeline.methods.perturbation import EpsilonSign, PerturbationNet


class ClassBalancedRule:
    """The cross-field rule of the class-balanced switches (``build`` calls ``validate``)."""

    def validate(self, where: str) -> None:
        if self.cb_epoch and not self.class_balanced:
            raise ParamError(f"{where}.cb_epoch = {self.cb_epoch} does nothing with {where}.class_balanced = false: "
                             "set class_balanced: true, or leave cb_epoch out")


@dataclass
class ISDAConfig(ClassBalancedRule):
    alpha: float = bounded(0.5, ge=0)  # α: strength of the semantic augmentation (ramped)
    covariance: CovarianceMode = "full"  # full Σ_c [A, A], or diagonal (for A > 512)
    class_balanced: bool = False  # weight L_i by w_{y_i} (effective number, see losses.py)
    cb_beta: float = bounded(0.9999, ge=0, lt=1)  # β_cb of the class-balanced weights
    # Global epoch (pretraining epochs count) from which the class-balanced weights apply; before
    # it every class weighs 1 (the deferred re-weighting of LDAM-DRW and of MetaSAug's code, whose
    # weights start with its meta phase at the first lr step). 0: from the first step.
    cb_epoch: int = bounded(0, ge=0, added=True)


@dataclass
class IADAConfig(ClassBalancedRule):
    alpha: float = bounded(0.5, ge=0)
    beta: float = bounded(1.0, ge=0)  # β: scale of the mean shift
    direction: Direction = "pairwise"  # pairwise: ε·||Δw_ij||; gradient: ε·Δw_ijᵀd_i
    epsilon: float = bounded(0.1, ge=-1, le=1)  # the fixed ε of every sample
    covariance: CovarianceMode = "full"
    class_balanced: bool = False
    cb_beta: float = bounded(0.9999, ge=0, lt=1)
    cb_epoch: int = bounded(0, ge=0, added=True)  # as ISDAConfig.cb_epoch


@dataclass
class MetaIADAConfig(ClassBalancedRule):
    alpha: float = bounded(0.5, ge=0)
    beta: float = bounded(1.0, ge=0)
    direction: Direction = "pairwise"
    covariance: CovarianceMode = "full"  # use diagonal for feature dimensions A > 512
    characteristics: list[str] = dataclasses.field(default_factory=lambda: list(CHARACTERISTICS))
    meta_scope: MetaScope = "full"  # pseudo-update the whole network, or only W, b
    meta_interval: int = bounded(1, ge=1)  # meta step every k iterations, Ω reused between
    # exact: the real step's ε from the updated Ω; shared [choice]: from Ω before its update, so the
    # real step's gradient is the pseudo step's and its backward pass is not repeated (full scope).
    real_step: Literal["exact", "shared"] = "exact"
    epsilon_sign: EpsilonSign = "both"  # both: (−1, 1); adversarial: (0, 1); anti: (−1, 0)
    pseudo_step: PseudoStep = "plain"  # plain SGD (MWN/MetaSAug) or the network optimizer's rule
    perturbation_lr: float = bounded(1e-3, gt=0)  # AdamW on Ω
    perturbation_weight_decay: float = bounded(1e-4, ge=0)  # decoupled (AdamW), see MetaIADA
    history_warmup: bool = True  # fill the characteristics' history with one no-grad pass first
    class_balanced: bool = False  # weight L_i by w_{y_i} in the pseudo and the real step
    cb_beta: float = bounded(0.9999, ge=0, lt=1)
    cb_epoch: int = bounded(0, ge=0, added=True)  # as ISDAConfig.cb_epoch

    def __post_init__(self) -> None:
        try:
            check_names(self.characteristics)
        except ParamError as err:
            raise ParamError(f"meta_iada.characteristics: {err}") from None  # build() prefixes the path
        # ε enters the loss only through β·ε_i·a_ij: with β = 0 the loss, θ' and L_meta do not
        # depend on Ω, and its meta gradient is exactly zero (tests/test_losses.py,
        # test_beta_zero_makes_the_loss_constant_in_epsilon).
        if self.beta == 0:
            raise ParamError("meta_iada.beta = 0 makes the meta gradient of the perturbation "
                             "network zero: use beta > 0 (the paper fixes beta = 1)")
        if self.real_step == "shared" and self.meta_scope != "full":
            raise ParamError("meta_iada.real_step = 'shared' reuses the full pseudo step's gradient: "
                             "use it with meta_scope: full")


class FeatureAugmentation(Method):
    """The step shared by the three methods; subclasses choose ε in :meth:`epsilon`."""

    def __init__(self, cfg: Any, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        self.class_covariance = ClassCovariance(info.num_classes, info.feature_dim, cfg.covariance,
                                                device=info.device)
        # w_c [C] of the class-balanced variant (None: off). A plain attribute, not a buffer: it is
        # a function of the config and the class counts, and checkpoints stay as they were.
        self.class_weights: torch.Tensor | None = None
        if cfg.class_balanced:
            self.class_weights = class_balanced_weights(info.class_counts, cfg.cb_beta).to(info.device)
        # (parameters, gradients, loss) of a real step that reuses the pseudo step's (see MetaIADA)
        self._shared: tuple[list[torch.Tensor], Sequence[torch.Tensor], torch.Tensor] | None = None

    def epsilon(self, batch: Batch, ctx: StepContext, features: torch.Tensor,
                logits: torch.Tensor, train_loss: TrainLoss) -> torch.Tensor | None:
        """ε [B] for the real step (no graph), or None for ε ≡ 0."""
        return None

    def record(self, batch: Batch, logits: torch.Tensor, epsilon: torch.Tensor | None) -> None:
        """Per-method bookkeeping after the real step."""

    def forward_context(self, ctx: StepContext) -> contextlib.AbstractContextManager:
        """Around the step's forward (Meta-IADA draws its meta batch here, see there)."""
        return contextlib.nullcontext()

    def current_covariance(self) -> torch.Tensor:
        """Σ of the loss: the running estimate (MetaSAug substitutes its meta-updated one)."""
        return self.class_covariance.covariance

    def update(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        net = self.network
        with self.forward_context(ctx):
            features = net.features(batch.x)  # h [B, A]
        logits = net.classifier(features)  # z [B, C]
        train_loss = partial(self._per_sample_loss, features=features, labels=batch.y,
                             alpha=alpha_at(self.cfg.alpha, ctx.epoch, ctx.total_epochs),
                             class_weights=self.class_weights if ctx.epoch >= self.cfg.cb_epoch else None)
        self._shared = None
        epsilon = self.epsilon(batch, ctx, features, logits, train_loss)
        self.optimizer.zero_grad(set_to_none=True)
        if self._shared is None:
            loss = train_loss(logits, net.classifier.weight, epsilon).mean()
            loss.backward()
        else:  # the pseudo step's gradient at the same θ and ε (real_step: shared)
            params, grads, loss = self._shared
            for p, g in zip(params, grads):
                p.grad = g
        self.optimizer.step()
        self.class_covariance.update(features.detach(), batch.y)
        self.record(batch, logits.detach(), epsilon)
        return step_metrics(loss, logits, batch.y)

    def _per_sample_loss(self, logits: torch.Tensor, weight: torch.Tensor,
                         epsilon: torch.Tensor | None, *, features: torch.Tensor, labels: torch.Tensor,
                         alpha: float, class_weights: torch.Tensor | None) -> torch.Tensor:
        """L_i [B] of :func:`~pipeline.methods.losses.iada_loss`; its batch mean is the training loss of
        the real step (:meth:`update`) and of the pseudo step (``train_loss`` in
        :func:`~pipeline.methods.meta_gradient.meta_step`, which takes the mean too).

        With ``class_weights`` w [C] (``class_balanced``, from global epoch ``cb_epoch`` on) it
        returns L_i·w_{y_i}·B/Σ_b w_{y_b} instead, so that the batch mean
        is the weighted mean Σ_i w_{y_i} L_i / Σ_i w_{y_i}: the normalisation of MetaSAug's
        ``F.cross_entropy(aug_y, labels, weight=per_cls_weights)``, used there in the pseudo and
        the real step alike [related]. The factor depends on the labels only (not on θ or Ω), so
        the pseudo step's gradient and the meta gradient are those of that weighted mean. The
        meta loss on the meta set stays plain CE."""
        beta, direction = getattr(self.cfg, "beta", 0.0), getattr(self.cfg, "direction", "pairwise")
        loss = iada_loss(logits, features, labels, weight, self.current_covariance(), epsilon=epsilon,
                         alpha=alpha, beta=beta, direction=direction)
        if class_weights is None:
            return loss
        w = class_weights[labels].to(loss.dtype)  # [B]
        return loss * (w * (len(w) / w.sum()))


@register
class ISDA(FeatureAugmentation):
    """ISDA: CE on z_ij + (α_t/2)·Δw_ijᵀ Σ_{y_i} Δw_ij (the IADA loss with ε ≡ 0)."""

    name = "isda"
    Config = ISDAConfig


@register
class IADA(FeatureAugmentation):
    """IADA with one fixed ε for all samples: z_ij + β·ε·a_ij + (α_t/2)·Δw_ijᵀ Σ_{y_i} Δw_ij."""

    name = "iada"
    Config = IADAConfig

    def epsilon(self, batch: Batch, ctx: StepContext, features: torch.Tensor,
                logits: torch.Tensor, train_loss: TrainLoss) -> torch.Tensor:
        return torch.full_like(batch.y, self.cfg.epsilon, dtype=logits.dtype)


class MetaLearned(FeatureAugmentation):
    """The step of the feature-augmentation methods with a meta step (``meta_iada``, ``metasaug``):
    every ``meta_interval`` iterations a meta batch is drawn around the train batch's forward
    (:meth:`forward_context`) for the meta step a subclass runs in :meth:`epsilon`."""

    def __init__(self, cfg: Any, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        self.primals = ForwardPrimals(net)
        # L_meta at θ' of a full-scope meta step (run.compile may compile it; None: head scope)
        self.meta_loss = meta_cross_entropy if cfg.meta_scope == "full" else None
        self._meta: tuple[Batch, torch.Tensor | None] | None = None  # this step's meta batch, h_meta

    def meta_step_due(self, ctx: StepContext) -> bool:
        return ctx.step % self.cfg.meta_interval == 0

    def forward_context(self, ctx: StepContext) -> contextlib.AbstractContextManager:
        """On a step with a meta step, the meta batch is drawn before the train batch's forward;
        ``full`` records that forward's primals, ``head`` computes the meta batch's features
        first: they depend only on θ, which the forward does not change, and the train batch's
        activations then stay in the CPU caches for its backward (the saving is in
        docs/benchmarks.md)."""
        self._meta = None
        if not self.meta_step_due(ctx):
            return contextlib.nullcontext()
        meta = ctx.meta_batch()
        if self.cfg.meta_scope == "head":
            self._meta = (meta, meta_features(self.network, meta.x))
            return contextlib.nullcontext()
        self._meta = (meta, None)
        return self.primals.record()



@register
class MetaIADA(MetaLearned):
    """Meta-IADA: ε_i = Ω(c_i) with Ω meta-learned online on the meta set (method.md §5).

    Buffers besides Σ: Ω (``perturbation_net``), the characteristics' history, the last ε of
    every training sample (``last_epsilon``, NaN before the first visit) and this epoch's ε sums.
    The Adam state of Ω is in :meth:`extra_state_dict`. Ω runs in training mode (BatchNorm with
    the batch's statistics) in the meta step and again, updated, for the real step's ε; its
    running statistics (used only when Ω is applied in eval mode, for inspection) follow both.
    """

    name = "meta_iada"
    Config = MetaIADAConfig

    def __init__(self, cfg: MetaIADAConfig, net: FeatureClassifier,
                 optimizer: torch.optim.Optimizer, info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        if cfg.pseudo_step == "optimizer" and not isinstance(optimizer, torch.optim.SGD):
            raise ParamError("methods.meta_iada.pseudo_step = 'optimizer' needs an SGD network "
                             f"optimizer, got {type(optimizer).__name__}: use pseudo_step: plain")
        self.characteristics = Characteristics(cfg.characteristics, info.class_counts,
                                               info.num_train, info.device)
        self.perturbation_net = PerturbationNet(self.characteristics.num_inputs, cfg.epsilon_sign,
                                                input_names=cfg.characteristics).to(info.device)
        # Decoupled weight decay (AdamW, method.md §4): the meta gradient reaching Ω scales with
        # the pseudo step's lr η, so an L2 term added to it (Adam's ``weight_decay``) outweighs
        # it once η is small, and Adam's normalised step then shrinks Ω towards a constant.
        self.perturbation_optimizer = torch.optim.AdamW(
            self.perturbation_net.parameters(), lr=cfg.perturbation_lr,
            weight_decay=cfg.perturbation_weight_decay)
        c, dev = info.num_classes, info.device
        self.register_buffer("last_epsilon", torch.full((info.num_train,), math.nan, device=dev))
        # This epoch's sums: [count, Σε, Σε², #(ε > 0), Σ L_meta, #meta steps, Σ ||∇_Ω L_meta||].
        self.register_buffer("epoch_sums", torch.zeros(7, dtype=torch.float64, device=dev))
        self.register_buffer("class_eps_sum", torch.zeros(c, dtype=torch.float64, device=dev))
        self.register_buffer("class_eps_count", torch.zeros(c, dtype=torch.float64, device=dev))

    def epsilon(self, batch: Batch, ctx: StepContext, features: torch.Tensor,
                logits: torch.Tensor, train_loss: TrainLoss) -> torch.Tensor:
        net = self.network
        c = self.characteristics.compute(logits, features, batch.y, batch.index,
                                         net.classifier.weight)  # [B, K]
        shared: list[torch.Tensor] = []
        if self._meta is not None:  # drawn by forward_context
            (meta, meta_h), self._meta = self._meta, None

            def keep(params: list[torch.Tensor], grads: Sequence[torch.Tensor], eps: torch.Tensor,
                     loss: torch.Tensor) -> None:
                self._shared = (params, grads, loss)
                shared.append(eps)

            meta_loss = meta_step(
                net, self.perturbation_net, self.perturbation_optimizer, train_loss,
                batch=TrainForward(batch.x, features, logits, c, self.primals),
                meta=MetaInputs(meta.x, meta.y, meta_h, self.meta_loss),
                pseudo=PseudoUpdate(ctx.lr, self.cfg.meta_scope,
                                    self.optimizer if self.cfg.pseudo_step == "optimizer" else None,
                                    on_pseudo=keep if self.cfg.real_step == "shared" else None))
            self.epoch_sums[4] += meta_loss
            self.epoch_sums[5] += 1
            self.epoch_sums[6] += torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.perturbation_net.parameters()]))
        if shared:  # ε of Ω before its update, the one the reused gradient was taken with
            return shared[0]
        with torch.no_grad():
            return self.perturbation_net(c)

    @torch.no_grad()
    def record(self, batch: Batch, logits: torch.Tensor, epsilon: torch.Tensor | None) -> None:
        self.characteristics.record(logits, batch.y, batch.index)
        eps = epsilon.double()  # [B]
        self.last_epsilon[batch.index] = epsilon.float()
        self.epoch_sums[0] += len(eps)
        self.epoch_sums[1] += eps.sum()
        self.epoch_sums[2] += eps.square().sum()
        self.epoch_sums[3] += (eps > 0).sum()
        self.class_eps_sum.index_add_(0, batch.y, eps)
        self.class_eps_count.index_add_(0, batch.y, torch.ones_like(eps))

    @torch.no_grad()
    def start(self, batches: Iterable[Batch]) -> None:
        """History warm-up (``history_warmup``): one no-grad pass over the training set fills
        the per-sample history (characteristics 7-12) and the class-average loss (14), which
        would otherwise be constant for the whole first epoch. The network runs in training mode
        (BatchNorm with batch statistics, as in the real steps, on augmented batches) and its
        running statistics are restored afterwards, so θ and its buffers are unchanged."""
        if not self.cfg.history_warmup:
            return
        net = self.network
        buffers = {k: v.clone() for k, v in net.named_buffers()}
        net.train()
        for batch in batches:
            self.characteristics.record(net(batch.x), batch.y, batch.index)
        self.characteristics.end_epoch()
        for k, v in net.named_buffers():
            v.copy_(buffers[k])

    def epoch_metrics(self) -> dict[str, float]:
        """ε statistics of the epoch (``eps_mean``, ``eps_std``, ``eps_adv_share`` = share of
        ε > 0, ``eps_class_mean/<c>`` per visited class), the mean ``meta_loss``, Ω's norm
        ``omega_norm``, the mean norm of its meta gradient ``omega_meta_grad_norm`` and its ratio
        to the L2 decay term λ||Ω|| (``omega_grad_over_decay``: below 1, coupled decay would
        dominate the meta signal); then the
        epoch's sums restart and the characteristics' class-average loss rolls over. Call once
        at the end of every epoch."""
        n, s, sq, adv, meta_sum, meta_n, grad_sum = self.epoch_sums.tolist()
        metrics: dict[str, float] = {}
        if n:
            mean = s / n
            metrics.update(eps_mean=mean, eps_std=math.sqrt(max(sq / n - mean * mean, 0.0)),
                           eps_adv_share=adv / n)
            for cls in torch.nonzero(self.class_eps_count).flatten().tolist():
                metrics[f"eps_class_mean/{cls}"] = (self.class_eps_sum[cls]
                                                    / self.class_eps_count[cls]).item()
        omega_norm = torch.linalg.vector_norm(
            torch.stack([p.norm() for p in self.perturbation_net.parameters()])).item()
        metrics["omega_norm"] = omega_norm
        if meta_n:
            metrics["meta_loss"] = meta_sum / meta_n
            metrics["omega_meta_grad_norm"] = grad_sum / meta_n
            decay = self.cfg.perturbation_weight_decay * omega_norm  # ||λΩ||, the L2 term's gradient
            if decay > 0:
                metrics["omega_grad_over_decay"] = grad_sum / meta_n / decay
        self.epoch_sums.zero_()
        self.class_eps_sum.zero_()
        self.class_eps_count.zero_()
        self.characteristics.end_epoch()
        return metrics

    def sample_scores(self) -> dict[str, np.ndarray]:
        return {"epsilon": self.last_epsilon.cpu().numpy().astype(np.float32)}

    def artifacts(self) -> dict[str, nn.Module]:
        return {"perturbation_net": self.perturbation_net}

    def extra_state_dict(self) -> dict[str, Any]:
        return {"perturbation_optimizer": self.perturbation_optimizer.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.perturbation_optimizer.load_state_dict(state["perturbation_optimizer"])
