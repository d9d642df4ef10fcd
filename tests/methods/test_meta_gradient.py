"""The meta step: its Ω gradient against finite differences, and that it leaves θ alone."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from pipeline.params.schema import build
from pipeline.methods.losses import iada_loss
from pipeline.methods.forward_primals import ForwardPrimals, _batch_norm_tangent
from pipeline.methods.meta_gradient import (MetaInputs, PseudoUpdate, TrainForward, TrainLoss, meta_gradient, meta_step,
                                            pseudo_update)
from pipeline.methods import Batch, StepContext, TrainInfo
from pipeline.methods.iada import MetaIADA, MetaIADAConfig
from pipeline.networks import FeatureClassifier, build_network
from pipeline.methods.perturbation import PerturbationNet


class TinyMLP(FeatureClassifier):
    def __init__(self, inputs: int = 6, dim: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, dim), nn.BatchNorm1d(dim), nn.Tanh())
        self.feature_dim = dim
        self.classifier = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyCNN(FeatureClassifier):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.feature_dim = 8
        self.classifier = nn.Linear(8, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)


def problem(net: FeatureClassifier, x_shape: tuple[int, ...], dtype=torch.float32, seed=0, device="cpu"):
    """A train batch, a meta batch, Σ, characteristics and Ω for ``net`` (drawn on the CPU, then
    moved to ``device``, so that every device gets the same problem)."""
    g = torch.Generator().manual_seed(seed)
    net = net.to(dtype).train()
    x = torch.randn(8, *x_shape, generator=g, dtype=dtype)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    meta_x = torch.randn(6, *x_shape, generator=g, dtype=dtype)
    meta_y = torch.tensor([0, 1, 2, 2, 1, 0])
    dim = net.feature_dim
    root = torch.randn(3, dim, dim, generator=g, dtype=dtype)
    cov = root @ root.transpose(1, 2) / dim
    c = torch.randn(8, 4, generator=g, dtype=dtype)  # characteristics, K = 4
    omega = PerturbationNet(4).to(dtype).train()
    net, omega = net.to(device), omega.to(device)
    x, y, meta_x, meta_y, cov, c = (t.to(device) for t in (x, y, meta_x, meta_y, cov, c))

    def train_loss(logits, weight, eps):
        return iada_loss(logits, None, y, weight, cov, epsilon=eps, alpha=0.8, beta=1.0, direction="pairwise")

    return net, omega, x, y, meta_x, meta_y, c, train_loss


def meta_objective(net, omega, x, c, meta_x, meta_y, train_loss, lr, scope, optimizer=None):
    """L_meta(Ω) written out independently: a copy of the network takes one step on the IADA
    loss with ε = Ω(c) (of the whole network, or of W, b on fixed features), plain SGD or
    torch's own SGD with a copy of ``optimizer``'s state, then the meta batch's CE."""
    twin = copy.deepcopy(net)
    eps = omega(c).detach()
    if scope == "full":
        features = twin.features(x)
        params = list(twin.parameters())
    else:
        features = twin.features(x).detach()
        params = list(twin.classifier.parameters())
    loss = train_loss(twin.classifier(features), twin.classifier.weight, eps).mean()
    grads = torch.autograd.grad(loss, params)
    if optimizer is None:
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    else:
        twin_opt = torch.optim.SGD(twin.parameters(), lr=lr)
        twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for group in twin_opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, grads):
            p.grad = g
        twin_opt.step()
    with torch.no_grad():
        return F.cross_entropy(twin(meta_x), meta_y).item()


def recorded_forward(net: FeatureClassifier, x: torch.Tensor, c: torch.Tensor) -> TrainForward:
    """The train batch's forward as in training: its convolutions recorded for the meta step."""
    primals = ForwardPrimals(net)
    with primals.record():
        features = net.features(x)
    return TrainForward(x, features, net.classifier(features), c, primals)


@pytest.mark.parametrize("pseudo_step", ["plain", "optimizer"])
@pytest.mark.parametrize("scope", ["head", "full"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_meta_gradient_matches_finite_differences(kind, scope, pseudo_step):
    torch.manual_seed(0)
    net, shape = (TinyMLP(), (6,)) if kind == "mlp" else (TinyCNN(), (3, 6, 6))
    net, omega, x, y, meta_x, meta_y, c, train_loss = problem(net, shape, torch.float64)
    optimizer = None
    if pseudo_step == "optimizer":  # momentum buffers from one earlier step
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                    weight_decay=5e-3)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    lr = 0.5
    primals = ForwardPrimals(net)  # as in training: the real forward's convolutions are reused
    with primals.record():
        features = net.features(x)
    logits = net.classifier(features)
    meta_loss, grads = meta_gradient(net, omega, train_loss, batch=TrainForward(x, features, logits, c, primals),
                                     meta=MetaInputs(meta_x, meta_y), pseudo=PseudoUpdate(lr, scope, optimizer))
    if scope == "full":
        assert not primals.saved  # consumed by the forward-mode pass

    def objective():
        return meta_objective(net, omega, x, c, meta_x, meta_y, train_loss, lr, scope, optimizer)

    assert meta_loss.item() == pytest.approx(objective(), rel=1e-12)
    assert_matches_finite_differences(grads, omega, objective)


def assert_matches_finite_differences(grads: list[torch.Tensor], omega: nn.Module,
                                      objective: Callable[[], float], directions: int = 3) -> None:
    """⟨∇_Ω L_meta, v⟩ against the central difference (L(Ω + s v) − L(Ω − s v))/(2 s) of
    ``objective`` along random directions v (float64, s = 1e-5)."""
    params = list(omega.parameters())
    g = torch.Generator().manual_seed(1)
    step = 1e-5
    for _ in range(directions):
        v = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]
        with torch.no_grad():
            for p, vi in zip(params, v):
                p += step * vi
        up = objective()
        with torch.no_grad():
            for p, vi in zip(params, v):
                p -= 2 * step * vi
        down = objective()
        with torch.no_grad():
            for p, vi in zip(params, v):
                p += step * vi
        analytic = sum((gi * vi).sum() for gi, vi in zip(grads, v)).item()
        assert analytic != 0
        assert (up - down) / (2 * step) == pytest.approx(analytic, rel=1e-5, abs=1e-10)


def class_balanced_method_loss(net: FeatureClassifier, y: torch.Tensor, cov: torch.Tensor, counts: list[int],
                               cb_beta: float, alpha: float) -> TrainLoss:
    """The pseudo step's loss as Meta-IADA hands it to meta_step (``train_loss``, a partial of its
    ``_per_sample_loss``) with ``class_balanced`` on, training counts ``counts`` and Σ = ``cov``."""
    cfg = build(MetaIADAConfig, {"class_balanced": True, "cb_beta": cb_beta}, "methods.meta_iada")
    info = TrainInfo(len(counts), torch.tensor(counts), sum(counts), net.feature_dim, torch.device("cpu"))
    method = MetaIADA(cfg, net, torch.optim.SGD(net.parameters(), lr=0.1), info)
    method.class_covariance.cov = cov
    return partial(method._per_sample_loss, features=None, labels=y, alpha=alpha, class_weights=method.class_weights)


@pytest.mark.parametrize("scope", ["head", "full"])
def test_meta_gradient_with_class_balanced_weights(scope):
    """With class-balanced weights the pseudo step minimises Σ_i w_{y_i} L_i / Σ_i w_{y_i},
    w_c = (1 − β)/(1 − β^{n_c}) (written out here; the rescaling to Σ_c w_c = C cancels in this
    ratio): L_meta from the method's loss equals the objective with that weighted mean written
    out by hand, not the unweighted one, and the Ω gradient through the method's loss matches
    finite differences of the hand-written objective. The meta loss itself stays plain CE."""
    torch.manual_seed(0)
    net, omega, x, y, meta_x, meta_y, c, _ = problem(TinyCNN(), (3, 6, 6), torch.float64)
    g = torch.Generator().manual_seed(5)
    root = torch.randn(3, net.feature_dim, net.feature_dim, generator=g, dtype=torch.float64)
    cov = root @ root.transpose(1, 2) / net.feature_dim
    counts, cb_beta, alpha, lr = [30, 6, 1], 0.9, 0.8, 0.5
    train_loss = class_balanced_method_loss(net, y, cov, counts, cb_beta, alpha)
    w = torch.tensor([(1 - cb_beta) / (1 - cb_beta ** n) for n in counts], dtype=torch.float64)[y]

    def by_hand(logits, weight, eps):  # per-sample terms whose batch mean is Σ w_i L_i / Σ w_i
        return iada_loss(logits, None, y, weight, cov, epsilon=eps, alpha=alpha) * w * len(w) / w.sum()

    def unweighted(logits, weight, eps):
        return iada_loss(logits, None, y, weight, cov, epsilon=eps, alpha=alpha)

    primals = ForwardPrimals(net)
    with primals.record():
        features = net.features(x)
    logits = net.classifier(features)
    meta_loss, grads = meta_gradient(net, omega, train_loss, batch=TrainForward(x, features, logits, c, primals),
                                     meta=MetaInputs(meta_x, meta_y), pseudo=PseudoUpdate(lr, scope))

    def objective(loss=by_hand):
        return meta_objective(net, omega, x, c, meta_x, meta_y, loss, lr, scope)

    assert meta_loss.item() == pytest.approx(objective(), rel=1e-12)
    assert abs(meta_loss.item() - objective(unweighted)) > 1e-6
    assert_matches_finite_differences(grads, omega, objective, directions=2)


@pytest.mark.parametrize("kind", ["cnn", "shared_relu", "resnet"])
def test_reusing_the_recorded_primals_changes_no_gradient(kind):
    """The forward-mode pass with the recorded primals (tangents only) gives the Ω gradient of
    the plain forward-mode pass: convolutions with and without bias, strided or not, ReLU modules
    (in place in the ResNet; one module called twice is not reused), BatchNorm from its recorded
    statistics, residual additions and padded shortcuts."""
    torch.manual_seed(0)
    if kind == "cnn":
        net = TinyCNN()
        net.body[3] = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        recorded = 6  # 2 convolutions, 2 ReLUs, 2 BatchNorms
    elif kind == "shared_relu":
        net = TinyCNN()
        net.body[5] = net.body[2]  # the same ReLU after both BatchNorms: its outputs differ
        recorded = 4  # the convolutions and BatchNorms only
    else:
        net = build_network("resnet8", 3)
        recorded = 7 * 3  # stem + 3 blocks x 2 convolutions; as many ReLUs and BatchNorms
    net, omega, x, y, meta_x, meta_y, c, train_loss = problem(net, (3, 8, 8), torch.float64)
    primals = ForwardPrimals(net)
    with primals.record():
        features = net.features(x)
    logits = net.classifier(features)
    assert len(primals.saved) == recorded
    meta = MetaInputs(meta_x, meta_y)
    _, plain = meta_gradient(net, omega, train_loss, batch=TrainForward(x, features, logits, c), meta=meta,
                             pseudo=PseudoUpdate(0.5))
    _, reused = meta_gradient(net, omega, train_loss, batch=TrainForward(x, features, logits, c, primals), meta=meta,
                              pseudo=PseudoUpdate(0.5))
    for a, b in zip(plain, reused):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("which", ["all", "input", "affine"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_tangent_is_the_derivative_of_batch_norm(which, channels_last):
    """The closed-form BatchNorm tangent (torch's backward kernel applied to ẋ, by symmetry of
    ∂y/∂x, plus γ̇·x̂ + β̇) against torch.func.jvp of F.batch_norm with the batch's statistics,
    for tangents in every input or only some of them."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (3 * torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64) + 1).contiguous(memory_format=fmt)
    weight = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    dots = [torch.randn(x.shape, generator=g, dtype=x.dtype).contiguous(memory_format=fmt),
            torch.randn(4, generator=g, dtype=x.dtype), torch.randn(4, generator=g, dtype=x.dtype)]
    if which == "input":
        dots[1:] = [torch.zeros(4, dtype=x.dtype)] * 2
    elif which == "affine":
        dots[0] = torch.zeros_like(x)
    eps = 1e-3

    def bn(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True, eps=eps)

    _, expected = torch.func.jvp(bn, (x, weight, bias), tuple(dots))
    _, mean, rstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
    x_dot, w_dot, b_dot = dots
    got = _batch_norm_tangent(x, None if which == "affine" else x_dot, mean, rstd, weight=weight,
                              weight_dot=None if which == "input" else w_dot,
                              bias_dot=None if which == "input" else b_dot, eps=eps)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_recorded_convolutions_are_refused_after_the_weights_change():
    net = TinyCNN()
    primals = ForwardPrimals(net)
    with primals.record():
        net(torch.randn(4, 3, 6, 6))
    with torch.no_grad():
        net.body[0].weight += 1  # e.g. an optimizer step between the forward and the meta step
    with pytest.raises(RuntimeError, match="changed since record"):
        with primals.reuse():
            pass


@pytest.mark.parametrize("scope", ["full", "head"])
def test_meta_step_leaves_the_network_alone(scope):
    torch.manual_seed(0)
    net, omega, x, y, meta_x, meta_y, c, train_loss = problem(TinyCNN(), (3, 8, 8))
    features = net.features(x)  # the real forward (updates the BN statistics once)
    logits = net.classifier(features)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    omega_before = [p.clone() for p in omega.parameters()]
    adam = torch.optim.Adam(omega.parameters(), lr=1e-3)
    meta_step(net, omega, adam, train_loss, batch=TrainForward(x, features, logits, c), meta=MetaInputs(meta_x, meta_y),
              pseudo=PseudoUpdate(0.1, scope))
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # parameters and BN running statistics
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in omega.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(omega.parameters(), omega_before))
    if scope == "full":  # the forward's graph is kept for the real step's backward
        F.cross_entropy(logits, y).backward()
        assert net.body[0].weight.grad is not None


def test_pseudo_update_follows_the_sgd_rule():
    """With ``optimizer`` the pseudo step is the step torch's SGD itself takes (weight decay,
    an existing momentum buffer, Nesterov)."""
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    F.mse_loss(net(torch.randn(5, 4)), torch.randn(5, 3)).backward()
    opt.step()  # creates momentum buffers
    grads = [torch.randn_like(p) for p in net.parameters()]
    params = dict(net.named_parameters())
    predicted = pseudo_update(params, grads, 0.1, opt)
    plain = pseudo_update(params, grads, 0.1)
    for p, g in zip(net.parameters(), grads):
        p.grad = g.clone()
    opt.step()
    for name, p in net.named_parameters():
        torch.testing.assert_close(predicted[name], p.detach())
    assert all(not torch.equal(plain[name], predicted[name]) for name in params)


@pytest.mark.parametrize("channels_last", [False, True])
def test_recorded_batch_norm_gives_the_primal_and_tangent_of_batch_norm(channels_last):
    """A training-mode BatchNorm under reuse() (its output from the statistics recorded in the
    real forward, in one pass) against torch.func.jvp of F.batch_norm with the batch's statistics."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bn = nn.BatchNorm2d(4, eps=1e-3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    x = (3 * torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64) + 1).contiguous(memory_format=fmt)
    dots = [torch.randn(x.shape, generator=g, dtype=x.dtype).contiguous(memory_format=fmt),
            torch.randn(4, generator=g, dtype=x.dtype), torch.randn(4, generator=g, dtype=x.dtype)]
    primals = ForwardPrimals(bn)
    with primals.record():
        bn(x.requires_grad_())
    assert bn in primals.saved
    x = x.detach()

    def batch_norm(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True, eps=bn.eps)

    expected, expected_dot = torch.func.jvp(batch_norm, (x, bn.weight.detach(), bn.bias.detach()), tuple(dots))
    with primals.reuse(), fwAD.dual_level():
        params = {"weight": fwAD.make_dual(bn.weight.detach(), dots[1]),
                  "bias": fwAD.make_dual(bn.bias.detach(), dots[2])}
        out, out_dot = fwAD.unpack_dual(torch.func.functional_call(bn, params, (fwAD.make_dual(x, dots[0]),)))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_dot, expected_dot, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("scope", ["head", "full"])
def test_mwn_meta_gradient_matches_finite_differences(scope, normalise):
    """Meta-Weight-Net through the same meta step: V (a 1-h-1 sigmoid net on the per-sample loss)
    in Ω's place, the weighted CE as the training loss (normalised by Σw, or not); its gradient
    against central differences of L_meta written out by a copy of the network."""
    from pipeline.methods.mwn import WeightingNet, weighted_loss

    torch.manual_seed(0)
    net, _, x, y, meta_x, meta_y, _, _ = problem(TinyCNN(), (3, 6, 6), torch.float64)
    vnet = WeightingNet(hidden=7).double()
    with torch.no_grad():
        cost = F.cross_entropy(copy.deepcopy(net)(x), y, reduction="none")[:, None]  # V's input [B, 1]

    def train_loss(logits, weight, w):
        return weighted_loss(logits, y, w, normalise)

    lr = 0.5
    meta_loss, grads = meta_gradient(net, vnet, train_loss, batch=recorded_forward(net, x, cost),
                                     meta=MetaInputs(meta_x, meta_y), pseudo=PseudoUpdate(lr, scope))

    def objective():
        return meta_objective(net, vnet, x, cost, meta_x, meta_y, train_loss, lr, scope)

    assert meta_loss.item() == pytest.approx(objective(), rel=1e-12)
    assert all(g.abs().sum() > 0 for g in grads)
    assert_matches_finite_differences(grads, vnet, objective)


def test_mwn_weighted_loss_is_each_codes_weighted_mean():
    """MWN's two losses, whose batch mean is the training loss. Class-imbalance code
    (meta-weight-net-class-imbalance.py:161-168): w / Σw, so scaling w changes nothing, and
    w = 1 on a subset S, 0 elsewhere, gives the mean CE over S (a weight-0 sample gets no
    gradient). Noisy-label code (MW-Net.py:207): mean of w·ℓ, linear in w, CE at w = 1. Both pass
    the gradient on to w (V's update). CE by hand: ℓ_i = log Σ_j e^{z_ij} − z_{iy_i}."""
    from pipeline.methods.mwn import weighted_loss

    rows, labels = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [1.0, 1.0, 0.0], [-0.5, 0.3, 2.0]], [0, 0, 1, 2]
    ell = [math.log(sum(math.exp(v) for v in z)) - z[y] for z, y in zip(rows, labels)]
    z, y = torch.tensor(rows, dtype=torch.float64, requires_grad=True), torch.tensor(labels)
    w = torch.tensor([0.2, 0.5, 0.9, 0.4], dtype=torch.float64)

    def mean(weights: torch.Tensor, normalise: bool) -> float:
        return weighted_loss(z, y, weights, normalise).mean().item()

    assert mean(w, True) == pytest.approx(mean(7 * w, True), rel=1e-12)
    subset = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    assert mean(subset, True) == pytest.approx((ell[1] + ell[2]) / 2, rel=1e-12)
    (grad,) = torch.autograd.grad(weighted_loss(z, y, subset, True).mean(), z)
    assert grad[0].abs().max() == 0 and grad[3].abs().max() == 0 and grad[1].abs().max() > 0
    assert mean(w, True) == pytest.approx(sum(a * b for a, b in zip(w.tolist(), ell)) / float(w.sum()), rel=1e-12)
    assert mean(torch.ones(4, dtype=torch.float64), False) == pytest.approx(sum(ell) / 4, rel=1e-12)
    assert mean(2 * w, False) == pytest.approx(2 * mean(w, False), rel=1e-12)
    assert mean(w, False) == pytest.approx(sum(a * b for a, b in zip(w.tolist(), ell)) / 4, rel=1e-12)
    # V learns through w: ∂L/∂w_i = (ℓ_i − L)/Σw normalised, ℓ_i / B plain (by hand from the means)
    leaf = w.clone().requires_grad_()
    (grad_w,) = torch.autograd.grad(weighted_loss(z.detach(), y, leaf, True).mean(), leaf)
    total = sum(a * b for a, b in zip(w.tolist(), ell)) / float(w.sum())
    assert grad_w.tolist() == pytest.approx([(e - total) / float(w.sum()) for e in ell], rel=1e-10)
    (grad_w,) = torch.autograd.grad(weighted_loss(z.detach(), y, leaf, False).mean(), leaf)
    assert grad_w.tolist() == pytest.approx([e / 4 for e in ell], rel=1e-12)


@pytest.mark.parametrize("scope", ["head", "full"])
def test_metasaug_covariance_meta_gradient_matches_finite_differences(scope):
    """MetaSAug through the same meta step: the class covariance Σ in Ω's place, the ISDA loss
    with class-balanced weights as the training loss; ∇_Σ L_meta against central differences of
    L_meta written out by a copy of the network."""
    from pipeline.methods.metasaug import CovarianceLeaf

    torch.manual_seed(0)
    net, _, x, y, meta_x, meta_y, _, _ = problem(TinyCNN(), (3, 6, 6), torch.float64)
    g = torch.Generator().manual_seed(1)
    root = torch.randn(3, net.feature_dim, net.feature_dim, generator=g, dtype=torch.float64)
    leaf = CovarianceLeaf(root @ root.transpose(1, 2) / net.feature_dim)
    w = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)[y]  # class-balanced weights

    def train_loss(logits, weight, eps):
        isda = iada_loss(logits, None, y, weight, leaf.sigma, epsilon=None, alpha=0.8)
        return isda * w * len(w) / w.sum()

    lr = 0.5
    c = torch.zeros(len(y), 1, dtype=torch.float64)
    meta_loss, grads = meta_gradient(net, leaf, train_loss, batch=recorded_forward(net, x, c),
                                     meta=MetaInputs(meta_x, meta_y), pseudo=PseudoUpdate(lr, scope))

    def objective():
        return meta_objective(net, leaf, x, c, meta_x, meta_y, train_loss, lr, scope)

    assert meta_loss.item() == pytest.approx(objective(), rel=1e-12)
    assert grads[0].abs().sum() > 0
    assert_matches_finite_differences(grads, leaf, objective)


def test_metasaug_at_the_ramps_start_takes_a_zero_covariance_step():
    """At α_t = 0 (MetaSAug's ramp at epoch 0, e.g. a schedule without CE pretraining) the loss
    does not depend on Σ: ∇_Σ L_meta = 0 and Σ' = Σ, where autograd would report Σ unused."""
    from pipeline.methods.metasaug import CovarianceLeaf

    torch.manual_seed(0)
    net, _, x, y, meta_x, meta_y, _, _ = problem(TinyCNN(), (3, 6, 6), torch.float64)
    leaf = CovarianceLeaf(torch.eye(net.feature_dim, dtype=torch.float64).repeat(3, 1, 1))

    def train_loss(logits, weight, eps):
        return iada_loss(logits, None, y, weight, leaf.sigma, epsilon=None, alpha=0.0)

    c = torch.zeros(len(y), 1, dtype=torch.float64)
    meta_loss, grads = meta_gradient(net, leaf, train_loss, batch=recorded_forward(net, x, c),
                                     meta=MetaInputs(meta_x, meta_y), pseudo=PseudoUpdate(0.5, "full"))
    assert torch.isfinite(meta_loss) and len(grads) == 1 and torch.equal(grads[0], torch.zeros_like(leaf.sigma))


@pytest.mark.parametrize("keep", [False, True])
def test_metasaug_takes_one_covariance_step_and_keeps_it_only_when_asked(keep):
    """Σ' = Σ − η_Σ ∇_Σ L_meta is the real step's covariance; MetaSAug's code does not write it
    back (keep_covariance: false, the estimate moves only with the batch's features)."""
    from pipeline.methods.metasaug import MetaSAug, MetaSAugConfig

    torch.manual_seed(0)
    net = TinyCNN()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    meta = Batch(torch.randn(6, 3, 6, 6, generator=g), torch.tensor([0, 1, 2, 2, 1, 0]), torch.arange(6))
    info = TrainInfo(3, torch.tensor([40, 20, 10]), 70, net.feature_dim, torch.device("cpu"))
    cfg = MetaSAugConfig(keep_covariance=keep, meta_lr=10.0)
    method = MetaSAug(cfg, net, torch.optim.SGD(net.parameters(), lr=0.1), info)
    method.class_covariance.update(torch.randn(30, net.feature_dim, generator=g), torch.arange(30) % 3)
    before = method.class_covariance.covariance.clone()
    ctx = StepContext(epoch=3, total_epochs=4, step=0, lr=0.1, meta_batch=lambda: meta)
    with method.forward_context(ctx):
        features = net.features(x)
    logits = net.classifier(features)
    train_loss = functools.partial(method._per_sample_loss, features=features, labels=y, alpha=0.2,
                                   class_weights=method.class_weights)
    method.epsilon(Batch(x, y, torch.arange(8)), ctx, features, logits, train_loss)
    stepped = method.current_covariance()
    assert not torch.allclose(stepped, before)  # one meta-gradient step was taken
    assert torch.equal(method.class_covariance.covariance, stepped if keep else before)
