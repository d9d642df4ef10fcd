"""Online class-conditional feature mean and covariance Σ_c, as ISDA's ``EstimatorCV`` [related].

For a batch with n_c samples of class c (batch mean m_c, batch covariance S_c normalised by n_c)
and N_c samples of class c seen before (running mean μ_c, running covariance Σ_c), with
ω_c = n_c / (n_c + N_c):

    Σ_c <- (1 − ω_c)·Σ_c + ω_c·S_c + ω_c·(1 − ω_c)·(μ_c − m_c)(μ_c − m_c)ᵀ
    μ_c <- (1 − ω_c)·μ_c + ω_c·m_c,      N_c <- N_c + n_c

which is exactly the population covariance (normalised by the count, not count − 1) of all
features of class c seen so far, at the parameters they were computed with. Classes absent
from the batch are unchanged. ``mode="diagonal"`` keeps only the variances (Σ_c as [C, A]).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

CovarianceMode = Literal["full", "diagonal"]


class ClassCovariance(nn.Module):
    """Running per-class mean [C, A] and covariance [C, A, A] (full) or [C, A] (diagonal).

    The state lives in buffers (``mean``, ``cov``, ``amount``) so it is saved and resumed with
    the owning module's ``state_dict``.
    """

    def __init__(self, num_classes: int, dim: int, mode: CovarianceMode = "full",
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> None:
        super().__init__()
        if mode not in ("full", "diagonal"):
            raise ValueError(f"unknown covariance mode {mode!r}: use full or diagonal")
        self.mode = mode
        shape = (num_classes, dim, dim) if mode == "full" else (num_classes, dim)
        self.register_buffer("mean", torch.zeros(num_classes, dim, dtype=dtype, device=device))
        self.register_buffer("cov", torch.zeros(shape, dtype=dtype, device=device))
        self.register_buffer("amount", torch.zeros(num_classes, dtype=dtype, device=device))

    @property
    def covariance(self) -> torch.Tensor:
        """Σ: [C, A, A] (full) or [C, A] (diagonal)."""
        return self.cov

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Merge a batch of features h [B, A] with labels y [B] into the running estimates."""
        h = features.detach().to(self.mean.dtype)
        classes, inverse, counts = labels.unique(return_inverse=True, return_counts=True)
        n = counts.to(h.dtype)  # [U]
        member = F.one_hot(inverse, len(classes)).to(h.dtype)  # [B, U]
        batch_mean = (member.T @ h) / n.unsqueeze(1)  # [U, A]
        centred = h - batch_mean[inverse]  # [B, A]
        shift = self.mean[classes] - batch_mean  # [U, A]
        w = n / (n + self.amount[classes])  # [U]
        if self.mode == "full":
            batch_cov = torch.einsum("bu,ba,bd->uad", member, centred, centred) / n.view(-1, 1, 1)
            between = shift.unsqueeze(2) * shift.unsqueeze(1)  # [U, A, A]
            w = w.view(-1, 1, 1)
        else:
            batch_cov = (member.T @ centred.square()) / n.unsqueeze(1)  # [U, A]
            between = shift.square()
            w = w.view(-1, 1)
        self.cov[classes] = (1 - w) * self.cov[classes] + w * batch_cov + w * (1 - w) * between
        self.mean[classes] = (1 - w.view(-1, 1)) * self.mean[classes] + w.view(-1, 1) * batch_mean
        self.amount[classes] += n
