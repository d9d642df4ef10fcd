"""The processes that run a study's trials: samplers and pruners, the study object, spawned
workers with their share of the cores, and waiting for other invocations' trials."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from pipeline.params.tune import Plan
from pipeline.tuning.budget import budget_of
from pipeline.tuning.objective import Objective, training_data
from pipeline.tuning.storage import StudyStorage, experimental_features, fail_dead_trials, grace_s, open_storage

WAIT_POLL_S = 5  # how often the main process looks whether other invocations' trials have ended


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
    """The study's pruner: none for a sweep, for ``pruner.name: none``, and when no trial epoch
    could be pruned (:func:`no_pruning_reason`)."""
    p = plan.cfg.pruner
    if plan.sweep or p.name == "none" or no_pruning_reason(plan):
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def no_pruning_reason(plan: Plan) -> str | None:
    """Why the study's median pruner could never act (None where it can, or where no pruner is
    asked for): a trial is pruned only after an epoch k with ``n_warmup_steps`` <= k <
    ``train_epochs`` - 1 (never after its last epoch, see :func:`~pipeline.tuning.objective.reporter`),
    so there must be such an epoch."""
    epochs, warmup = plan.exp.train_epochs, plan.cfg.pruner.n_warmup_steps
    if plan.sweep or plan.cfg.pruner.name == "none" or warmup < epochs - 1:
        return None
    return (f"{epochs} epoch(s) per trial and pruner.n_warmup_steps = {warmup}: no epoch before a trial's last to "
            "prune at, so no pruner")


def open_study(plan: Plan, stream: list[int], storage: StudyStorage | None = None) -> optuna.Study:
    """The study, created on first use; its objective is named after the validation metric (the
    dashboard showed "Objective 0")."""
    study = optuna.create_study(study_name=plan.name, storage=storage or open_storage(plan.storage),
                                load_if_exists=True, direction="maximize", sampler=make_sampler(plan, stream),
                                pruner=make_pruner(plan))
    if study.metric_names != [plan.metric]:
        with experimental_features():
            study.set_metric_names([plan.metric])
    return study


def worker(plan: Plan, index: int, first_trial: int, threads: int | None) -> None:
    """One worker process: run trials of the study until the budget is spent."""
    if threads is not None:
        torch.set_num_threads(threads)
    study = open_study(plan, [first_trial, index])
    budget = budget_of(plan)
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


def wait_for_running(study: optuna.Study, storage: StudyStorage, plan: Plan) -> None:
    """Wait until no trial of the study is RUNNING, failing stale ones as the heartbeat allows.

    Called once this invocation's workers have all ended normally: a RUNNING trial is then another
    invocation's (another machine on a shared storage, or a second command): it counts toward the
    budget, so the analysis waits for it rather than report a short study. A killed process's trial
    is failed here (:func:`fail_dead_trials`) and put back in the queue for the caller to run.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        print(f"[{plan.name}] waiting for trials {', '.join(str(t.number) for t in running)}, RUNNING in another "
              f"process (a killed process's trial is failed after {grace_s()} s without a heartbeat)")
    while running:
        time.sleep(WAIT_POLL_S)
        fail_dead_trials(study, storage)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
