"""Tiny synthetic data and experiment configs for fast tests of the training pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.params.schema import build
from pipeline.data.prepared import PreparedData, Split
from pipeline.params.experiment import ExperimentConfig


def tiny_data(num_classes: int = 3, per_class: tuple[int, ...] = (24, 12, 6), size: int = 8,
              seed: int = 0, groups: bool = False, noisy: bool = False) -> PreparedData:
    """Images whose class is visible (channel ``c % 3`` brighter), long-tailed training split."""
    rng = np.random.default_rng(seed)

    def split(counts, offset):
        y = np.repeat(np.arange(num_classes), counts).astype(np.int64)
        x = rng.integers(0, 120, size=(len(y), size, size, 3), dtype=np.uint8)
        x[np.arange(len(y)), :, :, y % 3] += 120
        extras = {}
        if groups:
            attr = rng.integers(0, 2, len(y))
            extras = {"attribute": attr, "group": y * 2 + attr}
        if noisy:
            extras["clean_y"] = y.copy()
            extras["is_noisy"] = rng.random(len(y)) < 0.2
        return Split(x, y, np.arange(len(y)) + offset, extras)

    splits = {"train": split(per_class, 0), "meta": split([4] * num_classes, 1000),
              "val": split([6] * num_classes, 2000), "test": split([10] * num_classes, 0)}
    card = {"num_classes": num_classes, "class_names": [f"c{i}" for i in range(num_classes)]}
    return PreparedData(splits, card)


def tiny_experiment(scenario: str = "longtail", **overrides: Any) -> ExperimentConfig:
    raw: dict[str, Any] = {
        "data": {"scenario": scenario, "source": "mnist" if scenario == "subpop" else "cifar10"},
        "network": {"arch": "resnet8", "channels_last": False},
        "optim": {"lr": 0.05, "batch_size": 8, "warmup_epochs": 1, "milestones": [3]},
        "pretrain_epochs": 2, "train_epochs": 2, "meta_batch_size": 6, "eval_batch_size": 64,
    }
    for key, value in overrides.items():
        raw[key] = value
    return build(ExperimentConfig, raw, "experiments.tiny")
