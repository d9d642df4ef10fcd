"""Evaluation metrics: accuracy, per-class / shot-group / per-group accuracy, macro precision."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pipeline.data.loader import BatchLoader
from pipeline.networks import FeatureClassifier


@torch.no_grad()
def predict(net: FeatureClassifier, loader: BatchLoader) -> np.ndarray:
    """Logits [N, C] of every sample of ``loader`` in order (eval mode, restored after)."""
    was_training = net.training
    net.eval()
    out = [net(b.x).float().cpu() for b in loader.epoch(0)]
    net.train(was_training)
    return torch.cat(out).numpy()


def confusion_counts(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """M [C, C] with M[a, p] = #{i: y_i = a, pred_i = p}, every class a row and a column even
    when it is never the label or never predicted."""
    return np.bincount(y.astype(np.int64) * num_classes + pred.astype(np.int64),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(pred: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """acc_c = #{i: y_i = c, pred_i = c} / #{i: y_i = c}; NaN for absent classes."""
    correct = np.bincount(y[pred == y], minlength=num_classes).astype(float)
    total = np.bincount(y, minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def macro_precision(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Mean over classes of #{pred = c, y = c} / #{pred = c} (classes never predicted count 0)."""
    tp = np.bincount(y[pred == y], minlength=num_classes).astype(float)
    predicted = np.bincount(pred, minlength=num_classes).astype(float)
    return float(np.mean(np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)))


def group_accuracy(pred: np.ndarray, y: np.ndarray, group: np.ndarray) -> dict[int, float]:
    """Accuracy within each group present in ``group``."""
    return {int(g): float((pred[group == g] == y[group == g]).mean()) for g in np.unique(group)}


def shot_accuracy(per_class: np.ndarray, shots: Mapping[str, list[int]]) -> dict[str, float]:
    """Mean per-class accuracy over the Many / Medium / Few classes (NaN if a group is empty)."""
    return {name: float(np.nanmean(per_class[idx])) if len(idx) else float("nan")
            for name, idx in shots.items()}


def split_metrics(logits: np.ndarray, y: np.ndarray, num_classes: int,
                  group: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy (and, with groups, average / worst-group accuracy) of one split, as fractions."""
    pred = logits.argmax(1)
    out = {"acc": float((pred == y).mean()) if len(y) else float("nan"),
           "macro_precision": macro_precision(pred, y, num_classes)}
    if group is not None:
        accs = group_accuracy(pred, y, group)
        out["worst_group_acc"] = min(accs.values())
        out["avg_group_acc"] = float(np.mean(list(accs.values())))
    return out
