"""Evaluation on hand-made predictions: Many / Medium / Few wiring, the GLT and subpop headlines,
the AUROC of epsilon for noisy labels, and strict JSON for undefined metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.data.prepared import PreparedData, Split
from pipeline.evaluation.evaluate import epsilon_analysis, headline, prediction_metrics
from pipeline.layout import write_json


def split(y: list[int], **extras: list) -> Split:
    """A split of 1x1 black images with labels ``y`` and the given extras."""
    n = len(y)
    return Split(np.zeros((n, 1, 1, 3), dtype=np.uint8), np.array(y, dtype=np.int64), np.arange(n),
                 {k: np.array(v) for k, v in extras.items()})


def labels(counts: list[int]) -> list[int]:
    """Class c repeated counts[c] times."""
    return np.repeat(np.arange(len(counts)), counts).tolist()


def one_hot(pred: list[int], num_classes: int) -> np.ndarray:
    """Logits whose argmax is ``pred``."""
    return np.eye(num_classes)[pred]


def predictions(correct: list[int], per_class: int, num_classes: int) -> list[int]:
    """Test predictions for ``per_class`` images of each class (in class order): the first
    correct[c] of class c right, the others predicted as class (c + 1) mod C."""
    return [c if i < correct[c] else (c + 1) % num_classes for c in range(num_classes) for i in range(per_class)]


def data_with(train_counts: list[int], test: Split, **more: Split) -> PreparedData:
    num_classes = len(train_counts)
    return PreparedData({"train": split(labels(train_counts)), "test": test, **more}, {"num_classes": num_classes})


def test_shot_accuracy_uses_the_training_counts():
    # training images per class: Many > 100, Medium 20-100, Few < 20 (boundaries 101/100 and 20/19)
    train_counts = [150, 101, 100, 50, 20, 19, 5]  # Many {0, 1}, Medium {2, 3, 4}, Few {5, 6}
    correct = [4, 2, 3, 1, 0, 4, 1]  # of 4 test images per class: acc 1, .5, .75, .25, 0, 1, .25
    data = data_with(train_counts, split(labels([4] * 7)))
    m = prediction_metrics("longtail", data, {"test": one_hot(predictions(correct, 4, 7), 7)})["test"]
    assert m["many_acc"] == pytest.approx((1 + 0.5) / 2)
    assert m["medium_acc"] == pytest.approx((0.75 + 0.25 + 0) / 3)
    assert m["few_acc"] == pytest.approx((1 + 0.25) / 2)
    assert m["acc"] == pytest.approx(15 / 28) and m["per_class_acc"]["2"] == 0.75
    assert headline("longtail", {"test": m}) == {"acc": m["acc"], "many_acc": m["many_acc"],
                                                 "medium_acc": m["medium_acc"], "few_acc": m["few_acc"]}


def test_empty_shot_group_is_undefined_and_noisy_has_no_shots():
    data = data_with([500, 300, 40], split(labels([2] * 3)))  # no class under 20 images: Few is empty
    logits = {"test": one_hot(predictions([2, 1, 0], 2, 3), 3)}
    m = prediction_metrics("longtail", data, logits)["test"]
    assert m["many_acc"] == 0.75 and m["medium_acc"] == 0.0 and math.isnan(m["few_acc"])
    assert "many_acc" not in prediction_metrics("noisy", data, logits)["test"]


def test_glt_alt_headline_is_the_class_mean_accuracy():
    # test_alt keeps the class long tail: 8, 2, 2 images; class 0 all right, class 1 one of two,
    # class 2 none. Plain accuracy 9/12 = 0.75, class-mean accuracy (1 + 0.5 + 0) / 3 = 0.5.
    alt_y = labels([8, 2, 2])
    alt_pred = alt_y[:8] + [1, 2] + [0, 0]
    clt = split(labels([2, 2, 2]))
    data = data_with([100, 30, 10], clt, test_glt=split(labels([2, 2, 2])), test_alt=split(alt_y))
    logits = {"test": one_hot([0, 0, 1, 1, 2, 0], 3), "test_glt": one_hot([0, 0, 1, 1, 2, 2], 3),
              "test_alt": one_hot(alt_pred, 3)}
    metrics = prediction_metrics("glt", data, logits)
    head = headline("glt", metrics)
    assert set(head) == {"clt_acc", "clt_macro_precision", "glt_acc", "glt_macro_precision",
                         "alt_class_mean_acc", "alt_macro_precision"}
    assert head["alt_class_mean_acc"] == pytest.approx(0.5)
    assert metrics["test_alt"]["acc"] == pytest.approx(0.75)  # kept in the metrics, not the headline
    assert head["clt_acc"] == pytest.approx(5 / 6) and head["glt_acc"] == 1.0
    # alt precision: class 0 predicted 10x (8 right), class 1 predicted 1x (right), class 2 1x (wrong)
    assert head["alt_macro_precision"] == pytest.approx((8 / 10 + 1 + 0) / 3)


def test_subpop_headline_worst_group_and_test_environment_accuracy():
    # groups g = 2y + a; errors: one of two in group 1, both in group 2; group 3 has 4 images.
    # avg_acc is the accuracy over all 10 test images (7/10), not the mean over groups (0.625)
    test = split([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], group=[0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    data = data_with([10, 10], test)
    metrics = prediction_metrics("subpop", data, {"test": one_hot([0, 0, 0, 1, 0, 0, 1, 1, 1, 1], 2)})
    assert metrics["test"]["per_group_acc"] == {"0": 1.0, "1": 0.5, "2": 0.0, "3": 1.0}
    assert headline("subpop", metrics) == {"worst_group_acc": 0.0, "avg_acc": 0.7}


def test_auroc_of_epsilon_names_its_direction():
    # noisy labels get lower epsilon: noisy {-0.2, -0.5}, clean {0.5, 0.3, -0.4, -0.2}; the last
    # sample (noisy) was never seen (NaN) and is left out. Of the 8 (noisy, clean) pairs,
    # eps_noisy > eps_clean in 1 (-0.2 > -0.4) and ties in 1 (-0.2 = -0.2):
    # P(>) + P(=)/2 = 1.5 / 8 = 0.1875, and the lower direction 6.5 / 8 = 0.8125.
    eps = np.array([0.5, 0.3, -0.4, -0.2, -0.2, -0.5, np.nan])
    noisy = [False, False, False, False, True, True, True]
    data = PreparedData({"train": split([0, 0, 0, 0, 1, 1, 1], is_noisy=noisy)}, {"num_classes": 2})
    out = epsilon_analysis(data, {"epsilon": eps})
    assert out["auroc_noisy_higher_eps"] == pytest.approx(0.1875)
    assert out["auroc_noisy_lower_eps"] == pytest.approx(0.8125)
    assert out["noisy_mean"] == pytest.approx(-0.35) and out["clean_mean"] == pytest.approx(0.05)
    assert "auroc_noisy" not in out


def strict_loads(text: str):
    """json.loads that rejects NaN / Infinity (as strict parsers do)."""
    def reject(token: str):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=reject)


def test_metrics_json_is_strict_with_null_for_undefined(tmp_path):
    data = data_with([500, 300, 40], split(labels([2] * 3)))  # Few is empty: few_acc undefined
    metrics = prediction_metrics("longtail", data, {"test": one_hot(predictions([2, 1, 0], 2, 3), 3)})
    result = {"selected": {**metrics, "headline": headline("longtail", metrics)},
              "epsilon": {"noisy_mean": np.float32("nan"), "mean": np.float64(0.25), "count": np.int64(3)}}
    write_json(result, tmp_path / "m.json")
    back = strict_loads((tmp_path / "m.json").read_text())
    assert back["selected"]["headline"]["few_acc"] is None and back["selected"]["test"]["few_acc"] is None
    assert back["selected"]["headline"]["many_acc"] == 0.75
    assert back["epsilon"] == {"noisy_mean": None, "mean": 0.25, "count": 3}
    assert math.isnan(result["selected"]["headline"]["few_acc"])  # the caller's object is left as it was


class Interrupt(Exception):
    pass


def test_evaluation_refuses_an_unfinished_or_mixed_run_folder(tmp_path, capsys):
    """Interrupted run beside an earlier run's files: evaluation used to exit 0, report the
    partial epoch as final and take the older run's id; now one CheckpointError each."""
    import shutil

    from pipeline.evaluation.evaluate import evaluate_run
    from pipeline.engine.checkpoint import CheckpointError
    from pipeline.engine.loop import RunSpec, fit
    from pipeline.layout import HISTORY, LAST, SCORES
    from tests.tiny import tiny_data, tiny_experiment

    data, run = tiny_data(), tmp_path / "run"
    fit(RunSpec(tiny_experiment(), data, "meta_iada", 0, run, first_epoch=0, last_epoch=2, device="cpu"))
    assert evaluate_run(tiny_experiment(), data, run, tmp_path / "plots", device="cpu")["final"]["epoch"] == 1
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[evaluate")]
    assert len(progress) == 4 and "final weights (epoch 1) on val (18), test (30)" in progress[0]  # no silence
    finished = {name: (run / name).read_bytes() for name in (HISTORY, SCORES)}

    def stop(epoch, metrics):
        raise Interrupt

    other = tiny_experiment(optim={"lr": 0.01, "batch_size": 8, "warmup_epochs": 1, "milestones": [3]})
    with pytest.raises(Interrupt):  # another configuration into the same folder, killed after epoch 0
        fit(RunSpec(other, data, "meta_iada", 0, run, first_epoch=0, last_epoch=2, device="cpu"), on_epoch=stop)
    with pytest.raises(CheckpointError, match="belong to different runs"):
        evaluate_run(other, data, run, tmp_path / "plots", device="cpu")
    (run / HISTORY).unlink()
    with pytest.raises(CheckpointError, match="has no history.json: the run has not finished"):
        evaluate_run(other, data, run, tmp_path / "plots", device="cpu")
    # the same configuration, its history written but last.pt one epoch short
    shutil.copy(run / LAST, tmp_path / "partial.pt")
    fit(RunSpec(other, data, "meta_iada", 0, run, first_epoch=0, last_epoch=2, device="cpu"))
    evaluate_run(other, data, run, tmp_path / "plots", device="cpu")
    shutil.copy(tmp_path / "partial.pt", run / LAST)
    with pytest.raises(CheckpointError, match=r"did not finish: last.pt is at epoch 1 of 2"):
        evaluate_run(other, data, run, tmp_path / "plots", device="cpu")
    (run / SCORES).write_bytes(finished[SCORES])  # scores of the first run
    fit(RunSpec(other, data, "meta_iada", 0, run, first_epoch=0, last_epoch=2, device="cpu"))  # resumes and finishes
    (run / SCORES).write_bytes(finished[SCORES])
    with pytest.raises(CheckpointError, match="sample_scores.npz belongs to another run"):
        evaluate_run(other, data, run, tmp_path / "plots", device="cpu")
    (run / SCORES).write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(CheckpointError, match="sample_scores.npz is unreadable"):
        evaluate_run(other, data, run, tmp_path / "plots", device="cpu")
    (run / HISTORY).write_text("{truncated")
    with pytest.raises(CheckpointError, match="history.json is corrupt"):
        evaluate_run(other, data, run, tmp_path / "plots", device="cpu")


def test_a_cosine_head_method_is_evaluated_with_its_cosine_head(tmp_path):
    """ldam_drw trains a cosine classifier: its test accuracy is that of cos θ = ĥᵀŵ_j, computed
    here by hand from the checkpoint, not of W h + b (which the bias and the norms change)."""
    import torch
    import torch.nn.functional as F

    from pipeline.data.loader import BatchLoader
    from pipeline.engine.build import normalisation
    from pipeline.engine.loop import RunSpec, fit
    from pipeline.evaluation.evaluate import evaluate_run
    from pipeline.layout import LAST
    from pipeline.networks import build_network
    from tests.tiny import tiny_data, tiny_experiment

    exp, data = tiny_experiment(), tiny_data()
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu"))
    fit(RunSpec(exp, data, "ldam_drw", 0, tmp_path / "run", first_epoch=1, last_epoch=3, init=tmp_path / "pre" / LAST,
                device="cpu"))
    state = torch.load(tmp_path / "run" / LAST, weights_only=True)["model"]
    net = build_network("resnet8", data.num_classes)  # a plain linear-head network, the weights loaded
    net.load_state_dict(state)
    net.classifier.bias.data += torch.tensor([1e4, 0.0, 0.0])  # a bias the cosine head must ignore
    state = net.state_dict()
    net.eval()
    test = data.splits["test"]
    mean, std = normalisation(data)
    x = torch.cat([b.x for b in BatchLoader(test, (mean, std), 64).epoch(0)])
    with torch.no_grad():
        h = net.features(x)
        cos_pred = (F.normalize(h, dim=1) @ F.normalize(net.classifier.weight, dim=1).T).argmax(1).numpy()
        linear_pred = net(x).argmax(1).numpy()
    assert (cos_pred != linear_pred).any()  # the two heads disagree here, so the test can tell them apart
    torch.save({**torch.load(tmp_path / "run" / LAST, weights_only=True), "model": state}, tmp_path / "run" / LAST)
    result = evaluate_run(exp, data, tmp_path / "run", tmp_path / "plots", device="cpu")
    assert result["final"]["test"]["acc"] == pytest.approx(float((cos_pred == test.y).mean()))


def test_the_confusion_matrix_keeps_a_class_that_is_never_predicted(tmp_path):
    """DVC's confusion template drew 10 x 9 for a run that never predicts one class; the counts
    (and confusion.png) have every class as a row and a column."""
    from pipeline.evaluation.metrics import confusion_counts
    from pipeline.evaluation.plots import write_plot_files
    from tests.tiny import tiny_data

    y, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 0, 1])  # class 2 is never predicted
    assert confusion_counts(pred, y, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 1, 0]]
    data = tiny_data()
    write_plot_files(data, np.zeros_like(data.splits["test"].y), tmp_path)  # predicts class 0 only
    assert (tmp_path / "confusion.png").stat().st_size > 1000


def test_a_rerun_writes_the_same_detail_file_without_run_id_or_epoch_times(tmp_path, monkeypatch):
    """The evaluate stage's committed detail file holds nothing that differs between two runs of
    the same configuration (the MLflow run id, the epochs' wall-clock times): after a rerun,
    ``git status`` stays clean, and so does the plots folder's hash in ``dvc.lock``. Here the same
    weights with another run id and other epoch times in the run record (as a rerun has) give the
    same files byte for byte."""
    import yaml

    from pipeline.data.prepared import save_prepared
    from pipeline.engine.loop import RunSpec, fit
    from pipeline.layout import RUN_RECORD, data_dir, metrics_file, run_dir
    from pipeline.stages import evaluate
    from tests.tiny import tiny_data

    monkeypatch.chdir(tmp_path)
    exp = {"data": {"scenario": "longtail", "source": "cifar10"}, "network": {"arch": "resnet8", "channels_last": False},
           "optim": {"lr": 0.05, "batch_size": 8, "warmup_epochs": 1, "milestones": [1]}, "pretrain_epochs": 0,
           "train_epochs": 2, "meta_batch_size": 6, "eval_batch_size": 64, "methods": {"ce": {}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"run": {"experiments": ["tiny"], "methods": ["ce"], "seeds": [0], "device": "cpu"}, "experiments": {"tiny": exp}}))
    from pipeline.params.file import load_params

    data, run = tiny_data(), run_dir("tiny", 0, "ce")
    save_prepared(data, data_dir("tiny"))
    fit(RunSpec(load_params().experiment("tiny"), data, "ce", 0, run, first_epoch=0, last_epoch=2, device="cpu"))
    detail = metrics_file("tiny", "ce", 0, detail=True)
    written, csvs = [], []
    for run_id, seconds in (("a" * 32, 1.5), ("b" * 32, 2.5)):
        record = json.loads((run / RUN_RECORD).read_text())  # where a run keeps them
        record["run_id"] = run_id
        for epoch in record["epochs"]:
            epoch["epoch_seconds"], epoch["train_img_per_s"] = seconds, 100 / seconds
        (run / RUN_RECORD).write_text(json.dumps(record))
        assert evaluate.main(["--experiment", "tiny", "--method", "ce", "--seed", "0", "--no-mlflow"]) == 0
        written.append(detail.read_bytes())
        csvs.append((tmp_path / "plots" / "tiny" / "ce-s0" / "history.csv").read_bytes())  # a DVC output too
    # a run folder written before the run record: the times inside history.json, no run.json
    summary = json.loads((run / "history.json").read_text())
    assert not any("epoch_seconds" in epoch for epoch in summary["history"])  # the new layout keeps them out
    for epoch in summary["history"]:
        epoch["epoch_seconds"], epoch["train_img_per_s"] = 3.5, 100 / 3.5
    (run / "history.json").write_text(json.dumps(summary))
    (run / RUN_RECORD).unlink()
    assert evaluate.main(["--experiment", "tiny", "--method", "ce", "--seed", "0", "--no-mlflow"]) == 0
    written.append(detail.read_bytes())
    csvs.append((tmp_path / "plots" / "tiny" / "ce-s0" / "history.csv").read_bytes())
    assert written[0] == written[1] == written[2] and csvs[0] == csvs[1] == csvs[2]
    saved = json.loads(written[0])
    assert "run_id" not in saved and set(saved["curve"]) == {"epoch", "train_loss", "val_acc"}
