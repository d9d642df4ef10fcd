"""Ω's optimizer: its weight decay must not drown a weak meta gradient (method.md §4)."""

from __future__ import annotations

import torch

from pipeline.params.schema import build
from pipeline.methods import REGISTRY, TrainInfo
from pipeline.networks import build_network

CLASSES, TRAIN = 4, 64


def meta_iada(**params):
    torch.manual_seed(0)
    net = build_network("resnet8", CLASSES)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    info = TrainInfo(CLASSES, torch.full((CLASSES,), TRAIN // CLASSES), TRAIN, net.feature_dim, torch.device("cpu"))
    cls = REGISTRY["meta_iada"]
    return cls(build(cls.Config, params, "methods.meta_iada"), net, opt, info)


def input_sensitivity(omega: torch.nn.Module, c: torch.Tensor) -> float:
    """Mean over samples of ||∂ε_i/∂c_i||: how much the strategy depends on the characteristics."""
    c = c.clone().requires_grad_()
    (grad,) = torch.autograd.grad(omega(c).sum(), c)  # BatchNorm couples rows only through the batch mean
    return grad.norm(dim=1).mean().item()


def test_weak_meta_gradient_is_not_drowned_by_the_weight_decay():
    """A meta gradient of RMS ~1e-6 (what reaches Ω at a pseudo-step lr η = 1e-3 on ResNet-8)
    against λ = 1e-4: with Adam's coupled L2 term the update follows λΩ and Adam's normalised
    step shrinks every weight by ~lr per step, so after 300 steps ε no longer depends on its
    inputs; with decoupled decay (AdamW) the decay is lr·λ·Ω per step and the sensitivity stays."""
    method = meta_iada(perturbation_weight_decay=1e-4, perturbation_lr=1e-3)
    omega, opt = method.perturbation_net, method.perturbation_optimizer
    g = torch.Generator().manual_seed(1)
    c = torch.randn(256, omega.body[0].num_features, generator=g)
    target = torch.tanh(c[:, 0] - c[:, 1])  # a signal that needs the inputs
    before = input_sensitivity(omega, c)
    for _ in range(300):
        opt.zero_grad(set_to_none=True)
        loss = (omega(c) - target).square().mean()
        grads = torch.autograd.grad(loss, list(omega.parameters()))
        rms = torch.cat([x.flatten() for x in grads]).square().mean().sqrt()
        for p, x in zip(omega.parameters(), grads):
            p.grad = x * (1e-6 / rms)  # weak: RMS 1e-6, the direction of a real signal
        opt.step()
    after = input_sensitivity(omega, c)
    assert after > 0.5 * before, (before, after)
    weight_norm = torch.cat([p.flatten() for p in omega.parameters()]).norm()
    assert 1e-4 * weight_norm > 1e-6 * 10  # the L2 term would indeed dominate this gradient


def test_epoch_metrics_report_omega_norm_and_the_gradient_to_decay_ratio():
    method = meta_iada(perturbation_weight_decay=1e-4)
    for p in method.perturbation_net.parameters():
        p.grad = torch.full_like(p, 1e-5)
    method.epoch_sums[5] += 1  # one meta step whose gradient norm was 3e-5
    method.epoch_sums[6] += 3e-5
    metrics = method.epoch_metrics()
    norm = torch.cat([p.flatten() for p in method.perturbation_net.parameters()]).norm().item()
    assert abs(metrics["omega_norm"] - norm) < 1e-6 * norm
    assert abs(metrics["omega_meta_grad_norm"] - 3e-5) < 1e-12
    assert abs(metrics["omega_grad_over_decay"] / (3e-5 / (1e-4 * norm)) - 1) < 1e-5
