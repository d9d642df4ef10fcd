"""Subpopulation shift: a spurious attribute a ∈ {0, 1} correlated with a binary label y.

Kinds (``data.subpop.kind``):

- ``colored_mnist`` (as in the subpopulation benchmarks): y = 1 if the digit is ≥ 5; the digit
  is drawn in red (a = 0: channel 0) or green (a = 1: channel 1) of a 28x28 RGB image.
- ``cifar_border``: y = 1 for vehicles (CIFAR-10: airplane, automobile, ship, truck; CIFAR-100:
  the ten classes of its two vehicle superclasses), 0 otherwise (for CIFAR-10 the six animal
  classes); a = colour of a ``BORDER_WIDTH``-pixel border (a = 0 red, a = 1 blue).

Construction, in every split the label is the observed one and group g = 2·y + a:

1. y from the source class; then ``label_noise`` flips exactly round(η · n_v) labels of each
   value v (η = 0.25 in the Colored MNIST benchmark), in the training pool and in the test set
   (extra ``clean_y`` keeps the label before the flip).
2. Meta set and validation split: ``meta_per_class`` / ``val_per_class`` images per group, carved
   out of the training pool with their attribute assigned to balance the groups (as Waterbirds'
   validation split is group-balanced).
3. Training split: the rest of the pool, a = y for exactly round(ρ · n_v) images of each label v
   (ρ = ``correlation``), a = 1 − y for the others.
4. Test split: the official test set with a = y for exactly round(ρ_test · n_v) images of each
   label (ρ_test = ``test_correlation``: 0.1 reverses the correlation, 0.5 removes it).
"""

from __future__ import annotations

import numpy as np

from pipeline.data.config import DataConfig
from pipeline.data.prepared import PreparedData, Split
from pipeline.data.sampling import carve_per_class, floor_tol, stream
from pipeline.data.sources import Source

STREAMS = {
    "subpop/label_noise/train": "which binary labels of the training pool are flipped",
    "subpop/label_noise/test": "which binary labels of the test set are flipped",
    "subpop/carve": "which images of each label form the meta set and validation split, and their attributes",
    "subpop/attribute/train": "which training images get the attribute that agrees with their label",
    "subpop/attribute/test": "which test images get the attribute that agrees with their label",
}

BORDER_WIDTH = 2
BORDER_COLOURS = np.array([[255, 0, 0], [0, 0, 255]], dtype=np.uint8)  # a = 0 red, a = 1 blue
VEHICLES = frozenset({"airplane", "automobile", "ship", "truck",  # CIFAR-10
                      "bicycle", "bus", "motorcycle", "pickup_truck", "train",  # CIFAR-100 vehicles 1
                      "lawn_mower", "rocket", "streetcar", "tank", "tractor"})  # CIFAR-100 vehicles 2
DESCRIPTIONS = {
    "colored_mnist": {"label": "y = 1 if digit >= 5 (positive_classes)",
                      "attribute": "digit drawn in red (a=0) or green (a=1)",
                      "class_names": ["digit<5", "digit>=5"], "attribute_names": ["red", "green"]},
    "cifar_border": {"label": "y = 1 for the vehicle classes (positive_classes)",
                     "attribute": f"{BORDER_WIDTH}-pixel border, red (a=0) or blue (a=1)",
                     "class_names": ["non-vehicle", "vehicle"], "attribute_names": ["red", "blue"]},
}


def binary_label(kind: str, labels: np.ndarray, class_names: list[str]) -> np.ndarray:
    """y ∈ {0, 1} from source labels: digit ≥ 5 (colored_mnist) or vehicle class (cifar_border)."""
    if kind == "colored_mnist":
        return (labels >= 5).astype(np.int64)
    vehicle = np.array([name in VEHICLES for name in class_names])
    return vehicle[labels].astype(np.int64)


def flip_labels(y: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Flip exactly round(rate · n_v) of the labels equal to v, for v = 0 then 1 (``rng.choice``)."""
    out = y.copy()
    for v in (0, 1):
        members = np.flatnonzero(y == v)
        out[rng.choice(members, size=floor_tol(rate * len(members) + 0.5), replace=False)] = 1 - v
    return out


def assign_attributes(y: np.ndarray, agreement: float, rng: np.random.Generator) -> np.ndarray:
    """a = y for exactly round(agreement · n_v) samples of each label v (chosen with
    ``rng.choice``, v = 0 then 1), a = 1 − y for the rest."""
    attribute = 1 - y
    for v in (0, 1):
        members = np.flatnonzero(y == v)
        attribute[rng.choice(members, size=floor_tol(agreement * len(members) + 0.5), replace=False)] = v
    return attribute


def render(kind: str, images: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    """Paint the attribute: colored_mnist puts the grey digit [N, 28, 28, 1] in channel a of an
    RGB image; cifar_border paints a ``BORDER_WIDTH``-pixel frame of colour ``BORDER_COLOURS[a]``."""
    if kind == "colored_mnist":
        out = np.zeros((*images.shape[:3], 3), dtype=np.uint8)
        for a in (0, 1):
            out[attribute == a, ..., a] = images[attribute == a, ..., 0]
        return out
    out = images.copy()
    colour = BORDER_COLOURS[attribute][:, None, None, :]  # [N, 1, 1, 3]
    w = BORDER_WIDTH
    out[:, :w], out[:, -w:] = colour, colour
    out[:, :, :w], out[:, :, -w:] = colour, colour
    return out


def build_subpop(source: Source, cfg: DataConfig) -> PreparedData:
    """Splits train (correlated), meta and val (group-balanced) and test (``test_correlation``)."""
    params, seed = cfg.subpop, cfg.seed
    noise = params.resolved_label_noise()
    clean = {s: binary_label(params.kind, y, source.class_names)
             for s, y in (("train", source.train_y), ("test", source.test_y))}
    y = {s: flip_labels(clean[s], noise, stream(seed, f"subpop/label_noise/{s}")) for s in clean}
    carve_rng = stream(seed, "subpop/carve")
    carved, rest = carve_per_class(y["train"], 2, {"meta": 2 * cfg.meta_per_class, "val": 2 * cfg.val_per_class},
                                   carve_rng)
    positions = {"train": rest, **carved, "test": np.arange(len(y["test"]))}
    attributes = {
        "train": assign_attributes(y["train"][rest], params.correlation, stream(seed, "subpop/attribute/train")),
        "meta": assign_attributes(y["train"][carved["meta"]], 0.5, carve_rng),
        "val": assign_attributes(y["train"][carved["val"]], 0.5, carve_rng),
        "test": assign_attributes(y["test"], params.test_correlation, stream(seed, "subpop/attribute/test")),
    }
    splits = {}
    for name, pos in positions.items():
        src, a = ("test" if name == "test" else "train"), attributes[name]
        base, labels = source.take(src, pos), y[src][pos]
        splits[name] = Split(render(params.kind, base.x, a), labels, base.index,
                             {"attribute": a, "group": 2 * labels + a, "clean_y": clean[src][pos]})
    names = DESCRIPTIONS[params.kind]
    positive = binary_label(params.kind, np.arange(source.num_classes), source.class_names)
    card = {
        "num_classes": 2, "class_names": names["class_names"], "num_groups": 4,
        "group_names": [f"y={label}, a={colour}" for label in names["class_names"] for colour in names["attribute_names"]],
        "subpop": {
            "kind": params.kind, "label": names["label"], "attribute": names["attribute"],
            "positive_classes": [name for name, y1 in zip(source.class_names, positive) if y1],
            "correlation": params.correlation, "test_correlation": params.test_correlation,
            "label_noise": noise,
            "realised_correlation": {n: float(np.mean(s.extras["attribute"] == s.y)) for n, s in splits.items()},
            "realised_label_noise": {n: float(np.mean(s.extras["clean_y"] != s.y)) for n, s in splits.items()},
        },
    }
    return PreparedData(splits, card)
