"""Long-tail baselines of the peers (scenarios.md, reference numbers): ``focal``, ``cb_ce``,
``cb_focal``, ``ldam_drw`` and ``balanced_softmax``.

Notation: logits z [B, C], labels y [B], p = softmax(z), training class counts n_c, C classes, B
the batch size. Defaults are the papers' CIFAR-LT recipes; where a paper and its code differ the
code (the published numbers) wins and the comment says so.

Normalisation of the weighted means (they differ between the peers, each follows its own code):

- ``cb_ce`` and ``cb_focal``: Σ_i w_{y_i} L_i / B. Cui et al.'s ``src/cifar_main.py`` passes
  w_{y_i} as ``weights=`` to ``tf.losses.softmax_cross_entropy`` (reduction
  SUM_BY_NONZERO_WEIGHTS: divided by the number of samples, every w_c > 0) and divides its focal
  sum by Σ_i 1 = B.
- ``ldam_drw``: Σ_i w_{y_i} L_i / Σ_i w_{y_i}, LDAM-DRW's ``F.cross_entropy(..., weight=w)``
  (``losses.py``, ``LDAMLoss``), as the project's own class-balanced variant (``iada.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.params.schema import bounded
from pipeline.methods.losses import class_balanced_weights
from pipeline.methods.base import (Batch, LogitAdjustment, LogitAdjustmentConfig, Method, PerSampleLoss,
                                   StepContext, TrainInfo, register)
from pipeline.networks import FeatureClassifier


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss (Lin et al., 2017), softmax form: FL_i = −(1 − p_iy)^γ · log p_iy [B].

    γ = 0 is cross-entropy. 1 − p_y is computed as −expm1(log p_y) (no cancellation for confident
    samples) and floored at the smallest normal float, so that for 0 < γ < 1 the factor's gradient
    stays finite when p_y rounds to 1.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)  # log p_y [B]
    rest = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)  # 1 − p_y
    return -rest.pow(gamma) * log_p


@dataclass
class FocalConfig:
    # γ = 1: the CIFAR-LT recipe of Cui et al. (class-balanced-loss, cifar_im_trainval_cb.sh:
    # GAMMA=1.0) and of LDAM-DRW (cifar_train.py: FocalLoss(gamma=1)); the focal paper's γ = 2 is
    # its detection setting.
    gamma: float = bounded(1.0, ge=0)


@register
class Focal(PerSampleLoss):
    """Focal loss (Lin et al., 2017): L = mean_i −(1 − p_iy)^γ log p_iy."""

    name = "focal"
    Config = FocalConfig

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, labels, self.cfg.gamma)


@dataclass
class ClassBalancedConfig:
    # β = 0.9999: Cui et al.'s CIFAR-LT setting (cifar_im_trainval_cb.sh: BETA=0.9999), also
    # LDAM-DRW's 'Reweight' and DRW rules.
    beta: float = bounded(0.9999, ge=0, lt=1)


@dataclass
class ClassBalancedFocalConfig:
    beta: float = bounded(0.9999, ge=0, lt=1)  # Cui et al.: BETA=0.9999 (as cb_ce)
    gamma: float = bounded(1.0, ge=0)  # Cui et al.: GAMMA=1.0 (cifar_im_trainval_cb.sh)


class ClassBalanced(PerSampleLoss):
    """Class-balanced loss (Cui et al., 2019): L = Σ_i w_{y_i} ℓ_i / B with
    w_c = (1 − β)/(1 − β^{n_c}) rescaled to Σ_c w_c = C (:func:`~pipeline.losses.class_balanced_weights`)
    and ℓ_i the per-sample loss of the subclass. Divided by B, not Σ_i w_{y_i}: Cui et al.'s code
    (see the module docstring)."""

    def __init__(self, cfg: ClassBalancedConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        # A plain attribute, not a buffer: a function of the config and the class counts.
        self.class_weights = class_balanced_weights(info.class_counts, cfg.beta).to(info.device)  # w [C]

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_weights[labels]  # w_{y_i} [B]


@register
class ClassBalancedCE(ClassBalanced):
    """Class-balanced softmax cross-entropy: L = Σ_i w_{y_i} (−log p_iy) / B."""

    name = "cb_ce"
    Config = ClassBalancedConfig

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")


@register
class ClassBalancedFocal(ClassBalanced):
    """Class-balanced focal loss: L = Σ_i w_{y_i} FL_i / B, FL_i = −(1 − p_iy)^γ log p_iy.

    [choice] The softmax focal loss, as in LDAM-DRW's and SubpopBench's focal baselines; Cui et
    al.'s CB focal is the sigmoid (one-vs-all) focal loss, which needs a sigmoid-trained head."""

    name = "cb_focal"
    Config = ClassBalancedFocalConfig

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, labels, self.cfg.gamma)


def ldam_margins(counts: torch.Tensor, max_m: float) -> torch.Tensor:
    """LDAM's class margins (Cao et al., 2019): m_c ∝ n_c^{−1/4}, scaled so that max_c m_c = max_m.

    float64 [C] on ``counts``' device; a class without training samples counts as n_c = 1 (its
    margin is never used, since no label is that class).
    """
    raw = counts.to(torch.float64).clamp_min(1).pow(-0.25)
    return raw * (max_m / raw.max())


def margin_logits(logits: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """LDAM's margin on the true class: z_ij − m_{y_i}·[j = y_i] [B, C] for logits z [B, C],
    labels y [B] and class margins m [C]."""
    m_y = margins.to(logits.dtype)[labels]  # [B]
    return logits - F.one_hot(labels, logits.shape[1]).to(logits.dtype) * m_y[:, None]


def ldam_loss(cos: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor, s: float,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """LDAM loss (Cao et al., 2019): CE on s·(cos θ_ij − m_{y_i}·[j = y_i]) (:func:`margin_logits`).

    cos [B, C], labels y [B], margins m [C], scale s; ``weight`` [C] (None: plain mean) gives the
    weighted mean Σ_i w_{y_i} L_i / Σ_i w_{y_i} of ``F.cross_entropy(weight=w)``, as LDAM-DRW.
    """
    adjusted = margin_logits(cos, labels, margins)
    return F.cross_entropy(s * adjusted, labels, weight=None if weight is None else weight.to(cos.dtype))


@dataclass
class LDAMDRWConfig:
    max_m: float = bounded(0.5, gt=0)  # largest margin; LDAM-DRW cifar_train.py: LDAMLoss(max_m=0.5)
    s: float = bounded(30.0, gt=0)  # logit scale; cifar_train.py: LDAMLoss(s=30)
    # Global epoch (pretraining epochs count) from which DRW re-weights: LDAM-DRW's first lr step
    # (cifar_train.py: idx = epoch // 160 of 200 epochs, lr x0.01 from 160). None (the default,
    # empty in params.yaml): derived from the experiment's schedule by :meth:`for_schedule`.
    drw_epoch: int | None = bounded(None, ge=0)
    drw_beta: float = bounded(0.9999, ge=0, lt=1)  # cifar_train.py: betas = [0, 0.9999]

    def for_schedule(self, milestones: list[int]) -> LDAMDRWConfig:
        """This config with ``drw_epoch`` resolved: as set, else the first lr milestone
        ``milestones[0]``; without milestones the lr never steps and there is no deferred phase, so
        0 (class-balanced from the first epoch of the method: LDAM with re-weighting throughout)."""
        if self.drw_epoch is not None:
            return self
        return dataclasses.replace(self, drw_epoch=milestones[0] if milestones else 0)


@register
class LDAMDRW(Method):
    """LDAM-DRW (Cao et al., 2019): the LDAM loss on a cosine classifier with deferred re-weighting.

    Logits s·(cos θ_ij − m_{y_i}·[j = y_i]) with cos θ_ij from the normalised features and the
    normalised rows of the classifier's W (its bias is not used: it gets no gradient), margins
    m_c ∝ n_c^{−1/4} with max m_c = max_m (:func:`ldam_margins`). DRW: before ``drw_epoch`` (the
    experiment's first lr milestone unless set, :meth:`LDAMDRWConfig.for_schedule`) every
    class weighs 1 (LDAM-DRW's β = 0), from it on w_c = class-balanced weights with β = drw_beta,
    and the loss is the weighted mean Σ_i w_{y_i} L_i / Σ_i w_{y_i}.

    The network is built with the cosine head (``head = "cosine"``), so its logits are cos θ
    (LDAM-DRW's ``NormedLinear``) in training and at evaluation; a CE checkpoint's W loads into it.
    """

    name = "ldam_drw"
    Config = LDAMDRWConfig
    head = "cosine"

    def __init__(self, cfg: LDAMDRWConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        if cfg.drw_epoch is None:
            raise ValueError("ldam_drw's drw_epoch is unresolved: build its config with "
                             "ExperimentConfig.method_config, or LDAMDRWConfig.for_schedule(milestones)")
        # Plain attributes, not buffers: functions of the config and the class counts.
        self.margins = ldam_margins(info.class_counts, cfg.max_m).to(info.device)  # m [C]
        self.drw = class_balanced_weights(info.class_counts, cfg.drw_beta).to(info.device)  # [C]

    def class_weights(self, epoch: int) -> torch.Tensor:
        """w [C] at global ``epoch``: all ones before ``drw_epoch``, class-balanced from it on."""
        return self.drw if epoch >= self.cfg.drw_epoch else torch.ones_like(self.drw)

    def loss(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.network(batch.x)  # [B, C], the cosine head
        return ldam_loss(cos, batch.y, self.margins, self.cfg.s, self.class_weights(ctx.epoch)), cos


@dataclass
class BalancedSoftmaxConfig:
    """Balanced Softmax has no hyperparameter: it is ``la`` with τ fixed to 1."""


@register
class BalancedSoftmax(LogitAdjustment):
    """Balanced Softmax (Ren et al., 2020): L = CE(z_j + log n_j, y), i.e. softmax with n_j·e^{z_j}.

    log n_j = log π_j + log N with π_j = n_j/N, and adding log N to every logit leaves the softmax
    unchanged, so this is the logit-adjusted loss (Menon et al., 2021; ``la``) at τ = 1: the same
    class with its config pinned, not a copy of its code. As ``la``, evaluation uses the raw z
    (Balanced Softmax predicts with the plain softmax at test time).
    """

    name = "balanced_softmax"
    Config = BalancedSoftmaxConfig

    def __init__(self, cfg: BalancedSoftmaxConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(LogitAdjustmentConfig(tau=1.0), net, optimizer, info)
