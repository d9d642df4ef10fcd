"""Long-tailed CIFAR (CIFAR-10-LT / CIFAR-100-LT), as in ``shared/docs/scenarios.md``.

1. Carve the clean meta set (``meta_per_class`` per class) and the balanced validation split
   (``val_per_class`` per class) out of the balanced training pool.
2. Keep n_c = floor(n_max · ρ^(−c/(C−1))) images of class c (drawn uniformly), n_max = the
   per-class pool size after the carve-outs, ρ = ``longtail.imbalance_ratio``.
3. Test on the official balanced test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.config import DataConfig
from pipeline.data.prepared import PreparedData
from pipeline.data.sampling import carve_per_class, choose_per_class, class_counts, floor_tol, stream
from pipeline.data.scenarios import Scenario, register
from pipeline.data.sources import Source
from pipeline.params.schema import bounded


@dataclass
class LongtailParams:
    """Long tail over classes: n_c = floor(n_max · ρ^(−c/(C−1)))."""

    imbalance_ratio: float = bounded(100.0, ge=1)  # ρ = n_0 / n_{C-1}


STREAMS = {
    "longtail/carve": "which images of each class form the meta set and the validation split",
    "longtail/train": "which n_c images of each class the long-tailed training split keeps",
}


def longtail_counts(n_max: int, num_classes: int, rho: float) -> list[int]:
    """n_c = floor(n_max · ρ^(−c/(C−1))) for c = 0..C−1 (n_0 = n_max, n_{C−1} = n_max / ρ)."""
    return [floor_tol(n_max * rho ** (-c / (num_classes - 1))) for c in range(num_classes)]


def shot_groups(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Classes by training-set size: Many (> 100 images), Medium (20-100), Few (< 20)."""
    groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(train_counts):
        key = "many" if n > 100 else "few" if n < 20 else "medium"
        groups[key].append(c)
    return groups


def build_longtail(source: Source, cfg: DataConfig) -> PreparedData:
    """Splits train (long-tailed), meta, val (balanced, from the training pool) and test."""
    num_classes, rho = source.num_classes, cfg.longtail.imbalance_ratio
    carved, rest = carve_per_class(source.train_y, num_classes,
                                   {"meta": cfg.meta_per_class, "val": cfg.val_per_class},
                                   stream(cfg.seed, "longtail/carve"))
    n_max = min(class_counts(source.train_y[rest], num_classes))
    counts = longtail_counts(n_max, num_classes, rho)
    keep = rest[choose_per_class(source.train_y[rest], counts, stream(cfg.seed, "longtail/train"))]
    splits = {"train": source.take("train", keep),
              "meta": source.take("train", carved["meta"]),
              "val": source.take("train", carved["val"]),
              "test": source.take("test", np.arange(len(source.test_y)))}
    card = {
        "num_classes": num_classes, "class_names": source.class_names,
        "longtail": {"rule": "n_c = floor(n_max * rho^(-c/(C-1)))", "imbalance_ratio": rho,
                     "n_max": n_max, "train_counts": counts},
        "shot_groups": shot_groups(counts),
    }
    return PreparedData(splits, card)


register(Scenario(name="longtail", params=LongtailParams, build=build_longtail, streams=STREAMS, primary="acc",
                  mlflow_experiment="long-tail", shot_groups=True))
