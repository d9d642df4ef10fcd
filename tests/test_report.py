"""Metrics and the comparison report on small fixtures."""

import json

import numpy as np
import pytest

from pipeline.metrics import macro_precision, per_class_accuracy, shot_accuracy, split_metrics
from pipeline.report import collect, markdown, summarise


def test_per_class_accuracy_and_macro_precision_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 0, 0])
    assert np.allclose(per_class_accuracy(pred, y, 3), [2 / 3, 1 / 2, 0.0])
    # precision: class 0 predicted 4x, 2 right; class 1 predicted 2x, 1 right; class 2 never -> 0
    assert macro_precision(pred, y, 3) == pytest.approx((2 / 4 + 1 / 2 + 0) / 3)
    assert shot_accuracy(np.array([1.0, 0.5, 0.0]), {"many": [0], "medium": [1, 2], "few": []})["medium"] == 0.25


def test_worst_group_is_the_minimum_over_groups():
    y = np.array([0, 0, 1, 1])
    logits = np.eye(2)[[0, 1, 1, 1]]  # one error, in group 0
    m = split_metrics(logits, y, 2, group=np.array([0, 0, 1, 1]))
    assert m["acc"] == 0.75 and m["worst_group_acc"] == 0.5 and m["avg_group_acc"] == 0.75


def write(tmp, method, seed, acc):
    head = {"acc": acc}
    result = {"scenario": "longtail", "data": "CIFAR-10 (JPEG)", "selection_metric": "val_acc", "method": method,
              "final": {"headline": head}, "selected": {"headline": {"acc": acc - 0.01}}}
    (tmp / "lt").mkdir(exist_ok=True)
    (tmp / "lt" / f"{method}-s{seed}.json").write_text(json.dumps(result))


def test_report_mean_and_std_over_the_seeds_of_the_run_matrix(tmp_path):
    write(tmp_path, "ce", 0, 0.50)
    write(tmp_path, "ce", 1, 0.60)
    write(tmp_path, "meta_iada", 0, 0.70)
    write(tmp_path, "la", 0, 0.99)  # not in the run matrix: ignored
    results = collect(tmp_path, ["lt"], ["ce", "meta_iada"], [0, 1])
    summary = summarise(results)
    assert summary["lt"]["ce"]["final.acc"]["mean"] == pytest.approx(0.55)
    assert summary["lt"]["ce"]["final.acc"]["std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert summary["lt"]["meta_iada"]["final.acc"]["seeds"] == 1 and "la" not in summary["lt"]
    text = markdown(results)
    assert "| ce | 2 | 55.00 ± 7.07 | 54.00 ± 7.07 |" in text
    assert "| meta_iada | 1 | 70.00 | 69.00 |" in text and "CIFAR-10 (JPEG)" in text
