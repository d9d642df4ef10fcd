"""Every registered method runs through the :class:`Method` interface on tiny data and resumes."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.methods.characteristics import CHARACTERISTICS
from pipeline.params.schema import ParamError, build
from pipeline.methods.losses import iada_loss
from pipeline.methods import REGISTRY, Batch, Method, StepContext, TrainInfo
from pipeline.evaluation.metrics import predict
from pipeline.networks import FeatureClassifier, build_network

CLASSES, TRAIN, BATCH = 4, 32, 8

CASES = [
    ("ce", {}),
    ("la", {}),
    ("isda", {}),
    ("isda", {"covariance": "diagonal"}),
    ("iada", {}),
    ("iada", {"direction": "gradient", "epsilon": -0.3}),
    ("meta_iada", {}),
    ("meta_iada", {"meta_scope": "head"}),
    ("meta_iada", {"meta_interval": 2, "epsilon_sign": "adversarial"}),
    ("meta_iada", {"meta_scope": "head", "class_balanced": True, "cb_beta": 0.9}),
    ("meta_iada", {"meta_scope": "head", "epsilon_sign": "anti", "direction": "gradient",
                   "covariance": "diagonal", "pseudo_step": "optimizer",
                   "characteristics": ["loss", "d_loss", "class_proportion"]}),
]


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(TRAIN, 3, 8, 8, generator=g)
    y = torch.arange(TRAIN) % CLASSES
    meta = Batch(torch.randn(BATCH, 3, 8, 8, generator=g), torch.arange(BATCH) % CLASSES,
                 torch.arange(BATCH))
    return x, y, meta


def make(name: str, params: dict) -> tuple[Method, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = build_network("resnet8", CLASSES)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    info = TrainInfo(CLASSES, torch.full((CLASSES,), TRAIN // CLASSES), TRAIN, net.feature_dim,
                     torch.device("cpu"))
    cls = REGISTRY[name]
    return cls(build(cls.Config, params, f"methods.{name}"), net, opt, info), net, opt


def step(method: Method, x, y, meta, i: int) -> dict[str, float]:
    index = torch.arange(i * BATCH, (i + 1) * BATCH) % TRAIN
    ctx = StepContext(epoch=2, total_epochs=4, step=i, lr=0.05, meta_batch=lambda: meta)
    return method.update(Batch(x[index], y[index], index), ctx)


def saved(obj) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_method_runs_and_resumes_exactly(name, params):
    x, y, meta = data()
    method, net, opt = make(name, params)
    for i in range(3):
        out = step(method, x, y, meta, i)
        assert np.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    metrics = method.epoch_metrics()
    assert all(np.isfinite(v) for v in metrics.values())
    state = saved({"net": net.state_dict(), "opt": opt.state_dict(),
                   "method": method.state_dict(), "extra": method.extra_state_dict()})

    twin, twin_net, twin_opt = make(name, params)
    twin_net.load_state_dict(state["net"])
    twin_opt.load_state_dict(state["opt"])
    twin.load_state_dict(state["method"])
    twin.load_extra_state_dict(state["extra"])
    for i in (3, 4):
        torch.manual_seed(i)
        expected = step(method, x, y, meta, i)
        torch.manual_seed(i)
        assert step(twin, x, y, meta, i) == expected
    for a, b in zip(net.state_dict().values(), twin_net.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(method.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert method.epoch_metrics() == twin.epoch_metrics()


@pytest.mark.parametrize("sign,low,high", [("both", -1, 1), ("adversarial", 0, 1), ("anti", -1, 0)])
def test_meta_iada_scores_and_metrics(sign, low, high):
    x, y, meta = data()
    method, _, _ = make("meta_iada", {"epsilon_sign": sign, "meta_scope": "head"})
    for i in range(2):  # rows 0-15 seen, 16-31 not
        step(method, x, y, meta, i)
    eps = method.sample_scores()["epsilon"]
    assert eps.dtype == np.float32 and eps.shape == (TRAIN,)
    assert np.isnan(eps[16:]).all()
    assert ((eps[:16] >= low) & (eps[:16] <= high)).all()
    metrics = method.epoch_metrics()
    assert metrics["eps_mean"] == pytest.approx(float(eps[:16].astype(np.float64).mean()), rel=1e-6)
    assert metrics["eps_adv_share"] == pytest.approx(float((eps[:16] > 0).mean()))
    assert {f"eps_class_mean/{c}" for c in range(CLASSES)} <= set(metrics)
    assert "meta_loss" in metrics and "eps_std" in metrics
    # the sums restart every epoch: only Ω's norm (a state, not a sum) is reported without steps
    assert set(method.epoch_metrics()) == {"omega_norm"}
    assert set(method.artifacts()) == {"perturbation_net"}


def test_meta_interval_skips_meta_steps():
    x, y, meta = data()
    method, _, _ = make("meta_iada", {"meta_interval": 2, "meta_scope": "head"})
    omega = [p.clone() for p in method.perturbation_net.parameters()]
    step(method, x, y, meta, 1)  # step 1: no meta step, Ω unchanged
    assert all(torch.equal(a, b) for a, b in zip(omega, method.perturbation_net.parameters()))
    step(method, x, y, meta, 2)
    assert not all(torch.equal(a, b) for a, b in zip(omega, method.perturbation_net.parameters()))


@pytest.mark.parametrize("name,params", [
    ("meta_iada", {"meta_interval": 0}),
    ("meta_iada", {"direction": "sideways"}),
    ("meta_iada", {"meta_scope": "backbone"}),
    ("meta_iada", {"epsilon_sign": "positive"}),
    ("meta_iada", {"characteristics": ["loss", "accuracy"]}),
    ("meta_iada", {"characteristics": []}),
    ("meta_iada", {"perturbation_lr": 0}),
    ("iada", {"epsilon": 1.5}),
    ("isda", {"covariance": "spherical"}),
    ("isda", {"alpha": -0.1}),
])
def test_bad_config_is_rejected(name, params):
    with pytest.raises(ParamError):
        build(REGISTRY[name].Config, params, f"methods.{name}")


def test_pseudo_step_optimizer_needs_sgd():
    net = build_network("resnet8", CLASSES)
    info = TrainInfo(CLASSES, torch.full((CLASSES,), 8), TRAIN, net.feature_dim, torch.device("cpu"))
    cfg = build(REGISTRY["meta_iada"].Config, {"pseudo_step": "optimizer"}, "methods.meta_iada")
    with pytest.raises(ParamError, match="SGD"):
        REGISTRY["meta_iada"](cfg, net, torch.optim.Adam(net.parameters()), info)


def test_meta_iada_rejects_beta_zero():
    """β = 0 removes ε from the loss (β·ε·a_ij), so the meta gradient reaching Ω is exactly zero
    (tests/test_losses.py::test_beta_zero_makes_the_loss_constant_in_epsilon): refused when the
    config is built, with the reason; any β > 0 is accepted."""
    cls = REGISTRY["meta_iada"].Config
    with pytest.raises(ParamError, match=r"methods\.meta_iada\.beta = 0 .*meta gradient.*beta > 0"):
        build(cls, {"beta": 0.0}, "methods.meta_iada")
    assert build(cls, {"beta": 0.25}, "methods.meta_iada").beta == 0.25
    assert build(REGISTRY["iada"].Config, {"beta": 0.0}, "methods.iada").beta == 0.0  # no Ω there


@pytest.mark.parametrize("name", ["isda", "iada", "meta_iada", "metasaug"])
def test_class_balanced_switch_is_validated(name):
    cls = REGISTRY[name].Config
    assert build(cls, {}, f"methods.{name}").class_balanced is (name == "metasaug")  # on in MetaSAug only
    cfg = build(cls, {"class_balanced": True, "cb_beta": 0.99}, f"methods.{name}")
    assert cfg.class_balanced and cfg.cb_beta == 0.99
    for bad in (1.0, -0.1):
        with pytest.raises(ParamError, match="cb_beta"):
            build(cls, {"cb_beta": bad}, f"methods.{name}")
    assert build(cls, {"class_balanced": True, "cb_epoch": 96}, f"methods.{name}").cb_epoch == 96
    with pytest.raises(ParamError, match=rf"methods\.{name}\.cb_epoch = 96 does nothing with "
                                         rf"methods\.{name}\.class_balanced = false"):
        build(cls, {"class_balanced": False, "cb_epoch": 96}, f"methods.{name}")
    with pytest.raises(ParamError, match="cb_epoch = -1 is out of range"):
        build(cls, {"class_balanced": True, "cb_epoch": -1}, f"methods.{name}")


# Unequal training counts (sum TRAIN), for the class-balanced and logit-adjustment tests.
COUNTS = [20, 8, 3, 1]


def make_with(name: str, params: dict, counts: list[int],
              dtype: torch.dtype = torch.float32) -> tuple[Method, FeatureClassifier, torch.optim.Optimizer]:
    """As :func:`make`, with training class counts ``counts``; ``dtype`` float64 also converts the
    method's class covariance (the network and Σ must share a dtype)."""
    torch.manual_seed(0)
    net = build_network("resnet8", CLASSES).to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    info = TrainInfo(CLASSES, torch.tensor(counts), sum(counts), net.feature_dim, torch.device("cpu"))
    cls = REGISTRY[name]
    method = cls(build(cls.Config, params, f"methods.{name}"), net, opt, info)
    if hasattr(method, "class_covariance"):
        method.class_covariance.to(dtype)
    return method, net, opt


def twin_optimizer(optimizer: torch.optim.Optimizer, params) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s class over ``params`` with a copy of its hyperparameters
    and state (momentum buffers, Adam moments and step counts)."""
    twin = type(optimizer)(params)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return twin


def class_weights_by_hand(beta: float) -> torch.Tensor:
    """w_c = (1 − β)/(1 − β^{n_c}) for COUNTS, rescaled to Σ_c w_c = C, float64."""
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    return torch.tensor([r * len(raw) / sum(raw) for r in raw], dtype=torch.float64)


@pytest.mark.parametrize("name,params", [
    ("isda", {}),
    ("iada", {"epsilon": 0.3}),
    ("iada", {"epsilon": -0.4, "direction": "gradient", "covariance": "diagonal"}),
    ("iada", {"epsilon": 0.3, "cb_epoch": 3}),  # weighted from global epoch 3 on: the step below
    ("isda", {"cb_epoch": 4}),  # deferred past the step below: every class weighs 1
])
def test_class_balanced_loss_is_the_weighted_mean(name, params):
    """With ``class_balanced`` the step minimises Σ_i w_{y_i} L_i / Σ_i w_{y_i} (MetaSAug's
    F.cross_entropy(weight=w) normalisation), w_c by the formula written out here: the reported
    loss and the network after the SGD step equal a twin that steps on that loss, computed by
    hand from iada_loss. The batch's labels repeat unequally, so the plain mean of w_{y_i} L_i
    (or of L_i) differs from it. Before ``cb_epoch`` (the step is at epoch 3) w ≡ 1."""
    beta_cb = 0.9
    method, net, opt = make_with(name, {**params, "class_balanced": True, "cb_beta": beta_cb}, COUNTS,
                                 torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3] * 2)
    for i in range(2):  # a covariance first, so that α_t Σ matters
        index = torch.arange(8 * i, 8 * i + 8)
        ctx = StepContext(epoch=2, total_epochs=4, step=i, lr=0.05, meta_batch=lambda: None)
        method.update(Batch(x[index], y[index], index), ctx)
    twin_net = copy.deepcopy(net)
    twin_opt = twin_optimizer(opt, twin_net.parameters())
    cov = method.class_covariance.covariance.clone()
    index = torch.arange(8)
    ctx = StepContext(epoch=3, total_epochs=4, step=2, lr=0.05, meta_batch=lambda: None)
    reported = method.update(Batch(x[index], y[index], index), ctx)["loss"]

    cfg = method.cfg
    eps = torch.full((8,), float(getattr(cfg, "epsilon", 0.0)), dtype=torch.float64)
    logits = twin_net(x[index])
    per_sample = iada_loss(logits, None, y[index], twin_net.classifier.weight, cov, epsilon=eps,
                           alpha=cfg.alpha * 3 / 4, beta=getattr(cfg, "beta", 0.0),
                           direction=getattr(cfg, "direction", "pairwise"))
    w = class_weights_by_hand(beta_cb)[y[index]]
    weighted = (w * per_sample).sum() / w.sum()
    loss = weighted if params.get("cb_epoch", 0) <= 3 else per_sample.mean()
    assert reported == pytest.approx(loss.item(), rel=1e-12)
    assert abs((w * per_sample).mean().item() - weighted.item()) > 1e-3  # the normalisation matters
    assert abs(per_sample.mean().item() - weighted.item()) > 1e-3  # and so do the weights
    twin_opt.zero_grad()
    loss.backward()
    twin_opt.step()
    for (k, a), b in zip(net.state_dict().items(), twin_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=k)


def test_logit_adjustment_loss_by_hand():
    """``la``: CE on z + τ·log π with π_c = n_c / N from the training counts (written out here,
    τ = 1.5); a sign flip or a missing τ gives another value. The SGD step is the step on that
    loss, and nothing else changes the network (the prior is not folded into it)."""
    tau = 1.5
    method, net, opt = make_with("la", {"tau": tau}, COUNTS)
    torch.manual_seed(0)  # the network make_with builds, without a method
    for (k, a), b in zip(net.state_dict().items(), build_network("resnet8", CLASSES).state_dict().values()):
        assert torch.equal(a, b), k
    twin_net = copy.deepcopy(net)
    twin_opt = twin_optimizer(opt, twin_net.parameters())
    g = torch.Generator().manual_seed(4)
    x = torch.randn(BATCH, 3, 8, 8, generator=g)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    batch = Batch(x, y, torch.arange(BATCH))
    ctx = StepContext(epoch=0, total_epochs=1, step=0, lr=0.05, meta_batch=lambda: None)
    log_prior = torch.tensor([math.log(n / sum(COUNTS)) for n in COUNTS])
    loss, logits = method.loss(batch, ctx)
    z = twin_net(x)
    torch.testing.assert_close(logits, z, rtol=0, atol=0)  # the raw logits
    expected = F.cross_entropy(z + tau * log_prior, y)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    for wrong in (F.cross_entropy(z - tau * log_prior, y), F.cross_entropy(z + log_prior, y)):
        assert abs(loss.item() - wrong.item()) > 1e-3
    method.update(batch, ctx)
    twin_opt.zero_grad()
    F.cross_entropy(twin_net(x) + tau * log_prior, y).backward()
    twin_opt.step()
    for (k, a), b in zip(net.state_dict().items(), twin_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_logit_adjustment_predicts_with_raw_logits():
    """At evaluation the prior is not added: after ``la`` training steps, the logits that
    :func:`pipeline.evaluation.metrics.predict` gives are the network's own eval-mode outputs z (those of a
    fresh network loaded with the trained weights, which knows nothing of the method), not
    z + τ·log π, and its predictions differ from the prior-shifted ones on this batch."""
    tau = 3.0
    method, net, _ = make_with("la", {"tau": tau}, COUNTS)
    x, y, _ = data()
    for i in range(2):
        index = torch.arange(i * BATCH, (i + 1) * BATCH)
        ctx = StepContext(epoch=0, total_epochs=1, step=i, lr=0.05, meta_batch=lambda: None)
        method.update(Batch(x[index], y[index], index), ctx)

    class Loader:  # what predict needs of a BatchLoader
        def epoch(self, epoch: int):
            return iter([Batch(x[:16], y[:16], torch.arange(16)), Batch(x[16:], y[16:], torch.arange(16, 32))])

    got = predict(net, Loader())
    fresh = build_network("resnet8", CLASSES)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        raw = fresh.eval()(x).numpy()
    np.testing.assert_allclose(got, raw, rtol=1e-6, atol=1e-6)
    shifted = raw + tau * np.log(np.array(COUNTS) / sum(COUNTS))
    assert (got.argmax(1) != shifted.argmax(1)).any()


def functional_forward(net: FeatureClassifier, params: dict[str, torch.Tensor],
                       x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h, z of ``x`` under ``params`` (the others: the network's own), in the network's mode,
    on copies of its buffers: BatchNorm uses the batch's statistics and its running statistics
    are not written. h is the classifier's input, caught by a hook."""
    state = {k: v.clone() for k, v in net.named_buffers()}
    state.update(dict(net.named_parameters()))
    state.update(params)
    caught: list[torch.Tensor] = []
    hook = net.classifier.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
    try:
        z = torch.func.functional_call(net, state, (x,))
    finally:
        hook.remove()
    return caught[0], z


def characteristics_by_hand(z: torch.Tensor, h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                            history: torch.Tensor, seen: torch.Tensor, class_avg_loss: torch.Tensor,
                            counts: list[int]) -> torch.Tensor:
    """The 15 characteristics of method.md §3, in its order, from the formulas (float64): with
    p = softmax(z), 1-6 = −log p_y, z_y, p_y, ||e_y − p||, p_y − max_{j≠y} p_j, Σ_j p_j log p_j;
    7-12 = 1-6 minus the sample's ``history`` row where ``seen``, else 0; 13 = n_y/N; 14 =
    ``class_avg_loss``[y]; 15 = cos(h, w_y). The history and the class averages are the method's
    state before the step (what earlier steps recorded)."""
    rows = []
    for i, label in enumerate(y.tolist()):
        zi = z[i].double()
        p = torch.softmax(zi, 0)
        base = torch.stack([-torch.log(p[label]), zi[label], p[label],
                            (F.one_hot(torch.tensor(label), len(zi)).double() - p).norm(),
                            p[label] - torch.cat([p[:label], p[label + 1:]]).max(),
                            (p * torch.log(p)).sum()])
        change = base - history[i].double() if seen[i] else torch.zeros(6, dtype=torch.float64)
        wy = weight[label].double()
        cosine = (h[i].double() @ wy) / (h[i].double().norm() * wy.norm())
        rows.append(torch.cat([base, change, torch.tensor([counts[label] / sum(counts),
                                                           float(class_avg_loss[label])],
                                                          dtype=torch.float64), cosine.view(1)]))
    return torch.stack(rows)


@pytest.mark.parametrize("scope,params", [
    ("full", {}),
    ("head", {}),
    ("full", {"class_balanced": True, "cb_beta": 0.9, "direction": "gradient"}),
])
def test_meta_iada_step_equals_the_textbook_procedure(scope, params):
    """One Meta-IADA step against method.md §5 written out here, in float64 (network and Σ; Ω
    and the characteristics are float32 in the method):

    c by the formulas of §3 (on the batch's forward: training mode, batch statistics);
    1. pseudo step: ε = Ω(c) with graph, L = (weighted) mean IADA loss with Σ before this batch's
       update and α_t = α·epoch/total, θ' = θ − η·∇_θ L with create_graph (torch.func on copies of
       the buffers: BatchNorm with the batch's statistics, running statistics untouched; ``head``:
       W, b only, on detached features);
    2. meta loss CE(f_θ'(x_meta), y_meta) (training mode), its gradient into Ω by backpropagating
       through θ' (double backward), one step of an optimizer of the method's class with a copy
       of its hyperparameters and state;
    3. real step: a fresh forward (running statistics updated once), ε = Ω'(c) detached, the
       SGD step of a copy of the network optimizer.

    The method's Ω gradient (left in .grad by the meta step), Ω (parameters and BatchNorm
    statistics) and the network (parameters and buffers) after its step must equal these. Two
    earlier steps and an epoch end give the step a covariance, momentum, Adam state, a history
    (the batch is revisited) and class-average losses. The batch's classes repeat unequally, so
    that a plain mean of w_{y_i} L_i differs from the weighted mean."""
    counts = COUNTS if params.get("class_balanced") else [TRAIN // CLASSES] * CLASSES
    method, net, opt = make_with("meta_iada", {"meta_scope": scope, **params}, counts, torch.float64)
    x, _, meta = data()
    x, meta = x.double(), Batch(meta.x.double(), meta.y, meta.index)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0] * 4)  # classes repeat unequally within a batch
    for i in range(2):
        step(method, x, y, meta, i)
    method.epoch_metrics()  # epoch end: the class-average losses roll over
    index = torch.arange(BATCH)  # revisited: the change characteristics are not 0
    xb, yb = x[index], y[index]

    twin_net, omega = copy.deepcopy(net), copy.deepcopy(method.perturbation_net)
    twin_opt = twin_optimizer(opt, twin_net.parameters())
    omega_opt = twin_optimizer(method.perturbation_optimizer, omega.parameters())
    state = method.characteristics
    history, seen = state.history[index].clone(), state.seen[index].clone()
    class_avg_loss = state.class_avg_loss.clone()
    cov = method.class_covariance.covariance.clone()
    cfg, lr, alpha = method.cfg, 0.05, method.cfg.alpha * 2 / 4
    weights = class_weights_by_hand(0.9)[yb] if cfg.class_balanced else torch.ones(BATCH, dtype=torch.float64)

    ctx = StepContext(epoch=2, total_epochs=4, step=2, lr=lr, meta_batch=lambda: meta)
    method.update(Batch(xb, yb, index), ctx)

    def train_loss(z, weight, eps):
        per_sample = iada_loss(z, None, yb, weight, cov, epsilon=eps, alpha=alpha, beta=cfg.beta,
                               direction=cfg.direction)
        return (weights * per_sample).sum() / weights.sum()

    # characteristics
    theta = dict(twin_net.named_parameters())
    h, z = functional_forward(twin_net, theta, xb)
    c = characteristics_by_hand(z.detach(), h.detach(), yb, twin_net.classifier.weight.detach(), history, seen,
                                class_avg_loss, counts)
    c = c[:, [CHARACTERISTICS.index(n) for n in cfg.characteristics]].float()
    # 1. pseudo step
    eps = omega(c)
    if scope == "full":
        live = theta
        pseudo = train_loss(z, theta["classifier.weight"], eps)
    else:
        live = {k: theta[f"classifier.{k}"] for k in ("weight", "bias")}
        pseudo = train_loss(h.detach() @ live["weight"].T + live["bias"], live["weight"], eps)
    grads = torch.autograd.grad(pseudo, list(live.values()), create_graph=True)
    updated = {k: p - lr * g for (k, p), g in zip(live.items(), grads)}
    # 2. meta step
    if scope == "full":
        _, meta_z = functional_forward(twin_net, updated, meta.x)
    else:
        with torch.no_grad():
            meta_h, _ = functional_forward(twin_net, {}, meta.x)
        meta_z = meta_h @ updated["weight"].T + updated["bias"]
    meta_grads = torch.autograd.grad(F.cross_entropy(meta_z, meta.y), list(omega.parameters()))
    for p, g in zip(omega.parameters(), meta_grads):
        p.grad = g
    omega_opt.step()
    # 3. real step
    with torch.no_grad():
        eps = omega(c)
    twin_opt.zero_grad()
    train_loss(twin_net(xb), twin_net.classifier.weight, eps).backward()
    twin_opt.step()

    for p, g in zip(method.perturbation_net.parameters(), meta_grads):
        assert g.abs().max() > 0
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5 * g.abs().max().item())
    for (k, a), b in zip(method.perturbation_net.state_dict().items(), omega.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)
    for (k, a), b in zip(net.state_dict().items(), twin_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=k)


def test_a_shared_real_step_is_the_step_with_the_old_epsilon_and_the_same_meta_step():
    """``real_step: shared`` reuses the pseudo step's gradient: θ moves exactly as a real step with
    ε = Ω_before(c) would move it, and Ω takes the same meta step as with ``exact``."""
    import copy

    from pipeline.methods.iada import MetaIADA, MetaIADAConfig

    torch.manual_seed(0)
    net = build_network("resnet8", 4).train()
    info = TrainInfo(4, torch.tensor([30, 20, 10, 5]), 65, net.feature_dim, torch.device("cpu"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(8, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]), torch.arange(8))
    meta = Batch(torch.randn(8, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.arange(8))
    ctx = StepContext(epoch=3, total_epochs=4, step=0, lr=0.1, meta_batch=lambda: meta)
    shared = MetaIADA(MetaIADAConfig(real_step="shared", history_warmup=False), net, opt, info)
    exact = copy.deepcopy(shared)
    exact.cfg = MetaIADAConfig(real_step="exact", history_warmup=False)
    reference = copy.deepcopy(shared)  # the real step by hand, with Ω before its update
    net_r = reference.network
    features = net_r.features(batch.x)
    logits = net_r.classifier(features)
    c = reference.characteristics.compute(logits, features, batch.y, batch.index, net_r.classifier.weight)
    with torch.no_grad():
        eps_old = reference.perturbation_net(c)
    loss = reference._per_sample_loss(logits, net_r.classifier.weight, eps_old, features=features, labels=batch.y,
                                      alpha=0.5 * 3 / 4, class_weights=reference.class_weights).mean()
    reference.optimizer.zero_grad()
    loss.backward()
    reference.optimizer.step()

    shared.update(batch, ctx)
    exact.update(batch, ctx)
    for a, b in zip(shared.network.parameters(), net_r.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(shared.perturbation_net.parameters(), exact.perturbation_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(shared.network.parameters(), exact.network.parameters()))


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"groupdro", "jtt"}))
def test_every_method_reports_the_plain_cross_entropy_of_its_batch(name):
    """``ce`` of a step is CE(z, y) of the network's logits on the step's batch, before the step
    (what evaluation would predict from), whatever the method minimises (``loss``), so that one
    curve compares methods. (groupdro and jtt need group labels; their step is the base class's.)"""
    method, net, _ = make(name, {"drw_epoch": 0} if name == "ldam_drw" else {})  # drw_epoch: no schedule here
    x, y, meta = data()
    index = torch.arange(BATCH)
    with torch.no_grad():  # training mode as in the step: the batch's own BatchNorm statistics
        expected = F.cross_entropy(copy.deepcopy(net).train()(x[index]), y[index]).item()
    metrics = step(method, x, y, meta, 0)
    assert metrics["ce"] == pytest.approx(expected, rel=1e-4)
