"""A study from start to end: create or resume it, check it is the same study, pretrain once,
claim its MLflow parent run, run the missing trials in workers, analyse, and say in one line
when it ended short of its budget (see :mod:`pipeline.tuning` for the whole design)."""

from __future__ import annotations

import shlex
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.engine.build import check_precision, resolve_device
from pipeline.errors import masked
from pipeline.params.file import Params
from pipeline.params.schema import ParamError, flatten
from pipeline.params.tune import Plan, journal_path, storage_kind
from pipeline.tracking import create_run, delete_run, end_orphan_trial_runs, is_active_run
from pipeline.tuning.analysis import analyse
from pipeline.tuning.budget import DEFAULT_ATTR, GRID_ATTR, IncompleteStudy, budget_of, shortfall
from pipeline.tuning.objective import base_experiment, ensure_data, ensure_pretrain, training_data
from pipeline.tuning.storage import StudyStorage, claim_study_attr, fail_dead_trials, open_storage
from pipeline.tuning.workers import make_pruner, no_pruning_reason, open_study, run_workers, wait_for_running

# Study system attr: what the trials were run with (a few KB of JSON: kept out of the user attrs,
# which optuna-dashboard shows; the parent run has it as study_definition.json). Studies created
# before it was moved hold it in the user attr of the same name.
DEFINITION_ATTR = "definition"
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: the study's MLflow parent run


def enqueue_grid(study: optuna.Study, plan: Plan) -> None:
    """Enqueue every grid point without a COMPLETE, RUNNING or WAITING trial."""
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    covered = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False, states=live)]
    missing = [point for point in plan.grid() if point not in covered]
    for point in missing:
        study.enqueue_trial(point, user_attrs={GRID_ATTR: True})


def enqueue_default(study: optuna.Study, plan: Plan) -> None:
    """A budget's first trial: the experiment's own values (DomainBed's ``hparams_seed`` 0), so
    the default's validation score is measured on the same split; enqueued again only if it
    failed (a COMPLETE, PRUNED, RUNNING or WAITING default trial counts) and the budget has room."""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    if any(t.user_attrs.get(DEFAULT_ATTR) for t in study.get_trials(deepcopy=False, states=live)):
        return
    if budget_of(plan).remaining(study) > 0:
        study.enqueue_trial(plan.default_values, user_attrs={DEFAULT_ATTR: True})


def check_definition(study: optuna.Study, plan: Plan) -> None:
    """Store the study's definition, or refuse to resume a study defined differently."""
    current = plan.definition()
    stored = study._storage.get_study_system_attrs(study._study_id).get(DEFINITION_ATTR,
                                                                        study.user_attrs.get(DEFINITION_ATTR))
    if stored is None:
        study._storage.set_study_system_attr(study._study_id, DEFINITION_ATTR, current)
        return
    old, new = flatten(stored), flatten(current)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise ParamError(
                f"study {plan.name!r} in {masked(plan.storage)} was created with {key} = {old.get(key)!r}, "
                f"now {new.get(key)!r}: its trials would not be comparable. Restore the setting, or copy the "
                f"study under a new name in tune.studies, or delete the stored study and its trials with: "
                f"{delete_command(plan)}")


def delete_command(plan: Plan) -> str:
    """The Optuna CLI line that deletes the stored study (the password left as ***)."""
    if storage_kind(plan.storage) == "journal":
        where = f"--storage {shlex.quote(str(journal_path(plan.storage)))} --storage-class JournalFileBackend"
    else:
        where = f"--storage {shlex.quote(masked(plan.storage))}"
    return f"optuna delete-study --study-name {shlex.quote(plan.name)} {where}"


def parent_run(study: optuna.Study, storage: StudyStorage, plan: Plan) -> str:
    """The study's one parent run, also when several invocations start at once.

    Its id is the study user attr ``PARENT_RUN_ATTR``. An invocation that finds no usable one
    creates its own run, then claims the attr by compare-and-set in the study's storage
    (:func:`claim_study_attr`); a loser deletes the run it created and uses the winner's. Child
    runs are created only after this, so they all point at the winner. The storage decides
    because it is what every worker, invocation and machine of the study shares, and its
    compare-and-set is atomic. (Picking the earliest tagged parent run in MLflow is not: a run's
    start_time is its client's clock, and a run created with an earlier start_time can become
    visible after another process has searched, so both could see themselves as the earliest.)
    """
    stored = study.user_attrs.get(PARENT_RUN_ATTR)
    if stored is not None:
        if is_active_run(stored):
            return stored
        print(f"[{plan.name}] parent run {stored} is not in the MLflow store (or deleted): starting a new one")
    mine = create_parent_run(study, plan)
    winner = claim_study_attr(storage, study._study_id, PARENT_RUN_ATTR, mine, replacing=stored)
    if winner != mine:
        delete_run(mine)
    return winner


def run_study(params: Params, plan: Plan) -> dict[str, Any]:
    """Create or resume the study, run its missing trials with ``plan.cfg.workers`` workers, analyse.

    Raises :class:`IncompleteStudy` after the analysis when the budget is not done (a dead worker,
    failures in a row, a failed grid point): rerunning the same command runs exactly the missing
    trials.
    """
    check_precision(base_experiment(params, plan), resolve_device(plan.device))  # bf16 where it is emulated
    ensure_data(params, plan)
    training_data(plan)  # a missing data set stops here, before any study is created or trained
    storage = open_storage(plan.storage)
    study = open_study(plan, [0], storage)
    check_definition(study, plan)
    ensure_pretrain(params, plan)
    plan.parent_run_id = parent_run(study, storage, plan)
    fail_dead_trials(study, storage)
    if plan.sweep:
        enqueue_grid(study, plan)
    elif plan.default_values is not None:
        enqueue_default(study, plan)
    if why := no_pruning_reason(plan):
        print(f"[{plan.name}] {why}")
    budget = budget_of(plan)
    to_run = first = budget.remaining(study)
    dead: list[str] = []
    while True:
        if to_run > 0:
            dead = run_workers(plan, min(plan.cfg.workers, to_run), len(study.trials))
        fail_dead_trials(study, storage)  # journal: a killed worker's trial is failed and put back at once
        if dead:
            break
        wait_for_running(study, storage, plan)
        # run again only the trials of dead processes put back in the queue (WAITING) meanwhile
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        to_run = budget.remaining(study) if waiting else 0
        if to_run <= 0:
            break
    if first <= 0 and budget.finished(study) >= plan.n_trials:
        print(f"[{plan.name}] the study already has its {plan.n_trials} trials: analysing only")
    finished = {t.number: t.state.name for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    end_orphan_trial_runs(plan.exp.mlflow_experiment, plan.name, finished)
    summary = analyse(study, plan)
    problem = shortfall(study, plan, dead)
    if problem is not None:
        raise IncompleteStudy(problem)
    return summary


def create_parent_run(study: optuna.Study, plan: Plan) -> str:
    """A new parent run describing the study (search space, sampler, pruner, storage)."""
    definition = plan.definition()
    tags = {"stage": "tune", "experiment": plan.cfg.experiment, "method": plan.cfg.method,
            "optuna.study_name": plan.name, "optuna.mode": plan.cfg.mode}
    params = {"mode": plan.cfg.mode, "experiment": plan.cfg.experiment, "method": plan.cfg.method,
            "metric": plan.metric, "objective": "best validation value over the trial's epochs",
            "seeds": plan.seeds, "train_epochs": plan.exp.train_epochs,
            "sampler": "enqueued grid" if plan.sweep else plan.cfg.sampler.name,
            "sampler.seed": plan.cfg.sampler.seed, "pruner": make_pruner(plan).__class__.__name__,
            "pruner.n_startup_trials": plan.cfg.pruner.n_startup_trials,
            "pruner.n_warmup_steps": plan.cfg.pruner.n_warmup_steps, "storage": masked(plan.storage),
            **({"pruner.none_because": no_pruning_reason(plan)} if no_pruning_reason(plan) else {}),
            "optuna.study_id": study._study_id,
            **flatten({"search": definition["space"]}),
            **({"sweep.param": plan.cfg.param, "sweep.values": plan.cfg.values} if plan.sweep else {})}
    files = {"search_space.json": definition["space"] or {plan.cfg.param: plan.cfg.values},
             "study_definition.json": definition}
    return create_run(plan.exp.mlflow_experiment, f"study-{plan.name}", tags=tags, params=params, files=files)
