"""Generalized long tail (GLT) on CIFAR: the offline analogue of ImageNet-GLT (Tang et al., 2022).

Attributes: inside each class c, k-means (k = ``glt.clusters``) on a fixed image descriptor
(:data:`DESCRIPTOR`) fitted on the class's training pool; clusters are renumbered by size,
attribute 0 = the largest. Test images get their attribute from the same per-class model.

Splits (symbols: C classes, k attributes, ρ_c = ``class_imbalance_ratio``, ρ_a =
``attribute_imbalance_ratio``, f_c = ρ_c^(−c/(C−1)), w_a = ρ_a^(−a/(k−1)), W = Σ_a w_a, t =
``test_per_cell``):

- meta / val: ``meta_per_class`` / ``val_per_class`` images per class out of the training pool.
- train: n_{c,a} = floor(n_max · f_c · w_a / W) images of cell (c, a), long-tailed over classes
  and over attributes inside each class; n_max = the largest value for which every cell has
  that many images left after the carve-outs (min over cells of floor(avail_{c,a} · W / (f_c w_a))).
- test (CLT protocol): class-balanced, k·t images per class split over attributes in the training
  design's proportions w_a / W (largest-remainder rounding).
- test_glt (GLT protocol): class- and attribute-balanced, t images per cell.
- test_alt (ALT protocol): classes in the training design's proportions, attribute-balanced:
  max(1, floor(t · f_c)) images per cell. Only the attribute distribution differs from training.
  Its headline is the class-mean accuracy (1/C) Σ_c acc_c (``alt_class_mean_acc``), not the
  plain accuracy, which the head classes dominate (:func:`headline`).

How ALT differs from Tang et al. (ECCV 2022): their ALT protocol trains on a *class-balanced*,
attribute-long-tailed set and tests on a class- and attribute-balanced one. One prepared data
set has one training split, the class-long-tailed one above, so this ALT keeps that training set
and re-balances at evaluation: the class mean over an attribute-balanced split weighs every
(class, attribute) cell equally, the same target as the GLT protocol's accuracy (estimated from
fewer tail-class images). Tang et al.'s ALT is the GLT protocol of a data set built with
``class_imbalance_ratio`` = 1 (class-balanced, attribute-long-tailed training split).

The three test splits are drawn independently from the official test set (they may overlap).
Every split has extras ``attribute`` a and ``group`` = c·k + a.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.params.schema import ParamError, bounded
from pipeline.data.config import DataConfig
from pipeline.data.longtail import shot_groups
from pipeline.data.prepared import PreparedData, Split
from pipeline.data.sampling import carve_per_class, choose_per_class, floor_tol, stream
from pipeline.data.scenarios import Metrics, Scenario, register
from pipeline.data.sources import Source


@dataclass
class GltParams:
    """Generalized long tail: k attribute clusters per class, long-tailed over classes (ρ_c)
    and over attributes inside each class (ρ_a); ``test_per_cell`` images per (class,
    attribute) cell in the GLT test split."""

    clusters: int = bounded(6, ge=2)  # k
    class_imbalance_ratio: float = bounded(100.0, ge=1)  # ρ_c
    attribute_imbalance_ratio: float = bounded(10.0, ge=1)  # ρ_a
    test_per_cell: int = bounded(30, ge=1)  # CIFAR-10, k = 6: at most 37-38 fit (seeds 0-2)


if TYPE_CHECKING:  # imported in AttributeModel.fit: sklearn costs seconds at start-up; only GLT's prepare needs it
    from sklearn.cluster import KMeans

STREAMS = {
    "glt/kmeans": "the k-means random_state of each class (one integer per class, in class order)",
    "glt/carve": "which images of each class form the meta set and the validation split",
    "glt/train": "which n_{c,a} images of each (class, attribute) cell the training split keeps",
    "glt/test_clt": "which test images of each cell the CLT test split takes",
    "glt/test_glt": "which test images of each cell the GLT test split takes",
    "glt/test_alt": "which test images of each cell the ALT test split takes",
}

PROTOCOL_STREAM = {"test": "glt/test_clt", "test_glt": "glt/test_glt", "test_alt": "glt/test_alt"}
PROTOCOL_KEYS = {"test": "clt", "test_glt": "glt", "test_alt": "alt"}  # the prefix of each test split's headline keys

KMEANS_N_INIT = 10
GRID = 8  # layout descriptor: GRID x GRID block means
# RGB -> YCbCr (ITU-R BT.601 full range, as in JPEG): ycc = rgb @ YCBCR.T + YCBCR_OFFSET
YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                 dtype=np.float32)
YCBCR_OFFSET = np.array([0.0, 128.0, 128.0], dtype=np.float32)
DESCRIPTOR = (
    "image in YCbCr (ITU-R BT.601 full range, as in JPEG); layout = mean of each channel over an "
    f"{GRID}x{GRID} grid of blocks ({GRID * GRID * 3} values); colour statistics = per-channel mean "
    "and standard deviation over the image (6 values); every feature z-scored over the class's "
    "training pool, then the layout block scaled by 1/sqrt(192) and the statistics by 1/sqrt(6) "
    "so that both weigh equally in the k-means distance")
PROTOCOLS = {"test": "CLT: class-balanced, attributes in the training proportions w_a/W",
             "test_glt": "GLT: class- and attribute-balanced, test_per_cell per cell",
             "test_alt": "ALT: classes in the training proportions f_c, attribute-balanced; reported as the "
                         "class-mean accuracy (alt_class_mean_acc). Unlike Tang et al.'s ALT the training set "
                         "is the class-long-tailed one, so it targets the same quantity as GLT accuracy; their "
                         "ALT is GLT accuracy with class_imbalance_ratio = 1"}


def descriptor(images: np.ndarray) -> np.ndarray:
    """Raw descriptor [N, 3·GRID² + 6] of uint8 images [N, H, W, 3] (H, W multiples of GRID)."""
    n, h, w, _ = images.shape
    ycc = images.astype(np.float32) @ YCBCR.T + YCBCR_OFFSET  # [N, H, W, 3]
    planes = np.ascontiguousarray(ycc.transpose(0, 3, 1, 2))  # [N, 3, H, W]: fast reductions
    layout = planes.reshape(n, 3, GRID, h // GRID, GRID, w // GRID).mean(axis=(3, 5))  # [N, 3, GRID, GRID]
    flat = planes.reshape(n, 3, h * w)
    return np.concatenate([layout.transpose(0, 2, 3, 1).reshape(n, -1), flat.mean(-1), flat.std(-1)], axis=1)


@dataclass
class AttributeModel:
    """The attribute model of one class: standardisation, k-means, cluster → attribute (by size)."""

    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D], 1 / (std · sqrt(block size))
    kmeans: KMeans
    rank: np.ndarray  # [k], attribute of each k-means cluster

    @classmethod
    def fit(cls, images: np.ndarray, k: int, random_state: int) -> AttributeModel:
        """Fit on a class's training pool; attribute 0 = the largest cluster (ties: lower id)."""
        feats = descriptor(images)
        block = np.full(feats.shape[1], 1 / np.sqrt(feats.shape[1] - 6))
        block[-6:] = 1 / np.sqrt(6)
        std = feats.std(axis=0)
        mean, scale = feats.mean(axis=0), block / np.where(std > 0, std, 1)
        from sklearn.cluster import KMeans

        kmeans = KMeans(k, n_init=KMEANS_N_INIT, random_state=random_state)
        clusters = kmeans.fit_predict((feats - mean) * scale)
        rank = np.empty(k, dtype=np.int64)
        rank[np.argsort(-np.bincount(clusters, minlength=k), kind="stable")] = np.arange(k)
        return cls(mean, scale, kmeans, rank)

    def assign(self, images: np.ndarray) -> np.ndarray:
        """Attribute [N] of images of this class."""
        return self.rank[self.kmeans.predict((descriptor(images) - self.mean) * self.scale)]


def attribute_weights(k: int, rho_a: float) -> np.ndarray:
    """w_a = ρ_a^(−a/(k−1)), a = 0..k−1."""
    return rho_a ** (-np.arange(k) / (k - 1))


def class_factors(num_classes: int, rho_c: float) -> np.ndarray:
    """f_c = ρ_c^(−c/(C−1)), c = 0..C−1."""
    return rho_c ** (-np.arange(num_classes) / (num_classes - 1))


def train_cell_counts(n_max: int, f: np.ndarray, w: np.ndarray) -> np.ndarray:
    """n_{c,a} = floor(n_max · f_c · w_a / W) [C, k]."""
    return np.floor(n_max * np.outer(f, w) / w.sum() + 1e-9).astype(np.int64)


def largest_n_max(available: np.ndarray, f: np.ndarray, w: np.ndarray) -> int:
    """The largest n_max with n_max · f_c · w_a / W ≤ avail_{c,a} for every cell."""
    return int(np.floor(np.min(available * w.sum() / np.outer(f, w)) + 1e-9))


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` in proportion to ``weights`` by largest remainders (ties: lower index)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact + 1e-9).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts


def test_cell_counts(t: int, f: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Cells [C, k] of the three test splits for ``test_per_cell`` = t (see the module docstring)."""
    num_classes, k = len(f), len(w)
    alt = np.array([max(1, floor_tol(t * fc)) for fc in f], dtype=np.int64)
    return {"test": np.tile(apportion(k * t, w), (num_classes, 1)),
            "test_glt": np.full((num_classes, k), t, dtype=np.int64),
            "test_alt": np.repeat(alt[:, None], k, axis=1)}


def check_test_per_cell(t: int, available: np.ndarray, f: np.ndarray, w: np.ndarray) -> None:
    """Raise :class:`ParamError` naming ``glt.test_per_cell`` and the largest feasible value if a
    test split needs more images of a cell than the test set has."""
    def feasible(value: int) -> bool:
        return all((cells <= available).all() for cells in test_cell_counts(value, f, w).values())

    if feasible(t):
        return
    best = next((v for v in range(t - 1, 0, -1) if feasible(v)), 0)
    c, a = np.unravel_index(np.argmin(available), available.shape)
    hint = (f"the largest feasible value is {best}" if best else
            f"no value works (the smallest cell, class {c} attribute {a}, has {available[c, a]} test images): "
            f"lower data.glt.clusters or raise data.test_limit_per_class")
    raise ParamError(f"data.glt.test_per_cell = {t} needs more test images of some (class, attribute) "
                     f"cell than the test set has: {hint}")


def fit_attribute_models(source: Source, k: int, seed: int) -> tuple[list[AttributeModel], list[int]]:
    """One :class:`AttributeModel` per class on its training pool; random states from ``glt/kmeans``."""
    states = stream(seed, "glt/kmeans").integers(0, 2**31 - 1, size=source.num_classes).tolist()
    models = []
    for c, state in enumerate(states):
        images = source.train_x[source.train_y == c]
        if len(images) < k:
            raise ParamError(f"data.glt.clusters = {k} is more than the {len(images)} training images of "
                             f"class {c}: lower it or raise data.limit_per_class")
        models.append(AttributeModel.fit(images, k, state))
    return models, states


def assign_all(models: list[AttributeModel], images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Attribute [N] of every image by the model of its class."""
    attribute = np.zeros(len(labels), dtype=np.int64)
    for c, model in enumerate(models):
        members = labels == c
        if members.any():
            attribute[members] = model.assign(images[members])
    return attribute


def build_glt(source: Source, cfg: DataConfig) -> PreparedData:
    """Splits train (GLT), meta, val (class-balanced) and the test, test_glt, test_alt protocols."""
    params, seed = cfg.glt, cfg.seed
    num_classes, k = source.num_classes, params.clusters
    f = class_factors(num_classes, params.class_imbalance_ratio)
    w = attribute_weights(k, params.attribute_imbalance_ratio)
    models, states = fit_attribute_models(source, k, seed)
    groups = {"train": source.train_y * k + assign_all(models, source.train_x, source.train_y),
              "test": source.test_y * k + assign_all(models, source.test_x, source.test_y)}
    cells = num_classes * k
    carved, rest = carve_per_class(source.train_y, num_classes, {"meta": cfg.meta_per_class, "val": cfg.val_per_class},
                                   stream(seed, "glt/carve"))
    available = np.bincount(groups["train"][rest], minlength=cells).reshape(num_classes, k)
    n_max = largest_n_max(available, f, w)
    if n_max == 0:
        raise ParamError("some (class, attribute) cell has no training image left after the carve-outs: "
                         "lower data.glt.clusters or raise data.limit_per_class")
    available_test = np.bincount(groups["test"], minlength=cells).reshape(num_classes, k)
    check_test_per_cell(params.test_per_cell, available_test, f, w)
    train_cells = train_cell_counts(n_max, f, w)
    positions = {"train": rest[choose_per_class(groups["train"][rest], train_cells.ravel(), stream(seed, "glt/train"))],
                 **carved}
    for name, cell in test_cell_counts(params.test_per_cell, f, w).items():
        positions[name] = choose_per_class(groups["test"], cell.ravel(), stream(seed, PROTOCOL_STREAM[name]))
    splits = {}
    for name, pos in positions.items():
        src = "test" if name.startswith("test") else "train"
        split = source.take(src, pos)
        group = groups[src][pos]
        splits[name] = Split(split.x, split.y, split.index, {"attribute": group % k, "group": group})
    card = {
        "num_classes": num_classes, "class_names": source.class_names, "num_groups": cells,
        "glt": {
            "descriptor": DESCRIPTOR, "clusters": k,
            "attribute_order": "0 = largest cluster in the class's training pool",
            "kmeans": {"n_init": KMEANS_N_INIT, "random_state": states},
            "group": "class * clusters + attribute",
            "class_imbalance_ratio": params.class_imbalance_ratio,
            "attribute_imbalance_ratio": params.attribute_imbalance_ratio,
            "train_rule": "n_{c,a} = floor(n_max * f_c * w_a / W)", "n_max": n_max,
            "test_per_cell": params.test_per_cell, "protocols": PROTOCOLS,
            "pool_cells": np.bincount(groups["train"], minlength=cells).reshape(num_classes, k).tolist(),
            "test_set_cells": available_test.tolist(),
            "cells": {name: np.bincount(s.extras["group"], minlength=cells).reshape(num_classes, k).tolist()
                      for name, s in splits.items()},
        },
        "shot_groups": shot_groups(train_cells.sum(axis=1).tolist()),
    }
    return PreparedData(splits, card)


def headline(metrics: Metrics) -> dict[str, float]:
    """Accuracy and macro precision per protocol: ``clt_*`` on ``test`` (class-balanced),
    ``glt_*`` on ``test_glt`` (class- and attribute-balanced), and for ALT
    ``alt_class_mean_acc`` = the class-mean accuracy (1/C) Σ_c acc_c on ``test_alt``
    (attribute-balanced, classes in the training proportions) with ``alt_macro_precision``.
    The class mean undoes the class long tail that ``test_alt`` keeps (its plain accuracy,
    still in ``metrics["test_alt"]["acc"]``, is dominated by the head classes). It differs
    from Tang et al.'s ALT (ECCV 2022), which trains on a *class-balanced*,
    attribute-long-tailed set and tests on a class- and attribute-balanced one: here the
    training set is the class-long-tailed one of CLT and GLT, and since every (class,
    attribute) cell then weighs equally, ``alt_class_mean_acc`` estimates the same quantity as
    ``glt_acc``, from fewer tail-class images. Tang et al.'s ALT is ``glt_acc`` of an
    experiment with ``glt.class_imbalance_ratio: 1``."""
    out: dict[str, float] = {}
    for split, protocol in PROTOCOL_KEYS.items():
        if split in metrics:
            acc = "class_mean_acc" if protocol == "alt" else "acc"
            out[f"{protocol}_{acc}"] = metrics[split][acc]
            out[f"{protocol}_macro_precision"] = metrics[split]["macro_precision"]
    return out


register(Scenario(
    name="glt", params=GltParams, build=build_glt, streams=STREAMS, primary="glt_acc",
    mlflow_experiment="generalized-long-tail", headline=headline, shot_groups=True,
    note=("Tang et al.'s protocols: `clt_acc` (CLT) on a class-balanced test set, `glt_acc` (GLT) on a test "
          "set balanced over classes and attributes, both after training on the class- and attribute-long-"
          "tailed set; `alt_class_mean_acc` is the class-mean accuracy on an attribute-balanced test set that "
          "keeps the class long tail. Tang et al.'s ALT trains on a class-balanced, attribute-long-tailed set: "
          "it is `glt_acc` of the experiment whose data has `class_imbalance_ratio: 1` (`glt_alt_ref`).")))
