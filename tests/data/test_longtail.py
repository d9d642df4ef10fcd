"""Long-tailed CIFAR: exact counts, carve-outs, card, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import data_config, labels_only_source, real_cifar10_labels, synthetic_source

from pipeline.params.schema import ParamError
from pipeline.data.build import build_from_source
from pipeline.data.longtail import longtail_counts, shot_groups
from pipeline.data.prepared import PreparedDataError, load_prepared, save_prepared

# CIFAR-10, no carve-out (scenarios.md; LDAM-DRW's CIFAR-10-LT)
CIFAR10_RHO100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR10_RHO10 = [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
# CIFAR-10 after the default carve-outs (10 meta + 20 val per class): n_max = 4970
CIFAR10_RHO100_CARVED = [4970, 2979, 1786, 1070, 641, 384, 230, 138, 82, 49]
CIFAR10_RHO10_CARVED = [4970, 3848, 2979, 2306, 1786, 1382, 1070, 829, 641, 497]


def test_longtail_counts_cifar10_without_carve_out():
    assert longtail_counts(5000, 10, 100) == CIFAR10_RHO100
    assert sum(CIFAR10_RHO100) == 12406
    assert longtail_counts(5000, 10, 10) == CIFAR10_RHO10
    assert longtail_counts(4970, 10, 100) == CIFAR10_RHO100_CARVED
    assert longtail_counts(4970, 10, 10) == CIFAR10_RHO10_CARVED
    assert longtail_counts(500, 100, 100)[-1] == 5 and longtail_counts(500, 100, 1) == [500] * 100


def assert_carve_outs(data, meta_per_class: int, val_per_class: int, num_classes: int) -> None:
    """meta / val balanced; train, meta, val disjoint by source index."""
    splits = data.splits
    assert np.bincount(splits["meta"].y, minlength=num_classes).tolist() == [meta_per_class] * num_classes
    assert np.bincount(splits["val"].y, minlength=num_classes).tolist() == [val_per_class] * num_classes
    pooled = np.concatenate([splits[s].index for s in ("train", "meta", "val")])
    assert len(np.unique(pooled)) == len(pooled)


@pytest.mark.parametrize(("rho", "expected"), [(100, CIFAR10_RHO100_CARVED), (10, CIFAR10_RHO10_CARVED)])
def test_real_cifar10_counts_with_default_carve_outs(rho, expected):
    labels = real_cifar10_labels()
    if labels is None:
        pytest.skip("shared CIFAR-10 (JPEG) not present")
    source = labels_only_source(labels, 10)  # the counts depend on the labels only
    data = build_from_source(source, data_config(scenario="longtail", source="cifar10",
                                                 longtail={"imbalance_ratio": rho}))
    assert data.card["counts"]["per_class"]["train"] == expected
    assert data.card["longtail"]["n_max"] == 4970
    assert data.card["counts"]["per_class"]["test"] == [1000] * 10
    assert_carve_outs(data, 10, 20, 10)
    assert np.array_equal(data.splits["train"].y, labels["train"][data.splits["train"].index])


def test_fixture_longtail_splits_and_card(tmp_path):
    source = synthetic_source(num_classes=10, train_per_class=130, test_per_class=7)
    cfg = data_config(scenario="longtail", source="cifar10", meta_per_class=3, val_per_class=5,
                      longtail={"imbalance_ratio": 10})
    data = build_from_source(source, cfg)
    assert_carve_outs(data, 3, 5, 10)
    assert data.card["counts"]["per_class"]["train"] == longtail_counts(122, 10, 10)
    assert data.card["counts"]["per_class"]["test"] == [7] * 10
    assert data.card["shot_groups"] == shot_groups(longtail_counts(122, 10, 10))
    assert data.card["index_source"] == {"train": "train", "meta": "train", "val": "train", "test": "test"}
    assert set(data.card["seeds"]["streams"]) == {"longtail/carve", "longtail/train"}
    save_prepared(data, tmp_path / "lt")
    loaded = load_prepared(tmp_path / "lt")
    assert json.loads((tmp_path / "lt" / "card.json").read_text())["scenario"] == "longtail"
    assert np.array_equal(loaded.splits["train"].index, data.splits["train"].index)


def test_longtail_is_seeded():
    source = synthetic_source(num_classes=10, train_per_class=40, test_per_class=2)

    def build(seed: int):
        return build_from_source(source, data_config(scenario="longtail", source="cifar10", seed=seed,
                                                     meta_per_class=2, val_per_class=2))

    a, b, c = build(0), build(0), build(1)
    assert np.array_equal(a.splits["meta"].index, b.splits["meta"].index)
    assert np.array_equal(a.splits["train"].index, b.splits["train"].index)
    assert not np.array_equal(a.splits["meta"].index, c.splits["meta"].index)


def test_shot_groups_rule():
    assert shot_groups([101, 100, 20, 19, 0]) == {"many": [0], "medium": [1, 2], "few": [3, 4]}


def test_carve_out_larger_than_pool_names_the_keys():
    source = synthetic_source(num_classes=10, train_per_class=12, test_per_class=2)
    with pytest.raises(ParamError, match="data.meta_per_class"):
        build_from_source(source, data_config(scenario="longtail", source="cifar10"))


@pytest.mark.parametrize(("raw", "key"), [
    ({"longtail": {"imbalance_ratio": 0.5}}, "longtail.imbalance_ratio"),
    ({"longtail": {"rho": 100}}, "longtail.rho"),
    ({"meta_per_class": 0}, "meta_per_class"),
])
def test_invalid_longtail_params_name_the_key(raw, key):
    with pytest.raises(ParamError, match=f"experiments.test.data.{key}"):
        data_config(scenario="longtail", source="cifar10", **raw)


@pytest.mark.parametrize("damage", ["truncated_arrays", "garbage_card", "card_without_splits", "missing_array"])
def test_a_broken_prepared_data_set_gives_one_line_through_the_stage(tmp_path, damage):
    """What a user sees when ``data/prepared/<exp>`` is damaged: one ``error:`` line naming the
    folder and the fix, exit 2, no traceback."""
    import subprocess
    import sys

    source = synthetic_source(num_classes=10, train_per_class=30, test_per_class=2)
    data = build_from_source(source, data_config(scenario="longtail", source="cifar10", meta_per_class=2,
                                                 val_per_class=2, longtail={"imbalance_ratio": 2}))
    folder = tmp_path / "data" / "prepared" / "lt"
    save_prepared(data, folder)
    arrays, card = folder / "arrays.npz", folder / "card.json"
    if damage == "truncated_arrays":
        arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    elif damage == "garbage_card":
        card.write_text("{not json")
    elif damage == "card_without_splits":
        card.write_text(json.dumps({"num_classes": 10}))
    else:
        with np.load(arrays) as npz:
            kept = {k: npz[k] for k in npz.files if k != "val/y"}
        np.savez(arrays, **kept)
    with pytest.raises(PreparedDataError, match=str(folder)):
        load_prepared(folder)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.pretrain", "--experiment", "lt", "--seed", "0",
                           "--params", str(root / "params.yaml"), "--no-mlflow"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
    assert "rerun the prepare stage" in lines[0]
    assert not (tmp_path / "models").exists()
