"""Evaluation of a trained run: test metrics for the final-epoch and the validation-selected
weights, per-class / shot / group breakdowns, epsilon analyses, and the plot data files.

Selection rules (never best-epoch-on-test): ``final`` = weights after the last epoch;
``selected`` = weights of the epoch with the best validation metric of the scenario
(``val_acc``, or ``val_worst_group_acc`` for subpopulation shift).

Undefined values (e.g. ``few_acc`` when no class has fewer than 20 training images) are NaN
here and ``null`` in the metrics JSON (:func:`pipeline.layout.write_json`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.longtail import shot_groups
from pipeline.data.prepared import PreparedData
from pipeline.data.scenarios import SCENARIOS
from pipeline.params.experiment import ExperimentConfig
from pipeline.evaluation.metrics import group_accuracy, per_class_accuracy, predict, shot_accuracy, split_metrics
from pipeline.evaluation.plots import plot_summary, write_history_csv, write_plot_files
from pipeline.engine.build import build_net, eval_loaders, resolve_device
from pipeline.engine.checkpoint import (CheckpointError, load_checkpoint, read_run_record, with_timings,
                                        without_timings)
from pipeline.layout import BEST, HISTORY, LAST, SCORES
from pipeline.methods import method_class
from pipeline.networks import Head

def evaluate_weights(exp: ExperimentConfig, data: PreparedData, state_dict: dict[str, Any],
                     device: torch.device, head: Head = "linear") -> dict[str, Any]:
    """Metrics of one set of weights (with the classifier head their method trained) on every
    evaluation split, plus test predictions."""
    net = build_net(exp, data, device, head)
    net.load_state_dict(state_dict)
    loaders = eval_loaders(exp, data, device)
    logits = {name: predict(net, loader) for name, loader in loaders.items()}
    return {"metrics": prediction_metrics(exp.scenario, data, logits), "test_pred": logits["test"].argmax(1)}


def prediction_metrics(scenario: str, data: PreparedData, logits: dict[str, np.ndarray]) -> dict[str, Any]:
    """Metrics of the predictions ``logits[split]`` [N, C] of each evaluation split.

    Every split: accuracy, macro precision, ``class_mean_acc`` = (1/C') Σ_c acc_c over the C'
    classes present (balanced accuracy) and, with groups, worst-group / average group accuracy.
    The test split also: ``per_class_acc``, ``per_group_acc`` where it has groups, and for the
    scenarios with ``shot_groups`` ``many_acc`` / ``medium_acc`` / ``few_acc`` = mean per-class test
    accuracy over the classes with > 100 / 20-100 / < 20 *training* images (NaN where a shot
    group is empty).
    """
    out: dict[str, Any] = {}
    for name, split_logits in logits.items():
        split = data.splits[name]
        out[name] = split_metrics(split_logits, split.y, data.num_classes, split.extras.get("group"))
        class_acc = per_class_accuracy(split_logits.argmax(1), split.y, data.num_classes)
        out[name]["class_mean_acc"] = float(np.nanmean(class_acc)) if len(split.y) else float("nan")
    test, pred = data.splits["test"], logits["test"].argmax(1)
    per_class = per_class_accuracy(pred, test.y, data.num_classes)
    train_counts = np.bincount(data.splits["train"].y, minlength=data.num_classes)
    if SCENARIOS[scenario].shot_groups:
        out["test"].update({f"{k}_acc": v for k, v in shot_accuracy(per_class, shot_groups(train_counts)).items()})
    out["test"]["per_class_acc"] = {str(c): float(a) for c, a in enumerate(per_class)}
    if "group" in test.extras:
        per_group = group_accuracy(pred, test.y, test.extras["group"])
        out["test"]["per_group_acc"] = {str(g): a for g, a in per_group.items()}
    return out


def epsilon_analysis(data: PreparedData, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """Statistics of the last epsilon of each training sample seen in training (finite ε): per
    class, and per clean/noisy label or per group where the data has them.

    Separation of noisy from clean labels by ε, with the direction in the key:
    ``auroc_noisy_higher_eps`` = P(ε_noisy > ε_clean) + ½ P(ε_noisy = ε_clean) over all pairs
    of a noisy and a clean training sample (= ``roc_auc_score(is_noisy, ε)``: ε as the score
    for "label is noisy"); ``auroc_noisy_lower_eps`` = 1 − that = P(ε_noisy < ε_clean) + ½ P(=),
    the AUROC of −ε. A network that gives noisy labels anti-adversarial (lower) ε has
    ``auroc_noisy_lower_eps`` > 0.5. Both NaN without seen samples of both kinds.
    """
    from sklearn.metrics import roc_auc_score

    eps = scores.get("epsilon")
    if eps is None:
        return {}
    train = data.splits["train"]
    seen = np.isfinite(eps)
    out: dict[str, Any] = {"mean": float(np.mean(eps[seen])), "adversarial_share": float(np.mean(eps[seen] > 0)),
                           "per_class_mean": {str(c): float(np.mean(eps[seen & (train.y == c)]))
                                              for c in range(data.num_classes) if np.any(seen & (train.y == c))}}
    if "is_noisy" in train.extras:
        noisy = train.extras["is_noisy"].astype(bool)
        out["clean_mean"] = float(np.mean(eps[seen & ~noisy])) if np.any(seen & ~noisy) else float("nan")
        out["noisy_mean"] = float(np.mean(eps[seen & noisy])) if np.any(seen & noisy) else float("nan")
        both = np.any(seen & noisy) and np.any(seen & ~noisy)
        higher = float(roc_auc_score(noisy[seen], eps[seen])) if both else float("nan")
        out["auroc_noisy_higher_eps"], out["auroc_noisy_lower_eps"] = higher, 1.0 - higher
    if "group" in train.extras:
        g = train.extras["group"]
        out["per_group_mean"] = {str(int(k)): float(np.mean(eps[seen & (g == k)])) for k in np.unique(g[seen])}
    return out


def headline(scenario: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a reader of ``scenario`` looks at first (fractions): its record's ``headline``
    (:mod:`pipeline.data.scenarios`; e.g. :func:`pipeline.data.glt.headline`)."""
    return SCENARIOS[scenario].headline(metrics)


def load_finished_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """``history.json``, the ``final`` (``last.pt``) and ``selected`` (``best.pt``) checkpoints and
    the per-sample scores of a run that finished, all of the same run (fingerprint); the history
    carries the run id and epoch times of the run record where the folder has one.

    Raises :class:`~pipeline.engine.checkpoint.CheckpointError` (one line) for a run that did not finish
    (``last.pt`` short of the last epoch), for files left by another run (e.g. the ``history.json``
    of an earlier configuration beside an interrupted run's ``last.pt``) and for corrupt files:
    evaluating such a folder would report a partial epoch as final under an older run's id.
    """
    rerun = "rerun the run's train stage (it resumes from last.pt)"
    path = run_dir / HISTORY
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {HISTORY}: the run has not finished; {rerun}")
    try:
        history = json.loads(path.read_text())
        fingerprint = history["fingerprint"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt or from an older version ({type(err).__name__}); {rerun}") from err
    checkpoints = {"final": load_checkpoint(run_dir / LAST), "selected": load_checkpoint(run_dir / BEST)}
    last = checkpoints["final"]
    if last.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{run_dir / LAST} and {HISTORY} belong to different runs (an interrupted run beside "
                              f"an earlier one's files); {rerun}")
    if last["epoch"] != history.get("last_epoch"):
        raise CheckpointError(f"run {run_dir} did not finish: {LAST} is at epoch {last['epoch']} of "
                              f"{history.get('last_epoch')}; {rerun}")
    if checkpoints["selected"].get("fingerprint") != fingerprint:
        raise CheckpointError(f"{run_dir / BEST} belongs to another run than {LAST}; {rerun}")
    record = read_run_record(run_dir, fingerprint)  # the run id and epoch times, where the folder has them
    history["run_id"] = record.get("run_id") or history.get("run_id")
    history["history"] = with_timings(history["history"], record)
    scores: dict[str, np.ndarray] = {}
    if (run_dir / SCORES).is_file():
        try:
            with np.load(run_dir / SCORES, allow_pickle=False) as npz:
                scores = {k: npz[k] for k in npz.files}
        except Exception as err:  # truncated or garbage file
            raise CheckpointError(f"{run_dir / SCORES} is unreadable ({type(err).__name__}); {rerun}") from err
        if str(scores.pop("fingerprint", "")) != fingerprint:
            raise CheckpointError(f"{run_dir / SCORES} belongs to another run than {LAST}; {rerun}")
    return history, checkpoints, scores


SHOT_KEYS = ("many_acc", "medium_acc", "few_acc")
CURVE_KEYS = ("epoch", "train_loss", "val_acc", "val_worst_group_acc", "epoch_seconds", "calibration_test_acc")
EPSILON_KEYS = ("mean", "adversarial_share", "auroc_noisy_lower_eps")


def metrics_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The metrics file DVC shows (``dvc metrics show`` / ``dvc exp show`` print a column per
    leaf, so it holds numbers a reader compares first): each rule's accuracy-type headline
    (without the shot breakdown and macro precision) and ε's mean, adversarial share and, with
    noisy labels, its AUROC. Everything else, the run's identity included, is in the detail file."""
    out: dict[str, Any] = {}
    for rule in ("final", "selected"):
        out[rule] = {k: v for k, v in result[rule]["headline"].items()
                     if k not in SHOT_KEYS and not k.endswith("macro_precision")}
    if "epsilon" in result:
        out["epsilon"] = {k: result["epsilon"][k] for k in EPSILON_KEYS if k in result["epsilon"]}
    return out


# What differs between two runs of the same configuration on the same machine: the MLflow run's
# id and the epochs' wall-clock times. MLflow holds both (the training run, and epoch_seconds per
# epoch); the default pipeline's committed detail file leaves them out, so that a rerun of
# `dvc repro` writes it byte for byte. The reference sweep keeps them: its records are also the
# cost record of a long run (the reference report's training time).
RUN_SPECIFIC = ("run_id",)
RUN_SPECIFIC_CURVES = ("epoch_seconds",)


def reproducible(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without :data:`RUN_SPECIFIC` keys and curves (the detail file of the default
    pipeline)."""
    out = {k: v for k, v in result.items() if k not in RUN_SPECIFIC}
    out["curve"] = {k: v for k, v in result["curve"].items() if k not in RUN_SPECIFIC_CURVES}
    return out


def evaluate_run(exp: ExperimentConfig, data: PreparedData, run_dir: Path, plots_dir: Path,
                 device: str = "auto") -> dict[str, Any]:
    """Metrics JSON content of one run; writes confusion / per-class CSVs and PNGs to ``plots_dir``."""
    dev = resolve_device(device)
    history, checkpoints, scores = load_finished_run(run_dir)
    result: dict[str, Any] = {"scenario": exp.scenario, "method": history["method"], "seed": history["seed"],
                              "data": data.card.get("source", {}).get("dataset", exp.data.source),
                              "selection_metric": history["selection_metric"], "run_id": history["run_id"],
                              # from the CE checkpoint, or the whole schedule from a random init
                              "protocol": "deferred" if history["first_epoch"] > 0 else "scratch",
                              "precision": exp.network.precision}  # of the training and this evaluation
    splits = ", ".join(f"{name} ({len(split)})" for name, split in data.splits.items() if name not in ("train", "meta"))
    for rule, ckpt in checkpoints.items():
        print(f"[evaluate {run_dir}] {rule} weights (epoch {int(ckpt['epoch']) - 1}) on {splits}",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        ev = evaluate_weights(exp, data, ckpt["model"], dev, method_class(history["method"]).head)
        print(f"[evaluate {run_dir}] {rule}: test accuracy {ev['metrics']['test']['acc']:.4f} "
              f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        result[rule] = {"epoch": int(ckpt["epoch"]) - 1, **ev["metrics"],
                        "headline": headline(exp.scenario, ev["metrics"])}
        if rule == "selected":
            write_plot_files(data, ev["test_pred"], plots_dir)
            selected_pred = ev["test_pred"]
    eps = epsilon_analysis(data, scores)
    if eps:
        result["epsilon"] = eps
    # what the comparison figures draw: class sizes (per-class accuracy against them) and the
    # validation curve of the run
    result["train_class_counts"] = np.bincount(data.splits["train"].y, minlength=data.num_classes).tolist()
    result["curve"] = {k: [h.get(k) for h in history["history"]] for k in CURVE_KEYS
                       if any(k in h for h in history["history"])}
    test = data.splits["test"]
    plot_summary(data, per_class_accuracy(selected_pred, test.y, data.num_classes), scores.get("epsilon"),
                 f"{history['method']} seed {history['seed']}", plots_dir / "summary.png")
    write_history_csv(without_timings(history["history"]), plots_dir / "history.csv")  # a DVC output: no times
    return result
