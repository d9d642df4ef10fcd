"""Properties of the IADA loss (method.md §2) checked numerically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import alpha_at, iada_loss, isda_loss


def random_problem(seed: int, batch: int = 6, classes: int = 5, dim: int = 4,
                   dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, dim, generator=g, dtype=dtype)
    bias = torch.randn(classes, generator=g, dtype=dtype)
    h = torch.randn(batch, dim, generator=g, dtype=dtype)
    labels = torch.randint(classes, (batch,), generator=g)
    root = torch.randn(classes, dim, dim, generator=g, dtype=dtype)
    cov = root @ root.transpose(1, 2) / dim  # [C, A, A], symmetric positive definite
    return weight, bias, h, labels, cov


def test_cross_entropy_when_epsilon_and_alpha_are_zero():
    weight, bias, h, labels, cov = random_problem(0, dtype=torch.float32)
    logits = h @ weight.T + bias
    expected = F.cross_entropy(logits, labels, reduction="none")
    for direction in ("pairwise", "gradient"):
        zero = torch.zeros(len(labels))
        assert torch.equal(iada_loss(logits, None, labels, weight, cov, zero, 0.0, 1.0, direction), expected)
    assert torch.equal(iada_loss(logits, None, labels, weight, None, None, 0.0), expected)


def isda_reference(logits, labels, weight, cov, alpha):
    """ISDA's loss written out per sample and class (Wang et al., 2019, eq. 11)."""
    z, w, s = logits.numpy(), weight.numpy(), cov.numpy()
    out = []
    for i, y in enumerate(labels.tolist()):
        adjusted = []
        for j in range(len(w)):
            dw = w[j] - w[y]
            adjusted.append(z[i, j] + 0.5 * alpha * dw @ s[y] @ dw)
        adjusted = np.array(adjusted)
        out.append(np.log(np.exp(adjusted).sum()) - adjusted[y])
    return np.array(out)


@pytest.mark.parametrize("direction", ["pairwise", "gradient"])
def test_isda_when_epsilon_is_zero(direction):
    weight, bias, h, labels, cov = random_problem(1, batch=12)
    logits = h @ weight.T + bias
    expected = isda_reference(logits, labels, weight, cov, alpha=0.7)
    zero = torch.zeros(len(labels), dtype=torch.float64)
    got = iada_loss(logits, None, labels, weight, cov, zero, 0.7, 1.0, direction)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(isda_loss(logits, labels, weight, cov, 0.7).numpy(), expected, rtol=1e-12)


def test_diagonal_covariance_equals_full_covariance_with_that_diagonal():
    weight, bias, h, labels, cov = random_problem(2, batch=10)
    var = cov.diagonal(dim1=1, dim2=2)  # [C, A]
    logits = h @ weight.T + bias
    eps = torch.linspace(-1, 1, len(labels), dtype=torch.float64)
    full = iada_loss(logits, None, labels, weight, torch.diag_embed(var), eps, 0.8)
    diagonal = iada_loss(logits, None, labels, weight, var, eps, 0.8)
    np.testing.assert_allclose(diagonal.numpy(), full.numpy(), rtol=1e-12)


def monte_carlo_ce(h, y, weight, bias, mean_shift, cov, alpha, noise):
    """CE of W h~ + b for h~ = h + mean_shift + (α Σ)^{1/2} ξ, one value per row of ``noise``."""
    root = torch.linalg.cholesky(alpha * cov)
    samples = h + mean_shift + noise @ root.T  # [S, A]
    logits = samples @ weight.T + bias
    return torch.logsumexp(logits, 1) - logits[:, y]


@pytest.mark.parametrize("epsilon", [0.8, -0.6])
def test_jensen_bound_gradient_direction(epsilon):
    """E[CE(h~)] <= L_i for h~ ~ N(h + β ε d, α Σ_y); the gap closes as α Σ -> 0.

    With S Monte-Carlo samples the mean CE has standard error SE = std(CE)/sqrt(S); the bound is
    checked with a margin of 4 SE (a false failure has probability < 1e-4 under normality).
    """
    weight, bias, h, labels, cov = random_problem(3, batch=3)
    beta, samples = 1.0, 40_000
    noise = torch.randn(samples, h.shape[1], generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)
    for i in range(len(labels)):
        y = int(labels[i])
        p = torch.softmax(weight @ h[i] + bias, 0)
        g = weight.T @ (p - F.one_hot(labels[i], len(weight)).double())
        d = g / g.norm()  # FGM direction in feature space, computed independently
        gaps = []
        for alpha in (1.0, 0.1, 0.01, 1e-4):
            logits = (h[i] @ weight.T + bias).unsqueeze(0)
            bound = iada_loss(logits, None, labels[i:i + 1], weight, cov,
                              torch.tensor([epsilon], dtype=torch.float64), alpha, beta,
                              "gradient").item()
            ce = monte_carlo_ce(h[i], y, weight, bias, beta * epsilon * d, cov[y], alpha, noise)
            se = ce.std().item() / math.sqrt(samples)
            assert ce.mean().item() <= bound + 4 * se
            gaps.append((bound - ce.mean().item(), se))
        for (gap, se), (next_gap, next_se) in zip(gaps, gaps[1:]):
            assert next_gap <= gap + 4 * (se + next_se)
        gap, se = gaps[-1]  # the gap is O(α): at α = 1e-4 it is ~1e-4 of the gap at α = 1
        assert abs(gap) <= 4 * se + 2e-4 * gaps[0][0]
        assert gaps[0][0] > 4 * gaps[0][1]  # at α = 1 the bound is strictly above the mean


def test_pairwise_loss_increases_with_epsilon():
    weight, bias, h, labels, cov = random_problem(5, batch=8)
    logits = h @ weight.T + bias
    grid = torch.linspace(-1, 1, 41, dtype=torch.float64)
    losses = torch.stack([iada_loss(logits, None, labels, weight, cov, torch.full_like(labels, e.item(),
                                                                                 dtype=torch.float64),
                                    0.5, 1.0, "pairwise") for e in grid])  # [41, B]
    assert (losses.diff(dim=0) > 0).all()  # strictly increasing in ε, for ε < 0 and ε > 0
    zero = losses[20]
    assert (losses[21:] > zero).all() and (losses[:20] < zero).all()
    eps = torch.tensor([-0.5, 0.5] * 4, dtype=torch.float64, requires_grad=True)
    iada_loss(logits, None, labels, weight, cov, eps, 0.5).sum().backward()
    assert (eps.grad > 0).all()


def test_gradient_reaches_weight_through_both_terms():
    """Pairwise, full Σ: autograd's gradient w.r.t. W matches finite differences of the whole
    loss, with W entering z, ||Δw_ij|| and Δw_ijᵀ Σ Δw_ij."""
    weight, bias, h, labels, cov = random_problem(6, batch=5)
    eps = torch.linspace(-0.9, 0.9, 5, dtype=torch.float64)

    def total(w):
        return iada_loss(h @ w.T + bias, h, labels, w, cov, eps, 0.6).sum()

    assert torch.autograd.gradcheck(total, (weight.clone().requires_grad_(),))


def test_gradient_direction_is_a_constant():
    """With d detached, ∂L_i/∂z_i = softmax(adjusted z_i) − e_y exactly."""
    weight, bias, h, labels, cov = random_problem(7, batch=6)
    logits = (h @ weight.T + bias).requires_grad_()
    eps = torch.full((6,), 0.7, dtype=torch.float64)
    loss = iada_loss(logits, None, labels, weight, cov, eps, 0.3, 1.0, "gradient")
    loss.sum().backward()
    p = torch.softmax(logits.detach(), 1)
    d = F.normalize((p - F.one_hot(labels, 5).double()) @ weight, dim=1)
    adjusted = logits.detach() + 0.7 * (d @ weight.T - (d * weight[labels]).sum(1, keepdim=True))
    for i, y in enumerate(labels.tolist()):
        for j in range(5):
            if j != y:
                dw = weight[j] - weight[y]
                adjusted[i, j] += 0.15 * dw @ cov[y] @ dw
    expected = torch.softmax(adjusted, 1) - F.one_hot(labels, 5).double()
    torch.testing.assert_close(logits.grad, expected, rtol=1e-10, atol=1e-12)


def test_alpha_ramp():
    assert alpha_at(0.5, 0, 200) == 0.0
    assert alpha_at(0.5, 100, 200) == 0.25
    assert alpha_at(0.5, 200, 200) == 0.5
