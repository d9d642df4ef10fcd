"""Optuna studies: hyperparameter search and sensitivity analysis of one experiment's method.

    python -m pipeline.tuning.study --study lt_meta_iada [--workers 2] [--n-trials 20] [--storage URL]
    python -m pipeline.tuning.study            # every study listed in tune.run

``params.yaml`` declares the studies under ``tune.studies`` (:class:`StudyConfig`); the search
space is the experiment's ``search:`` block, next to the defaults it varies
(:class:`ParamSpace`, keys are dotted paths into the experiment config).

A trial starts from the experiment's pretrain checkpoint (``models/<exp>/s<seed>/pretrain/last.pt``,
trained once if missing), trains the method with the suggested values merged into the
experiment and re-validated like params.yaml, reports the selection metric (``val_acc``, or
``val_worst_group_acc`` for subpopulation shift; never a test metric: the test splits are not
even loaded) after each of its epochs as step 0, 1, ... and is pruned by the study's pruner. Its
value is the BEST validation value over its epochs, the value that selects the checkpoint of a
normal run (``best.pt``). Trial outputs go to a temporary directory removed after the trial; the
child MLflow run keeps its metrics, history and checkpoints.

Two modes:

- ``study``: a TPE (or random) search, ``n_trials`` trials counted as COMPLETE + PRUNED (failed
  trials do not count, so a study that lost trials to errors tops up when it is run again;
  rerunning a finished study runs nothing and refreshes the analysis).
- ``sweep``: exactly the grid ``values`` x ``seeds`` of one parameter (``param``), no pruning;
  each grid point without a complete trial is enqueued, so a rerun retries only what failed.

Storage: a named study in an RDB (``sqlite:///<project root>/optuna.db`` by default, the file
``make dashboard`` serves; any SQLAlchemy URL, e.g. ``postgresql://...`` to share a study between
machines). ``--workers N`` starts N spawned processes on the same study. A worker stops once the
study holds ``n_trials`` COMPLETE + PRUNED + RUNNING trials (the rule of
``optuna.study.MaxTrialsCallback`` with those states); a trial that another worker's concurrent
start pushed past the budget is refused before training (recorded FAIL, user attr ``surplus``),
so exactly ``n_trials`` trials finish. Trials of a killed process are failed after the heartbeat
grace period (``GRACE_S``). A worker that dies is reported in one line; the study is still
analysed, and the command exits 1 with one line when the budget is short (a dead worker,
``MAX_FAILURES_IN_A_ROW`` failed trials in a row, a failed grid point of a sweep): rerunning it
runs exactly the missing trials.
Once its own workers have ended, an invocation waits for trials RUNNING in other invocations
(they count toward the budget) before it analyses. Workers of one invocation use sampler seeds
derived from ``(sampler.seed, trials in the study at the start, worker index)``: reproducible for
one worker, never the same stream twice in one study.

MLflow: one parent run per study in the scenario's experiment (search space, sampler, pruner,
storage; at the end the best value and parameters, the sensitivity analysis); one child run per
trial (tags ``optuna.study_name``, ``optuna.trial_number``, ``optuna.state``). The parent run id
lives in the study's user attrs, claimed by compare-and-set in the storage, so every worker and
every invocation, concurrent ones included, nests under the same one (:func:`parent_run`).

Analysis, in ``studies/<study>/`` and on the parent run: ``trials.csv``, ``importances.json``
(fANOVA, :class:`optuna.importance.FanovaImportanceEvaluator`, seeded), ``summary.json``,
``best_params.yaml``, PNGs from ``optuna.visualization.matplotlib``, and for a sweep
``sweep.csv``, ``sweep.json``, ``sweep.png`` (mean +- sample std over seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
import torch
import yaml
from optuna.trial import TrialState

from pipeline.params.schema import ParamError, flatten
from pipeline.data.prepared import PreparedData, load_prepared
from pipeline.params.experiment import Params, load_params
from pipeline.stages.common import data_dir, main_guard, run_dir, write_json
from pipeline.stages.training import train_stage
from pipeline.tracking import RunTracker, log_params, masked, setup, start_run
from pipeline.engine.loop import LAST, EpochCallback, fit, load_checkpoint
from pipeline.params.tune import SEED_PARAM, ParamSpace, Plan, StudyConfig, apply_values, load_tune, make_plan

import mlflow  # noqa: E402  (after pipeline.tracking, which sets MLflow's telemetry switches)

DEFINITION_ATTR = "definition"  # study user attr: what the trials were run with
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attr: the study's MLflow parent run
GRID_ATTR = "grid_point"  # trial user attr of an enqueued sweep point
HEARTBEAT_S, GRACE_S = 30, 120
WAIT_POLL_S = 5  # how often the main process looks whether other invocations' trials have ended
MAX_FAILURES_IN_A_ROW = 5
# Tests only: a worker process of this name SIGKILLs itself when a trial starts (a killed worker).
KILL_WORKER_ENV = "PIPELINE_TUNE_TEST_KILL_WORKER"
USER_ATTRS_TABLE = sqlalchemy.table("study_user_attributes", sqlalchemy.column("study_id"),
                                    sqlalchemy.column("key"), sqlalchemy.column("value_json"))
HEARTBEATS_TABLE = sqlalchemy.table("trial_heartbeats", sqlalchemy.column("trial_id"))
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# --- storage, samplers, budget ---------------------------------------------------------------


@contextlib.contextmanager
def experimental_features() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for the features used on purpose (heartbeat, plots)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage with a heartbeat (a killed worker's trial is failed after GRACE_S).

    SQLite: every transaction is ``BEGIN IMMEDIATE``. Optuna claims an enqueued (WAITING) trial
    with a ``SELECT ... FOR UPDATE`` then ``UPDATE`` in one transaction; SQLite ignores
    ``FOR UPDATE`` and Python's sqlite3 only opens the transaction at the ``UPDATE``, so two
    workers could both read WAITING and both run the same trial (optuna/optuna#4002). Taking the
    write lock when the transaction begins serialises the claim (SQLAlchemy's pysqlite recipe).
    """
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {}
    try:
        with experimental_features():
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise ParamError(f"storage {masked(url)} cannot be opened ({type(err).__name__}: {err}); "
                         "fix tune.studies.<name>.storage or --storage") from None
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "begin", begin_immediate)
    return storage


def begin_immediate(conn: sqlalchemy.engine.Connection) -> None:
    """Open every SQLite transaction with the write lock (pysqlite's own BEGIN is off)."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_sampler(plan: Plan, stream: list[int]) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from (sampler.seed, *stream)."""
    seed = int(np.random.SeedSequence([plan.cfg.sampler.seed, *stream]).generate_state(1)[0])
    # A sweep runs only its enqueued grid points (``Budget.admits``), whose values are all fixed:
    # the sampler decides nothing. (Optuna's GridSampler is not used: it skips enqueued trials in
    # before_trial and then fails in after_trial on a one-point grid.)
    if plan.sweep or plan.cfg.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(plan: Plan) -> optuna.pruners.BasePruner:
    p = plan.cfg.pruner
    if plan.sweep or p.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail the RUNNING trials of dead processes: those without a heartbeat for GRACE_S (Optuna's
    stale trials), and those that never had a heartbeat and started more than GRACE_S ago.

    Optuna skips a RUNNING trial without a heartbeat row: a process killed between creating a
    trial and its heartbeat thread's first beat would leave it RUNNING for ever, holding a place
    in the budget (and keeping :func:`wait_for_running` waiting). Its start time is the creating
    machine's clock, compared with this one's: fine for clocks kept within GRACE_S of each other.
    """
    with experimental_features():
        optuna.storages.fail_stale_trials(study)
    running = {t._trial_id: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return
    with storage.engine.connect() as conn:
        column = HEARTBEATS_TABLE.c.trial_id
        beating = set(conn.execute(sqlalchemy.select(column).where(column.in_(list(running)))).scalars())
    for trial_id, t in running.items():
        started = t.datetime_start or datetime.now()
        if trial_id not in beating and datetime.now() - started > timedelta(seconds=GRACE_S):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # it ended meanwhile
                storage.set_trial_state_values(trial_id, TrialState.FAIL)


def open_study(plan: Plan, stream: list[int], storage: optuna.storages.RDBStorage | None = None) -> optuna.Study:
    """The study, created on first use; its objective is named after the validation metric (the
    dashboard showed "Objective 0")."""
    study = optuna.create_study(study_name=plan.name, storage=storage or open_storage(plan.storage),
                                load_if_exists=True, direction="maximize", sampler=make_sampler(plan, stream),
                                pruner=make_pruner(plan))
    if study.metric_names != [plan.metric]:
        with experimental_features():
            study.set_metric_names([plan.metric])
    return study


def claim_study_attr(storage: optuna.storages.RDBStorage, study_id: int, key: str, value: Any,
                     replacing: Any | None) -> Any:
    """Compare-and-set of a study user attr: set ``key`` to ``value`` if it is still absent
    (``replacing`` None) or still ``replacing``; returns the value it holds afterwards (``value``
    if this call won, else the winner's).

    ``Study.set_user_attr`` overwrites (the last writer wins). Here the storage decides: the
    table's unique (study_id, key) lets exactly one INSERT succeed, and an UPDATE conditional on
    the old value changes the row for exactly one writer, on SQLite and PostgreSQL alike (between
    machines too). Optuna stores a user attr as its JSON text in ``study_user_attributes``.
    """
    table = USER_ATTRS_TABLE
    row = (table.c.study_id == study_id) & (table.c.key == key)
    try:
        with storage.engine.begin() as conn:
            if replacing is None:
                conn.execute(sqlalchemy.insert(table).values(study_id=study_id, key=key, value_json=json.dumps(value)))
            else:
                conn.execute(sqlalchemy.update(table).where(row & (table.c.value_json == json.dumps(replacing)))
                             .values(value_json=json.dumps(value)))
    except sqlalchemy.exc.IntegrityError:
        pass  # another process inserted it first: its value stands
    with storage.engine.connect() as conn:
        return json.loads(conn.execute(sqlalchemy.select(table.c.value_json).where(row)).scalar_one())


class SurplusTrial(RuntimeError):
    """A trial started past the budget by a concurrent worker: refused before any training."""


@dataclass
class Budget:
    """When a worker stops and which trials may run.

    Study: stop once COMPLETE + PRUNED + RUNNING trials reach ``n_trials``; a trial runs only if
    fewer than ``n_trials`` lower-numbered trials are COMPLETE, PRUNED, RUNNING or WAITING
    (trial numbers are assigned atomically by the storage, so this is exact across processes).
    Sweep: stop once no enqueued grid point waits; only enqueued grid points run.
    A worker also stops after ``MAX_FAILURES_IN_A_ROW`` failed trials (something is broken).
    """

    n_trials: int
    sweep: bool
    failures_in_a_row: int = 0

    def finished(self, study: optuna.Study) -> int:
        """Trials of the budget done: COMPLETE + PRUNED, or grid points with a COMPLETE trial."""
        if self.sweep:
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            return len({json.dumps(t.params, sort_keys=True) for t in complete})
        return len(study.get_trials(deepcopy=False, states=FINISHED))

    def remaining(self, study: optuna.Study) -> int:
        """Trials still to start: waiting grid points, or n_trials - (COMPLETE + PRUNED + RUNNING)."""
        if self.sweep:
            return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        return self.n_trials - len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))

    def done(self, study: optuna.Study) -> bool:
        return self.remaining(study) <= 0

    def admits(self, trial: optuna.Trial) -> bool:
        if self.sweep:
            return GRID_ATTR in trial.user_attrs
        states = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
        earlier = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
        return len(earlier) < self.n_trials

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """``study.optimize`` callback."""
        self.failures_in_a_row = self.failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            print(f"[{study.study_name}] {self.failures_in_a_row} trials failed in a row: this worker stops "
                  "(see the errors above; the trials' user attr 'error' keeps them)")
            study.stop()
        elif self.done(study):
            study.stop()


def enqueue_grid(study: optuna.Study, plan: Plan) -> None:
    """Enqueue every grid point without a COMPLETE, RUNNING or WAITING trial."""
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    covered = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False, states=live)]
    missing = [point for point in plan.grid() if point not in covered]
    for point in missing:
        study.enqueue_trial(point, user_attrs={GRID_ATTR: True})


def check_definition(study: optuna.Study, plan: Plan) -> None:
    """Store the study's definition, or refuse to resume a study defined differently."""
    current = plan.definition()
    stored = study.user_attrs.get(DEFINITION_ATTR)
    if stored is None:
        study.set_user_attr(DEFINITION_ATTR, current)
        return
    old, new = flatten(stored), flatten(current)
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            raise ParamError(
                f"study {plan.name!r} in {masked(plan.storage)} was created with {key} = {old.get(key)!r}, "
                f"now {new.get(key)!r}: its trials would not be comparable. Restore the setting, rename "
                f"the study, or delete it (optuna delete-study --study-name {plan.name} --storage URL)")


# --- trials --------------------------------------------------------------------------------


def training_data(plan: Plan) -> PreparedData:
    """The prepared data without its test splits: a study never sees them."""
    data = load_prepared(data_dir(plan.cfg.experiment))
    return PreparedData({k: v for k, v in data.splits.items() if k in ("train", "meta", "val")}, data.card)


def pretrain_checkpoint(plan: Plan, seed: int) -> Path:
    return run_dir(plan.cfg.experiment, seed, "pretrain") / LAST


def ensure_pretrain(params: Params, plan: Plan) -> None:
    """Train the pretraining of every seed whose finished checkpoint is missing (as the
    ``pretrain`` stage does), so that all trials start from it."""
    base = params.experiment(plan.cfg.experiment)
    for seed in plan.seeds:
        path = pretrain_checkpoint(plan, seed)
        if path.is_file() and load_checkpoint(path)["epoch"] == base.pretrain_epochs:
            continue
        print(f"[{plan.name}] no finished pretraining at {path}: training it ({base.pretrain_epochs} epochs)")
        train_stage(params, base, plan.cfg.experiment, "ce", seed, path.parent, first_epoch=0,
                    last_epoch=base.pretrain_epochs, init=None, stage="pretrain", track=True)


def suggest(trial: optuna.Trial, plan: Plan) -> tuple[dict[str, Any], int]:
    """The trial's values (dotted key -> value) and its training seed."""
    if plan.sweep:
        value = trial.suggest_categorical(plan.cfg.param, plan.cfg.values)
        return {plan.cfg.param: value}, int(trial.suggest_categorical(SEED_PARAM, plan.cfg.seeds))
    values = {}
    for key, s in plan.space.items():
        if s.type == "categorical":
            values[key] = trial.suggest_categorical(key, s.choices)
        elif s.type == "int":
            values[key] = trial.suggest_int(key, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        else:
            values[key] = trial.suggest_float(key, s.low, s.high, step=s.step, log=s.log)
    return values, plan.cfg.seed


def reporter(trial: optuna.Trial, first_epoch: int, metric: str) -> EpochCallback:
    """``fit``'s epoch callback: report the metric at the trial's epoch k and prune."""
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        step = epoch - first_epoch
        trial.report(metrics[metric], step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at trial epoch {step}: {metric} = {metrics[metric]:.4f}")
    return on_epoch


class Objective:
    """Optuna objective: suggest, train from the pretrain checkpoint, return the best value."""

    def __init__(self, plan: Plan, data: PreparedData, budget: Budget) -> None:
        self.plan, self.data, self.budget = plan, data, budget

    def __call__(self, trial: optuna.Trial) -> float:
        if os.environ.get(KILL_WORKER_ENV) == multiprocessing.current_process().name:
            os.kill(os.getpid(), signal.SIGKILL)  # tests only: a worker killed mid-trial
        if not self.budget.admits(trial):
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise SurplusTrial(f"trial {trial.number} is past the budget of {self.budget.n_trials} trials "
                               "(another worker started the last one); not run")
        values, seed = suggest(trial, self.plan)
        trial.set_user_attr("seed", seed)
        with tempfile.TemporaryDirectory(prefix=f"{self.plan.name}-t{trial.number}-") as tmp:
            return self.train(trial, values, seed, Path(tmp))

    def train(self, trial: optuna.Trial, values: dict[str, Any], seed: int, out: Path) -> float:
        plan = self.plan
        tags = {"stage": "tune", "experiment": plan.cfg.experiment, "method": plan.cfg.method, "seed": str(seed),
                "optuna.study_name": plan.name, "optuna.trial_number": str(trial.number)}
        tracker = RunTracker(plan.exp.mlflow_experiment, f"{plan.name}-t{trial.number}", card=self.data.card,
                             tags=tags, parent_run_id=plan.parent_run_id, log_models=False)
        state = "FAIL"
        try:
            exp = apply_values(plan.raw_experiment, values, plan.where())
            summary = fit(exp, self.data, plan.cfg.method, seed, out, first_epoch=exp.pretrain_epochs,
                          last_epoch=exp.total_epochs, init=pretrain_checkpoint(plan, seed), device=plan.device,
                          tracker=tracker, on_epoch=reporter(trial, exp.pretrain_epochs, plan.metric),
                          desc=f"{plan.name}-t{trial.number}")
            state = "COMPLETE"
            return float(summary["selected_value"])
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise
        finally:
            tracker.close("FAILED" if state == "FAIL" else "FINISHED")
            record_child_state(tracker, tags, values, state)
            trial.set_user_attr("mlflow_run_id", tracker.run_id)


def record_child_state(tracker: RunTracker, tags: Mapping[str, str], values: Mapping[str, Any], state: str) -> None:
    """Tag the trial's child run with its final Optuna state (a trial that failed before training
    started, e.g. on an invalid value, gets a child run holding its values)."""
    if tracker.run_id is not None:
        mlflow.MlflowClient().set_tag(tracker.run_id, "optuna.state", state)
        return
    with start_run(tracker.experiment, tracker.run_name, tags={**tags, **tracker.tags, "optuna.state": state}) as run:
        log_params(values)
        tracker.run_id = run.info.run_id
        mlflow.end_run("FAILED")


def worker(plan: Plan, index: int, first_trial: int, threads: int | None) -> None:
    """One worker process: run trials of the study until the budget is spent."""
    if threads is not None:
        torch.set_num_threads(threads)
    study = open_study(plan, [first_trial, index])
    budget = Budget(plan.n_trials, plan.sweep)
    if budget.done(study):
        return
    study.optimize(Objective(plan, training_data(plan), budget), catch=(Exception,), callbacks=[budget.after_trial])


def run_workers(plan: Plan, workers: int, first_trial: int) -> list[str]:
    """``workers`` spawned processes (1: in this process), each with its share of the cores.

    Returns the workers that died (``name: how``), each also reported in one line on stderr; the
    caller still analyses what the study holds. Ctrl-C stops the workers (each fails its running
    trial) and propagates.
    """
    if workers == 1:
        worker(plan, 0, first_trial, None)
        return []
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(plan, i, first_trial, threads), name=f"{plan.name}-w{i}")
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:
            p.join(timeout=30)  # on Ctrl-C the workers fail their running trial and exit
            if p.is_alive():
                p.terminate()
    dead = [f"{p.name}: {how_it_ended(p.exitcode)}" for p in procs if p.exitcode != 0]
    for line in dead:
        print(f"[{plan.name}] worker {line}", file=sys.stderr)
    return dead


def how_it_ended(exitcode: int | None) -> str:
    """A dead process's exit code in words (multiprocessing gives -N for signal N)."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode} (its error is above)"


def wait_for_running(study: optuna.Study, storage: optuna.storages.RDBStorage, plan: Plan) -> None:
    """Wait until no trial of the study is RUNNING, failing stale ones as the heartbeat allows.

    Called once this invocation's workers have all ended normally: a RUNNING trial is then another
    invocation's (another machine on a shared storage, or a second command): it counts toward the
    budget, so the analysis waits for it rather than report a short study. A killed process's trial
    is failed here after GRACE_S (:func:`fail_dead_trials`; the study is then reported short).
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        print(f"[{plan.name}] waiting for trials {', '.join(str(t.number) for t in running)}, RUNNING in another "
              f"process (a killed process's trial is failed after {GRACE_S} s without a heartbeat)")
    while running:
        time.sleep(WAIT_POLL_S)
        fail_dead_trials(study, storage)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


class IncompleteStudy(RuntimeError):
    """A study ended short of its budget; the message says why and what to do (one line)."""


def failure_streak(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The failed trials since the last COMPLETE or PRUNED one (refused surplus trials left out)."""
    ended = [t for t in sorted(trials, key=lambda t: t.number)
             if t.state.is_finished() and not t.user_attrs.get("surplus")]
    streak: list[optuna.trial.FrozenTrial] = []
    for t in reversed(ended):
        if t.state != TrialState.FAIL:
            break
        streak.insert(0, t)
    return streak


def shortfall(study: optuna.Study, plan: Plan, dead: list[str]) -> str | None:
    """Why the study ended short of its budget and what to do, in one line; None when it is done."""
    done = Budget(plan.n_trials, plan.sweep).finished(study)
    if done >= plan.n_trials:
        return None
    trials = study.get_trials(deepcopy=False)
    why = [f"{len(dead)} worker(s) died ({'; '.join(dead)})"] if dead else []
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    streak = failure_streak(trials)
    if failed:
        errors = [t.user_attrs["error"] for t in streak or failed if "error" in t.user_attrs]
        last = errors[-1].splitlines()[0][:300] if errors else "no error recorded"
        why.append(f"{len(streak)} trial(s) failed in a row" if streak else f"{len(failed)} trial(s) failed")
        why[-1] += f", the last with {last}"
    todo = "rerun the same command to run exactly the missing trials (failed trials do not count)"
    running = [str(t.number) for t in trials if t.state == TrialState.RUNNING]
    if running:
        todo = (f"trial(s) {', '.join(running)} stay RUNNING until they have had no heartbeat for {GRACE_S} s "
                f"and are then failed: after that, {todo}")
    return (f"study {plan.name!r} ended with {done} of its {plan.n_trials} trials done (COMPLETE or PRUNED): "
            f"{'; '.join(why) or 'trials are missing'}; {todo}")


# --- MLflow parent run ---------------------------------------------------------------------


def parent_run(study: optuna.Study, storage: optuna.storages.RDBStorage, plan: Plan) -> str:
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
    setup(plan.exp.mlflow_experiment)
    client = mlflow.MlflowClient()
    if stored is not None:
        try:
            if client.get_run(stored).info.lifecycle_stage == "active":
                return stored
        except mlflow.exceptions.MlflowException:
            pass
        print(f"[{plan.name}] parent run {stored} is not in the MLflow store (or deleted): starting a new one")
    mine = create_parent_run(study, plan)
    winner = claim_study_attr(storage, study._study_id, PARENT_RUN_ATTR, mine, replacing=stored)
    if winner != mine:
        client.delete_run(mine)
    return winner


def create_parent_run(study: optuna.Study, plan: Plan) -> str:
    """A new parent run describing the study (search space, sampler, pruner, storage)."""
    definition = plan.definition()
    tags = {"stage": "tune", "experiment": plan.cfg.experiment, "method": plan.cfg.method,
            "optuna.study_name": plan.name, "optuna.mode": plan.cfg.mode}
    with start_run(plan.exp.mlflow_experiment, f"study-{plan.name}", tags=tags) as run:
        log_params({"mode": plan.cfg.mode, "experiment": plan.cfg.experiment, "method": plan.cfg.method,
                    "metric": plan.metric, "objective": "best validation value over the trial's epochs",
                    "seeds": plan.seeds, "train_epochs": plan.exp.train_epochs,
                    "sampler": "enqueued grid" if plan.sweep else plan.cfg.sampler.name,
                    "sampler.seed": plan.cfg.sampler.seed, "pruner": make_pruner(plan).__class__.__name__,
                    "pruner.n_startup_trials": plan.cfg.pruner.n_startup_trials,
                    "pruner.n_warmup_steps": plan.cfg.pruner.n_warmup_steps, "storage": masked(plan.storage),
                    "optuna.study_id": study._study_id,
                    **flatten({"search": definition["space"]}),
                    **({"sweep.param": plan.cfg.param, "sweep.values": plan.cfg.values} if plan.sweep else {})})
        mlflow.log_dict(definition["space"] or {plan.cfg.param: plan.cfg.values}, "search_space.json")
        mlflow.log_dict(definition, "study_definition.json")
    return run.info.run_id


def log_results(plan: Plan, summary: Mapping[str, Any], best: Mapping[str, Any] | None) -> None:
    """Best value and parameters (metrics; tags for non-numbers) and the analysis artefacts."""
    with start_run(plan.exp.mlflow_experiment, f"study-{plan.name}", run_id=plan.parent_run_id):
        mlflow.log_metrics({k: float(summary[k]) for k in ("n_complete", "n_pruned", "n_fail", "n_trials")})
        if best is not None:
            mlflow.log_metric(f"best_{plan.metric}", best["value"])
            for key, value in best["params"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    mlflow.log_metric(f"best.{key}", float(value))
                else:
                    mlflow.set_tag(f"best.{key}", str(value))
        mlflow.log_artifacts(str(plan.out_dir), artifact_path="study")


# --- analysis ------------------------------------------------------------------------------


def importances(study: optuna.Study, plan: Plan) -> dict[str, Any]:
    """fANOVA importances of the complete trials' values; ``not_computed`` says why there are none."""
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=plan.cfg.sampler.seed)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict[str, Any] = {"evaluator": type(evaluator).__name__, "seed": plan.cfg.sampler.seed,
                           "target": f"{plan.metric}, best over the trial's epochs",
                           "n_complete_trials": len(complete), "importances": {}, "notes": [], "not_computed": None}
    if len(complete) < 2:
        out["not_computed"] = f"fANOVA needs at least 2 complete trials, the study has {len(complete)}"
        return out
    if len({t.value for t in complete}) == 1:
        out["not_computed"] = f"all {len(complete)} complete trials have the same value: nothing to attribute"
        return out
    varying = {k: len({repr(t.params.get(k)) for t in complete}) > 1 for k in complete[0].params}
    if not any(varying.values()):
        out["not_computed"] = "no parameter takes two values across the complete trials"
        return out
    if not all(varying.values()):
        out["notes"].append("one value in every complete trial, so not measured: "
                            + ", ".join(sorted(k for k, v in varying.items() if not v)))
    chosen = [k for k, v in varying.items() if v]
    out["importances"] = {k: float(v) for k, v in
                          optuna.importance.get_param_importances(study, evaluator=evaluator, params=chosen).items()}
    return out


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display, no network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_of(axes: Any) -> Any:
    """The figure of what an optuna.visualization.matplotlib function returns (Axes or an array)."""
    return np.asarray(axes).flat[0].figure


def write_plots(study: optuna.Study, plan: Plan, imp: Mapping[str, Any]) -> dict[str, str]:
    """The optuna.visualization.matplotlib PNGs; returns {file: why it was skipped}."""
    plt = pyplot()
    from optuna.visualization import matplotlib as vis

    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=plan.cfg.sampler.seed)
    n_params = len({k for t in study.get_trials(deepcopy=False, states=FINISHED) for k in t.params})
    makers: dict[str, Callable[[], Any]] = {
        "optimization_history.png": lambda: vis.plot_optimization_history(study, target_name=plan.metric),
        "slice.png": lambda: vis.plot_slice(study, target_name=plan.metric),
        "parallel_coordinate.png": lambda: vis.plot_parallel_coordinate(study, target_name=plan.metric),
        "param_importances.png": lambda: vis.plot_param_importances(
            study, evaluator=evaluator, params=list(imp["importances"]), target_name=plan.metric),
        "contour.png": lambda: vis.plot_contour(study, target_name=plan.metric),
    }
    skipped = {}
    if imp["not_computed"]:
        skipped["param_importances.png"] = imp["not_computed"]
    if n_params < 2:
        skipped["contour.png"] = f"a contour plot needs at least 2 parameters, the study has {n_params}"
    for name, make in makers.items():
        if name in skipped:
            continue
        with experimental_features():
            fig = figure_of(make())
        fig.savefig(plan.out_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
    return skipped


def sweep_results(study: optuna.Study, plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (value, seed, metric) of the complete grid points, and mean/std per value."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        value, seed = t.params[plan.cfg.param], t.params[SEED_PARAM]
        rows.setdefault((repr(value), seed), {"value": value, "seed": seed, plan.metric: t.value})
    per_value = []
    for value in plan.cfg.values:
        scores = [r[plan.metric] for r in rows.values() if repr(r["value"]) == repr(value)]
        if scores:
            per_value.append({"value": value, "mean": float(np.mean(scores)), "n_seeds": len(scores),
                              "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0})
    return sorted(rows.values(), key=lambda r: (plan.cfg.values.index(r["value"]), r["seed"])), per_value


def write_sweep(study: optuna.Study, plan: Plan) -> dict[str, Any] | None:
    """sweep.csv / sweep.json / sweep.png; returns the best grid value by mean (None if none)."""
    plt = pyplot()
    rows, per_value = sweep_results(study, plan)
    with open(plan.out_dir / "sweep.csv", "w") as f:
        f.write(f"value,seed,{plan.metric}\n")
        f.writelines(f"{r['value']},{r['seed']},{r[plan.metric]}\n" for r in rows)
    write_json({"param": plan.cfg.param, "metric": plan.metric, "seeds": plan.cfg.seeds,
                "std": "sample standard deviation over seeds (ddof=1)", "values": per_value},
               plan.out_dir / "sweep.json")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if per_value:
        ax.errorbar([p["value"] for p in per_value], [p["mean"] for p in per_value],
                    yerr=[p["std"] for p in per_value], marker="o", capsize=4, label="mean +- std over seeds")
        ax.scatter([r["value"] for r in rows], [r[plan.metric] for r in rows], s=12, alpha=0.5, label="one seed")
        ax.legend()
    ax.set(xlabel=plan.cfg.param, ylabel=f"{plan.metric} (best epoch)", title=f"{plan.name}: {plan.cfg.param} sweep")
    fig.savefig(plan.out_dir / "sweep.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    if not per_value:
        return None
    top = max(per_value, key=lambda p: p["mean"])
    return {"value": top["mean"], "params": {plan.cfg.param: top["value"]}, "selected_by": "mean over seeds"}


def best_of_study(study: optuna.Study) -> dict[str, Any] | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    return {"value": best.value, "params": best.params, "trial": best.number}


def yaml_scalar(value: Any) -> str:
    """``value`` as YAML reads it back with its type (1e-06 -> 1.0e-06, a float for YAML 1.1 too)."""
    return yaml.safe_dump([value], default_flow_style=True, width=1000).strip()[1:-1]


def export_best(plan: Plan, best: Mapping[str, Any]) -> str:
    """Write ``best_params.yaml``; returns the ``dvc exp run`` line that applies it."""
    doc = {"study": plan.name, "experiment": plan.cfg.experiment, "method": plan.cfg.method,
           "metric": plan.metric, **best}
    (plan.out_dir / "best_params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    sets = " ".join(f"-S 'experiments.{plan.cfg.experiment}.{k}={yaml_scalar(v)}'" for k, v in best["params"].items())
    return f"dvc exp run {sets}"


def analyse(study: optuna.Study, plan: Plan) -> dict[str, Any]:
    """Write the study's artefacts to ``studies/<study>/`` and log them to the parent run."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(plan.out_dir / "trials.csv", index=False)
    imp = importances(study, plan)
    write_json(imp, plan.out_dir / "importances.json")
    skipped = write_plots(study, plan, imp)
    best = write_sweep(study, plan) if plan.sweep else best_of_study(study)
    trials = study.get_trials(deepcopy=False)
    summary = {"study": plan.name, "mode": plan.cfg.mode, "experiment": plan.cfg.experiment,
               "method": plan.cfg.method, "metric": plan.metric, "n_trials": plan.n_trials,
               "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
               "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
               "n_fail": sum(t.state == TrialState.FAIL for t in trials),
               "best": best, "skipped_plots": skipped, "storage": masked(plan.storage),
               "mlflow_parent_run_id": plan.parent_run_id}
    write_json(summary, plan.out_dir / "summary.json")
    if best is not None:
        print(f"[{plan.name}] best {plan.metric} = {best['value']:.4f} with {best['params']}\n"
              f"  apply with: {export_best(plan, best)}")
    else:
        print(f"[{plan.name}] no complete trial yet: nothing to export")
    log_results(plan, summary, best)
    return summary


# --- entry point ---------------------------------------------------------------------------


def run_study(params: Params, plan: Plan) -> dict[str, Any]:
    """Create or resume the study, run its missing trials with ``plan.cfg.workers`` workers, analyse.

    Raises :class:`IncompleteStudy` after the analysis when the budget is not done (a dead worker,
    failures in a row, a failed grid point): rerunning the same command runs exactly the missing
    trials.
    """
    storage = open_storage(plan.storage)
    study = open_study(plan, [0], storage)
    check_definition(study, plan)
    training_data(plan)  # a missing data set stops here, before any training
    ensure_pretrain(params, plan)
    plan.parent_run_id = parent_run(study, storage, plan)
    fail_dead_trials(study, storage)
    if plan.sweep:
        enqueue_grid(study, plan)
    budget = Budget(plan.n_trials, plan.sweep)
    to_run = budget.remaining(study)
    dead = run_workers(plan, min(plan.cfg.workers, to_run), len(study.trials)) if to_run > 0 else []
    if not dead:
        wait_for_running(study, storage, plan)
    if to_run <= 0 and budget.finished(study) >= plan.n_trials:
        print(f"[{plan.name}] the study already has its {plan.n_trials} trials: analysing only")
    summary = analyse(study, plan)
    problem = shortfall(study, plan, dead)
    if problem is not None:
        raise IncompleteStudy(problem)
    return summary


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run Optuna studies declared in params.yaml (tune.studies).")
    p.add_argument("--study", help="study name (default: every study in tune.run)")
    p.add_argument("--workers", type=positive_int, help="parallel worker processes (default: the study's workers)")
    p.add_argument("--n-trials", type=positive_int, help="COMPLETE + PRUNED trials wanted in total")
    p.add_argument("--storage", help="SQLAlchemy URL of the study storage (default: the study's storage)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0; 2 on a user error (one line); 1 when a study ended short of its budget (one
    line, after its analysis; the studies after it in tune.run are not started)."""
    try:
        return run_studies(argv)
    except IncompleteStudy as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


@main_guard
def run_studies(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    tune = load_tune(params)
    names = [args.study] if args.study else tune.run
    if not names:
        print("nothing to run: tune.run is empty (name a study with --study)")
    for name in names:
        plan = make_plan(params, tune, name, n_trials=args.n_trials, storage=args.storage, workers=args.workers)
        run_study(params, plan)


if __name__ == "__main__":
    # Run the imported module's main, so that spawned workers unpickle pipeline.tuning.study objects.
    from pipeline.tuning.study import main as tune_main

    raise SystemExit(tune_main())
