"""MetaSAug (Li et al., CVPR 2021) through this project's meta step.

The ISDA loss (:mod:`pipeline.methods.iada`, ε ≡ 0) with MetaSAug's class-balanced weights
(effective number, β = 0.9999, in the pseudo and the real step), whose class covariance Σ takes
one meta-gradient step per iteration: with Σ the running estimate (a leaf), the pseudo step
θ' = θ − η ∇_θ L_ISDA(θ, Σ), the meta loss CE(f_θ'(x_meta), y_meta) on the clean meta batch, and
Σ' = Σ − η_Σ ∇_Σ L_meta (a plain gradient step, MetaSAug's ``new_cv = cv_var - meta_lr * grad_cv``);
the real step uses Σ'. The meta gradient is :func:`pipeline.methods.meta_gradient.meta_gradient`'s
(exact second order, full or head scope) with Σ in Ω's place.

Is Σ' kept? MetaSAug's code does not write it back: the estimator goes on from its own running
estimate, updated with the batch's features, and the next iteration starts from that. Here
``keep_covariance: false`` does the same; ``true`` [choice] writes Σ' into the estimate before
the batch's features are merged in.

``loss``: ``ce`` is the CE variant of the paper (whose training code was not released); ``ldam``
is the variant of the released CIFAR training code (BIT-DA/MetaSAug, MetaSAug_LDAM_train.py with
loss.py's ``LDAM_meta``): LDAM's margin on the true class's logit before the ISDA terms,

    L_i = −log( e^{z_iy − m_y} / (e^{z_iy − m_y} + Σ_{j≠y} e^{z_ij + (α_t/2)·Δw_ijᵀ Σ_y Δw_ij}) ),

m_c ∝ n_c^{−1/4} with max_c m_c = 0.5 (:func:`~pipeline.methods.longtail.ldam_margins`), in the
pseudo and the real step. As released it acts on the plain linear logits z = W h + b: the
network keeps its linear head (resnet.py:258 ``MetaLinear``), and LDAM's scale s = 30 is stored
(loss.py:73-74) but never applied (lines 76-113). The released script's other settings (set
in params, not by this switch): λ = 0.75 (scripts/MetaSAug_LDAM_train.sh, ``--lam 0.75``; its parser's default is
0.25, MetaSAug_LDAM_train.py:43), plain CE without weights until epoch 160 and the
class-balanced weights (β = 0.9999) from then on (lines 110-115, 135-139: ``cb_epoch`` 160),
lr 0.1 ×0.01 at 160 and 180 (line 331), meta_lr 0.1 for Σ (line 45), batch 100 (line 20), 10
meta images per class carved out of the training set (line 23).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from pipeline.methods.base import Batch, StepContext, TrainInfo, register
from pipeline.methods.covariance import CovarianceMode
from pipeline.methods.iada import ClassBalancedRule, MetaLearned
from pipeline.methods.longtail import ldam_margins, margin_logits
from pipeline.methods.meta_gradient import MetaInputs, MetaScope, PseudoUpdate, TrainForward, TrainLoss, meta_step
from pipeline.networks import FeatureClassifier
from pipeline.params.schema import bounded


MetaSAugLoss = Literal["ce", "ldam"]

# LDAM's largest margin in the released code: LDAM_meta(..., max_m=0.5, s=30)
# (MetaSAug_LDAM_train.py:128-129).
LDAM_MAX_M = 0.5


class CovarianceLeaf(nn.Module):
    """Σ as the parameter the meta step differentiates; its output (ε ≡ 0 [B]) does not enter
    the ISDA loss, which reads Σ itself."""

    def __init__(self, covariance: torch.Tensor) -> None:
        super().__init__()
        self.sigma = nn.Parameter(covariance.detach().clone())

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(c), dtype=self.sigma.dtype, device=self.sigma.device)


@dataclass
class MetaSAugConfig(ClassBalancedRule):
    alpha: float = bounded(0.25, ge=0)  # λ of the ramp λ·epoch/epochs (MetaSAug: --lam 0.25)
    covariance: CovarianceMode = "full"
    class_balanced: bool = True  # MetaSAug: per_cls_weights (effective number) in both steps
    cb_beta: float = bounded(0.9999, ge=0, lt=1)  # MetaSAug: beta = 0.9999
    cb_epoch: int = bounded(0, ge=0, added=True)  # as ISDAConfig.cb_epoch (MetaSAug: its meta phase, 160)
    meta_lr: float = bounded(0.1, gt=0)  # η_Σ of Σ' = Σ − η_Σ ∇_Σ L_meta (MetaSAug: --meta_lr 0.1)
    keep_covariance: bool = False  # [choice] write Σ' back into the estimate (MetaSAug's code: no)
    meta_scope: MetaScope = "full"  # pseudo-update the whole network (MetaSAug), or only W, b
    meta_interval: int = bounded(1, ge=1)
    # ce: the paper's CE variant (what the reference runs did); ldam: the released CIFAR code's
    # LDAM variant (module docstring; MetaSAug_LDAM_train.py:128-130, loss.py:76-113).
    loss: MetaSAugLoss = bounded("ce", added=True)


@register
class MetaSAug(MetaLearned):
    """MetaSAug: ISDA with a meta-learned class covariance (see the module docstring)."""

    name = "metasaug"
    Config = MetaSAugConfig

    def __init__(self, cfg: MetaSAugConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        # Σ of this step's loss (None: the estimate); in a list, so that nn.Module does not
        # register the meta step's Σ parameter as one of the method's.
        self._covariance: list[torch.Tensor | None] = [None]
        # This epoch's sums: [Σ L_meta, #meta steps, Σ ||Σ' − Σ||].
        self.register_buffer("epoch_sums", torch.zeros(3, dtype=torch.float64, device=info.device))
        # LDAM's margins m [C] (loss: ldam; None: ce). A plain attribute, not a buffer: a function
        # of the config and the class counts.
        self.margins = ldam_margins(info.class_counts, LDAM_MAX_M).to(info.device) if cfg.loss == "ldam" else None

    def _per_sample_loss(self, logits: torch.Tensor, weight: torch.Tensor, epsilon: torch.Tensor | None, *,
                         labels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The ISDA loss of :meth:`FeatureAugmentation._per_sample_loss`, with ``loss: ldam`` on the
        logits z_ij − m_{y_i}·[j = y_i] (:func:`~pipeline.methods.longtail.margin_logits`)."""
        if self.margins is not None:
            logits = margin_logits(logits, labels, self.margins)
        return super()._per_sample_loss(logits, weight, epsilon, labels=labels, **kwargs)

    def current_covariance(self) -> torch.Tensor:
        return self.class_covariance.covariance if self._covariance[0] is None else self._covariance[0]

    def epsilon(self, batch: Batch, ctx: StepContext, features: torch.Tensor,
                logits: torch.Tensor, train_loss: TrainLoss) -> None:
        """The covariance meta step (on a step that has one); ε ≡ 0."""
        self._covariance[0] = None
        if self._meta is None:
            return None
        (meta, meta_h), self._meta = self._meta, None
        leaf = CovarianceLeaf(self.class_covariance.covariance)
        self._covariance[0] = leaf.sigma  # the pseudo step's and the meta gradient's Σ
        primals = self.primals if self.cfg.meta_scope == "full" else None
        forward = TrainForward(batch.x, features, logits, features.new_zeros(len(batch.y), 1), primals)
        meta_loss = meta_step(self.network, leaf, torch.optim.SGD(leaf.parameters(), lr=self.cfg.meta_lr), train_loss,
                              batch=forward, meta=MetaInputs(meta.x, meta.y, meta_h, self.meta_loss),
                              pseudo=PseudoUpdate(ctx.lr, self.cfg.meta_scope))
        updated = leaf.sigma.detach()
        self.epoch_sums[0] += meta_loss
        self.epoch_sums[1] += 1
        self.epoch_sums[2] += torch.linalg.vector_norm(updated - self.class_covariance.covariance)
        if self.cfg.keep_covariance:
            self.class_covariance.cov.copy_(updated)
        self._covariance[0] = updated  # Σ' for the real step
        return None

    def record(self, batch: Batch, logits: torch.Tensor, epsilon: torch.Tensor | None) -> None:
        self._covariance[0] = None

    def epoch_metrics(self) -> dict[str, float]:
        """The mean ``meta_loss`` and the mean size ``covariance_step`` = ||Σ' − Σ|| of the meta steps."""
        meta_sum, meta_n, step_sum = self.epoch_sums.tolist()
        self.epoch_sums.zero_()
        return {"meta_loss": meta_sum / meta_n, "covariance_step": step_sum / meta_n} if meta_n else {}
