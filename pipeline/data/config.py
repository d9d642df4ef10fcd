"""Parameters of the prepare stage: which biased data set to build (``experiments.<name>.data``).

Built with ``pipeline.params.schema.build(DataConfig, raw, "experiments.<name>.data")``; types,
``Literal`` choices and numeric bounds are checked there, the rules that tie several keys
together by the scenario's ``check`` (:mod:`pipeline.data.scenarios`). The scenarios and their
sections (``data.longtail``, ``data.noisy``...) are those registered in the scenario registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.data.scenarios import SCENARIOS, scenario_names, scenario_params
from pipeline.params.schema import bounded, one_of, sections

SourceName = Literal["cifar10", "cifar100", "mnist"]

SOURCE_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10}


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
