"""Subpopulation shift: a spurious attribute a ∈ {0, 1} correlated with a binary label y.

Kinds (``data.subpop.kind``):

- ``colored_mnist`` (as in IRM, Arjovsky et al. 2019, and the subpopulation benchmarks):
  y = 1 if the digit is ≥ 5; the digit is drawn in red (a = 0: channel 0) or green (a = 1:
  channel 1) of a 28x28 RGB image.
- ``cifar_border``: y = 1 for vehicles (CIFAR-10: airplane, automobile, ship, truck; CIFAR-100:
  the ten classes of its two vehicle superclasses), 0 otherwise (for CIFAR-10 the six animal
  classes); a = colour of a ``BORDER_WIDTH``-pixel border (a = 0 red, a = 1 blue).

Construction, in every split the label is the observed one and group g = 2·y + a:

1. Clean y from the source class.
2. Meta set and validation split: ``meta_per_class`` / ``val_per_class`` images per group,
   carved out of the training pool by their clean label, with their attribute assigned to
   balance the groups (as Waterbirds' validation split is group-balanced). They keep their
   clean labels: the method's premise is a small clean meta set, and worst-group model
   selection on noisy validation labels would select for the noise.
3. Label noise (``label_noise`` η, 0.25 in IRM's Colored MNIST) on the rest of the training
   pool and on the test set, as in IRM: exactly round(η · n_v) labels of each clean value v are
   flipped (extra ``clean_y`` keeps the label before the flip; it equals y in meta and val).
4. Training split: the rest of the pool in E training environments with colour agreements
   ρ_1..ρ_E (``environments``; null = one environment with ρ_1 = ``correlation``). The images
   of each observed label v are split into E parts of equal size (sizes differ by at most one),
   and in environment e exactly round(ρ_e · n_{v,e}) of them get a = y, the others a = 1 − y.
   IRM: ``environments: [0.9, 0.8]``. Extra ``environment`` = e (0 with one environment).
5. Test split (the test environment): the official test set with a = y for exactly
   round(ρ_test · n_v) images of each label (ρ_test = ``test_correlation``: 0.1 reverses the
   correlation, as IRM's test environment; 0.5 removes it). Its accuracy (``avg_acc`` in the
   metrics) is therefore IRM's headline number, measured against the noisy test labels as there.

The attribute agrees (or not) with the *observed* label, as in IRM, where the colour is drawn
from the noisy label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.params.schema import ParamError, bounded
from pipeline.data.config import DataConfig
from pipeline.data.prepared import PreparedData, Split
from pipeline.data.sampling import carve_per_class, floor_tol, stream
from pipeline.data.scenarios import CIFAR_SOURCES, Metrics, Scenario, register
from pipeline.data.sources import Source


SUBPOP_SOURCES = {"colored_mnist": ("mnist",), "cifar_border": CIFAR_SOURCES}
SUBPOP_LABEL_NOISE = {"colored_mnist": 0.25, "cifar_border": 0.0}


@dataclass
class SubpopParams:
    """Spurious attribute a ∈ {0, 1} correlated with the binary label y.

    ``correlation`` = share of training images with a = y (per label, exactly);
    ``environments`` = the colour agreements ρ_e of several training environments, the training
    split cut into equal parts per label, each with exactly its ρ_e (IRM, Arjovsky et al. 2019:
    [0.9, 0.8]); null = one environment with ``correlation`` (which is ignored otherwise);
    ``test_correlation`` the same in the test split (0.1 = reversed, 0.5 = removed);
    ``label_noise`` = share of binary labels flipped in the training and test splits, the meta
    set and validation split keep clean labels (null = the benchmark value of the kind: 0.25
    for colored_mnist, 0 for cifar_border).
    """

    kind: Literal["colored_mnist", "cifar_border"] = "colored_mnist"
    correlation: float = bounded(0.9, ge=0, le=1)
    test_correlation: float = bounded(0.1, ge=0, le=1)
    label_noise: float | None = bounded(None, ge=0, lt=0.5)
    environments: list[float] | None = None

    def __post_init__(self) -> None:
        envs = self.environments
        if envs is not None and (not envs or not all(0 <= e <= 1 for e in envs)):
            raise ParamError(
                f"subpop.environments = {envs!r} is not allowed: use null (one environment with "
                f"data.subpop.correlation) or a non-empty list of colour agreements in [0, 1], "
                f"e.g. [0.9, 0.8] for IRM's two training environments")

    def resolved_environments(self) -> list[float]:
        """The agreement of each training environment: ``environments``, or [``correlation``]."""
        return [self.correlation] if self.environments is None else list(self.environments)

    def resolved_label_noise(self) -> float:
        """``label_noise``, or the kind's benchmark value when it is null."""
        return SUBPOP_LABEL_NOISE[self.kind] if self.label_noise is None else self.label_noise


def check_subpop(cfg: DataConfig) -> None:
    """The sources each subpopulation kind is built from."""
    allowed = SUBPOP_SOURCES[cfg.subpop.kind]
    if cfg.source not in allowed:
        raise ParamError(f"data.source = {cfg.source!r} is not allowed with data.subpop.kind = "
                         f"{cfg.subpop.kind!r}: use {' or '.join(map(repr, allowed))}")


STREAMS = {
    "subpop/carve": "which images of each clean label form the meta set and validation split, and their attributes",
    "subpop/label_noise/train": "which binary labels of the training split (the pool after the carve-out) are flipped",
    "subpop/label_noise/test": "which binary labels of the test set are flipped",
    "subpop/environment": "which training images of each label form each training environment "
                          "(drawn only with data.subpop.environments of two or more)",
    "subpop/attribute/train": "which training images get the attribute that agrees with their label "
                              "(environment 0, then 1, ...)",
    "subpop/attribute/test": "which test images get the attribute that agrees with their label",
}

TEST_ENVIRONMENT = ("the test split is the test environment: a = y for test_correlation of each label's images "
                    "(0.1 = IRM's reversed colour), labels with label_noise as in training; the metrics' avg_acc "
                    "(accuracy over all test images) is IRM's headline, test accuracy on this environment")

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


def split_environments(y: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Environment e ∈ {0..count−1} of each sample: for each label v (0 then 1) its samples in
    the order of one ``rng.permutation`` are cut into ``count`` consecutive parts whose sizes
    differ by at most one (``numpy.array_split``: the first n_v mod count parts get one more).
    One environment draws nothing."""
    environment = np.zeros(len(y), dtype=np.int64)
    if count == 1:
        return environment
    for v in (0, 1):
        members = np.flatnonzero(y == v)
        if len(members) < count:
            raise ParamError(f"data.subpop.environments asks for {count} training environments but label {v} "
                             f"has only {len(members)} training images: raise data.limit_per_class")
        for e, part in enumerate(np.array_split(rng.permutation(members), count)):
            environment[part] = e
    return environment


def environment_attributes(y: np.ndarray, environment: np.ndarray, agreements: list[float],
                           rng: np.random.Generator) -> np.ndarray:
    """:func:`assign_attributes` inside each environment e (in order) with agreement ρ_e; with one
    environment the same draws as ``assign_attributes(y, ρ_1, rng)``."""
    attribute = np.empty_like(y)
    for e, agreement in enumerate(agreements):
        members = np.flatnonzero(environment == e)
        attribute[members] = assign_attributes(y[members], agreement, rng)
    return attribute


def agreement_share(split: Split, mask: np.ndarray | None = None) -> float:
    """Share of images with a = y (all images, or those in ``mask``)."""
    agree = split.extras["attribute"] == split.y
    return float(np.mean(agree if mask is None else agree[mask]))


def build_subpop(source: Source, cfg: DataConfig) -> PreparedData:
    """Splits meta and val (clean labels, group-balanced), train (noisy labels, correlated, in
    one or more environments) and test (noisy labels, ``test_correlation``)."""
    params, seed = cfg.subpop, cfg.seed
    noise = params.resolved_label_noise()
    agreements = params.resolved_environments()
    clean = {s: binary_label(params.kind, y, source.class_names)
             for s, y in (("train", source.train_y), ("test", source.test_y))}
    carve_rng = stream(seed, "subpop/carve")
    carved, rest = carve_per_class(clean["train"], 2, {"meta": 2 * cfg.meta_per_class, "val": 2 * cfg.val_per_class},
                                   carve_rng)
    positions = {"train": rest, **carved, "test": np.arange(len(clean["test"]))}
    truth = {name: clean["test" if name == "test" else "train"][pos] for name, pos in positions.items()}
    labels = {**truth,
              "train": flip_labels(truth["train"], noise, stream(seed, "subpop/label_noise/train")),
              "test": flip_labels(truth["test"], noise, stream(seed, "subpop/label_noise/test"))}
    environment = split_environments(labels["train"], len(agreements), stream(seed, "subpop/environment"))
    attributes = {
        "train": environment_attributes(labels["train"], environment, agreements,
                                        stream(seed, "subpop/attribute/train")),
        "meta": assign_attributes(labels["meta"], 0.5, carve_rng),
        "val": assign_attributes(labels["val"], 0.5, carve_rng),
        "test": assign_attributes(labels["test"], params.test_correlation, stream(seed, "subpop/attribute/test")),
    }
    splits = {}
    for name, pos in positions.items():
        a, y = attributes[name], labels[name]
        base = source.take("test" if name == "test" else "train", pos)
        extras = {"attribute": a, "group": 2 * y + a, "clean_y": truth[name]}
        if name == "train":
            extras["environment"] = environment
        splits[name] = Split(render(params.kind, base.x, a), y, base.index, extras)
    names = DESCRIPTIONS[params.kind]
    positive = binary_label(params.kind, np.arange(source.num_classes), source.class_names)
    train = splits["train"]
    card = {
        "num_classes": 2, "class_names": names["class_names"], "num_groups": 4,
        "group_names": [f"y={label}, a={colour}" for label in names["class_names"] for colour in names["attribute_names"]],
        "subpop": {
            "kind": params.kind, "label": names["label"], "attribute": names["attribute"],
            "positive_classes": [name for name, y1 in zip(source.class_names, positive) if y1],
            "correlation": params.correlation, "environments": params.environments,
            "environment_agreements": agreements, "test_correlation": params.test_correlation,
            "label_noise": noise, "label_noise_splits": ["train", "test"], "clean_splits": ["meta", "val"],
            "test_environment": TEST_ENVIRONMENT,
            "environment_sizes": np.bincount(environment, minlength=len(agreements)).tolist(),
            "realised_correlation": {n: agreement_share(s) for n, s in splits.items()},
            "realised_correlation_per_environment": [agreement_share(train, environment == e)
                                                     for e in range(len(agreements))],
            "realised_label_noise": {n: float(np.mean(s.extras["clean_y"] != s.y)) for n, s in splits.items()},
        },
    }
    return PreparedData(splits, card)


def headline(metrics: Metrics) -> dict[str, float]:
    """``worst_group_acc`` = min over the test groups (label, attribute) of their accuracy, and
    ``avg_acc`` = accuracy over all test images. The test split is the test environment (colour
    agreement ``test_correlation``; 0.1 = IRM's reversed colour), so ``avg_acc`` is IRM's headline,
    test-environment accuracy, and no separate key is kept."""
    t = metrics["test"]
    return {"worst_group_acc": t["worst_group_acc"], "avg_acc": t["acc"]}


register(Scenario(
    name="subpop", params=SubpopParams, build=build_subpop, streams=STREAMS, primary="worst_group_acc",
    mlflow_experiment="subpopulation-shift", selection_metric="val_worst_group_acc", headline=headline,
    check=check_subpop,
    note=("`worst_group_acc`: the lowest accuracy over the test groups (label, colour); `avg_acc`: accuracy "
          "on the whole test environment (colour agreement reversed: IRM's test accuracy). Selection uses "
          "the validation worst group, which is small, so selected and final differ more here.")))
