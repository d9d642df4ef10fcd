"""The ``tune:`` section (params/tune.yaml): studies, samplers, pruners, sweeps, their validation
against the experiments (:func:`check_tune`), and the :class:`Plan` a study runs from. The
search spaces are ``tune.search.<experiment>`` (:mod:`pipeline.params.search`), parsed with their
experiment (``ExperimentConfig.search``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.layout import Tree, pipeline_tree, project_root, study_dir
from pipeline.methods import method_class
from pipeline.params.experiment import ExperimentConfig, apply_values, check_tunable
from pipeline.params.schema import ParamError, bounded, build, check_name, flatten, to_dict
from pipeline.params.search import ParamSpace, is_categorical_value

if TYPE_CHECKING:
    from pipeline.params.file import Params

SEED_PARAM = "seed"  # the trial parameter holding the training seed in a sweep

# Study storages by URL scheme (an SQLAlchemy driver may follow a "+": postgresql+psycopg://).
STORAGES = {
    "sqlite": "sqlite:///PATH (one process; the default)",
    "journal": "journal:PATH (several processes on one machine, no server; PATH absolute or from the project root)",
    "postgresql": "postgresql://USER:PASSWORD@HOST:PORT/DB (several machines)",
}
JOURNAL = "journal:"


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
    storage: str | None = None  # sqlite:///, journal: or postgresql:// URL (:data:`STORAGES`); null: default_storage()
    workers: int = bounded(1, ge=1)
    mode: Literal["study", "sweep"] = "study"
    param: str | None = None  # mode: sweep, the dotted key varied
    values: list[Any] = bounded([])  # mode: sweep, its grid
    seeds: list[int] = bounded([0])  # mode: sweep, training seeds of each grid value


@dataclass
class BudgetConfig:
    """One entry of ``tune.budgets``: the same tuning budget for every listed method (DomainBed's
    rule), expanded into one study per method (:mod:`pipeline.params.budget`): that method's paper
    space (:mod:`pipeline.params.spaces`), ``n_trials`` trials of which the first is the method's
    default config, one sampler and pruner, on a tuning ``seed`` that is none of
    ``reference.seeds`` and its own split, selected on validation."""

    experiment: str
    seed: int = bounded(dataclasses.MISSING, ge=0)  # the tuning seed: trains every trial and (reference.split: per_seed) draws the split
    n_trials: int = bounded(dataclasses.MISSING, ge=8)  # COMPLETE + PRUNED trials of every method's study, the default one included
    methods: list[str] = bounded([])
    train_epochs: int | None = bounded(None, ge=1)  # null: the experiment's own, so the chosen values transfer
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=lambda: PrunerConfig(name="none"))
    storage: str | None = None
    workers: int = bounded(1, ge=1)
    # Method -> dotted key -> the value its study selected (written by ``python -m
    # pipeline.stages.tune_report --budget NAME``): each becomes the reference variant <method>-tuned.
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TuneConfig:
    run: list[str] = bounded([])  # the studies `dvc repro` (and `make tune`) runs
    studies: dict[str, StudyConfig] = field(default_factory=dict)
    budgets: dict[str, BudgetConfig] = field(default_factory=dict)
    # Experiment name -> its search space (dotted key -> ParamSpace), parsed with its experiment
    # (ExperimentConfig.search, pipeline.params.file.search_spaces).
    search: dict[str, Any] = field(default_factory=dict)


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
    tree: Tree | None = None  # where its data and pretraining live (None: the DVC pipeline's)
    default_values: dict[str, Any] | None = None  # a budget's first trial: the experiment's own values
    written: dict[str, str] = field(default_factory=dict)  # Params.written: the -S form of a key

    @property
    def data_tree(self) -> Tree:
        return self.tree or pipeline_tree(self.cfg.experiment)

    @property
    def sweep(self) -> bool:
        return self.cfg.mode == "sweep"

    @property
    def metric(self) -> str:
        return self.exp.selection_metric

    @property
    def out_dir(self) -> Path:
        return study_dir(self.name)

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
        if self.default_values is not None:
            out["default"] = self.default_values
        return json.loads(json.dumps(out))


def storage_kind(url: str, where: str = "storage") -> str:
    """The storage kind of ``url`` (a key of :data:`STORAGES`), or one line saying what is allowed."""
    scheme = url.partition(":")[0].partition("+")[0] if ":" in url else ""
    if scheme not in STORAGES:
        raise ParamError(f"{where}: unknown storage scheme {scheme!r}; use one of: "
                         + "; ".join(STORAGES.values()))
    if scheme == JOURNAL[:-1] and not journal_path(url).name:
        raise ParamError(f"{where} = {url!r}: a journal storage needs a file, e.g. {JOURNAL}optuna.journal")
    return scheme


def journal_path(url: str) -> Path:
    """The file of a ``journal:PATH`` URL: absolute, or relative to the project root (also from a
    ``dvc exp run --temp`` copy); ``journal:///abs/path`` is ``/abs/path``."""
    path = url[len(JOURNAL):]
    path = path[2:] if path.startswith("//") else path
    return project_root() / path if path else Path()


def storage_url(url: str, where: str) -> str:
    """``url`` checked, a journal's path made absolute (workers and DVC copies must agree)."""
    if storage_kind(url, where) == JOURNAL[:-1]:
        return f"{JOURNAL}{journal_path(url)}"
    return url


def default_storage() -> str:
    """The study DB at the real project root (also from a ``dvc exp run --temp`` copy)."""
    return f"sqlite:///{project_root() / 'optuna.db'}"


def check_study(cfg: StudyConfig, experiments: Mapping[str, ExperimentConfig], where: str, *,
                space: dict[str, ParamSpace] | None = None, data_seed: int | None = None
                ) -> tuple[ExperimentConfig, dict[str, ParamSpace]]:
    """Cross-key rules of one study; returns its experiment and searched space (``space``, a
    budget's, instead of the experiment's ``tune.search`` space; ``data_seed``: the split it trains on)."""
    if cfg.experiment not in experiments:
        raise ParamError(f"{where}.experiment = {cfg.experiment!r} is not declared: use one of "
                         f"{', '.join(experiments)}")
    method_class(cfg.method, f"{where}.method")
    base = experiments[cfg.experiment]
    raw = to_dict(base)
    if cfg.train_epochs is not None:
        raw["train_epochs"] = cfg.train_epochs
    if data_seed is not None:
        raw["data"]["seed"] = data_seed
    exp = build(ExperimentConfig, raw, f"experiments.{cfg.experiment}")
    exp.name = base.name
    exp.method_config(cfg.method)
    if cfg.storage is not None:
        storage_kind(cfg.storage, f"{where}.storage")
    if cfg.mode == "sweep":
        check_sweep(cfg, exp, raw, where)
        return exp, {}
    if cfg.n_trials is None:
        raise ParamError(f"missing key {where}.n_trials: the number of COMPLETE + PRUNED trials")
    if cfg.param is not None or cfg.values:
        raise ParamError(f"{where}.param and {where}.values are for mode: sweep")
    space = exp.search if space is None else space
    for i, key in enumerate(cfg.params or []):
        if key not in space:
            raise ParamError(f"{where}.params[{i}] = {key!r} is not in tune.search.{cfg.experiment}: "
                             f"use one of {', '.join(space) or '(empty search block)'}")
    keys = cfg.params or list(space)
    if not keys:
        raise ParamError(f"tune.search.{cfg.experiment} is empty: study {where} has nothing to search")
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


def check_tune(tune: TuneConfig, experiments: Mapping[str, ExperimentConfig]) -> None:
    """The ``tune:`` section against the experiments: every study of ``tune.run`` is declared,
    every study's name is :data:`~pipeline.params.schema.NAME`, and every study's experiment,
    method, search keys or sweep grid exist and are valid."""
    for i, name in enumerate(tune.run):
        if name not in tune.studies:
            raise ParamError(f"tune.run[{i}] = {name!r} is not declared in tune.studies: use one of "
                             f"{', '.join(tune.studies) or '(none declared)'}")
    for name, cfg in tune.studies.items():
        check_name(name, "study name")
        check_study(cfg, experiments, f"tune.studies.{name}")


def make_plan(params: Params, name: str, *, n_trials: int | None = None,
              storage: str | None = None, workers: int | None = None) -> Plan:
    """The validated plan of study ``name``, with command-line overrides applied."""
    tune = params.tune
    check_name(name, "study")
    if name not in tune.studies:
        raise ParamError(f"unknown study {name!r}: declare it under tune.studies (declared: "
                         f"{', '.join(tune.studies) or 'none'})")
    cfg = tune.studies[name]
    if n_trials is not None and cfg.mode == "sweep":
        raise ParamError(f"--n-trials: study {name!r} is a sweep, which runs exactly its grid")
    cfg = dataclasses.replace(cfg, n_trials=n_trials or cfg.n_trials, workers=workers or cfg.workers)
    return plan_of(params, name, cfg, f"tune.studies.{name}", storage=storage)


def plan_of(params: Params, name: str, cfg: StudyConfig, where: str, *, storage: str | None = None,
            space: dict[str, ParamSpace] | None = None, data_seed: int | None = None) -> Plan:
    """The validated plan of study ``name`` declared as ``cfg`` at ``where``; ``storage``: the
    command line's URL; ``space`` and ``data_seed``: a budget's (:func:`check_study`)."""
    url = storage_url(storage, "--storage") if storage else None
    cfg = dataclasses.replace(cfg, storage=url or cfg.storage)
    exp, space = check_study(cfg, params.experiments, where, space=space, data_seed=data_seed)
    url = url or (storage_url(cfg.storage, f"{where}.storage") if cfg.storage else default_storage())
    return Plan(name, cfg, to_dict(exp), exp, space, url, params.run.device, written=params.written)
