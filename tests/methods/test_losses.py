"""Properties of the IADA loss (method.md §2) checked numerically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.methods.losses import alpha_at, class_balanced_weights, iada_loss, isda_loss


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
        got = iada_loss(logits, None, labels, weight, cov, epsilon=zero, alpha=0.0, beta=1.0, direction=direction)
        assert torch.equal(got, expected)
    assert torch.equal(iada_loss(logits, None, labels, weight, None, epsilon=None, alpha=0.0), expected)


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
    got = iada_loss(logits, None, labels, weight, cov, epsilon=zero, alpha=0.7, beta=1.0, direction=direction)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(isda_loss(logits, labels, weight, cov, 0.7).numpy(), expected, rtol=1e-12)


def test_diagonal_covariance_equals_full_covariance_with_that_diagonal():
    weight, bias, h, labels, cov = random_problem(2, batch=10)
    var = cov.diagonal(dim1=1, dim2=2)  # [C, A]
    logits = h @ weight.T + bias
    eps = torch.linspace(-1, 1, len(labels), dtype=torch.float64)
    full = iada_loss(logits, None, labels, weight, torch.diag_embed(var), epsilon=eps, alpha=0.8)
    diagonal = iada_loss(logits, None, labels, weight, var, epsilon=eps, alpha=0.8)
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
                              epsilon=torch.tensor([epsilon], dtype=torch.float64), alpha=alpha, beta=beta,
                              direction="gradient").item()
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
    losses = torch.stack([iada_loss(logits, None, labels, weight, cov, epsilon=torch.full_like(labels, e.item(),
                                                                                 dtype=torch.float64),
                                    alpha=0.5, beta=1.0, direction="pairwise") for e in grid])  # [41, B]
    assert (losses.diff(dim=0) > 0).all()  # strictly increasing in ε, for ε < 0 and ε > 0
    zero = losses[20]
    assert (losses[21:] > zero).all() and (losses[:20] < zero).all()
    eps = torch.tensor([-0.5, 0.5] * 4, dtype=torch.float64, requires_grad=True)
    iada_loss(logits, None, labels, weight, cov, epsilon=eps, alpha=0.5).sum().backward()
    assert (eps.grad > 0).all()


def test_gradient_reaches_weight_through_both_terms():
    """Pairwise, full Σ: autograd's gradient w.r.t. W matches finite differences of the whole
    loss, with W entering z, ||Δw_ij|| and Δw_ijᵀ Σ Δw_ij."""
    weight, bias, h, labels, cov = random_problem(6, batch=5)
    eps = torch.linspace(-0.9, 0.9, 5, dtype=torch.float64)

    def total(w):
        return iada_loss(h @ w.T + bias, h, labels, w, cov, epsilon=eps, alpha=0.6).sum()

    assert torch.autograd.gradcheck(total, (weight.clone().requires_grad_(),))


def test_gradient_direction_is_a_constant():
    """With d detached, ∂L_i/∂z_i = softmax(adjusted z_i) − e_y exactly."""
    weight, bias, h, labels, cov = random_problem(7, batch=6)
    logits = (h @ weight.T + bias).requires_grad_()
    eps = torch.full((6,), 0.7, dtype=torch.float64)
    loss = iada_loss(logits, None, labels, weight, cov, epsilon=eps, alpha=0.3, beta=1.0, direction="gradient")
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


def test_alpha_ramp_is_isdas_linear_schedule():
    """ISDA's train.py (blackfeather-wang/ISDA-for-Deep-Networks): ratio = λ_0 · epoch / epochs, with
    the 0-based epoch of its loop. α = 0.5 over 200 epochs, worked out: epoch 0 -> 0, 1 -> 0.0025,
    50 -> 0.125, 160 -> 0.4, 199 (the last) -> 0.4975; it climbs by the same 0.0025 every epoch
    (linear, so never down) and reaches α only at epoch = total."""
    by_hand = {0: 0.0, 1: 0.0025, 50: 0.125, 160: 0.4, 199: 0.4975, 200: 0.5}
    for epoch, value in by_hand.items():
        assert alpha_at(0.5, epoch, 200) == pytest.approx(value, abs=1e-15), epoch
    ramp = [alpha_at(0.5, e, 200) for e in range(201)]
    assert all(b - a == pytest.approx(0.0025, abs=1e-15) for a, b in zip(ramp, ramp[1:]))
    assert alpha_at(0.0, 120, 200) == 0.0 and alpha_at(0.75, 3, 4) == pytest.approx(0.5625, abs=1e-15)


def shifted_ce_stats(h, y, weight, bias, shifts, cov, alpha, noise):
    """Monte-Carlo mean and standard error of CE(W h~ + b, y), h~ = h + s + (α Σ)^{1/2} ξ, for
    every shift s (row of ``shifts`` [D, A]) with the same noise ξ (rows of ``noise`` [S, A]):
    two tensors [D]."""
    root = torch.linalg.cholesky(alpha * cov)
    samples = h + shifts.unsqueeze(1) + noise @ root.T  # [D, S, A]
    logits = samples @ weight.T + bias  # [D, S, C]
    ce = torch.logsumexp(logits, -1) - logits[..., y]  # [D, S]
    return ce.mean(1), ce.std(1) / math.sqrt(noise.shape[0])


def extreme_direction(h, y, weight, bias, scale, cov, alpha, noise, start, sign, steps=60):
    """A unit direction d that makes the Monte-Carlo mean of CE(h + scale·d + (α Σ)^{1/2} ξ)
    over the fixed ``noise`` locally largest (``sign`` = +1) or smallest (−1): gradient steps on
    the sphere, from ``start``."""
    d = start.clone().requires_grad_()
    opt = torch.optim.Adam([d], lr=0.1)
    for _ in range(steps):
        mean, _ = shifted_ce_stats(h, y, weight, bias, scale * F.normalize(d, dim=0).unsqueeze(0), cov,
                                   alpha, noise)
        opt.zero_grad()
        (-sign * mean.sum()).backward()
        opt.step()
    return F.normalize(d.detach(), dim=0)


def candidate_directions(h, y, weight, bias, count, generator):
    """Unit directions to try [D, A]: ``count`` random ones, ±Δw_yj/||Δw_yj|| for every j ≠ y,
    the normalised mean of the Δw_yj/||Δw_yj||, and ± the FGM direction g/||g||, g = Wᵀ(p − e_y)."""
    unit = F.normalize(weight[torch.arange(len(weight)) != y] - weight[y], dim=1)  # [C − 1, A]
    p = torch.softmax(weight @ h + bias, 0)
    g = weight.T @ (p - F.one_hot(torch.tensor(y), len(weight)).to(p.dtype))
    fgm = (g / g.norm()).unsqueeze(0)
    rand = F.normalize(torch.randn(count, h.shape[0], generator=generator, dtype=h.dtype), dim=1)
    return torch.cat([rand, unit, -unit, F.normalize(unit.mean(0), dim=0).unsqueeze(0), fgm, -fgm])


@pytest.mark.parametrize("seed", [8, 9])
def test_pairwise_is_a_bound_for_positive_epsilon(seed):
    """ε > 0: for every unit d, ε·Δw_ijᵀd <= ε·||Δw_ij|| (Cauchy–Schwarz), so the pairwise loss is
    >= the closed form with that single d, which is >= E[CE(h~)], h~ ~ N(h + β ε d, α Σ_y), by
    Jensen. Checked for random directions, ±Δw_ij/||Δw_ij||, ± the FGM direction and the worst
    direction found by gradient ascent on the Monte-Carlo mean; margin 4 standard errors. α is
    small, so the Jensen gap is small next to the effect of the shift: a loss that dropped or
    shrank the ε term would fall below the worst direction's mean."""
    weight, bias, h, labels, cov = random_problem(seed, batch=3, classes=5, dim=4)
    alpha, beta, epsilon, samples = 0.1, 1.0, 0.8, 20_000
    g = torch.Generator().manual_seed(seed + 100)
    noise = torch.randn(samples, h.shape[1], generator=g, dtype=torch.float64)
    logits = h @ weight.T + bias
    eps = torch.full((len(labels),), epsilon, dtype=torch.float64)
    bound = iada_loss(logits, None, labels, weight, cov, epsilon=eps, alpha=alpha, beta=beta, direction="pairwise")
    for i, y in enumerate(labels.tolist()):
        directions = candidate_directions(h[i], y, weight, bias, 20, g)
        mean, _ = shifted_ce_stats(h[i], y, weight, bias, beta * epsilon * directions, cov[y], alpha, noise)
        worst = extreme_direction(h[i], y, weight, bias, beta * epsilon, cov[y], alpha, noise,
                                  directions[int(mean.argmax())], +1)
        directions = torch.cat([directions, worst.unsqueeze(0)])
        mean, se = shifted_ce_stats(h[i], y, weight, bias, beta * epsilon * directions, cov[y], alpha, noise)
        assert (mean <= bound[i] + 4 * se).all()


# A fixed case with C = 5 classes in A = 2 dimensions, the own class y = 0 in the middle: the
# directions Δw_0j point four different ways, so no single shift moves h away from all of them.
FIXED_WEIGHT = [[0.0, 0.0], [2.0, 0.3], [0.2, 2.5], [-1.5, 0.2], [0.1, -2.0]]
FIXED_H, FIXED_COV = [0.3, -0.2], [[1.0, 0.3], [0.3, 0.5]]


def fixed_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """W [5, 2], b = 0, h [2], Σ_y [2, 2] of the fixed case, float64."""
    weight = torch.tensor(FIXED_WEIGHT, dtype=torch.float64)
    return (weight, torch.zeros(5, dtype=torch.float64), torch.tensor(FIXED_H, dtype=torch.float64),
            torch.tensor(FIXED_COV, dtype=torch.float64))


def test_pairwise_is_not_a_bound_for_negative_epsilon():
    """ε < 0: every pair (y, j) gets its own best-case direction, ε·||Δw_yj||, which no single
    Gaussian shift realises when C > 2. On the fixed case the pairwise loss is below the expected
    CE of *every* direction d:

    - CE is convex in h, so E[CE(h~)] >= CE(h + β ε d) (Jensen the other way); on A = 2 the unit
      directions form a circle, and the minimum of CE(h + β ε d) over a grid of 3,600 angles,
      less its Lipschitz error (||∇_h CE|| = ||Wᵀ(p − e_y)|| <= max_j ||Δw_yj||, times the
      distance |β ε|·π/3600 to the nearest grid point), is above the pairwise loss by > 0.5;
    - the Monte-Carlo mean itself, for random directions, ±Δw_yj/||Δw_yj|| (the pairs' best cases),
      their normalised mean, ± the FGM direction and the best direction found by gradient descent
      on the Monte-Carlo mean, is above the pairwise loss by more than 4 standard errors.

    So for ε < 0 the pairwise loss is a per-pair margin reduction, not the bound of an
    augmentation (pipeline/methods/losses.py, "When it is a bound")."""
    weight, bias, h, cov = fixed_case()
    y, alpha, beta, epsilon, samples = 0, 0.1, 1.0, -0.6, 20_000
    logits = (h @ weight.T + bias).unsqueeze(0)
    pairwise = iada_loss(logits, None, torch.tensor([y]), weight, cov.expand(5, 2, 2),
                         epsilon=torch.tensor([epsilon], dtype=torch.float64), alpha=alpha, beta=beta,
                         direction="pairwise").item()

    n = 3600
    angle = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    z = (h + beta * epsilon * torch.stack([angle.cos(), angle.sin()], 1)) @ weight.T + bias  # [n, C]
    ce_at_mean = torch.logsumexp(z, 1) - z[:, y]
    lipschitz = (weight - weight[y]).norm(dim=1).max().item()
    assert pairwise < ce_at_mean.min().item() - lipschitz * abs(beta * epsilon) * math.pi / n - 0.5

    g = torch.Generator().manual_seed(10)
    noise = torch.randn(samples, 2, generator=g, dtype=torch.float64)
    directions = candidate_directions(h, y, weight, bias, 200, g)
    mean, _ = shifted_ce_stats(h, y, weight, bias, beta * epsilon * directions, cov, alpha, noise)
    best = extreme_direction(h, y, weight, bias, beta * epsilon, cov, alpha, noise,
                             directions[int(mean.argmin())], -1)
    directions = torch.cat([directions, best.unsqueeze(0)])
    mean, se = shifted_ce_stats(h, y, weight, bias, beta * epsilon * directions, cov, alpha, noise)
    assert (pairwise < mean - 4 * se).all()


@pytest.mark.parametrize("epsilon", [0.6, -0.6])
def test_gradient_direction_is_a_bound_for_both_signs_on_the_fixed_case(epsilon):
    """On the case where ``pairwise`` does not bound (ε < 0), ``gradient`` is the Jensen bound of
    E[CE(h~)], h~ ~ N(h + β ε d, α Σ_y), d = g/||g|| (computed here independently), for either
    sign of ε: its single direction is one the Gaussian realises. The gap is O(α): small at α = 0.1."""
    weight, bias, h, cov = fixed_case()
    y, alpha, beta, samples = 0, 0.1, 1.0, 40_000
    logits = (h @ weight.T + bias).unsqueeze(0)
    bound = iada_loss(logits, None, torch.tensor([y]), weight, cov.expand(5, 2, 2),
                      epsilon=torch.tensor([epsilon], dtype=torch.float64), alpha=alpha, beta=beta,
                      direction="gradient").item()
    p = torch.softmax(weight @ h + bias, 0)
    grad = weight.T @ (p - F.one_hot(torch.tensor(y), 5).double())
    noise = torch.randn(samples, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    mean, se = shifted_ce_stats(h, y, weight, bias, (beta * epsilon * grad / grad.norm()).unsqueeze(0), cov,
                                alpha, noise)
    assert mean.item() <= bound + 4 * se.item()
    assert bound - mean.item() < 0.1


def test_class_balanced_weights_by_hand():
    """w_c = (1 − β)/(1 − β^{n_c}), rescaled to Σ_c w_c = C (Cui et al., 2019; MetaSAug's
    ``per_cls_weights``). counts [100, 10, 1], β = 0.9: raw weights 0.1/(1 − 0.9¹⁰⁰) =
    0.10000266..., 0.1/(1 − 0.9¹⁰) = 0.15353400..., 0.1/0.1 = 1, sum 1.25353664948920..., times
    3/sum: the literals below."""
    got = class_balanced_weights(torch.tensor([100, 10, 1]), 0.9)
    assert got.dtype == torch.float64
    expected = [0.23932923600883357, 0.36744197309586174, 2.3932287908953045]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13)
    # β = 0.9999 (the default), n = 5000 and 50: raw (1 − β)/(1 − β^n), rescaled to sum 2
    raw = [0.00025413961385536613, 0.020049041652065152]
    np.testing.assert_allclose(class_balanced_weights(torch.tensor([5000, 50]), 0.9999).numpy(),
                               [2 * r / sum(raw) for r in raw], rtol=1e-9)
    assert torch.equal(class_balanced_weights(torch.tensor([7, 3, 1]), 0.0),
                       torch.ones(3, dtype=torch.float64))  # β = 0: equal weights
    with pytest.raises(ValueError):
        class_balanced_weights(torch.tensor([7, 3]), 1.0)


@pytest.mark.parametrize("direction", ["pairwise", "gradient"])
def test_beta_zero_makes_the_loss_constant_in_epsilon(direction):
    """ε enters the loss only through β·ε_i·a_ij, so with β = 0 the loss is the same for every ε
    and its gradient with respect to ε is exactly zero: no meta gradient can reach the
    perturbation network (why ``meta_iada`` rejects beta = 0). With β = 1 the gradient is not zero."""
    weight, bias, h, labels, cov = random_problem(12, batch=6)
    logits = (h @ weight.T + bias).requires_grad_()
    eps = torch.linspace(-0.9, 0.9, 6, dtype=torch.float64, requires_grad=True)
    for beta in (0.0, 1.0):
        loss = iada_loss(logits, None, labels, weight, cov, epsilon=eps, alpha=0.5, beta=beta, direction=direction)
        (grad,) = torch.autograd.grad(loss.sum(), eps, allow_unused=True, materialize_grads=True)
        others = [iada_loss(logits, None, labels, weight, cov, epsilon=e, alpha=0.5, beta=beta,
                            direction=direction).detach()
                  for e in (-eps.detach(), torch.zeros_like(eps), torch.full_like(eps, 0.5))]
        if beta == 0:
            assert torch.equal(grad, torch.zeros_like(eps))
            assert all(torch.equal(other, loss.detach()) for other in others)
        else:
            assert (grad.abs() > 1e-3).all()
            assert not any(torch.equal(other, loss.detach()) for other in others)
