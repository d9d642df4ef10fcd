"""The meta gradient on the test device: ``META_IADA_TEST_DEVICE`` (default ``cpu``; ``make
gpu-check`` runs these with ``cuda``).

On CUDA the kernels differ from the CPU's: cuDNN's BatchNorm saves other tensors for its
backward than the native kernel, so the forward-mode shortcut cannot reuse its statistics and
falls back to computing BatchNorm's tangent from the batch again (``_batch_norm_dual``). These
tests check, on whichever device they run, the maths (finite differences, float64) and that the
shortcut and its fallback give the gradient of the plain forward-mode pass (float32, the
kernels training uses), with the path each BatchNorm took asserted from its kernel.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from pipeline.methods.forward_primals import ForwardPrimals
from pipeline.methods.meta_gradient import MetaInputs, PseudoUpdate, TrainForward, meta_gradient
from pipeline.networks import build_network
from tests.methods.test_meta_gradient import (TinyCNN, assert_matches_finite_differences, meta_objective,
                                              problem)

DEVICE = os.environ.get("META_IADA_TEST_DEVICE", "cpu")
pytestmark = pytest.mark.device


@pytest.fixture(scope="module")
def device() -> torch.device:
    dev = torch.device(DEVICE)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"META_IADA_TEST_DEVICE={DEVICE} but torch sees no CUDA device")
    return dev


@pytest.mark.parametrize("scope", ["head", "full"])
def test_meta_gradient_matches_finite_differences_on_the_device(device, scope):
    torch.manual_seed(0)
    net, omega, x, y, meta_x, meta_y, c, train_loss = problem(TinyCNN(), (3, 6, 6), torch.float64, device=device)
    assert x.device.type == device.type and next(net.parameters()).device.type == device.type
    lr = 0.5
    primals = ForwardPrimals(net)
    with primals.record():
        features = net.features(x)
    meta_loss, grads = meta_gradient(net, omega, train_loss,
                                     batch=TrainForward(x, features, net.classifier(features), c, primals),
                                     meta=MetaInputs(meta_x, meta_y), pseudo=PseudoUpdate(lr, scope))
    assert all(g.device.type == device.type for g in grads)

    def objective():
        return meta_objective(net, omega, x, c, meta_x, meta_y, train_loss, lr, scope)

    assert meta_loss.item() == pytest.approx(objective(), rel=1e-10)
    assert_matches_finite_differences(grads, omega, objective)


def batch_norm_kernels(net: nn.Module, x: torch.Tensor) -> list[str]:
    """The autograd node each BatchNorm of ``net`` gets on ``x`` (the kernel torch picked)."""
    kernels: list[str] = []
    hooks = [m.register_forward_hook(lambda m, a, out: kernels.append(type(out.grad_fn).__name__))
             for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        net.features(x)
    finally:
        for h in hooks:
            h.remove()
    return kernels


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_mode_shortcut_and_its_fallback_match_the_plain_pass(device, channels_last):
    """ResNet-8 in float32 as training runs it: the recorded primals (with each BatchNorm either
    recorded, on the native kernel, or recomputed, on cuDNN's) give the gradient of the plain
    forward-mode pass, which recomputes everything."""
    torch.manual_seed(0)
    net, omega, x, y, meta_x, meta_y, c, train_loss = problem(build_network("resnet8", 3), (3, 16, 16),
                                                              device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    kernels = batch_norm_kernels(net, x)
    native = sum(k == "NativeBatchNormBackward0" for k in kernels)
    if device.type == "cpu":
        assert native == len(kernels) == 7
    primals = ForwardPrimals(net)
    with primals.record():
        features = net.features(x)
    logits = net.classifier(features)
    recorded_norms = sum(isinstance(m, nn.BatchNorm2d) for m in primals.saved)
    assert recorded_norms == native  # a BatchNorm is recorded exactly when its kernel is the native one
    meta = MetaInputs(meta_x, meta_y)
    _, plain = meta_gradient(net, omega, train_loss, batch=TrainForward(x, features, logits, c), meta=meta,
                             pseudo=PseudoUpdate(0.5))
    _, shortcut = meta_gradient(net, omega, train_loss, batch=TrainForward(x, features, logits, c, primals),
                                meta=meta, pseudo=PseudoUpdate(0.5))
    assert not primals.saved  # consumed
    for a, b in zip(plain, shortcut):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=2e-4, atol=1e-6)
