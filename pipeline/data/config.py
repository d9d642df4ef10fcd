"""Parameters of the prepare stage: which biased data set to build (``experiments.<name>.data``).

Built with ``pipeline.params.schema.build(DataConfig, raw, "experiments.<name>.data")``; types,
``Literal`` choices and numeric bounds are checked there, the rules that tie several keys
together by the scenario's ``check`` (:mod:`pipeline.data.scenarios`). The scenarios and their
sections (``data.longtail``, ``data.noisy``...) are those registered in the scenario registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.data.scenarios import CIFAR_SOURCES, SCENARIOS, cifar_only, scenario_names, scenario_params
from pipeline.params.schema import ParamError, bounded, one_of, sections

SourceName = Literal["cifar10", "cifar100", "mnist"]

SOURCE_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10}
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
    layout); null = the shared offline copies, then the official download. ``sections``: the
    parameters of every registered scenario, ``data.<scenario>`` in params.yaml, read as
    ``cfg.<scenario>`` (e.g. ``cfg.noisy.rate``).
    """

    scenario: str = one_of(scenario_names)
    source: SourceName
    root: str | None = None
    seed: int = bounded(0, ge=0)
    meta_per_class: int = bounded(10, ge=1)
    val_per_class: int = bounded(20, ge=1)
    limit_per_class: int | None = bounded(None, ge=1)
    test_limit_per_class: int | None = bounded(None, ge=1)
    sections: dict[str, Any] = sections(scenario_params)

    def __post_init__(self) -> None:
        SCENARIOS[self.scenario].check(self)

    def __getattr__(self, name: str) -> Any:
        """A scenario's section as an attribute (``cfg.subpop``)."""
        found = self.__dict__.get("sections", {})
        if name in found:
            return found[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or scenario section {name!r}")


def check_subpop(cfg: DataConfig) -> None:
    """The sources each subpopulation kind is built from."""
    allowed = SUBPOP_SOURCES[cfg.subpop.kind]
    if cfg.source not in allowed:
        raise ParamError(f"data.source = {cfg.source!r} is not allowed with data.subpop.kind = "
                         f"{cfg.subpop.kind!r}: use {' or '.join(map(repr, allowed))}")


def check_noisy(cfg: DataConfig) -> None:
    """A CIFAR source, and a clean meta set that the classes divide (it is class-balanced)."""
    cifar_only(cfg)
    total = cfg.noisy.meta_clean_total
    classes = SOURCE_CLASSES[cfg.source]
    if total is not None and total % classes:
        raise ParamError(f"data.noisy.meta_clean_total = {total} must be a multiple of the {classes} "
                         f"classes of {cfg.source} (the meta set is class-balanced)")
