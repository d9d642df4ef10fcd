"""The names of the metrics in MLflow (the history files and metrics JSON keep theirs)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def metric_name(key: str) -> str:
    """MLflow name of the training-history metric ``key`` (``history.json`` and the metrics files
    keep ``key``). MLflow 3.17's chart tab makes one section per name prefix (up to the last
    ``/``), orders the sections by name, un-prefixed metrics after them and ``system/`` last; so
    the curves read first come first: ``curves/train/<k>`` (``train_<k>``, ``lr``),
    ``curves/val/<k>`` (``val_<k>``), ``curves/test/acc`` (``calibration_test_acc``), then
    ``epsilon/<k>`` (``eps_<k>``; per class ``epsilon/class_mean/<c>``), ``method/<k>`` (the
    method's other statistics), and ``system/`` (epoch time, throughput)."""
    if key in SYSTEM_METRICS:
        return f"system/{SYSTEM_METRICS[key]}"
    if key == "lr":
        return "curves/train/lr"
    if key == "calibration_test_acc":
        return "curves/test/acc"
    for prefix, section in (("train_", "curves/train/"), ("val_", "curves/val/"), ("eps_", "epsilon/")):
        if key.startswith(prefix):
            return section + key.removeprefix(prefix)
    return f"method/{key}"


SYSTEM_METRICS = {"epoch_seconds": "epoch_seconds", "train_img_per_s": "img_per_s"}


def evaluation_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """MLflow names and values of an evaluation's single numbers: ``<split>/<rule>/<metric>``
    (``test/selected/acc``, ``val/final/acc``, ``test/selected/epoch``: the epoch of the
    weights), and ``epsilon/last/<statistic>`` of the training samples' last ε. Undefined (NaN)
    values, per-class and per-group breakdowns, and the headline (a copy of split values) are
    left out."""
    out: dict[str, Any] = {}
    for rule in ("final", "selected"):
        for split, values in result.get(rule, {}).items():
            if split == "epoch":
                out[f"test/{rule}/epoch"] = values
            elif split != "headline" and isinstance(values, Mapping):
                out.update({f"{split}/{rule}/{k}": v for k, v in values.items()})
    out.update({f"epsilon/last/{k}": v for k, v in result.get("epsilon", {}).items()})
    return {k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
