"""The per-sample training characteristics c_i, the input of the perturbation network (method.md §3).

The paper states K = 15 characteristics without listing them; this default set is the
project's reconstruction [choice], each formula taken from related code. With p_i =
softmax(z_i) and y = y_i:

==  =======================  ==========================================================
 1  loss                     −log p_iy
 2  label_logit              z_iy
 3  label_prob               p_iy
 4  grad_norm                ||e_y − p_i||₂ (norm of ∂CE/∂z_i)
 5  margin                   p_iy − max_{j≠y} p_ij
 6  neg_entropy              Σ_j p_ij log p_ij
 7-12  d_<name of 1-6>       value now − value at the sample's previous recorded visit
                             (its previous epoch under plain shuffling); 0 at the first visit
13  class_proportion         n_y / N (training label counts)
14  class_avg_loss           mean loss of class y over the previous epoch (log C before any)
15  feature_weight_cosine    cos(h_i, w_y)
==  =======================  ==========================================================

A run may use any subset, in any order (``names``); it is recorded in the method's config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.params.schema import ParamError

BASE = ("loss", "label_logit", "label_prob", "grad_norm", "margin", "neg_entropy")
CHARACTERISTICS = (*BASE, *(f"d_{name}" for name in BASE),
                   "class_proportion", "class_avg_loss", "feature_weight_cosine")


def check_names(names: Sequence[str]) -> None:
    """Raise :class:`ParamError` unless ``names`` is a non-empty list of distinct known names."""
    if not names:
        raise ParamError("characteristics must name at least one characteristic")
    unknown = [n for n in names if n not in CHARACTERISTICS]
    if unknown:
        raise ParamError(f"unknown characteristic {unknown[0]!r}: use any of {', '.join(CHARACTERISTICS)}")
    if len(set(names)) != len(names):
        raise ParamError(f"characteristics lists a name twice: {list(names)}")


def base_characteristics(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Characteristics 1-6 (columns in the order of ``BASE``) from logits [B, C]: [B, 6]."""
    logp = logits.log_softmax(1)  # [B, C]
    p = logp.exp()
    rows = torch.arange(len(labels), device=labels.device)
    own = F.one_hot(labels, logits.shape[1]).bool()
    p_y = p[rows, labels]
    return torch.stack([
        -logp[rows, labels],
        logits[rows, labels],
        p_y,
        (own.to(p.dtype) - p).norm(dim=1),
        p_y - p.masked_fill(own, float("-inf")).amax(1),
        (p * logp).sum(1),
    ], dim=1)


class Characteristics(nn.Module):
    """Computes c_i [B, K] and keeps the buffers the history-based characteristics need.

    Buffers: ``history`` [N, 6] (last recorded values of 1-6 per training sample), ``seen`` [N],
    ``class_proportion`` [C], ``class_avg_loss`` [C] (previous epoch), and the current epoch's
    per-class loss sums and counts, rolled by :meth:`end_epoch`.
    """

    def __init__(self, names: Sequence[str], class_counts: torch.Tensor, num_train: int,
                 device: torch.device | None = None) -> None:
        super().__init__()
        check_names(names)
        self.names = tuple(names)
        self.columns = [CHARACTERISTICS.index(n) for n in self.names]
        num_classes = len(class_counts)
        counts = class_counts.to(device=device, dtype=torch.float32)
        self.register_buffer("history", torch.zeros(num_train, len(BASE), device=device))
        self.register_buffer("seen", torch.zeros(num_train, dtype=torch.bool, device=device))
        self.register_buffer("class_proportion", counts / counts.sum())
        self.register_buffer("class_avg_loss",
                             torch.full((num_classes,), math.log(num_classes), device=device))
        self.register_buffer("epoch_loss_sum", torch.zeros(num_classes, dtype=torch.float64, device=device))
        self.register_buffer("epoch_loss_count", torch.zeros(num_classes, dtype=torch.float64, device=device))

    @property
    def num_inputs(self) -> int:
        return len(self.names)

    @torch.no_grad()
    def compute(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                index: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
        """c [B, K] for logits z [B, C], features h [B, A], labels y [B], sample rows ``index``
        [B] and the classifier weight W [C, A]; nothing is written."""
        logits, features = logits.detach().float(), features.detach().float()
        base = base_characteristics(logits, labels)  # [B, 6]
        change = torch.where(self.seen[index].unsqueeze(1), base - self.history[index],
                             torch.zeros_like(base))  # [B, 6]
        cosine = F.cosine_similarity(features, class_weight.detach().float()[labels], dim=1)
        every = torch.cat([base, change, self.class_proportion[labels].unsqueeze(1),
                           self.class_avg_loss[labels].unsqueeze(1), cosine.unsqueeze(1)], dim=1)
        return every[:, self.columns]

    @torch.no_grad()
    def record(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Store characteristics 1-6 of this visit and add the losses to the epoch's class sums
        (real step only)."""
        base = base_characteristics(logits.detach().float(), labels)
        self.history[index] = base
        self.seen[index] = True
        self.epoch_loss_sum.index_add_(0, labels, base[:, 0].double())
        self.epoch_loss_count.index_add_(0, labels, torch.ones_like(base[:, 0], dtype=torch.float64))

    @torch.no_grad()
    def end_epoch(self) -> None:
        """The epoch's class-average losses become ``class_avg_loss`` (classes not visited keep
        their previous value); the sums restart."""
        visited = self.epoch_loss_count > 0
        mean = self.epoch_loss_sum / self.epoch_loss_count.clamp_min(1)
        self.class_avg_loss.copy_(torch.where(visited, mean.float(), self.class_avg_loss))
        self.epoch_loss_sum.zero_()
        self.epoch_loss_count.zero_()
