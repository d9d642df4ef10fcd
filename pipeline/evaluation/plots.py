"""The plot files of an evaluated run: DVC plot data (confusion pairs, per-class accuracy,
per-epoch history) and a PNG of per-class accuracy with the learned ε's distributions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.prepared import PreparedData
from pipeline.evaluation.metrics import confusion_counts, per_class_accuracy


def write_plot_files(data: PreparedData, pred: np.ndarray, plots_dir: Path) -> None:
    """``confusion.csv`` (actual, predicted per test sample) and ``per_class.csv`` for DVC plots,
    and ``confusion.png`` with every class as a row and a column (DVC's confusion template draws
    only the classes that occur in the pairs: a class never predicted has no column there)."""
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
    plot_confusion(confusion_counts(pred, test.y, data.num_classes), names, plots_dir / "confusion.png")


def plot_confusion(counts: np.ndarray, names: list[str], path: Path) -> None:
    """The confusion matrix [C, C] (rows: actual, columns: predicted) with its counts."""
    plt = pyplot()
    c = len(counts)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * c, 1 + 0.5 * c))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(c), names[:c], rotation=45, ha="right")
    ax.set_yticks(range(c), names[:c])
    ax.set(xlabel="predicted", ylabel="actual", title="confusion matrix (test)")
    if c <= 20:
        for (a, p), n in np.ndenumerate(counts):
            ax.text(p, a, str(n), ha="center", va="center", fontsize=7,
                    color="white" if n > counts.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = pyplot()
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
