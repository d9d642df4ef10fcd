"""The IADA loss (method.md §2): cross-entropy on adjusted logits, in closed form.

For a sample i with label y = y_i, logits z_i = W h_i + b, strategy ε_i and Δw_ij = w_j − w_y,
the augmented features h~ = h_i + δ, δ ~ N(β·ε_i·d, α_t·Σ_y), give by Jensen's inequality and
the Gaussian moment generating function the upper bound of E[CE(W h~ + b, y)]

    L_i = −log( exp(z_iy) / Σ_j exp( z_ij + β·ε_i·a_ij + (α_t/2)·Δw_ijᵀ Σ_y Δw_ij ) )

with a_ij = ||Δw_ij|| (``direction="pairwise"``) or a_ij = Δw_ijᵀ d_i, d_i = g_i/||g_i||,
g_i = Wᵀ(p_i − e_y) detached (``direction="gradient"``); both extra terms are 0 for j = y.
ε ≡ 0 gives ISDA's loss (Wang et al., 2019), ε ≡ 0 and α_t = 0 plain cross-entropy.

When it is a bound. With ``gradient`` the expression is the Jensen upper bound of
E[CE(W h~ + b, y)] over h~ ~ N(h + β ε d_i, α_t Σ_y) for either sign of ε: d_i is one direction,
which the Gaussian realises. With ``pairwise`` it is an upper bound for ε >= 0: for any unit d,
ε·Δw_ijᵀd <= ε·||Δw_ij|| (Cauchy–Schwarz), so each pair's worst case bounds every single shift of
length β ε, and the loss bounds the expected CE for *any* direction d. For ε < 0 each pair (y, j)
gets its own best-case direction, which no single Gaussian shift realises when C > 2 (the
Δw_ij point different ways): the loss can be below the expected CE of every direction (a case
with C = 5, ε = −0.6 is in tests/test_losses.py), so there it is a per-pair margin reduction,
not the bound of an augmentation. Which regime a run was in depends on the sign of its ε.

Optional class-balanced weights (:func:`class_balanced_weights`; ``class_balanced`` in the
methods' configs) multiply L_i by w_{y_i} for a MetaSAug-comparable variant [related].

Provenance: the Jensen/MGF route is the paper's; the exact mean shift β·ε_i·d (the two
``direction`` variants) is this project's reconstruction [choice]; the ISDA quadratic term and
the linear α ramp are taken from ISDA/MetaSAug [related].

Gradients reach W through z and through both extra terms; Σ and d are constants. The quadratic
term is computed per class present in the batch (memory O(U·C·A) for a full Σ, O(U·C) for a
diagonal one, U = number of distinct labels), never per sample and pair of dimensions.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Direction = Literal["pairwise", "gradient"]


def alpha_at(alpha: float, epoch: int, total_epochs: int) -> float:
    """The linear ramp α_t = α · epoch / total_epochs of ISDA and MetaSAug [related]."""
    return alpha * epoch / total_epochs


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balanced weights by the effective number of samples (Cui et al., 2019) [related]:

        w_c = (1 − β) / (1 − β^{n_c}),   rescaled so that Σ_c w_c = C,

    for training class counts n_c (``counts`` [C]) and 0 <= β < 1; float64 [C] on ``counts``'s
    device. w_c = 1/E_{n_c}, with E_n = (1 − β^n)/(1 − β) the effective number of n samples:
    β = 0 gives equal weights, β -> 1 weights ∝ 1/n_c. The rescaling to Σ_c w_c = C
    is MetaSAug's (its ``per_cls_weights``); under the weighted mean Σ_i w_{y_i} L_i / Σ_i w_{y_i}
    it cancels. A class without training samples (n_c = 0, whose weight is never used) counts as
    n_c = 1, so that the rescaling stays finite. Computed in float64: for β = 0.9999,
    1 − β^{n_c} loses digits in float32 when n_c is small.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"class-balanced beta must be in [0, 1), got {beta}")
    n = counts.to(torch.float64).clamp_min(1)
    weights = (1 - beta) / (1 - beta ** n)
    return weights * len(n) / weights.sum()


def class_quadratic_term(weight: torch.Tensor, covariance: torch.Tensor,
                         classes: torch.Tensor) -> torch.Tensor:
    """q_cj = (w_j − w_c)ᵀ Σ_c (w_j − w_c) for every class c in ``classes`` and every j: [U, C].

    ``covariance`` is [C, A, A] (full Σ_c) or [C, A] (the diagonal of Σ_c).
    """
    w_c = weight[classes]  # [U, A]
    if covariance.dim() == 3:
        delta = weight.unsqueeze(0) - w_c.unsqueeze(1)  # [U, C, A]
        return ((delta @ covariance[classes]) * delta).sum(-1)
    var = covariance[classes]  # [U, A]
    # Σ_a σ_ca (w_ja − w_ca)² expanded, so that no [U, C, A] tensor is built.
    return (var @ weight.square().T - 2 * (var * w_c) @ weight.T
            + (var * w_c.square()).sum(1, keepdim=True))


def class_pair_distance(weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """||w_j − w_c|| for every class c in ``classes`` and every j: [U, C], exactly 0 at j = c.

    Computed from the Gram matrix; the diagonal is masked so that its gradient is 0, not NaN.
    """
    w_c = weight[classes]  # [U, A]
    sq = weight.square().sum(1) + w_c.square().sum(1, keepdim=True) - 2 * w_c @ weight.T  # [U, C]
    same = classes.unsqueeze(1) == torch.arange(weight.shape[0], device=weight.device)
    sq = torch.where(same, torch.ones_like(sq), sq.clamp_min(1e-12))
    return torch.where(same, torch.zeros_like(sq), sq.sqrt())


def gradient_direction(logits: torch.Tensor, labels: torch.Tensor,
                       weight: torch.Tensor) -> torch.Tensor:
    """d_i = g_i/||g_i||, g_i = Wᵀ(p_i − e_{y_i}) = ∂CE_i/∂h_i, detached: [B, A]."""
    with torch.no_grad():
        p = logits.softmax(1)  # [B, C]
        p[torch.arange(len(labels), device=labels.device), labels] -= 1
        return F.normalize(p @ weight, dim=1)


def adjusted_logits(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                    covariance: torch.Tensor | None, *, epsilon: torch.Tensor | None,
                    alpha: float, beta: float = 1.0,
                    direction: Direction = "pairwise") -> torch.Tensor:
    """z_ij + β·ε_i·a_ij + (α/2)·Δw_ijᵀ Σ_{y_i} Δw_ij, with both extra terms 0 at j = y_i: [B, C].

    ``epsilon`` [B] (None: ε ≡ 0); ``covariance`` may be None when ``alpha`` is 0.
    """
    extra = torch.zeros_like(logits)  # [B, C]
    classes, inverse = labels.unique(return_inverse=True)  # [U], [B]
    if alpha != 0:
        if covariance is None:
            raise ValueError("alpha > 0 needs a class covariance")
        extra = extra + 0.5 * alpha * class_quadratic_term(weight, covariance, classes)[inverse]
    if epsilon is not None and beta != 0:
        if direction == "pairwise":
            a = class_pair_distance(weight, classes)[inverse]  # [B, C]
        elif direction == "gradient":
            d = gradient_direction(logits, labels, weight.detach())  # [B, A]
            a = d @ weight.T - (d * weight[labels]).sum(1, keepdim=True)  # Δw_ijᵀ d_i
        else:
            raise ValueError(f"unknown direction {direction!r}: use pairwise or gradient")
        extra = extra + beta * epsilon.unsqueeze(1) * a
    own = F.one_hot(labels, logits.shape[1]).bool()
    return logits + extra.masked_fill(own, 0.0)


def iada_loss(logits: torch.Tensor, features: torch.Tensor | None, labels: torch.Tensor,
              weight: torch.Tensor, covariance: torch.Tensor | None, *, epsilon: torch.Tensor | None,
              alpha: float, beta: float = 1.0, direction: Direction = "pairwise") -> torch.Tensor:
    """Per-sample IADA loss L_i [B] (see the module docstring).

    logits z [B, C]; features h [B, A] (the input of the classifier: the loss depends on h only
    through z = W h + b, so h is used to check that z, h and W belong together, and may be None);
    labels y [B]; weight W [C, A] (the classifier's, with its graph); covariance Σ [C, A, A] or
    [C, A] (constant); epsilon ε [B] or None (ε ≡ 0); alpha the already-ramped α_t.
    """
    if features is not None and (features.shape[0] != logits.shape[0] or features.shape[1] != weight.shape[1]):
        raise ValueError(f"features {tuple(features.shape)} do not fit logits {tuple(logits.shape)} and "
                         f"weight {tuple(weight.shape)}: expected [B, A] with W [C, A]")
    z = adjusted_logits(logits, labels, weight, covariance, epsilon=epsilon, alpha=alpha, beta=beta,
                        direction=direction)
    return F.cross_entropy(z, labels, reduction="none")


def isda_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
              covariance: torch.Tensor, alpha: float) -> torch.Tensor:
    """ISDA's per-sample loss [B]: the IADA loss with ε ≡ 0."""
    return iada_loss(logits, None, labels, weight, covariance, epsilon=None, alpha=alpha)
