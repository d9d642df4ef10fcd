"""The ``tune:`` section of params.yaml: studies, samplers, pruners, search spaces, sweeps, and
their validation (:func:`load_tune`), and the :class:`Plan` a study runs from.

Kept apart from :mod:`pipeline.tuning.study` (which runs the studies) so that every stage can validate
the whole params file before any work without importing Optuna, SQLAlchemy and MLflow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.params.schema import ParamError, bounded, build, flatten, to_dict
from pipeline.params.experiment import ExperimentConfig, Params
from pipeline.methods import REGISTRY
from pipeline.layout import project_root

STUDIES_DIR = Path("studies")
SEED_PARAM = "seed"  # the trial parameter holding the training seed in a sweep
# Shared by every trial of an experiment (prepared data, pretrain checkpoint): not tunable.
UNTUNABLE = ("data", "network", "pretrain_epochs", "search")


# --- configuration -------------------------------------------------------------------------


@dataclass
class SamplerConfig:
    name: Literal["tpe", "random"] = "tpe"
    seed: int = bounded(0, ge=0)  # the sampler's seed (the training seed is StudyConfig.seed)


@dataclass
class PrunerConfig:
    """``median``: prune a trial whose best value so far is below the median of the complete
    trials at the same trial epoch, once ``n_startup_trials`` trials are complete and after
    ``n_warmup_steps`` trial epochs. Sweeps never prune."""

    name: Literal["median", "none"] = "median"
    n_startup_trials: int = bounded(5, ge=0)
    n_warmup_steps: int = bounded(0, ge=0)


@dataclass
class StudyConfig:
    """One entry of ``tune.studies``."""

    experiment: str
    method: str = "meta_iada"
    seed: int = bounded(0, ge=0)  # training seed of every trial (mode: study)
    n_trials: int | None = bounded(None, ge=1)  # COMPLETE + PRUNED trials (mode: study)
    train_epochs: int | None = bounded(None, ge=1)  # shorter trials than the experiment's
    params: list[str] | None = None  # a subset of the experiment's search keys (null: all)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: str | None = None  # SQLAlchemy URL; null: sqlite:///<project root>/optuna.db
    workers: int = bounded(1, ge=1)
    mode: Literal["study", "sweep"] = "study"
    param: str | None = None  # mode: sweep, the dotted key varied
    values: list[Any] = bounded([])  # mode: sweep, its grid
    seeds: list[int] = bounded([0])  # mode: sweep, training seeds of each grid value


@dataclass
class TuneConfig:
    run: list[str] = bounded([])  # the studies `dvc repro` (and `make tune`) runs
    studies: dict[str, StudyConfig] = field(default_factory=dict)


@dataclass
class ParamSpace:
    """One entry of an experiment's ``search:`` block (Optuna's suggest_float/int/categorical)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = bounded(None, gt=0)
    choices: list[Any] | None = None


def is_categorical_value(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def check_space(spec: ParamSpace, where: str) -> None:
    """The rules between the keys of one search entry; errors name ``where``."""
    if spec.type == "categorical":
        if not spec.choices:
            raise ParamError(f"{where}.choices must be a non-empty list for type: categorical")
        if any(v is not None for v in (spec.low, spec.high, spec.step)) or spec.log:
            raise ParamError(f"{where}: low/high/log/step are not allowed with type: categorical")
        for i, choice in enumerate(spec.choices):
            if not is_categorical_value(choice):
                raise ParamError(f"{where}.choices[{i}] = {choice!r} must be a number, string, bool or null")
        return
    if spec.choices is not None:
        raise ParamError(f"{where}.choices is only allowed with type: categorical")
    if spec.low is None or spec.high is None:
        raise ParamError(f"{where} needs low and high for type: {spec.type}")
    if not spec.low < spec.high:
        raise ParamError(f"{where}: low = {spec.low:g} must be < high = {spec.high:g}")
    if spec.log and spec.low <= 0:
        raise ParamError(f"{where}: log: true needs low > 0, got {spec.low:g}")
    if spec.log and spec.step is not None:
        raise ParamError(f"{where}: log and step cannot be combined")
    if spec.type == "int" and not all(float(v).is_integer() for v in (spec.low, spec.high, spec.step or 1)):
        raise ParamError(f"{where}: low, high and step must be integers for type: int")


def tunable_keys(exp: ExperimentConfig) -> set[str]:
    """Dotted keys a trial may set: leaves of the experiment config and every method's fields."""
    flat = flatten({k: v for k, v in to_dict(exp).items() if k not in ("methods", *UNTUNABLE)})
    return set(flat) | {f"methods.{name}.{f.name}" for name, m in REGISTRY.items()
                        for f in dataclasses.fields(m.Config)}


def check_tunable(exp: ExperimentConfig, key: str, where: str) -> None:
    head = key.split(".")[0]
    if head in UNTUNABLE:
        raise ParamError(f"{where}: {key!r} cannot be tuned: every trial shares the experiment's "
                         f"prepared data and pretrain checkpoint ({', '.join(UNTUNABLE)} are fixed)")
    if key not in tunable_keys(exp):
        raise ParamError(f"{where}: {key!r} is not a key of the experiment config (use a dotted path "
                         "such as optim.lr or methods.meta_iada.alpha)")


def parse_space(exp: ExperimentConfig, where: str) -> dict[str, ParamSpace]:
    """Validate the experiment's ``search:`` block (``where`` = ``experiments.<name>``)."""
    space = {}
    for key, raw in exp.search.items():
        entry = f"{where}.search.{key}"
        check_tunable(exp, key, entry)
        spec = build(ParamSpace, raw, entry)
        check_space(spec, entry)
        check_values(exp, key, spec, entry)
        space[key] = spec
    return space


def check_values(exp: ExperimentConfig, key: str, spec: ParamSpace, where: str) -> None:
    """Every choice, or both ends of a range, must be a valid value of ``key`` (checked by
    building the experiment with it), so that a bad bound fails here, not at trial time."""
    values = spec.choices if spec.type == "categorical" else [spec.low, spec.high]
    raw = to_dict(exp)
    for value in values:
        if spec.type == "int":
            value = int(value)
        try:
            apply_values(raw, {key: value}, "experiments.<trial>")
        except ParamError as err:
            raise ParamError(f"{where}: the value {value!r} is not allowed for {key} ({err})") from None


def apply_values(raw_exp: Mapping[str, Any], values: Mapping[str, Any], where: str) -> ExperimentConfig:
    """The experiment with dotted ``values`` merged in, validated like params.yaml."""
    raw = json.loads(json.dumps(raw_exp))  # a deep copy that shares no anchored block
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return build(ExperimentConfig, raw, where)


# --- plan: one study, validated --------------------------------------------------------------


@dataclass
class Plan:
    """Everything a worker needs to run trials of one study (picklable for spawned workers)."""

    name: str
    cfg: StudyConfig
    raw_experiment: dict[str, Any]  # the experiment as plain data, train_epochs override applied
    exp: ExperimentConfig
    space: dict[str, ParamSpace]  # mode: study, the searched keys
    storage: str
    device: str
    parent_run_id: str | None = None

    @property
    def sweep(self) -> bool:
        return self.cfg.mode == "sweep"

    @property
    def metric(self) -> str:
        return self.exp.selection_metric

    @property
    def out_dir(self) -> Path:
        return STUDIES_DIR / self.name

    @property
    def seeds(self) -> list[int]:
        return list(self.cfg.seeds) if self.sweep else [self.cfg.seed]

    @property
    def n_trials(self) -> int:
        return len(self.grid()) if self.sweep else int(self.cfg.n_trials or 0)

    def grid(self) -> list[dict[str, Any]]:
        return [{self.cfg.param: v, SEED_PARAM: s} for v in self.cfg.values for s in self.cfg.seeds]

    def where(self) -> str:
        return f"experiments.{self.cfg.experiment}"

    def definition(self) -> dict[str, Any]:
        """What makes two trials comparable; a stored study must match it to be resumed."""
        searched = {self.cfg.param} if self.sweep else set(self.space)
        settings = {k: v for k, v in flatten(to_dict(self.exp)).items() if not k.startswith(("search.", "methods."))}
        settings.update(flatten(to_dict(self.exp.method_config(self.cfg.method)), f"methods.{self.cfg.method}."))
        out = {"mode": self.cfg.mode, "experiment": self.cfg.experiment, "method": self.cfg.method,
               "metric": self.metric, "seeds": self.seeds,
               "space": {k: to_dict(s) for k, s in self.space.items()},
               "param": self.cfg.param, "values": self.cfg.values,
               "settings": {k: v for k, v in settings.items() if k not in searched}}
        return json.loads(json.dumps(out))


def default_storage() -> str:
    """The study DB at the real project root (also from a ``dvc exp run --temp`` copy)."""
    return f"sqlite:///{project_root() / 'optuna.db'}"


def check_study(cfg: StudyConfig, params: Params, where: str) -> tuple[ExperimentConfig, dict[str, ParamSpace]]:
    """Cross-key rules of one study; returns its experiment and searched space."""
    if cfg.experiment not in params.experiments:
        raise ParamError(f"{where}.experiment = {cfg.experiment!r} is not declared: use one of "
                         f"{', '.join(params.experiments)}")
    if cfg.method not in REGISTRY:
        raise ParamError(f"{where}.method = {cfg.method!r} is unknown: use one of {', '.join(sorted(REGISTRY))}")
    raw = to_dict(params.experiments[cfg.experiment])
    if cfg.train_epochs is not None:
        raw["train_epochs"] = cfg.train_epochs
    exp = build(ExperimentConfig, raw, f"experiments.{cfg.experiment}")
    exp.method_config(cfg.method)
    if cfg.mode == "sweep":
        check_sweep(cfg, exp, raw, where)
        return exp, {}
    if cfg.n_trials is None:
        raise ParamError(f"missing key {where}.n_trials: the number of COMPLETE + PRUNED trials")
    if cfg.param is not None or cfg.values:
        raise ParamError(f"{where}.param and {where}.values are for mode: sweep")
    space = parse_space(exp, f"experiments.{cfg.experiment}")
    for i, key in enumerate(cfg.params or []):
        if key not in space:
            raise ParamError(f"{where}.params[{i}] = {key!r} is not in experiments.{cfg.experiment}.search: "
                             f"use one of {', '.join(space) or '(empty search block)'}")
    keys = cfg.params or list(space)
    if not keys:
        raise ParamError(f"experiments.{cfg.experiment}.search is empty: study {where} has nothing to search")
    return exp, {k: space[k] for k in keys}


def check_sweep(cfg: StudyConfig, exp: ExperimentConfig, raw: Mapping[str, Any], where: str) -> None:
    if cfg.n_trials is not None:
        raise ParamError(f"{where}.n_trials: a sweep runs exactly its grid (values x seeds); remove n_trials")
    if cfg.param is None:
        raise ParamError(f"missing key {where}.param: the dotted key a sweep varies")
    check_tunable(exp, cfg.param, f"{where}.param")
    if not cfg.values or not cfg.seeds:
        raise ParamError(f"{where}.values and {where}.seeds must be non-empty lists")
    for name, items in (("values", cfg.values), ("seeds", cfg.seeds)):
        if len(set(map(repr, items))) != len(items):
            raise ParamError(f"{where}.{name} = {items!r} has duplicates")
    for i, value in enumerate(cfg.values):
        if not is_categorical_value(value):
            raise ParamError(f"{where}.values[{i}] = {value!r} must be a number, string, bool or null")
        try:
            apply_values(raw, {cfg.param: value}, f"experiments.{cfg.experiment}").method_config(cfg.method)
        except ParamError as err:
            raise ParamError(f"{where}.values[{i}] = {value!r} is not valid: {err}") from None


def load_tune(params: Params) -> TuneConfig:
    """Validate the whole ``tune:`` section (every study) before any work."""
    tune = build(TuneConfig, params.tune, "tune")
    for i, name in enumerate(tune.run):
        if name not in tune.studies:
            raise ParamError(f"tune.run[{i}] = {name!r} is not declared in tune.studies: use one of "
                             f"{', '.join(tune.studies) or '(none declared)'}")
    for name, cfg in tune.studies.items():
        check_study(cfg, params, f"tune.studies.{name}")
    return tune


def make_plan(params: Params, tune: TuneConfig, name: str, *, n_trials: int | None = None,
              storage: str | None = None, workers: int | None = None) -> Plan:
    """The validated plan of study ``name``, with command-line overrides applied."""
    if name not in tune.studies:
        raise ParamError(f"unknown study {name!r}: declare it under tune.studies (declared: "
                         f"{', '.join(tune.studies) or 'none'})")
    cfg = tune.studies[name]
    if n_trials is not None and cfg.mode == "sweep":
        raise ParamError(f"--n-trials: study {name!r} is a sweep, which runs exactly its grid")
    cfg = dataclasses.replace(cfg, n_trials=n_trials or cfg.n_trials, storage=storage or cfg.storage,
                              workers=workers or cfg.workers)
    exp, space = check_study(cfg, params, f"tune.studies.{name}")
    return Plan(name, cfg, to_dict(exp), exp, space, cfg.storage or default_storage(), params.run.device)
