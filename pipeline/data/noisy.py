"""Noisy-label CIFAR: corrupted training labels, clean meta set and validation split.

1. Carve the clean meta set (``meta_per_class`` per class, or ``noisy.meta_clean_total`` / C per
   class, the Meta-Weight-Net setting) and the clean validation split (``val_per_class`` per
   class) out of the training pool.
2. Corrupt the labels of the rest with :func:`corrupt_labels` (kind and rate r from
   ``data.noisy``); the training split's ``y`` is the noisy label, extras ``clean_y`` and
   ``is_noisy`` (y ≠ clean_y) keep the truth.
3. Test on the official (clean) test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.data.config import SOURCE_CLASSES, DataConfig
from pipeline.data.prepared import PreparedData, Split
from pipeline.data.sampling import carve_per_class, floor_tol, stream
from pipeline.data.scenarios import Scenario, cifar_only, register
from pipeline.data.sources import Source
from pipeline.params.schema import ParamError, bounded


@dataclass
class NoisyParams:
    """Label noise on the training split (meta and validation sets stay clean).

    ``uniform``: with rate r a label becomes one of the other C−1 classes, uniformly;
    ``uniform_with_true``: with rate r a label is redrawn from all C classes (Meta-Weight-Net;
    realised rate about r(C−1)/C); ``flip``: with rate r label c becomes (c+1) mod C.
    ``meta_clean_total``: size of the clean, class-balanced meta set (1000 = the Meta-Weight-Net
    setting); null = ``meta_per_class`` per class.
    """

    kind: Literal["uniform", "uniform_with_true", "flip"] = "uniform"
    rate: float = bounded(0.4, ge=0, lt=1)  # r
    meta_clean_total: int | None = bounded(None, ge=1)


def check_noisy(cfg: DataConfig) -> None:
    """A CIFAR source, and a clean meta set that the classes divide (it is class-balanced)."""
    cifar_only(cfg)
    total = cfg.noisy.meta_clean_total
    classes = SOURCE_CLASSES[cfg.source]
    if total is not None and total % classes:
        raise ParamError(f"data.noisy.meta_clean_total = {total} must be a multiple of the {classes} "
                         f"classes of {cfg.source} (the meta set is class-balanced)")


STREAMS = {
    "noisy/carve": "which images of each class form the clean meta set and validation split",
    "noisy/labels": "which training labels of each class are corrupted, and their new classes",
}

DEFINITIONS = {
    "uniform": "exactly round(r*n_c) labels of each class c, chosen uniformly, are replaced by a "
               "class drawn uniformly from the other C-1 classes; realised rate = r",
    "uniform_with_true": "exactly round(r*n_c) labels of each class c, chosen uniformly, are redrawn "
                         "uniformly from all C classes (Meta-Weight-Net), so some keep their class: "
                         "realised rate about r*(C-1)/C",
    "flip": "exactly round(r*n_c) labels of each class c, chosen uniformly, become (c+1) mod C "
            "(pair flip); realised rate = r",
}


def corrupt_labels(labels: np.ndarray, num_classes: int, kind: str, rate: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of ``labels`` [N] (see ``DEFINITIONS``).

    For each class c in order: ``rng.choice`` picks exactly round(r · n_c) of its samples, so
    each sample is corrupted with probability r and the realised rate is r up to rounding;
    then ``rng.integers`` draws their new classes: (c + u) mod C with u uniform in 1..C−1
    (``uniform``), uniform in 0..C−1 (``uniform_with_true``), or (c + 1) mod C (``flip``, no draw).
    """
    noisy = labels.copy()
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=floor_tol(rate * len(members) + 0.5), replace=False)
        if kind == "uniform":
            noisy[chosen] = (c + rng.integers(1, num_classes, size=len(chosen))) % num_classes
        elif kind == "uniform_with_true":
            noisy[chosen] = rng.integers(0, num_classes, size=len(chosen))
        else:
            noisy[chosen] = (c + 1) % num_classes
    return noisy


def expected_noise_rate(kind: str, rate: float, num_classes: int) -> float:
    """Expected share of labels that change: r, or r(C−1)/C for ``uniform_with_true``."""
    return rate * (num_classes - 1) / num_classes if kind == "uniform_with_true" else rate


def noisy_label_distribution(kind: str, rate: float, num_classes: int) -> list[float]:
    """The distribution of a training label given its clean class c under ``corrupt_labels``:
    P(ỹ = c) first, then the other classes that receive mass (C − 1 of them, or the one (c+1) mod C
    of ``flip``). Each label is corrupted with probability r (up to rounding)."""
    r, c = rate, num_classes
    if kind == "uniform":
        return [1 - r] + [r / (c - 1)] * (c - 1)
    if kind == "uniform_with_true":
        return [1 - r + r / c] + [r / c] * (c - 1)
    if kind == "flip":
        return [1 - r, r]
    raise ValueError(f"unknown noise kind {kind!r}: one of {', '.join(DEFINITIONS)}")


def transition_counts(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """T [C, C]: T[i, j] = number of samples of true class i labelled j."""
    return np.bincount(clean * num_classes + noisy, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def build_noisy(source: Source, cfg: DataConfig) -> PreparedData:
    """Splits train (noisy labels), meta and val (clean, balanced) and test (clean)."""
    num_classes, params = source.num_classes, cfg.noisy
    meta_per_class = (cfg.meta_per_class if params.meta_clean_total is None
                      else params.meta_clean_total // num_classes)
    carved, rest = carve_per_class(source.train_y, num_classes,
                                   {"meta": meta_per_class, "val": cfg.val_per_class},
                                   stream(cfg.seed, "noisy/carve"))
    pool = source.take("train", rest)
    noisy = corrupt_labels(pool.y, num_classes, params.kind, params.rate, stream(cfg.seed, "noisy/labels"))
    train = Split(pool.x, noisy, pool.index, {"clean_y": pool.y, "is_noisy": noisy != pool.y})
    counts = transition_counts(pool.y, noisy, num_classes)
    rows = counts.sum(axis=1, keepdims=True)
    splits = {"train": train, "meta": source.take("train", carved["meta"]),
              "val": source.take("train", carved["val"]),
              "test": source.take("test", np.arange(len(source.test_y)))}
    card = {
        "num_classes": num_classes, "class_names": source.class_names,
        "noisy": {
            "kind": params.kind, "definition": DEFINITIONS[params.kind], "nominal_rate": params.rate,
            "expected_realised_rate": expected_noise_rate(params.kind, params.rate, num_classes),
            "realised_rate": float(train.extras["is_noisy"].mean()),
            "num_noisy": int(train.extras["is_noisy"].sum()),
            "meta_per_class": meta_per_class,
            "transition_counts": counts.tolist(),
            "transition_matrix": np.round(counts / np.maximum(rows, 1), 6).tolist(),
        },
    }
    return PreparedData(splits, card)


register(Scenario(
    name="noisy", params=NoisyParams, build=build_noisy, streams=STREAMS, primary="acc",
    mlflow_experiment="noisy-labels", check=check_noisy,
    note="`acc`: accuracy on the clean test set (the training labels were flipped, the test labels are not)."))
