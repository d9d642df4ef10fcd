"""``tune.budgets``: the same tuning budget for every method of an experiment (DomainBed's rule).

A budget ``B`` listing methods m1 ... mk is the k studies ``B-m1`` ... ``B-mk``
(:func:`budget_studies`). Each searches its method's paper space
(:data:`~pipeline.params.spaces.PAPER_SPACES`) with the budget's ``n_trials``, sampler, pruner,
storage and workers, all trials on the tuning ``seed`` and the split that seed draws
(``reference.split: per_seed``: ``data.seed`` = the tuning seed, prepared as the reference
sweep's ``split<seed>``). Its first trial is the method's default config (DomainBed's
``hparams_seed`` 0), so the report has the default's validation score on the same split. A
trial's value is its best validation value (never a test metric: :mod:`pipeline.tuning.objective`).

Refused before any work, in one line each: a tuning seed among ``reference.seeds`` (the reported
numbers would be selected on themselves), ``reference.split: fixed`` (every seed shares the
reported split), a method with no block in the experiment or no paper space, a default or a
``chosen`` value outside its method's space, ``--n-trials`` for one method of a budget.

``chosen`` (method -> dotted key -> value, written from the studies by ``python -m
pipeline.stages.tune_report``) becomes the reference variant ``<method>-tuned`` of the
budget's experiment (:func:`add_tuned_variants`), rerun on the reported seeds by the reference sweep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.layout import reference_tree
from pipeline.methods import method_class
from pipeline.params.experiment import ExperimentConfig, check_tunable, check_values
from pipeline.params.reference import ReferenceConfig, Variant
from pipeline.params.schema import ParamError, check_name, flatten, to_dict
from pipeline.params.search import ParamSpace
from pipeline.params.spaces import paper_space
from pipeline.params.tune import Plan, StudyConfig, TuneConfig, check_study, make_plan, plan_of

if TYPE_CHECKING:
    from pipeline.params.file import Params

TUNED = "tuned"  # the reference label of a method's chosen config: <method>-tuned


@dataclass
class BudgetStudy:
    """One method's study of a budget."""

    budget: str
    cfg: StudyConfig
    space: dict[str, ParamSpace]
    data_seed: int  # the split it trains on (reference.split: per_seed: the tuning seed)


def study_name(budget: str, method: str) -> str:
    return f"{budget}-{method}"


def tuned_label(method: str) -> str:
    return f"{method}-{TUNED}"


def budget_studies(tune: TuneConfig) -> dict[str, BudgetStudy]:
    """Every budget expanded: study name -> its method's study, with the budget's n_trials,
    sampler, pruner, storage and workers (copies: no two studies share a config object)."""
    out = {}
    for name, b in tune.budgets.items():
        for method in b.methods:
            cfg = StudyConfig(experiment=b.experiment, method=method, seed=b.seed, n_trials=b.n_trials,
                              train_epochs=b.train_epochs, sampler=dataclasses.replace(b.sampler),
                              pruner=dataclasses.replace(b.pruner), storage=b.storage, workers=b.workers)
            out[study_name(name, method)] = BudgetStudy(name, cfg, paper_space(method), b.seed)
    return out


def default_values(exp: ExperimentConfig, method: str, space: dict[str, ParamSpace]) -> dict[str, Any]:
    """The experiment's own value of every searched key (the method's config as it runs)."""
    flat = flatten({k: v for k, v in to_dict(exp).items() if k != "methods"})
    flat.update(flatten(to_dict(exp.method_config(method)), f"methods.{method}."))
    return {key: flat[key] for key in space}


def check_budgets(tune: TuneConfig, experiments: dict[str, ExperimentConfig], reference: ReferenceConfig) -> None:
    """Every budget against the experiments and the reported seeds (see the module docstring)."""
    tuned_by: dict[str, str] = {}  # experiment -> its budget
    for name, b in tune.budgets.items():
        where = f"tune.budgets.{name}"
        check_name(name, "budget name")
        if b.experiment in tuned_by:  # both would make <method>-tuned, and the report compares one tuned table
            raise ParamError(f"{where}.experiment = {b.experiment!r} is tuned by budget {tuned_by[b.experiment]!r} "
                             "already: one budget per experiment (change that one's n_trials or methods instead)")
        tuned_by[b.experiment] = name
        if b.experiment not in experiments:
            raise ParamError(f"{where}.experiment = {b.experiment!r} is not declared: use one of {', '.join(experiments)}")
        if b.seed in reference.seeds:
            raise ParamError(f"{where}.seed = {b.seed} is one of the reported seeds reference.seeds = {reference.seeds}: "
                             f"tune on a seed (and its split) that is not reported, e.g. {max(reference.seeds) + 100}")
        if reference.split != "per_seed":
            raise ParamError(f"{where}: reference.split = {reference.split!r} trains every seed on the reported split, "
                             "so the tuning split would be a reported one: use reference.split: per_seed")
        if not b.methods or len(set(b.methods)) != len(b.methods):
            raise ParamError(f"{where}.methods = {b.methods}: list each method to tune once")
        exp = experiments[b.experiment]
        for i, method in enumerate(b.methods):
            method_class(method, f"{where}.methods[{i}]")
            if method not in exp.methods:
                raise ParamError(f"{where}.methods[{i}] = {method!r} has no block in experiments.{b.experiment}.methods")
            if not paper_space(method):
                raise ParamError(f"{where}.methods[{i}] = {method!r} has no search space in pipeline/params/spaces.py "
                                 "(PAPER_SPACES): a method without hyperparameters of its own needs no tuning, leave it out")
        check_chosen(name, b.chosen, b.methods)
    for sname, bs in budget_studies(tune).items():
        if sname in tune.studies:
            raise ParamError(f"tune.studies.{sname}: the name is taken by budget {bs.budget!r}'s study of "
                             f"{bs.cfg.method}: rename the study")
        check_budget_study(sname, bs, experiments)


def check_budget_study(name: str, bs: BudgetStudy, experiments: dict[str, ExperimentConfig]) -> dict[str, Any]:
    """One method's study: its space's keys and ends are valid values of the experiment, and its
    default is a point of the space (the first trial is then one of the search). Returns the default."""
    where = f"tune.budgets.{bs.budget} (study {name})"
    exp, space = check_study(bs.cfg, experiments, where, space=bs.space, data_seed=bs.data_seed)
    for key, spec in space.items():
        check_tunable(exp, key, f"pipeline/params/spaces.py: {bs.cfg.method} {key}")
        check_values(exp, key, spec, f"pipeline/params/spaces.py: {bs.cfg.method} {key}")
    defaults = default_values(exp, bs.cfg.method, space)
    for key, value in defaults.items():
        if not space[key].contains(value):
            raise ParamError(f"{where}: the default {key} = {value!r} of experiments.{bs.cfg.experiment} is outside "
                             f"its paper space {space[key].ends()} (pipeline/params/spaces.py): the default trial "
                             "would not be a point of the search; widen the space or change the default")
    return defaults


def check_chosen(budget: str, chosen: dict[str, dict[str, Any]], methods: list[str]) -> None:
    for method, values in chosen.items():
        where = f"tune.budgets.{budget}.chosen.{method}"
        if method not in methods:
            raise ParamError(f"{where}: {method!r} is not one of the budget's methods {methods}")
        space = paper_space(method)
        for key, value in values.items():
            if key not in space:
                raise ParamError(f"{where}: {key!r} is not searched for {method} (its keys: {', '.join(space)})")
            if not space[key].contains(value):
                raise ParamError(f"{where}.{key} = {value!r} is outside its space {space[key].ends()}")


def add_tuned_variants(tune: TuneConfig, reference: ReferenceConfig) -> None:
    """Each budget's ``chosen`` config of a method as the reference variant ``<method>-tuned`` of
    the budget's experiment (``check_reference`` then validates it like any variant)."""
    for name, b in tune.budgets.items():
        if not b.chosen:
            continue
        sweep = reference.experiments.get(b.experiment)
        if sweep is None:
            raise ParamError(f"tune.budgets.{name}.chosen: experiment {b.experiment!r} has no reference.experiments "
                             "block to rerun the chosen configs on the reported seeds")
        for method, values in b.chosen.items():
            label = tuned_label(method)
            if label in sweep.variants:
                raise ParamError(f"reference.experiments.{b.experiment}.variants.{label}: the label is the one "
                                 f"tune.budgets.{name}.chosen.{method} generates: rename the variant")
            sweep.variants[label] = Variant(method, dict(values))


def find_plan(params: Params, name: str, *, n_trials: int | None = None, storage: str | None = None,
              workers: int | None = None) -> Plan:
    """The plan of study ``name``: one declared under ``tune.studies``, or a budget's method
    (``<budget>-<method>``: its paper space, the tuning seed's split, the default as first trial)."""
    check_name(name, "study")
    budgeted = budget_studies(params.tune)
    if name not in budgeted:
        if name not in params.tune.studies:
            raise ParamError(f"unknown study {name!r}: declare it under tune.studies or tune.budgets (declared: "
                             f"{', '.join([*params.tune.studies, *budgeted]) or 'none'})")
        return make_plan(params, name, n_trials=n_trials, storage=storage, workers=workers)
    bs = budgeted[name]
    if n_trials is not None:
        raise ParamError(f"--n-trials: study {name!r} is budget {bs.budget!r}'s, whose methods all get the same "
                         f"n_trials: change tune.budgets.{bs.budget}.n_trials")
    cfg = dataclasses.replace(bs.cfg, workers=workers or bs.cfg.workers)
    where = f"tune.budgets.{bs.budget}"
    plan = plan_of(params, name, cfg, where, storage=storage, space=bs.space, data_seed=bs.data_seed)
    plan.tree = reference_tree(cfg.experiment, bs.data_seed)
    plan.default_values = default_values(plan.exp, cfg.method, plan.space)
    return plan


def budget_study_names(params: Params, budget: str) -> list[str]:
    """The studies of ``budget``, in its methods' order."""
    if budget not in params.tune.budgets:
        raise ParamError(f"unknown budget {budget!r}: declared under tune.budgets: "
                         f"{', '.join(params.tune.budgets) or 'none'}")
    return [study_name(budget, m) for m in params.tune.budgets[budget].methods]
