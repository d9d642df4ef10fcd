"""The scenario registry: one :class:`Scenario` record per kind of biased data, registered by its
data module (``pipeline/data/<scenario>.py``, imported in ``pipeline/data/__init__.py``).

Everything that differs by scenario reads the record: the keys ``data.scenario`` allows and the
section ``data.<name>`` of its parameters (:class:`~pipeline.data.config.DataConfig`), its
builder (:mod:`pipeline.data.build`), the validation metric that selects checkpoints and tunes
(:class:`~pipeline.params.experiment.ExperimentConfig`), its headline metrics
(:func:`pipeline.evaluation.evaluate.headline`), the one metric the reference verdicts judge by
and the note on its reference page (:mod:`pipeline.reference`), and its MLflow experiment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.params.schema import ParamError

if TYPE_CHECKING:
    from pipeline.data.config import DataConfig
    from pipeline.data.prepared import PreparedData
    from pipeline.data.sources import Source

CIFAR_SOURCES = ("cifar10", "cifar100")
SHOT_KEYS = ("many_acc", "medium_acc", "few_acc")

# The metrics of each evaluation split of one set of weights ({"test": {...}, "val": {...}, ...}).
Metrics = Mapping[str, Mapping[str, Any]]


def accuracy_headline(metrics: Metrics) -> dict[str, float]:
    """Test ``acc``, and ``many_acc`` / ``medium_acc`` / ``few_acc`` where the test metrics have
    them (a scenario with ``shot_groups``)."""
    t = metrics["test"]
    return {"acc": t["acc"], **{k: t[k] for k in SHOT_KEYS if k in t}}


def cifar_only(cfg: DataConfig) -> None:
    """The rule of a scenario built on any CIFAR source."""
    if cfg.source not in CIFAR_SOURCES:
        raise ParamError(f"data.source = {cfg.source!r} is not allowed with data.scenario = {cfg.scenario!r}: "
                         "use 'cifar10' or 'cifar100'")


@dataclass(frozen=True)
class Scenario:
    """What a scenario is built, judged and named by."""

    name: str  # the value of data.scenario; its parameters are the section data.<name>
    params: type  # the dataclass of data.<name> (its defaults apply when the section is absent)
    build: Callable[[Source, DataConfig], PreparedData]
    streams: Mapping[str, str]  # the named random streams build draws, for the data card
    primary: str  # the headline metric the reference verdicts, ranks and charts judge by
    mlflow_experiment: str  # the MLflow experiment of its runs
    selection_metric: str = "val_acc"  # the validation metric that selects checkpoints and tunes
    headline: Callable[[Metrics], dict[str, float]] = accuracy_headline  # the test numbers read first
    shot_groups: bool = False  # Many / Medium / Few test accuracies (classes long-tailed in training)
    check: Callable[[DataConfig], None] = cifar_only  # rules tying keys of data together
    note: str | None = None  # what its headline keys mean, said on its reference page


SCENARIOS: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add ``scenario`` to :data:`SCENARIOS` (in registration order: the order of the data
    sections in a resolved config)."""
    if scenario.name in SCENARIOS:
        raise ValueError(f"scenario {scenario.name!r} is registered twice")
    SCENARIOS[scenario.name] = scenario
    return scenario


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def scenario_params() -> dict[str, type]:
    """The dataclass of each scenario's section ``data.<name>``."""
    return {name: s.params for name, s in SCENARIOS.items()}
