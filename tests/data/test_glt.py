"""Generalized long tail: attributes, the long-tailed training cells, the three test protocols."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import data_config, styled_source

from pipeline.params.schema import ParamError
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
    """Counts on paper: C = 4, k = 3, rho_c = 10, rho_a = 4, so f = (1, 10^(-1/3), 10^(-2/3), 0.1)
    = (1, 0.46416, 0.21544, 0.1), w = (1, 1/2, 1/4), W = 7/4. Every cell of the pool holds
    (60, 40, 25) images; the carve (2 meta + 3 val per class) leaves avail. The largest n_max with
    n_max f_c w_a / W <= avail_{c,a} is bound by class 0, attribute 0: n_max <= 7/4 (60 - r) with
    r = images carved from that cell (the other cells allow >= 7/4 * 35 / (1/2) = 122.5).
    Seed 0 carves r = 3, so n_max = floor(7/4 * 57) = floor(99.75) = 99, n_max / W = 56.571 and
    n_{c,a} = floor(56.571 f_c w_a):
      c = 0: 56.57, 28.29, 14.14 -> 56, 28, 14
      c = 1: 26.26, 13.13,  6.56 -> 26, 13, 6
      c = 2: 12.19,  6.09,  3.05 -> 12, 6, 3
      c = 3:  5.66,  2.83,  1.41 -> 5, 2, 1
    """
    data, _ = build()
    carved = cells(data.splits["meta"]) + cells(data.splits["val"])
    assert carved[0, 0] == 3, "seed 0's carve changed: recompute the counts below on paper"
    assert carved.sum(axis=1).tolist() == [5] * 4
    assert data.card["glt"]["n_max"] == 99
    assert cells(data.splits["train"]).tolist() == [[56, 28, 14], [26, 13, 6], [12, 6, 3], [5, 2, 1]]
    assert data.card["counts"]["per_class"]["train"] == [98, 45, 21, 8]
    assert data.card["counts"]["per_class"]["meta"] == [2] * 4
    pooled = np.concatenate([data.splits[s].index for s in ("train", "meta", "val")])
    assert len(np.unique(pooled)) == len(pooled)


def test_cell_count_formulas_by_hand():
    """The module's formulas on a second small case: C = 3, rho_c = 4 (f = 1, 1/2, 1/4), k = 2,
    rho_a = 3 (w = 1, 1/3, W = 4/3), n_max = 40: n_{c,a} = floor(30 f_c w_a) = 30, 10 / 15, 5 /
    7, 2 (7.5 and 2.5 floored). With avail = (30, 10) in every cell, class 0 binds:
    min(30 * 4/3, 10 * 4/3 / (1/3)) = min(40, 40), so n_max = 40; one image less in cell (0, 1)
    gives floor(9 * 4) = 36."""
    f, w = class_factors(3, 4), attribute_weights(2, 3)
    assert np.allclose(f, [1, 0.5, 0.25]) and np.allclose(w, [1, 1 / 3])
    assert train_cell_counts(40, f, w).tolist() == [[30, 10], [15, 5], [7, 2]]
    available = np.array([[30, 10]] * 3)
    assert largest_n_max(available, f, w) == 40
    available[0, 1] = 9
    assert largest_n_max(available, f, w) == 36


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
