"""Each scenario end to end on tiny data: prepare -> pretrain -> train (ce, meta_iada) -> evaluate,
through the stage entry points, in a temporary working directory (no MLflow here: the
end-to-end DVC test covers tracking)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.stages import evaluate, prepare, pretrain, train

ROOT = Path(__file__).resolve().parents[1]

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


def write_params(tmp: Path, name: str) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    exp = params["experiments"][name if name != "subpop_cifar" else "subpop_cifar"]
    exp["data"] = {**TINY, **SCENARIOS[name]}
    exp.update(pretrain_epochs=1, train_epochs=1, meta_batch_size=4, eval_batch_size=200)
    exp["optim"].update(batch_size=16, warmup_epochs=0, milestones=[])
    exp["network"]["arch"] = "resnet8"
    params["experiments"] = {name: exp}
    params["run"] = {"experiments": [name], "methods": ["ce", "meta_iada"], "seeds": [0], "device": "cpu"}
    params["tune"] = {"run": [], "studies": {}}
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
    m = json.loads((tmp_path / "metrics" / name / "meta_iada-s0.json").read_text())
    head = m["selected"]["headline"]
    assert m["scenario"] == SCENARIOS[name]["scenario"]
    if name == "noisy":
        assert card["noisy"]["realised_rate"] > 0
        assert set(head) == {"acc"} and 0 <= head["acc"] <= 1
        assert 0 <= m["epsilon"]["auroc_noisy"] <= 1  # epsilon separating clean from corrupted labels
    elif name.startswith("subpop"):
        assert m["selection_metric"] == "val_worst_group_acc"
        assert set(head) == {"worst_group_acc", "avg_acc"} and head["worst_group_acc"] <= head["avg_acc"]
        assert len(m["selected"]["test"]["per_group_acc"]) == 4
        assert set(m["epsilon"]["per_group_mean"]) == {"0", "1", "2", "3"}
    else:
        assert {"clt_acc", "glt_acc", "alt_acc", "clt_macro_precision", "glt_macro_precision",
                "alt_macro_precision"} == set(head)
    assert (tmp_path / "plots" / name / "meta_iada-s0" / "summary.png").stat().st_size > 0
