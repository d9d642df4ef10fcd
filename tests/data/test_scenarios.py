"""Each scenario end to end on tiny data: prepare -> pretrain -> train (ce, meta_iada) -> evaluate,
through the stage entry points, in a temporary working directory (no MLflow here: the
end-to-end DVC test covers tracking)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.data.prepared import load_prepared
from pipeline.params.file import read_params
from pipeline.params.inherit import resolve_experiments
from pipeline.stages import evaluate, prepare, pretrain, train
from tests.data.fixtures import write_cifar_pickle

ROOT = Path(__file__).resolve().parents[2]

TINY = {"limit_per_class": 30, "test_limit_per_class": 12, "meta_per_class": 2, "val_per_class": 3}
SCENARIOS = {
    "noisy": {"scenario": "noisy", "source": "cifar10", "noisy": {"kind": "flip", "rate": 0.4}},
    "subpop": {"scenario": "subpop", "source": "mnist", "val_per_class": 4,
               "subpop": {"kind": "colored_mnist", "correlation": 0.9, "test_correlation": 0.1}},
    "subpop_cifar": {"scenario": "subpop", "source": "cifar10", "val_per_class": 4,
                     "subpop": {"kind": "cifar_border", "correlation": 0.9, "test_correlation": 0.5}},
    "glt": {"scenario": "glt", "source": "cifar10", "limit_per_class": 120, "test_limit_per_class": 400,
            "glt": {"clusters": 3, "class_imbalance_ratio": 4, "attribute_imbalance_ratio": 2, "test_per_cell": 2}},
}


def write_params(tmp: Path, name: str, methods: tuple[str, ...] = ("ce", "meta_iada"),
                 edit: Callable[[dict], None] | None = None) -> Path:
    """params.yaml with the committed experiment ``name`` alone (resolved: no base), one epoch a
    phase on ResNet-8; ``edit`` changes the experiment further, else its data become tiny."""
    params = read_params(ROOT / "params.yaml")[0]
    exp = resolve_experiments(params["experiments"], params["methods"])[name]
    exp.update(pretrain_epochs=1, train_epochs=1, meta_batch_size=4, eval_batch_size=200)
    exp["optim"].update(batch_size=16, warmup_epochs=0, milestones=[])
    exp["network"]["arch"] = "resnet8"
    if edit is None:
        exp["data"] = {**TINY, **SCENARIOS[name]}
    else:
        edit(exp)
    params["experiments"] = {name: exp}
    params["run"] = {"experiments": [name], "methods": list(methods), "seeds": [0], "device": "cpu"}
    params["tune"] = {"run": [], "studies": {}}
    params["reference"] = {"subject": "meta_iada", "experiments": {}}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_end_to_end(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    params = str(write_params(tmp_path, name))
    common = ["--experiment", name, "--params", params, "--no-mlflow"]
    assert prepare.main(common) == 0
    assert pretrain.main(common + ["--seed", "0"]) == 0
    for method in ("ce", "meta_iada"):
        assert train.main(common + ["--seed", "0", "--method", method]) == 0
        assert evaluate.main(common + ["--seed", "0", "--method", method]) == 0
    card = json.loads((tmp_path / "data/prepared" / name / "card.json").read_text())
    m = strict_loads((tmp_path / "metrics" / name / "detail" / "meta_iada-s0.json").read_text())
    summary = strict_loads((tmp_path / "metrics" / name / "meta_iada-s0.json").read_text())
    assert set(summary) == {"final", "selected", "epsilon"}
    assert summary["selected"].items() <= m["selected"]["headline"].items()  # a subset, numbers only
    data = load_prepared(tmp_path / "data/prepared" / name)
    test, pred = data.splits["test"], saved_test_predictions(tmp_path / "plots" / name / "meta_iada-s0", card)
    t, head = m["selected"]["test"], m["selected"]["headline"]
    assert m["scenario"] == SCENARIOS[name]["scenario"]
    assert t["acc"] == pytest.approx(np.mean(pred == test.y))  # from the saved predictions
    if name == "noisy":
        assert card["noisy"]["realised_rate"] > 0
        assert head == {"acc": t["acc"]}
        eps = np.load(tmp_path / "models" / name / "s0" / "meta_iada" / "sample_scores.npz")["epsilon"]
        higher = pairwise_higher(eps, data.splits["train"].extras["is_noisy"].astype(bool))
        assert m["epsilon"]["auroc_noisy_higher_eps"] == pytest.approx(higher)
        assert m["epsilon"]["auroc_noisy_lower_eps"] == pytest.approx(1 - higher)
    elif name.startswith("subpop"):
        assert m["selection_metric"] == "val_worst_group_acc"
        group = test.extras["group"]
        per_group = {str(g): np.mean(pred[group == g] == test.y[group == g]) for g in range(4)}
        assert t["per_group_acc"] == pytest.approx(per_group)
        assert head == pytest.approx({"worst_group_acc": min(per_group.values()), "avg_acc": np.mean(pred == test.y)})
        noise = card["subpop"]["realised_label_noise"]
        assert noise["meta"] == 0 and noise["val"] == 0  # carved before the label noise
        assert set(m["epsilon"]["per_group_mean"]) == {"0", "1", "2", "3"}
    else:
        assert head == {"clt_acc": t["acc"], "clt_macro_precision": t["macro_precision"],
                        "glt_acc": m["selected"]["test_glt"]["acc"],
                        "glt_macro_precision": m["selected"]["test_glt"]["macro_precision"],
                        "alt_class_mean_acc": m["selected"]["test_alt"]["class_mean_acc"],
                        "alt_macro_precision": m["selected"]["test_alt"]["macro_precision"]}
        per_class = [np.mean(pred[test.y == c] == c) for c in range(data.num_classes)]
        assert [t["per_class_acc"][str(c)] for c in range(data.num_classes)] == pytest.approx(per_class)
    assert (tmp_path / "plots" / name / "meta_iada-s0" / "summary.png").stat().st_size > 0


def test_lt100_paper_runs_on_a_cifar100_copy(tmp_path, monkeypatch):
    """lt100_paper (issue 31, item 6) with its data block as params declares it, but for data.root:
    a CIFAR-100 pickle set in the official layout, 130 images a class (no offline copy here). Its
    schedule shrunk to one epoch a phase, ResNet-8 in fp32 (the data path is under test here)."""
    root = tmp_path / "cifar100"
    write_cifar_pickle(root, "cifar100", train_per_class=130, test_per_class=2)
    monkeypatch.chdir(tmp_path)

    def edit(exp: dict) -> None:
        exp["data"]["root"] = str(root)  # set: only there, no shared copy and no download
        exp.update(meta_batch_size=100, eval_batch_size=1000)
        exp["optim"]["batch_size"] = 100
        exp["network"]["precision"] = "fp32"
    params = str(write_params(tmp_path, "lt100_paper", ("meta_iada",), edit))
    common = ["--experiment", "lt100_paper", "--params", params, "--no-mlflow"]
    assert prepare.main(common) == 0
    assert pretrain.main(common + ["--seed", "0"]) == 0
    assert train.main(common + ["--seed", "0", "--method", "meta_iada"]) == 0
    assert evaluate.main(common + ["--seed", "0", "--method", "meta_iada"]) == 0

    card = json.loads((tmp_path / "data/prepared/lt100_paper/card.json").read_text())
    # 10 meta and 20 validation images of each class carved first, then n_c = floor(100 * 100^(-c/99))
    counts = [int(100 * 100 ** (-c / 99) + 1e-9) for c in range(100)]
    assert counts[0] == 100 and counts[-1] == 1
    assert card["num_classes"] == 100 and card["counts"]["per_class"] == {
        "train": counts, "meta": [10] * 100, "val": [20] * 100, "test": [2] * 100}
    m = strict_loads((tmp_path / "metrics/lt100_paper/detail/meta_iada-s0.json").read_text())
    pred = saved_test_predictions(tmp_path / "plots/lt100_paper/meta_iada-s0", card)
    y = np.repeat(np.arange(100)[None, :], 2, axis=0).ravel()  # the fixture's test labels: 0..99, twice
    per_class = [np.mean(pred[y == c] == c) for c in range(100)]
    t = m["selected"]["test"]
    assert t["acc"] == pytest.approx(np.mean(pred == y))
    assert [t["per_class_acc"][str(c)] for c in range(100)] == pytest.approx(per_class)
    few = [c for c in range(100) if counts[c] < 20]
    medium = [c for c in range(100) if 20 <= counts[c] <= 100]
    assert t["many_acc"] is None  # no class has more than 100 images
    assert t["few_acc"] == pytest.approx(np.mean([per_class[c] for c in few]))
    assert t["medium_acc"] == pytest.approx(np.mean([per_class[c] for c in medium]))


def strict_loads(text: str) -> dict:
    """json.loads that rejects NaN / Infinity, as strict JSON parsers do."""
    def reject(token: str):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=reject)


def saved_test_predictions(plots: Path, card: dict) -> np.ndarray:
    """Predicted class of each test image, in test-split order, from the selected weights'
    ``confusion.csv`` (class names mapped back to indices)."""
    index = {n: c for c, n in enumerate(card["class_names"])}
    with open(plots / "confusion.csv", newline="") as f:
        return np.array([index[row["predicted"]] for row in csv.DictReader(f)])


def pairwise_higher(eps: np.ndarray, noisy: np.ndarray) -> float:
    """P(eps_noisy > eps_clean) + P(eps_noisy = eps_clean) / 2 over all (noisy, clean) pairs of
    the samples seen in training (finite eps), counted pair by pair."""
    seen = np.isfinite(eps)
    a, b = eps[seen & noisy][:, None], eps[seen & ~noisy][None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))
