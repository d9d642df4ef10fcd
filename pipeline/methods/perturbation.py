"""The perturbation network Ω: training characteristics c_i -> strategy ε_i (method.md §4).

Architecture [paper]: BatchNorm1d(K) -> Linear(K, 100) -> ReLU -> Linear(100, 100) -> ReLU ->
Linear(100, 1) -> tanh, so ε ∈ (−1, 1). ε > 0 is an adversarial, ε < 0 an anti-adversarial
perturbation, |ε| its strength.

``epsilon_sign`` [choice] restricts the sign with an affine map of the same tanh output t = tanh(u):

- ``both``: ε = t ∈ (−1, 1) (the paper's network);
- ``adversarial``: ε = (1 + t)/2 ∈ (0, 1);
- ``anti``: ε = −(1 + t)/2 ∈ (−1, 0).

An affine map keeps dε/du = (1 − t²)/2 > 0 for every finite u, i.e. the same gradient shape as
the unrestricted network (a clamp or ReLU would give zero gradient for every sample on the wrong
side); ε = 0 (plain ISDA) remains the limit u -> −∞. At initialisation (u ≈ 0) the restricted
variants start at |ε| ≈ 0.5, the unrestricted one at ε ≈ 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

EpsilonSign = Literal["both", "adversarial", "anti"]


class PerturbationNet(nn.Module):
    """Ω: c [B, K] -> ε [B]; ``input_names`` records which characteristic each input is."""

    def __init__(self, num_inputs: int, epsilon_sign: EpsilonSign = "both", hidden: int = 100,
                 input_names: Sequence[str] = ()) -> None:
        super().__init__()
        if epsilon_sign not in ("both", "adversarial", "anti"):
            raise ValueError(f"unknown epsilon_sign {epsilon_sign!r}: use both, adversarial or anti")
        if input_names and len(input_names) != num_inputs:
            raise ValueError(f"{len(input_names)} input names for {num_inputs} inputs")
        self.epsilon_sign = epsilon_sign
        self.input_names = tuple(input_names)
        self.body = nn.Sequential(
            nn.BatchNorm1d(num_inputs),
            nn.Linear(num_inputs, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(self.body(c).squeeze(1))  # [B]
        if self.epsilon_sign == "adversarial":
            return (1 + t) / 2
        if self.epsilon_sign == "anti":
            return -(1 + t) / 2
        return t

    def extra_repr(self) -> str:
        names = f", inputs={list(self.input_names)}" if self.input_names else ""
        return f"epsilon_sign={self.epsilon_sign!r}{names}"
