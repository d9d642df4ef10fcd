"""Metrics and the comparison report on small fixtures."""

import json

import numpy as np
import pytest

from pipeline.evaluation.metrics import macro_precision, per_class_accuracy, shot_accuracy, split_metrics
from pipeline.report.comparison import collect, markdown, summarise


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
    (tmp / "lt" / "detail").mkdir(parents=True, exist_ok=True)
    (tmp / "lt" / "detail" / f"{method}-s{seed}.json").write_text(json.dumps(result))


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
    assert "| ce | deferred | 2 | 55.00 ± 7.07 | 54.00 ± 7.07 |" in text
    assert "| meta_iada | deferred | 1 | 70.00 | 69.00 |" in text and "CIFAR-10 (JPEG)" in text


def test_report_prints_a_dash_for_a_null_metric(tmp_path):
    """few_acc is undefined (no Few-shot class): NaN in memory, null in the metrics file
    (written by the evaluate stage's writer), "—" in the table and None in the summary."""
    from pipeline.layout import write_json

    for seed, few in ((0, float("nan")), (1, 0.25)):
        head = {"acc": 0.5, "few_acc": few}
        result = {"scenario": "longtail", "data": "CIFAR-10 (JPEG)", "selection_metric": "val_acc", "method": "ce",
                  "final": {"headline": head}, "selected": {"headline": {"acc": 0.5, "few_acc": 0.25}}}
        write_json(result, tmp_path / "lt" / "detail" / f"ce-s{seed}.json")
    assert '"few_acc": null' in (tmp_path / "lt" / "detail" / "ce-s0.json").read_text()
    results = collect(tmp_path, ["lt"], ["ce"], [0, 1])
    assert "| ce | deferred | 2 | 50.00 ± 0.00 | — | 50.00 ± 0.00 | 25.00 ± 0.00 |" in markdown(results)
    summary = summarise(results)
    assert summary["lt"]["ce"]["final.few_acc"] == {"mean": None, "std": None, "seeds": 2}
    json.dumps(summary, allow_nan=False)


def test_overlay_data_has_a_column_per_method_with_the_mean_over_seeds(tmp_path):
    """The CSVs of dvc.yaml's top-level plots: a row per epoch (per class), a column per method of
    the run matrix (the names of ``y: ${run.methods}``), the mean over seeds; a method that starts
    later (scratch vs deferred) or an undefined value leaves its cell empty; the file of an
    experiment no longer run goes."""
    import csv

    from pipeline.report.comparison import write_overlays

    def run(selection, epochs, values, per_class):
        return {"selection_metric": selection, "curve": {"epoch": epochs, selection: values, "val_acc": [0.0] * 9},
                "train_class_counts": [50, 5], "selected": {"test": {"per_class_acc": per_class}}}

    results = {"sp": {"ce": [run("val_worst_group_acc", [0, 1, 2], [0.1, 0.2, 0.3], {"0": 0.8, "1": 0.2}),
                             run("val_worst_group_acc", [0, 1, 2], [0.3, 0.4, None], {"0": 0.6, "1": 0.4})],
                      "meta_iada": [run("val_worst_group_acc", [2, 3], [0.5, 0.7], {"0": 0.9, "1": None})]}}
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "gone.csv").write_text("epoch,ce\n0,0.1\n")
    write_overlays(results, tmp_path)

    def rows(path):
        with open(path, newline="") as f:
            return list(csv.reader(f))

    assert rows(tmp_path / "curves" / "sp.csv") == [
        ["epoch", "ce", "meta_iada"], ["0", "0.2000", ""], ["1", "0.3000", ""], ["2", "", "0.5000"], ["3", "", "0.7000"]]
    assert rows(tmp_path / "per_class" / "sp.csv") == [
        ["class", "train_images", "ce", "meta_iada"], ["0", "50", "0.7000", "0.9000"], ["1", "5", "0.3000", ""]]
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == ["sp.csv"]
