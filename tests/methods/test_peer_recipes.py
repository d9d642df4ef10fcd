"""The peers' recipe switches (issue 30): MWN's class-imbalance recipe, JTT's fresh stage 2,
GroupDRO's group-balanced sampler and MetaSAug's released LDAM variant. Each is checked against
the authors' procedure written out here; each switch's default must leave the configuration hash
of the runs recorded before it unchanged."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.engine.loop import RunSpec, fit, set_up
from pipeline.layout import LAST
from pipeline.methods import REGISTRY, Batch, StepContext, TrainInfo
from pipeline.methods.metasaug import MetaSAug
from pipeline.methods.mwn import MetaWeightNet
from pipeline.networks import build_network
from pipeline.params.experiment import config_hash
from pipeline.params.schema import ParamError, build, to_dict
from tests.methods.test_meta_gradient import TinyCNN, assert_matches_finite_differences
from tests.tiny import tiny_data, tiny_experiment

# ----------------------------------------------------------------------------- the config hash

# config_hash(name, <the code defaults>, 7) as computed before the switches were added (commit
# 66a08c0): the runs recorded then must keep their hashes.
HASH_BEFORE = {"mwn": "b9e3817b0410d33f", "jtt": "226e396187d80ecf", "groupdro": "9b43d370fd08902d",
               "metasaug": "e00c6ff5d1ead470"}
SWITCHES = [("mwn", "recipe", "noisy", "imbalance"), ("jtt", "stage2_init", "continue", "fresh"),
            ("groupdro", "group_sampler", False, True), ("metasaug", "loss", "ce", "ldam")]


@pytest.mark.parametrize("name,key,default,other", SWITCHES, ids=[s[0] for s in SWITCHES])
def test_a_recipe_switch_at_its_default_keeps_the_config_hash_of_recorded_runs(name, key, default, other):
    """At its default (today's behaviour) the switch leaves the method's config hash what it was
    before the switch existed; the authors' value changes it; it is a logged param either way;
    a value that is not one of the switch's is one ParamError naming the key."""
    cls = REGISTRY[name].Config
    cfg = build(cls, {}, f"methods.{name}")
    assert to_dict(cfg)[key] == default
    assert config_hash(name, cfg, 7) == HASH_BEFORE[name]
    assert config_hash(name, dataclasses.replace(cfg, **{key: other}), 7) != HASH_BEFORE[name]
    assert config_hash(name, build(cls, {key: other}, f"methods.{name}"), 7) != HASH_BEFORE[name]
    with pytest.raises(ParamError, match=f"methods.{name}.{key}"):
        build(cls, {key: "authors"}, f"methods.{name}")


# ----------------------------------------------------------------------------- MWN

def mwn(params: dict, net: torch.nn.Module, counts: list[int]) -> MetaWeightNet:
    info = TrainInfo(3, torch.tensor(counts), sum(counts), net.feature_dim, torch.device("cpu"))
    method = MetaWeightNet(build(MetaWeightNet.Config, params, "methods.mwn"), net,
                           torch.optim.SGD(net.parameters(), lr=0.5), info)
    method.weighting_net.double()  # V in the network's dtype (in place: its optimizer keeps the parameters)
    return method


def authors_mwn_meta_loss(net, vnet, x, y, meta_x, meta_y, lr: float, scope: str, detach: bool) -> float:
    """L_meta(V) as MWN's class-imbalance code computes it (meta-weight-net-class-imbalance.py:
    151-179): a copy of the network, its batch losses ℓ = CE(f(x), y) fed to V with their graph
    (``detach``: without, as the noisy-label code's ``vnet(cost_v.data)``), L = Σ ℓ_i V(ℓ_i) /
    Σ V(ℓ_j), θ' = θ − η ∇_θ L (whole network, or W, b on fixed features), CE on the meta batch."""
    twin = copy.deepcopy(net)
    features = twin.features(x) if scope == "full" else twin.features(x).detach()
    params = list(twin.parameters()) if scope == "full" else list(twin.classifier.parameters())
    cost = F.cross_entropy(twin.classifier(features), y, reduction="none")[:, None]  # [B, 1]
    w = vnet(cost.detach() if detach else cost)  # [B]
    grads = torch.autograd.grad((cost.squeeze(1) * w).sum() / w.sum(), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
        return F.cross_entropy(twin(meta_x), meta_y).item()


@pytest.mark.parametrize("scope", ["head", "full"])
def test_mwn_imbalance_recipe_meta_gradient_goes_through_vs_input(scope):
    """``recipe: imbalance``: V's meta gradient (left in .grad by the step) equals central
    differences of the authors' L_meta(V) with V fed the loss with its graph, and not of the
    same with the loss detached (the noisy recipe, whose gradient is checked to differ); V then
    takes the Nesterov SGD step of that code: with d = g + λV (first step, buffer = d),
    V ← V − lr·(d + 0.9·d)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = TinyCNN().double().train()
    x, y = torch.randn(8, 3, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    meta = Batch(torch.randn(6, 3, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0]),
                 torch.arange(6))
    lr, v_lr, decay = 0.5, 1e-2, 5e-4
    grads = {}
    for recipe in ("imbalance", "noisy"):
        torch.manual_seed(1)  # the same V for both
        method = mwn({"recipe": recipe, "lr": v_lr, "weight_decay": decay, "meta_scope": scope},
                     copy.deepcopy(net), [40, 20, 10])
        before = copy.deepcopy(method.weighting_net)
        ctx = StepContext(epoch=0, total_epochs=2, step=0, lr=lr, meta_batch=lambda: meta)
        method.update(Batch(x, y, torch.arange(8)), ctx)
        grads[recipe] = [p.grad.clone() for p in method.weighting_net.parameters()]
        if recipe == "imbalance":
            for p, p0, gr in zip(method.weighting_net.parameters(), before.parameters(), grads[recipe]):
                d = gr + decay * p0.detach()
                torch.testing.assert_close(p.detach(), p0.detach() - v_lr * 1.9 * d, rtol=1e-12, atol=1e-15)

    def undetached():
        return authors_mwn_meta_loss(net, before, x, y, meta.x, meta.y, lr, scope, detach=False)

    assert_matches_finite_differences(grads["imbalance"], before, undetached)
    gap = sum((a - b).abs().sum() for a, b in zip(grads["imbalance"], grads["noisy"]))
    assert gap > 1e-3 * sum(a.abs().sum() for a in grads["imbalance"])


def test_mwn_recipes_pick_vs_optimizer():
    """noisy (today's): Adam with lr and weight decay; imbalance: SGD, momentum 0.9, Nesterov,
    with the class-imbalance code's lr 1e-5 and weight decay 5e-4 as given."""
    net = TinyCNN()
    noisy = mwn({}, net, [4, 2, 1]).weighting_optimizer
    assert type(noisy) is torch.optim.Adam
    assert (noisy.defaults["lr"], noisy.defaults["weight_decay"]) == (1e-3, 1e-4)
    sgd = mwn({"recipe": "imbalance", "lr": 1e-5, "weight_decay": 5e-4}, net, [4, 2, 1]).weighting_optimizer
    assert type(sgd) is torch.optim.SGD
    assert {k: sgd.defaults[k] for k in ("lr", "momentum", "nesterov", "weight_decay", "dampening")} == {
        "lr": 1e-5, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "dampening": 0}


# ----------------------------------------------------------------------------- JTT

def jtt_after_stage_one(tmp_path, stage2_init: str):
    """A CE pretraining (stage 1) of 2 epochs, then JTT's run set up from its checkpoint, before
    and after :meth:`JTT.start`: (training, stage-1 network state, stage-1 optimizer state)."""
    exp = tiny_experiment("subpop", methods={"jtt": {"stage2_init": stage2_init}})
    data = tiny_data(groups=True)
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=2, device="cpu"))
    t = set_up(RunSpec(exp, data, "jtt", 0, tmp_path / "jtt", first_epoch=2, last_epoch=4,
                       init=tmp_path / "pre" / LAST, device="cpu"))
    stage1 = {k: v.clone() for k, v in t.net.state_dict().items()}
    stage1_opt = copy.deepcopy(t.opt.state_dict())
    t.method.start(t.loaders.train.sweep(augment=t.method.start_augmented))
    return t, data, stage1, stage1_opt


def test_jtt_fresh_stage2_starts_from_the_seeded_initialisation(tmp_path):
    """``stage2_init: fresh`` (JTT's and SubpopBench's stage 2): after the error set is taken from
    the stage-1 network, the network is the seed's random initialisation (built here
    independently: torch.manual_seed(seed), then the network), not the stage-1 weights, and the
    optimizer has no momentum left; the error set is the stage-1 network's misclassified
    training images."""
    t, data, stage1, stage1_opt = jtt_after_stage_one(tmp_path, "fresh")
    torch.manual_seed(0)
    scratch = build_network("resnet8", data.num_classes).state_dict()
    now = t.net.state_dict()
    assert all(torch.equal(now[k], scratch[k]) for k in scratch)
    assert any(not torch.equal(now[k], stage1[k]) for k in stage1 if k.endswith("weight"))
    assert stage1_opt["state"] and not t.opt.state_dict()["state"]
    stage1_net = build_network("resnet8", data.num_classes)
    stage1_net.load_state_dict(stage1)
    train = data.splits["train"]
    x = torch.cat([b.x for b in t.loaders.train.sweep(augment=False)])
    index = torch.cat([b.index for b in t.loaders.train.sweep(augment=False)])
    with torch.no_grad():
        wrong = stage1_net.eval()(x).argmax(1) != torch.from_numpy(train.y)[index]
    assert torch.equal(t.method.error_set[index], wrong)


def test_jtt_continue_keeps_the_stage_one_network(tmp_path):
    """The default (what the reference runs did): stage 2 continues from the stage-1 weights
    and optimizer state."""
    t, _, stage1, stage1_opt = jtt_after_stage_one(tmp_path, "continue")
    assert all(torch.equal(t.net.state_dict()[k], v) for k, v in stage1.items())
    assert len(t.opt.state_dict()["state"]) == len(stage1_opt["state"]) > 0


# ----------------------------------------------------------------------------- GroupDRO

def groupdro_run(tmp_path, group_sampler: bool):
    """GroupDRO set up on subpop data whose 42 training rows fall in groups of 30, 8 and 4."""
    data = tiny_data(groups=True)
    groups = np.repeat([0, 1, 2], [30, 8, 4])
    data.splits["train"].extras["group"] = np.random.default_rng(0).permutation(groups)
    exp = tiny_experiment("subpop", methods={"groupdro": {"group_sampler": group_sampler}})
    return set_up(RunSpec(exp, data, "groupdro", 0, tmp_path, first_epoch=2, last_epoch=4, device="cpu")), data


def group_draws(t, data, epochs: range) -> np.ndarray:
    groups = data.splits["train"].extras["group"]
    index = np.concatenate([b.index.numpy() for e in epochs for b in t.loaders.train.epoch(e)])
    return np.bincount(groups[index], minlength=3)


def test_groupdro_group_sampler_draws_each_group_equally_often(tmp_path):
    """``group_sampler`` (group_DRO's --reweight_groups): over training epochs (N draws each,
    with replacement) every group is drawn about 1/G of the time although the groups hold 30, 8
    and 4 rows; an epoch's draws depend only on (seed, epoch), so a resumed or rebuilt run draws
    the same; the sweep that methods' :meth:`start` see still holds every row once."""
    t, data = groupdro_run(tmp_path / "a", True)
    draws = group_draws(t, data, range(2, 52))
    assert np.abs(draws / draws.sum() - 1 / 3).max() < 0.04, draws
    again, _ = groupdro_run(tmp_path / "b", True)
    for e in (2, 7):
        first, rebuilt = t.loaders.train.epoch(e), again.loaders.train.epoch(e)
        assert [b.index.tolist() for b in first] == [b.index.tolist() for b in rebuilt]
    swept = torch.cat([b.index for b in t.loaders.train.sweep()])
    assert sorted(swept.tolist()) == list(range(42))


def test_groupdro_without_the_sampler_shuffles_every_row_once(tmp_path):
    """The default (what the reference runs did): each epoch a permutation of the rows (the last
    partial batch dropped), so groups are drawn in proportion to their size."""
    t, data = groupdro_run(tmp_path, False)
    for e in (2, 3):
        index = torch.cat([b.index for b in t.loaders.train.epoch(e)]).tolist()
        assert len(index) == len(set(index)) == 40
    draws = group_draws(t, data, range(2, 52))
    assert np.abs(draws / draws.sum() - np.array([30, 8, 4]) / 42).max() < 0.02, draws


# ----------------------------------------------------------------------------- MetaSAug

COUNTS = [81, 16, 1]


def metasaug(params: dict):
    torch.manual_seed(0)
    net = TinyCNN().double()
    info = TrainInfo(3, torch.tensor(COUNTS), sum(COUNTS), net.feature_dim, torch.device("cpu"))
    method = MetaSAug(build(MetaSAug.Config, params, "methods.metasaug"), net,
                      torch.optim.SGD(net.parameters(), lr=0.1), info)
    method.class_covariance.to(torch.float64)
    g = torch.Generator().manual_seed(1)
    method.class_covariance.update(torch.randn(60, net.feature_dim, generator=g, dtype=torch.float64),
                                   torch.arange(60) % 3)
    return method, net


def ldam_isda_by_hand(z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, cov: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """L_i = −r_iy + log Σ_j e^{r_ij}, r_iy = z_iy − m_y, r_ij = z_ij + (α/2)(w_j − w_y)ᵀ Σ_y (w_j − w_y)
    for j ≠ y, with LDAM's m_c = 0.5·n_c^{−1/4} / max_k n_k^{−1/4} (MetaSAug's LDAM_meta)."""
    raw = [n ** -0.25 for n in COUNTS]
    m = [0.5 * r / max(raw) for r in raw]
    out = []
    for i, c in enumerate(y.tolist()):
        r = []
        for j in range(z.shape[1]):
            dw = weight[j] - weight[c]
            r.append(z[i, j] - m[c] if j == c else z[i, j] + 0.5 * alpha * dw @ cov[c] @ dw)
        r = torch.stack(r)
        out.append(-r[c] + torch.log(torch.exp(r).sum()))
    return torch.stack(out)


def test_metasaug_ldam_is_the_margin_ce_plus_the_isda_term():
    """``loss: ldam`` (the released MetaSAug_LDAM_train.py): with ε ≡ 0 the real step's loss is
    the mean of CE on the ISDA-augmented logits with LDAM's margin taken off the true class (by
    hand); the margins grow as the class count falls (rarest: 0.5); the default (ce) is the same
    without margins. The step is one without a meta step (meta_interval 2, step 1), so it uses
    the running Σ."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(9, 3, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 0])
    epoch, total = 3, 4
    for loss in ("ldam", "ce"):
        method, net = metasaug({"loss": loss, "class_balanced": False, "meta_interval": 2})
        cov = method.class_covariance.covariance.clone()
        with torch.no_grad():
            z, weight = net(x), net.classifier.weight.clone()
        ctx = StepContext(epoch=epoch, total_epochs=total, step=1, lr=0.1, meta_batch=lambda: None)
        reported = method.update(Batch(x, y, torch.arange(9)), ctx)["loss"]
        alpha = method.cfg.alpha * epoch / total
        by_hand = ldam_isda_by_hand(z, y, weight, cov, alpha)
        if loss == "ldam":
            assert reported == pytest.approx(by_hand.mean().item(), rel=1e-10)
            margins = method.margins.tolist()
            assert margins[2] == pytest.approx(0.5) and margins[0] < margins[1] < margins[2]
            assert margins[1] == pytest.approx(0.5 * 16 ** -0.25, rel=1e-12)
        else:
            assert method.margins is None
            assert abs(reported - by_hand.mean().item()) > 1e-3
            no_margin = [(-torch.log_softmax(z[i] + 0.5 * alpha * torch.stack([
                (weight[j] - weight[c]) @ cov[c] @ (weight[j] - weight[c]) for j in range(3)]), 0)[c]).item()
                for i, c in enumerate(y.tolist())]
            assert reported == pytest.approx(sum(no_margin) / len(no_margin), rel=1e-10)


def test_metasaug_ldam_pseudo_step_uses_the_margin_too():
    """MetaSAug's code feeds the same LDAM_meta loss to the pseudo step (``criterion(...,
    "none")``, MetaSAug_LDAM_train.py:209-210): the train loss that the meta step differentiates
    is the margin loss."""
    method, net = metasaug({"loss": "ldam", "class_balanced": False})
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    features = net.features(x)
    logits = net.classifier(features)
    per_sample = method._per_sample_loss(logits, net.classifier.weight, None, features=features, labels=y,
                                         alpha=0.3, class_weights=None)
    by_hand = ldam_isda_by_hand(logits.detach(), y, net.classifier.weight.detach(),
                                method.class_covariance.covariance, 0.3)
    torch.testing.assert_close(per_sample.detach(), by_hand, rtol=1e-12, atol=1e-12)
