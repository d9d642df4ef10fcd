"""Parameters of the prepare stage: which biased data set to build (``experiments.<name>.data``).

Built with ``pipeline.params.schema.build(DataConfig, raw, "experiments.<name>.data")``; types,
``Literal`` choices and numeric bounds are checked there, the rules that tie several keys
together in :meth:`DataConfig.__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.params.schema import ParamError, bounded

Scenario = Literal["longtail", "noisy", "subpop", "glt"]
SourceName = Literal["cifar10", "cifar100", "mnist"]

SOURCE_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10}
CIFAR_SOURCES = ("cifar10", "cifar100")
SUBPOP_SOURCES = {"colored_mnist": ("mnist",), "cifar_border": CIFAR_SOURCES}
SUBPOP_LABEL_NOISE = {"colored_mnist": 0.25, "cifar_border": 0.0}


@dataclass
class LongtailParams:
    """Long tail over classes: n_c = floor(n_max · ρ^(−c/(C−1)))."""

    imbalance_ratio: float = bounded(100.0, ge=1)  # ρ = n_0 / n_{C-1}


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

    def resolved_environments(self) -> list[float]:
        """The agreement of each training environment: ``environments``, or [``correlation``]."""
        return [self.correlation] if self.environments is None else list(self.environments)

    def resolved_label_noise(self) -> float:
        """``label_noise``, or the kind's benchmark value when it is null."""
        return SUBPOP_LABEL_NOISE[self.kind] if self.label_noise is None else self.label_noise


@dataclass
class GltParams:
    """Generalized long tail: k attribute clusters per class, long-tailed over classes (ρ_c)
    and over attributes inside each class (ρ_a); ``test_per_cell`` images per (class,
    attribute) cell in the GLT test split."""

    clusters: int = bounded(6, ge=2)  # k
    class_imbalance_ratio: float = bounded(100.0, ge=1)  # ρ_c
    attribute_imbalance_ratio: float = bounded(10.0, ge=1)  # ρ_a
    test_per_cell: int = bounded(30, ge=1)  # CIFAR-10, k = 6: at most 37-38 fit (seeds 0-2)


@dataclass
class DataConfig:
    """Which data set the prepare stage builds.

    ``meta_per_class`` / ``val_per_class``: clean meta set and held-out validation split,
    balanced per class (per (label, attribute) group in the subpop scenario), carved out of the
    training pool. ``limit_per_class`` / ``test_limit_per_class``: subsample the training pool /
    test set to at most this many images per source class before anything else (tests, tiny
    profiles). ``root``: a folder holding the source data (torchvision layout or the offline-copy
    layout); null = the shared offline copies, then the official download.
    """

    scenario: Scenario
    source: SourceName
    root: str | None = None
    seed: int = bounded(0, ge=0)
    meta_per_class: int = bounded(10, ge=1)
    val_per_class: int = bounded(20, ge=1)
    limit_per_class: int | None = bounded(None, ge=1)
    test_limit_per_class: int | None = bounded(None, ge=1)
    longtail: LongtailParams = field(default_factory=LongtailParams)
    noisy: NoisyParams = field(default_factory=NoisyParams)
    subpop: SubpopParams = field(default_factory=SubpopParams)
    glt: GltParams = field(default_factory=GltParams)

    def __post_init__(self) -> None:
        if self.scenario == "subpop":
            allowed = SUBPOP_SOURCES[self.subpop.kind]
            if self.source not in allowed:
                raise ParamError(
                    f"data.source = {self.source!r} is not allowed with data.subpop.kind = "
                    f"{self.subpop.kind!r}: use {' or '.join(map(repr, allowed))}")
        elif self.source not in CIFAR_SOURCES:
            raise ParamError(
                f"data.source = {self.source!r} is not allowed with data.scenario = "
                f"{self.scenario!r}: use 'cifar10' or 'cifar100'")
        envs = self.subpop.environments
        if envs is not None and (not envs or not all(0 <= e <= 1 for e in envs)):
            raise ParamError(
                f"data.subpop.environments = {envs!r} is not allowed: use null (one environment with "
                f"data.subpop.correlation) or a non-empty list of colour agreements in [0, 1], "
                f"e.g. [0.9, 0.8] for IRM's two training environments")
        total = self.noisy.meta_clean_total
        classes = SOURCE_CLASSES[self.source]
        if self.scenario == "noisy" and total is not None and total % classes:
            raise ParamError(
                f"data.noisy.meta_clean_total = {total} must be a multiple of the {classes} "
                f"classes of {self.source} (the meta set is class-balanced)")
