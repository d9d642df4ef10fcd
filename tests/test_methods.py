"""Every registered method runs through the :class:`Method` interface on tiny data and resumes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pipeline.config import ParamError, build
from pipeline.losses import alpha_at, iada_loss
from pipeline.meta import meta_step, stateless_forward
from pipeline.methods import REGISTRY, Batch, Method, StepContext, TrainInfo
from pipeline.networks import build_network

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
    assert method.epoch_metrics() == {}  # the sums restart every epoch
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


@pytest.mark.parametrize("scope", ["full", "head"])
def test_meta_iada_step_equals_the_textbook_procedure(scope):
    """The step shares one forward of the train batch between the pseudo and the real step. It
    must equal method.md §5 done literally: a stateless pseudo forward (BN statistics untouched),
    the meta step, then a fresh real forward (BN statistics updated once) and the SGD step."""
    x, y, meta = data()
    method, net, opt = make("meta_iada", {"meta_scope": scope})
    twin, twin_net, twin_opt = make("meta_iada", {"meta_scope": scope})
    for i in range(2):  # some history, covariance and momentum first
        step(method, x, y, meta, i)
        step(twin, x, y, meta, i)
    index = torch.arange(2 * BATCH, 3 * BATCH)
    ctx = StepContext(epoch=2, total_epochs=4, step=2, lr=0.05, meta_batch=lambda: meta)
    method.update(Batch(x[index], y[index], index), ctx)

    cov = twin.class_covariance.covariance
    alpha = alpha_at(twin.cfg.alpha, 2, 4)

    def train_loss(logits, weight, eps):
        return iada_loss(logits, None, y[index], weight, cov, eps, alpha)

    h, z = stateless_forward(twin_net, dict(twin_net.named_parameters()), x[index])
    c = twin.characteristics.compute(z, h, y[index], index, twin_net.classifier.weight)
    meta_step(twin_net, twin.perturbation_net, twin.perturbation_optimizer, train_loss, x[index],
              h, z, c, meta.x, meta.y, 0.05, scope)
    logits = twin_net(x[index])  # the real forward
    with torch.no_grad():
        eps = twin.perturbation_net(c)
    twin_opt.zero_grad()
    train_loss(logits, twin_net.classifier.weight, eps).mean().backward()
    twin_opt.step()
    for (k, a), b in zip(net.state_dict().items(), twin_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    for a, b in zip(method.perturbation_net.parameters(), twin.perturbation_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
