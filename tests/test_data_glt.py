"""Generalized long tail: attributes, the long-tailed training cells, the three test protocols."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import data_config, styled_source

from pipeline.config import ParamError
from pipeline.data.build import build_from_source
from pipeline.data import glt
from pipeline.data.glt import apportion, attribute_weights, class_factors, largest_n_max, train_cell_counts

TRAIN_SIZES, TEST_SIZES = [60, 40, 25], [30, 20, 12]  # per class, per style (= attribute)


def build(test_per_cell: int = 4):
    source, styles = styled_source(4, TRAIN_SIZES, TEST_SIZES)
    cfg = data_config(scenario="glt", source="cifar10", meta_per_class=2, val_per_class=3,
                      glt={"clusters": 3, "class_imbalance_ratio": 10, "attribute_imbalance_ratio": 4,
                           "test_per_cell": test_per_cell})
    return build_from_source(source, cfg), styles


def cells(split) -> np.ndarray:
    return np.bincount(split.extras["group"], minlength=12).reshape(4, 3)


def test_attributes_are_the_clusters_ordered_by_size():
    data, styles = build()
    for name, split in data.splits.items():
        origin = styles["test" if name.startswith("test") else "train"]
        assert np.array_equal(split.extras["attribute"], origin[split.index])
        assert np.array_equal(split.extras["group"], 3 * split.y + split.extras["attribute"])
    assert data.card["glt"]["pool_cells"] == [TRAIN_SIZES] * 4


def test_training_cells_follow_the_double_long_tail():
    data, _ = build()
    f, w = class_factors(4, 10), attribute_weights(3, 4)
    available = np.array([TRAIN_SIZES] * 4) - cells(data.splits["meta"]) - cells(data.splits["val"])
    n_max = data.card["glt"]["n_max"]
    assert n_max == largest_n_max(available, f, w)
    assert ((n_max + 1) * np.outer(f, w) / w.sum() > available).any()  # n_max is the largest that fits
    assert np.array_equal(cells(data.splits["train"]), train_cell_counts(n_max, f, w))
    assert data.card["counts"]["per_class"]["meta"] == [2] * 4
    pooled = np.concatenate([data.splits[s].index for s in ("train", "meta", "val")])
    assert len(np.unique(pooled)) == len(pooled)


def test_three_test_protocols_have_their_balance():
    data, _ = build(test_per_cell=4)
    # GLT: 4 per (class, attribute)
    assert cells(data.splits["test_glt"]).tolist() == [[4, 4, 4]] * 4
    # CLT: 12 per class, split 1 : 1/2 : 1/4 (w_a, rho_a = 4) by largest remainders
    assert cells(data.splits["test"]).tolist() == [[7, 3, 2]] * 4
    # ALT: attribute-balanced, classes as in training: max(1, floor(4 * 10^(-c/3)))
    assert cells(data.splits["test_alt"]).tolist() == [[4, 4, 4], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert data.card["glt"]["cells"]["test_alt"] == cells(data.splits["test_alt"]).tolist()
    assert set(data.test_splits()) == {"test", "test_glt", "test_alt"}


def test_infeasible_test_per_cell_names_the_key_and_the_largest_value():
    # the smallest test cell holds 12 images, so 12 is the largest feasible value
    with pytest.raises(ParamError, match=r"data\.glt\.test_per_cell = 13 .* largest feasible value is 12"):
        build(test_per_cell=13)
    data, _ = build(test_per_cell=12)
    assert cells(data.splits["test_glt"]).min() == 12


def test_apportion_and_cell_counts():
    assert apportion(12, np.array([1, 0.5, 0.25])).tolist() == [7, 3, 2]
    assert apportion(10, np.ones(3)).tolist() == [4, 3, 3]
    counts = glt.test_cell_counts(5, class_factors(3, 100), attribute_weights(2, 2))
    assert counts["test"].sum(axis=1).tolist() == [10, 10, 10]
    assert counts["test_alt"].tolist() == [[5, 5], [1, 1], [1, 1]]


@pytest.mark.parametrize(("raw", "key"), [
    ({"source": "mnist"}, "data.source"),
    ({"glt": {"clusters": 1}}, "experiments.test.data.glt.clusters"),
    ({"glt": {"attribute_imbalance_ratio": 0.9}}, "experiments.test.data.glt.attribute_imbalance_ratio"),
])
def test_invalid_glt_params_name_the_key(raw, key):
    with pytest.raises(ParamError, match=key):
        data_config(**{"scenario": "glt", "source": "cifar10", **raw})
