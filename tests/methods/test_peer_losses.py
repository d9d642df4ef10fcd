"""The peers' baselines (pipeline/methods/longtail.py, robust.py) against their papers' formulas,
written out here by hand; every method steps through the :class:`Method` interface."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.params.schema import ParamError, build
from pipeline.methods import REGISTRY, Batch, StepContext, TrainInfo
from pipeline.methods import longtail, robust
from pipeline.networks import FeatureClassifier, build_network, cosine_logits

NAMES = ["focal", "cb_ce", "cb_focal", "ldam_drw", "balanced_softmax", "gce", "groupdro", "jtt"]
PEERS = {name: REGISTRY[name] for name in NAMES}

CLASSES = 4
COUNTS = [20, 8, 3, 1]  # unequal training counts
PAPER_MILESTONES = [160, 180]  # LDAM-DRW's CIFAR schedule: lr x0.01 from epoch 160 and 180 of 200


class TinyNet(FeatureClassifier):
    """x [B, D] -> h = tanh(V x + c) [B, A] -> z = W h + b: a fast FeatureClassifier."""

    def __init__(self, in_dim: int = 8, feature_dim: int = 16, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.body = nn.Linear(in_dim, feature_dim)
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x))


def make(name: str, params: dict, net: FeatureClassifier, counts: list[int] = COUNTS,
         groups: torch.Tensor | None = None, lr: float = 0.05):
    info = TrainInfo(CLASSES, torch.tensor(counts), sum(counts), net.feature_dim, torch.device("cpu"),
                     train_groups=groups)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    cls = PEERS[name]
    net.head = cls.head  # as the engine builds the network for the method
    cfg = build(cls.Config, params, f"methods.{name}")
    if isinstance(cfg, longtail.LDAMDRWConfig):  # as ExperimentConfig.method_config, on the paper's schedule
        cfg = cfg.for_schedule(PAPER_MILESTONES)
    return cls(cfg, net, opt, info)


def ctx(epoch: int = 0) -> StepContext:
    return StepContext(epoch=epoch, total_epochs=200, step=0, lr=0.05, meta_batch=lambda: None)


def separable(n: int = 32, seed: int = 0) -> Batch:
    """Four classes around the points 3·e_c of R^8 with noise 0.3; labels 0, 1, 2, 3, 0, .."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    x = 3 * F.one_hot(y, 8).float() + 0.3 * torch.randn(n, 8, generator=g)
    return Batch(x, y, torch.arange(n))


def probs_by_hand(z: torch.Tensor) -> torch.Tensor:
    e = z.exp()
    return e / e.sum(1, keepdim=True)


# ----------------------------------------------------------------------------- focal

def test_focal_gamma_zero_is_cross_entropy():
    """γ = 0: (1 − p_y)^0 = 1, FL = CE, values and gradients."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    fl = longtail.focal_loss(z, y, 0.0)
    (grad_fl,) = torch.autograd.grad(fl.mean(), z)
    ce = F.cross_entropy(z, y, reduction="none")
    (grad_ce,) = torch.autograd.grad(ce.mean(), z)
    torch.testing.assert_close(fl, ce.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_fl, grad_ce, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_down_weights_confident_correct_samples(gamma):
    """FL = (1 − p_y)^γ · CE < CE for γ > 0; on confident correct samples (p_y near 1) far below."""
    z = torch.tensor([[4.0, 0.0, -1.0], [0.5, 3.0, 0.0], [1.0, 1.0, 6.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    p_y = probs_by_hand(z)[torch.arange(3), y]
    ce = -p_y.log()
    fl = longtail.focal_loss(z, y, gamma)
    assert (p_y > 0.8).all() and (fl < ce).all()
    torch.testing.assert_close(fl, (1 - p_y) ** gamma * ce, rtol=1e-10, atol=0)
    assert (fl < 0.25 * ce).all() if gamma >= 1 else (fl < 0.5 * ce).all()


def test_focal_method_is_the_batch_mean():
    """``focal``: L = (1/B) Σ_i (1 − p_iy)^γ (−log p_iy), p by hand."""
    torch.manual_seed(0)
    net = TinyNet()
    method = make("focal", {"gamma": 2.0}, net)
    batch = separable(8)
    loss, logits = method.loss(batch, ctx())
    p_y = probs_by_hand(net(batch.x).detach())[torch.arange(8), batch.y]
    assert loss.item() == pytest.approx(((1 - p_y) ** 2 * -p_y.log()).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- class-balanced

def test_class_balanced_weights_by_hand():
    """Cui et al.: w_c = (1 − β)/(1 − β^{n_c}) rescaled to Σ_c w_c = C; counts [5000, 500, 50],
    β = 0.99 (worked out: 0.01/(1 − 0.99^n) = 0.0100000, 0.0100661, 0.0253168)."""
    counts, beta = [5000, 500, 50], 0.99
    raw = [(1 - beta) / (1 - beta ** n) for n in counts]
    expected = [r * len(raw) / sum(raw) for r in raw]
    assert expected == pytest.approx([0.661041, 0.665413, 1.673546], abs=1e-6)
    net = TinyNet(num_classes=3)
    info = TrainInfo(3, torch.tensor(counts), sum(counts), net.feature_dim, torch.device("cpu"))
    cls = PEERS["cb_ce"]
    method = cls(build(cls.Config, {"beta": beta}, "methods.cb_ce"), net, torch.optim.SGD(net.parameters(), 0.1), info)
    assert method.class_weights.tolist() == pytest.approx(expected, rel=1e-12)
    assert float(method.class_weights.sum()) == pytest.approx(3)


@pytest.mark.parametrize("name,params", [("cb_ce", {"beta": 0.9}), ("cb_focal", {"beta": 0.9, "gamma": 2.0})])
def test_class_balanced_loss_is_weighted_sum_over_batch(name, params):
    """L = Σ_i w_{y_i} ℓ_i / B (Cui et al.'s normalisation), ℓ = CE or FL by hand; labels repeat
    unequally, so Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i} differs."""
    torch.manual_seed(0)
    net = TinyNet()
    method = make(name, params, net)
    batch = separable(8)
    batch = Batch(batch.x, torch.tensor([0, 0, 0, 0, 1, 1, 2, 3]), batch.index)
    loss, logits = method.loss(batch, ctx())
    z = net(batch.x).detach()
    p_y = probs_by_hand(z)[torch.arange(8), batch.y]
    ell = -p_y.log() * (1 - p_y) ** params.get("gamma", 0.0)
    raw = [(1 - 0.9) / (1 - 0.9 ** n) for n in COUNTS]
    w = torch.tensor([raw[c] * CLASSES / sum(raw) for c in batch.y.tolist()])
    assert loss.item() == pytest.approx(((w * ell).sum() / 8).item(), rel=1e-5)
    assert abs(loss.item() - ((w * ell).sum() / w.sum()).item()) > 1e-2


def test_class_balanced_ce_with_beta_zero_is_ce():
    """β = 0: every w_c = 1, cb_ce = CE."""
    torch.manual_seed(0)
    net = TinyNet()
    method = make("cb_ce", {"beta": 0.0}, net)
    batch = separable(8)
    loss, _ = method.loss(batch, ctx())
    assert loss.item() == pytest.approx(F.cross_entropy(net(batch.x), batch.y).item(), rel=1e-6)


# ----------------------------------------------------------------------------- LDAM-DRW

def test_ldam_margins_by_hand():
    """m_c ∝ n_c^{−1/4}, max_c m_c = max_m: for [5000, 500, 50] and 0.5, m = 0.5·(50/n_c)^{1/4}."""
    m = longtail.ldam_margins(torch.tensor([5000, 500, 50]), 0.5)
    assert m.tolist() == pytest.approx([0.1581139, 0.2811707, 0.5], abs=1e-7)
    assert float(m[0] / m[1]) == pytest.approx(0.1 ** 0.25, rel=1e-12)  # (500/5000)^{1/4}
    assert float(m.max()) == 0.5
    assert longtail.ldam_margins(torch.tensor([7, 7]), 0.3).tolist() == pytest.approx([0.3, 0.3])


def test_cosine_logits_by_hand():
    """2-D: h = (3, 4), w = (1, 0), (0, 2), (−1, −1): cos = 3/5, 4/5, −7/(5√2); the scale of
    h and w does not matter; random ones lie in [−1, 1]."""
    h = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], dtype=torch.float64)
    expected = [[0.6, 0.8, -7 / (5 * math.sqrt(2))]]
    torch.testing.assert_close(cosine_logits(h, w), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(cosine_logits(10 * h, 0.1 * w), torch.tensor(expected, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    cos = cosine_logits(torch.randn(50, 6, generator=g), torch.randn(9, 6, generator=g))
    assert cos.shape == (50, 9) and cos.abs().max() <= 1 + 1e-6


def test_ldam_loss_by_hand():
    """Zero margins and s = 1: CE on cos. With margins: CE on s·(cos − m_y·[j = y]) built here;
    with class weights: Σ_i w_{y_i} L_i / Σ_i w_{y_i} (LDAM-DRW's F.cross_entropy(weight=w))."""
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 2, 1, 2, 2])
    assert longtail.ldam_loss(cos, y, torch.zeros(3), 1.0).item() == pytest.approx(
        F.cross_entropy(cos, y).item(), rel=1e-12)
    m, s = [0.1, 0.2, 0.5], 30.0
    rows = [[s * (cos[i, j].item() - (m[j] if j == y[i].item() else 0.0)) for j in range(3)] for i in range(5)]
    per_sample = [-r[c] + math.log(sum(math.exp(v) for v in r)) for r, c in zip(rows, y.tolist())]
    margins = torch.tensor(m, dtype=torch.float64)
    assert longtail.ldam_loss(cos, y, margins, s).item() == pytest.approx(sum(per_sample) / 5, rel=1e-10)
    w = [0.5, 1.0, 2.0]
    weighted = sum(w[c] * ell for c, ell in zip(y.tolist(), per_sample)) / sum(w[c] for c in y.tolist())
    assert longtail.ldam_loss(cos, y, margins, s, torch.tensor(w)).item() == pytest.approx(weighted, rel=1e-10)


def test_drw_switches_exactly_at_its_epoch():
    """Through the method's loss: at drw_epoch − 1 every class weighs 1, at drw_epoch the
    class-balanced weights of β = 0.9999 (by hand); logits = cos of features and class weights."""
    torch.manual_seed(0)
    net = TinyNet()
    method = make("ldam_drw", {"drw_epoch": 3}, net)
    batch = separable(8)
    batch = Batch(batch.x, torch.tensor([0, 0, 0, 0, 1, 1, 2, 3]), batch.index)
    with torch.no_grad():
        h, w = net.features(batch.x), net.classifier.weight
        cos = (h @ w.T) / (h.norm(dim=1, keepdim=True) * w.norm(dim=1))
    m = torch.tensor([n ** -0.25 for n in COUNTS])
    m = m * 0.5 / m.max()
    z = 30 * (cos - F.one_hot(batch.y, CLASSES) * m[batch.y, None])
    ell = F.cross_entropy(z, batch.y, reduction="none")
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in COUNTS]
    wy = torch.tensor([raw[c] * CLASSES / sum(raw) for c in batch.y.tolist()])
    before, logits = method.loss(batch, ctx(epoch=2))
    after, _ = method.loss(batch, ctx(epoch=3))
    torch.testing.assert_close(logits.detach(), cos)
    assert before.item() == pytest.approx(ell.mean().item(), rel=1e-5)
    assert after.item() == pytest.approx(((wy * ell).sum() / wy.sum()).item(), rel=1e-5)
    assert abs(before.item() - after.item()) > 1e-2
    assert method.class_weights(2).tolist() == [1.0] * CLASSES


# ----------------------------------------------------------------------------- Balanced Softmax

def test_balanced_softmax_is_ce_on_logits_plus_log_counts_and_la_at_tau_one():
    torch.manual_seed(0)
    net = TinyNet()
    method = make("balanced_softmax", {}, net)
    la_cls = REGISTRY["la"]
    info = TrainInfo(CLASSES, torch.tensor(COUNTS), sum(COUNTS), net.feature_dim, torch.device("cpu"))
    la = la_cls(build(la_cls.Config, {"tau": 1.0}, "methods.la"), net, method.optimizer, info)
    batch = separable(8)
    loss, logits = method.loss(batch, ctx())
    z = net(batch.x).detach()
    log_n = torch.tensor([math.log(n) for n in COUNTS])
    assert loss.item() == pytest.approx(F.cross_entropy(z + log_n, batch.y).item(), rel=1e-6)
    assert loss.item() == pytest.approx(la.loss(batch, ctx())[0].item(), rel=1e-6)
    torch.testing.assert_close(logits.detach(), z)  # predicts with the raw logits
    with pytest.raises(ParamError, match="tau"):
        build(PEERS["balanced_softmax"].Config, {"tau": 2.0}, "methods.balanced_softmax")


# ----------------------------------------------------------------------------- GCE

def test_gce_limits():
    """q → 0: CE; q = 1: 1 − p_y."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1, 1])
    p_y = probs_by_hand(z)[torch.arange(6), y]
    torch.testing.assert_close(robust.gce_loss(z, y, 1e-4), -p_y.log(), rtol=1e-3, atol=0)
    torch.testing.assert_close(robust.gce_loss(z, y, 1.0), 1 - p_y, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(robust.gce_loss(z, y, 0.7), (1 - p_y ** 0.7) / 0.7, rtol=1e-12, atol=0)


def test_gce_gradient_is_p_to_the_q_times_ce_gradient():
    """Zhang & Sabuncu: ∂L_q/∂z = p_y^q · ∂CE/∂z, per sample."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1, 1])
    (grad_q,) = torch.autograd.grad(robust.gce_loss(z, y, 0.7).sum(), z)
    (grad_ce,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)
    p_y = probs_by_hand(z.detach())[torch.arange(6), y]
    torch.testing.assert_close(grad_q, p_y[:, None] ** 0.7 * grad_ce, rtol=1e-10, atol=1e-14)


def test_gce_method_is_the_batch_mean():
    torch.manual_seed(0)
    net = TinyNet()
    method = make("gce", {"q": 0.5}, net)
    batch = separable(8)
    loss, _ = method.loss(batch, ctx())
    p_y = probs_by_hand(net(batch.x).detach())[torch.arange(8), batch.y]
    assert loss.item() == pytest.approx(((1 - p_y ** 0.5) / 0.5).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- GroupDRO

def test_group_losses_by_hand():
    loss = torch.tensor([1.0, 2.0, 3.0, 5.0])
    groups = torch.tensor([0, 2, 0, 2])
    per_group, count = robust.group_losses(loss, groups, 3)
    assert per_group.tolist() == [2.0, 0.0, 3.5] and count.tolist() == [2, 0, 2]


def test_groupdro_update_is_the_exponentiated_gradient_step():
    """q = [.5, .5], losses [1, 2], η = 0.1: q ∝ [.5e^{.1}, .5e^{.2}]."""
    q = robust.groupdro_update(torch.tensor([0.5, 0.5], dtype=torch.float64),
                               torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([True, True]), 0.1)
    a, b = 0.5 * math.exp(0.1), 0.5 * math.exp(0.2)
    assert q.tolist() == pytest.approx([a / (a + b), b / (a + b)], rel=1e-12)


def test_groupdro_absent_group_keeps_its_weight_before_renormalisation():
    """group_DRO: an absent group has loss 0, so its q_g is multiplied by e^0 = 1 (whatever is in
    its slot); only the renormalisation moves it. With the adjustment C/√n_g (added for every
    group in their code) the factor is e^{η C/√n_g}."""
    q0 = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    loss = torch.tensor([1.0, 7.0, 2.0], dtype=torch.float64)  # group 1 absent: its 7 is ignored
    present = torch.tensor([True, False, True])
    q = robust.groupdro_update(q0, loss, present, 0.1)
    raw = [0.2 * math.exp(0.1), 0.3, 0.5 * math.exp(0.2)]
    assert q.tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)
    adj = torch.tensor([2 / math.sqrt(100), 2 / math.sqrt(4), 2 / math.sqrt(25)], dtype=torch.float64)
    q = robust.groupdro_update(q0, loss, present, 0.1, adj)
    raw = [0.2 * math.exp(0.1 * (1 + 0.2)), 0.3 * math.exp(0.1 * 1.0), 0.5 * math.exp(0.1 * (2 + 0.4))]
    assert q.tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)


def test_groupdro_with_one_group_is_mean_ce():
    torch.manual_seed(0)
    net = TinyNet()
    method = make("groupdro", {}, net, groups=torch.zeros(sum(COUNTS), dtype=torch.int64))
    batch = separable(8)
    loss, _ = method.loss(batch, ctx())
    assert loss.item() == pytest.approx(F.cross_entropy(net(batch.x), batch.y).item(), rel=1e-6)
    assert method.q.tolist() == [1.0]


def test_groupdro_step_updates_q_from_the_batch_groups():
    """One step: q ∝ q_0·e^{η·loss_g} with the CE means of the groups in the batch (group 2 of 3
    absent), then the robust loss Σ_g q_g loss_g with the updated q."""
    torch.manual_seed(0)
    net = TinyNet()
    groups = torch.tensor([0, 1] * 16)  # rows 0..31; group 2 has no sample in this batch
    groups[31] = 2
    method = make("groupdro", {"step_size": 0.5}, net, counts=[8, 8, 8, 8], groups=groups)
    batch = separable(8)
    with torch.no_grad():
        ce = F.cross_entropy(net(batch.x), batch.y, reduction="none").tolist()
    loss_g = [sum(ce[0::2]) / 4, sum(ce[1::2]) / 4]
    raw = [math.exp(0.5 * loss_g[0]) / 3, math.exp(0.5 * loss_g[1]) / 3, 1 / 3]
    q = [r / sum(raw) for r in raw]
    out = method.update(batch, ctx())
    assert method.q.tolist() == pytest.approx(q, rel=1e-5)
    assert out["loss"] == pytest.approx(q[0] * loss_g[0] + q[1] * loss_g[1], rel=1e-5)
    assert set(method.epoch_metrics()) == {"groupdro_q/0", "groupdro_q/1", "groupdro_q/2"}
    assert set(method.state_dict()) == {"q"}


def test_groupdro_without_group_labels_is_refused():
    net = TinyNet()
    with pytest.raises(ParamError, match="groupdro needs group labels"):
        make("groupdro", {}, net)
    with pytest.raises(ParamError, match="one group label >= 0 per training sample"):
        make("groupdro", {}, net, groups=torch.zeros(5, dtype=torch.int64))


# ----------------------------------------------------------------------------- every method

# Each default of a peer, from its authors' code (repository, file:line at the commits read).
AUTHORS = {
    # kaidic/LDAM-DRW@2536330 cifar_train.py:215 FocalLoss(weight=per_cls_weights, gamma=1);
    # richardaecn/class-balanced-loss@1d78572 cifar_im_trainval_cb.sh:16 GAMMA=1.0
    ("focal", "gamma"): 1.0,
    ("cb_ce", "beta"): 0.9999,  # class-balanced-loss cifar_im_trainval_cb.sh:7 BETA=0.9999
    ("cb_focal", "beta"): 0.9999,  # cifar_im_trainval_cb.sh:7
    ("cb_focal", "gamma"): 1.0,  # cifar_im_trainval_cb.sh:16
    ("ldam_drw", "max_m"): 0.5,  # LDAM-DRW cifar_train.py:213 LDAMLoss(..., max_m=0.5, s=30, ...)
    ("ldam_drw", "s"): 30.0,  # cifar_train.py:213
    ("ldam_drw", "drw_beta"): 0.9999,  # cifar_train.py:202 betas = [0, 0.9999]
    ("gce", "q"): 0.7,  # AlanChou/Truncated-Loss@fef5908 TruncatedLoss.py:9 __init__(self, q=0.7, k=0.5, ...)
    ("groupdro", "step_size"): 0.01,  # kohpangwei/group_DRO@cbbc1c5 run_expt.py:39 --robust_step_size 0.01
    ("groupdro", "adjustment"): 0.0,  # run_expt.py:37 --generalization_adjustment "0.0"
    ("jtt", "lambda_up"): 10.0,  # YyzHarry/SubpopBench@4d3dbbe hparams_registry.py:78 jtt_lambda 10
}
# From the experiment's schedule (LDAMDRWConfig.for_schedule): cifar_train.py:201 idx = epoch // 160,
# the epoch of its first lr step (cifar_train.py:368-374: lr x0.01 once epoch + 1 > 160).
DERIVED = {("ldam_drw", "drw_epoch")}


def test_defaults_are_the_authors_values_and_every_other_field_is_a_switch_that_keeps_recorded_runs():
    """Every default equals the authors' value cited in AUTHORS; LDAM-DRW's drw_epoch resolves to
    160 on the authors' schedule; any other field is a project switch added after the recorded
    runs (``added``: at its default it reproduces them and stays out of their hashes). A field
    that is none of these (a new default without a source) fails here."""
    import dataclasses

    for name in NAMES:
        cfg = build(PEERS[name].Config, {}, f"methods.{name}")
        for f in dataclasses.fields(cfg):
            key = (name, f.name)
            if key in AUTHORS:
                assert getattr(cfg, f.name) == AUTHORS[key], key
            elif key in DERIVED:
                assert getattr(cfg, f.name) is None, key
            else:
                assert f.metadata.get("added") is True, f"{key}: neither the authors' value nor an added switch"
    assert longtail.LDAMDRWConfig().for_schedule([160, 180]).drw_epoch == 160
    assert {k[0] for k in AUTHORS} | {k[0] for k in DERIVED} >= set(NAMES) - {"balanced_softmax"}


@pytest.mark.parametrize("name", NAMES)
def test_method_steps_on_a_resnet(name):
    """One update on a tiny batch through the real network: finite loss, weights change."""
    torch.manual_seed(0)
    net = build_network("resnet8", CLASSES)
    groups = torch.arange(sum(COUNTS)) % 3
    method = make(name, {}, net, groups=groups)
    before = [p.detach().clone() for p in net.parameters()]
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(8, 3, 8, 8, generator=g), torch.tensor([0, 0, 0, 1, 1, 2, 3, 0]), torch.arange(8))
    method.start([batch])  # as the engine does before the first epoch (jtt: its error set)
    out = method.update(batch, ctx())
    assert math.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_a_separable_problem(name):
    torch.manual_seed(0)
    net = TinyNet()
    method = make(name, {}, net, counts=[8, 8, 8, 8], groups=torch.arange(32) % 2, lr=0.1)
    batch = separable(32)
    method.start([batch])  # as the engine does before the first epoch (jtt: its error set)
    losses = [method.update(batch, ctx())["loss"] for _ in range(20)]
    assert 0 < losses[-1] < 0.5 * losses[0], losses  # every loss here is positive


def test_jtt_error_set_is_exactly_what_its_first_stage_misclassifies_and_is_up_weighted():
    """Liu et al. (2021): E = training samples the stage-1 (ERM) model misclassifies, in eval mode;
    stage 2 weighs them λ_up: L = Σ w_i ℓ_i / Σ w_i with w_i = λ_up on E, 1 elsewhere."""
    torch.manual_seed(0)
    net = TinyNet()
    method = make("jtt", {"lambda_up": 7.0}, net)
    assert method.start_augmented is False  # the error set is of the training images as they are
    x, y = torch.randn(12, 8), torch.tensor([0, 1, 2, 3] * 3)
    batches = [Batch(x[i:i + 5], y[i:i + 5], torch.arange(i, min(i + 5, 12))) for i in range(0, 12, 5)]
    net.train()
    method.start(batches)
    assert net.training  # restored
    with torch.no_grad():
        net.eval()
        wrong = (net(x).argmax(1) != y).tolist()
        net.train()
    assert method.error_set[:12].tolist() == wrong and 0 < sum(wrong) < 12 and not method.error_set[12:].any()
    batch = Batch(x, y, torch.arange(12))
    loss, logits = method.loss(batch, ctx())
    w = torch.tensor([7.0 if e else 1.0 for e in wrong])
    by_hand = (w * F.cross_entropy(logits.detach(), y, reduction="none")).sum() / w.sum()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def labelled_by_coordinates() -> tuple[TinyNet, torch.Tensor, torch.Tensor, list[int]]:
    """A stage-1 network whose mistakes are known in advance: h = tanh(x) (first 8 of 16 features),
    z_c = h_c, so x = 3·e_c + noise is predicted c; the labels of rows 1, 6 and 10 name another
    class, so exactly those are misclassified. Returns (net, x [12, 8], labels [12], those rows)."""
    net = TinyNet()
    with torch.no_grad():
        net.body.weight.copy_(torch.eye(16, 8))
        net.body.bias.zero_()
        net.classifier.weight.copy_(torch.eye(CLASSES, 16))
        net.classifier.bias.zero_()
    g = torch.Generator().manual_seed(4)
    true = torch.tensor([0, 1, 2, 3] * 3)
    x = 3 * F.one_hot(true, 8).float() + 0.1 * torch.randn(12, 8, generator=g)
    wrong = [1, 6, 10]
    labels = true.clone()
    labels[wrong] = (true[wrong] + 1) % CLASSES
    return net, x, labels, wrong


@pytest.mark.parametrize("lambda_up", [5.0, 20.0])
def test_jtt_stage_two_up_weights_exactly_the_samples_stage_one_got_wrong(lambda_up):
    """JTT (Liu et al., 2021; anniesch/jtt): the error set is the training samples the stage-1 model
    misclassifies, and stage 2 weighs them λ_up. On a network whose mistakes are rows 1, 6, 10 by
    construction: after start() the error set is those rows, and the stage-2 loss is
    Σ_i w_i ℓ_i / Σ_i w_i with w = λ_up on them, ℓ_i = log Σ_j e^{z_ij} − z_{iy_i} from
    z_ij = tanh(x_ij) computed here with math, not with the network."""
    net, x, labels, wrong = labelled_by_coordinates()
    method = make("jtt", {"lambda_up": lambda_up, "stage2_init": "continue"}, net)
    method.start([Batch(x[i:i + 5], labels[i:i + 5], torch.arange(i, min(i + 5, 12))) for i in range(0, 12, 5)])
    assert method.error_set.nonzero().flatten().tolist() == wrong
    rows = [[math.tanh(v) for v in row[:CLASSES]] for row in x.tolist()]
    ell = [math.log(sum(math.exp(v) for v in z)) - z[y] for z, y in zip(rows, labels.tolist())]
    w = [lambda_up if i in wrong else 1.0 for i in range(12)]
    by_hand = sum(wi * li for wi, li in zip(w, ell)) / sum(w)
    loss, _ = method.loss(Batch(x, labels, torch.arange(12)), ctx())
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert abs(loss.item() - sum(ell) / 12) > 0.1  # the up-weighting is visible: not CE
