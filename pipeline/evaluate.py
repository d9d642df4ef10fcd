"""Evaluation of a trained run: test metrics for the final-epoch and the validation-selected
weights, per-class / shot / group breakdowns, epsilon analyses, and the plot data files.

Selection rules (never best-epoch-on-test): ``final`` = weights after the last epoch;
``selected`` = weights of the epoch with the best validation metric of the scenario
(``val_acc``, or ``val_worst_group_acc`` for subpopulation shift).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.longtail import shot_groups
from pipeline.data.prepared import PreparedData
from pipeline.experiment import ExperimentConfig
from pipeline.metrics import per_class_accuracy, predict, shot_accuracy, split_metrics
from pipeline.train import BEST, HISTORY, LAST, SCORES, build_model, load_checkpoint, make_loaders, resolve_device

# Test-split names of the generalized long-tail protocols.
GLT_PROTOCOLS = {"test": "clt", "test_glt": "glt", "test_alt": "alt"}


def evaluate_weights(exp: ExperimentConfig, data: PreparedData, state_dict: dict[str, Any],
                     device: torch.device) -> dict[str, Any]:
    """Metrics of one set of weights on every evaluation split, plus test predictions."""
    net, _ = build_model(exp, data, device)
    net.load_state_dict(state_dict)
    loaders = make_loaders(exp, data, 0, device, exp.network.channels_last).eval
    out: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    for name, loader in loaders.items():
        split = data.splits[name]
        logits = predict(net, loader)
        preds[name] = logits.argmax(1)
        out[name] = split_metrics(logits, split.y, data.num_classes, split.extras.get("group"))
    test = data.splits["test"]
    per_class = per_class_accuracy(preds["test"], test.y, data.num_classes)
    train_counts = np.bincount(data.splits["train"].y, minlength=data.num_classes)
    if exp.scenario in ("longtail", "glt"):
        out["test"].update({f"{k}_acc": v for k, v in shot_accuracy(per_class, shot_groups(train_counts)).items()})
    out["test"]["per_class_acc"] = {str(c): float(a) for c, a in enumerate(per_class)}
    if "group" in test.extras:
        groups = test.extras["group"]
        out["test"]["per_group_acc"] = {str(int(g)): float((preds["test"][groups == g] == test.y[groups == g]).mean())
                                        for g in np.unique(groups)}
    return {"metrics": out, "test_pred": preds["test"]}


def epsilon_analysis(data: PreparedData, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """Statistics of the last epsilon of each training sample: per class, and per clean/noisy
    label (with AUROC of epsilon for "label is noisy") or per group where the data has them."""
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
        out["clean_mean"] = float(np.mean(eps[seen & ~noisy]))
        out["noisy_mean"] = float(np.mean(eps[seen & noisy])) if np.any(seen & noisy) else float("nan")
        both = np.any(seen & noisy) and np.any(seen & ~noisy)
        out["auroc_noisy"] = float(roc_auc_score(noisy[seen], eps[seen])) if both else float("nan")
    if "group" in train.extras:
        g = train.extras["group"]
        out["per_group_mean"] = {str(int(k)): float(np.mean(eps[seen & (g == k)])) for k in np.unique(g[seen])}
    return out


def headline(scenario: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a reader of this scenario looks at first (fractions)."""
    t = metrics["test"]
    if scenario == "subpop":
        return {"worst_group_acc": t["worst_group_acc"], "avg_acc": t["acc"]}
    if scenario == "glt":
        return {f"{GLT_PROTOCOLS[s]}_{k}": metrics[s][k] for s in GLT_PROTOCOLS if s in metrics
                for k in ("acc", "macro_precision")}
    out = {"acc": t["acc"]}
    out.update({k: t[k] for k in ("many_acc", "medium_acc", "few_acc") if k in t})
    return out


def evaluate_run(exp: ExperimentConfig, data: PreparedData, run_dir: Path, plots_dir: Path,
                 device: str = "auto") -> dict[str, Any]:
    """Metrics JSON content of one run; writes confusion / per-class CSVs and PNGs to ``plots_dir``."""
    dev = resolve_device(device)
    history = json.loads((run_dir / HISTORY).read_text())
    result: dict[str, Any] = {"scenario": exp.scenario, "method": history["method"], "seed": history["seed"],
                              "data": data.card.get("source", {}).get("dataset", exp.data.source),
                              "selection_metric": history["selection_metric"], "run_id": history["run_id"]}
    for rule, ckpt_name in (("final", LAST), ("selected", BEST)):
        ckpt = load_checkpoint(run_dir / ckpt_name)
        ev = evaluate_weights(exp, data, ckpt["model"], dev)
        result[rule] = {"epoch": int(ckpt["epoch"]) - 1, **ev["metrics"],
                        "headline": headline(exp.scenario, ev["metrics"])}
        if rule == "selected":
            write_plot_files(data, ev["test_pred"], plots_dir)
            selected_pred = ev["test_pred"]
    scores: dict[str, np.ndarray] = {}
    if (run_dir / SCORES).is_file():
        with np.load(run_dir / SCORES) as npz:
            scores = {k: npz[k] for k in npz.files}
    eps = epsilon_analysis(data, scores)
    if eps:
        result["epsilon"] = eps
    test = data.splits["test"]
    plot_summary(data, per_class_accuracy(selected_pred, test.y, data.num_classes), scores.get("epsilon"),
                 f"{history['method']} seed {history['seed']}", plots_dir / "summary.png")
    write_history_csv(history["history"], plots_dir / "history.csv")
    return result


def write_plot_files(data: PreparedData, pred: np.ndarray, plots_dir: Path) -> None:
    """``confusion.csv`` (actual, predicted per test sample) and ``per_class.csv`` for DVC plots."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    test = data.splits["test"]
    names = data.card.get("class_names") or [str(c) for c in range(data.num_classes)]
    with open(plots_dir / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted"])
        w.writerows((names[a], names[p]) for a, p in zip(test.y, pred))
    per_class = per_class_accuracy(pred, test.y, data.num_classes)
    with open(plots_dir / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "accuracy"])
        w.writerows((names[c], f"{a:.4f}") for c, a in enumerate(per_class))


def write_history_csv(history: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row if not k.startswith("eps_class")}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def plot_summary(data: PreparedData, per_class: np.ndarray, eps: np.ndarray | None, title: str,
                 path: Path) -> None:
    """Per-class test accuracy, and for methods with a perturbation network the distribution of
    the learned epsilon per class (and per clean/noisy label or group where the data has them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = data.splits["train"]
    names = data.card.get("class_names") or [str(c) for c in range(data.num_classes)]
    panels: list[tuple[str, list[str], list[np.ndarray]]] = []
    if eps is not None:
        seen = np.isfinite(eps)
        panels.append(("per class", names, [eps[seen & (train.y == c)] for c in range(data.num_classes)]))
        if "is_noisy" in train.extras:
            noisy = train.extras["is_noisy"].astype(bool)
            panels.append(("clean vs noisy label", ["clean", "noisy"], [eps[seen & ~noisy], eps[seen & noisy]]))
        if "group" in train.extras:
            g = train.extras["group"]
            ks = np.unique(g)
            panels.append(("per group", [f"group {k}" for k in ks], [eps[seen & (g == k)] for k in ks]))
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5 * (1 + len(panels)) + 1, 4), squeeze=False)
    ax = axes[0][0]
    ax.bar(range(len(per_class)), 100 * per_class)
    ax.set_xticks(range(len(per_class)), names[:len(per_class)], rotation=45, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}: per-class accuracy")
    for ax, (name, labels, values) in zip(axes[0][1:], panels):
        keep = [(lab, v) for lab, v in zip(labels, values) if len(v)]
        if keep:
            ax.violinplot([v for _, v in keep], showmeans=True)
            ax.set_xticks(range(1, len(keep) + 1), [lab for lab, _ in keep], rotation=45, ha="right")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"epsilon {name}")
        ax.set_ylabel("epsilon (> 0: adversarial)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
