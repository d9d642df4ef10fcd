"""A trial: suggest its values, train the method from the pretrain checkpoint (never seeing a
test split), report the validation metric every epoch for pruning, return its best value."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.data.prepared import PreparedData, load_prepared
from pipeline.engine.checkpoint import TrainingInterrupted, load_checkpoint
from pipeline.engine.loop import EpochCallback, RunSpec, fit
from pipeline.engine.runs import pretrain
from pipeline.layout import LAST, PRETRAIN
from pipeline.params.experiment import ExperimentConfig, apply_values
from pipeline.params.file import Params
from pipeline.params.reference import Variant, variant_experiment
from pipeline.params.tune import SEED_PARAM, Plan
from pipeline.reference.plan import machine_kind
from pipeline.reference.sweep import ensure_prepared, machine
from pipeline.tracking import RunTracker, end_trial_run
from pipeline.tuning.budget import MACHINE_ATTR, REPEAT_ATTR, Budget, SurplusTrial
from pipeline.tuning.storage import WORKER_ATTR, this_worker

# Tests only: a worker process of this name SIGKILLs itself after its trial's first epoch.
KILL_WORKER_ENV = "PIPELINE_TUNE_TEST_KILL_WORKER"


def training_data(plan: Plan) -> PreparedData:
    """The prepared data without its test splits: a study never sees them."""
    data = load_prepared(plan.data_tree.data)
    return PreparedData({k: v for k, v in data.splits.items() if k in ("train", "meta", "val")}, data.card)


def pretrain_checkpoint(plan: Plan, seed: int) -> Path:
    return plan.data_tree.run_dir(seed, PRETRAIN) / LAST


def base_experiment(params: Params, plan: Plan) -> ExperimentConfig:
    """The experiment its pretraining and data come from: the declared one, on the plan's split."""
    base = params.experiment(plan.cfg.experiment)
    if plan.tree is None:
        return base
    return variant_experiment(base, Variant("ce"), plan.where(), data_seed=plan.exp.data.seed)


def ensure_data(params: Params, plan: Plan) -> None:
    """A budget's split (in the reference sweep's tree), prepared unless it is there; the DVC
    pipeline's data is the ``prepare`` stage's (``training_data`` says when it is missing)."""
    if plan.tree is not None:
        ensure_prepared(base_experiment(params, plan), plan.tree)


def ensure_pretrain(params: Params, plan: Plan) -> None:
    """Train the pretraining of every seed whose finished checkpoint is missing (as the
    ``pretrain`` stage does), so that all trials start from it."""
    base = base_experiment(params, plan)
    for seed in plan.seeds:
        path = pretrain_checkpoint(plan, seed)
        if path.is_file() and load_checkpoint(path)["epoch"] == base.pretrain_epochs:
            continue
        print(f"[{plan.name}] no finished pretraining at {path}: training it ({base.pretrain_epochs} epochs)")
        pretrain(base, seed, device=plan.device, track=True, tree=plan.tree)


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


def repeat_of(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """A complete trial of the study with the same values (training seed included) as ``trial``.

    TPE samples a discrete space with repeats (a 5-value grid and 8 trials repeat at least 3),
    and training is deterministic on one CPU kind, so the earlier value stands for the repeat
    instead of training the same config again: the Optuna FAQ's "How can I ignore duplicated
    samples?". A repeat of a pruned or failed trial is trained."""
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == trial.params:
            return t
    return None


def reporter(trial: optuna.Trial, first_epoch: int, last_epoch: int, metric: str) -> EpochCallback:
    """``fit``'s epoch callback: report the metric at the trial's epoch k and prune, except after
    the trial's last epoch (``last_epoch - 1``): its training is done, and pruning it would only
    throw its value away (a one-epoch trial was pruned after finishing)."""
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if os.environ.get(KILL_WORKER_ENV) == multiprocessing.current_process().name:
            os.kill(os.getpid(), signal.SIGKILL)  # tests only: a worker killed mid-trial, its MLflow run open
        step = epoch - first_epoch
        trial.report(metrics[metric], step)
        if epoch < last_epoch - 1 and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at trial epoch {step}: {metric} = {metrics[metric]:.4f}")
    return on_epoch


class Objective:
    """Optuna objective: suggest, train from the pretrain checkpoint, return the best value."""

    def __init__(self, plan: Plan, data: PreparedData, budget: Budget) -> None:
        self.plan, self.data, self.budget = plan, data, budget

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, this_worker())  # a journal storage has no heartbeat: see fail_dead_trials
        if not self.budget.admits(trial):
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise SurplusTrial(f"trial {trial.number} is past the budget of {self.budget.n_trials} trials "
                               "(another worker started the last one); not run")
        values, seed = suggest(trial, self.plan)
        trial.set_user_attr("seed", seed)
        earlier = repeat_of(trial)
        if earlier is not None:
            trial.set_user_attr(REPEAT_ATTR, earlier.number)
            print(f"[{self.plan.name}] trial {trial.number} repeats trial {earlier.number} ({values}): its value "
                  f"{earlier.value:.4f} stands, not trained again")
            return float(earlier.value)
        trial.set_user_attr(MACHINE_ATTR, machine_kind(machine()))
        with tempfile.TemporaryDirectory(prefix=f"{self.plan.name}-t{trial.number}-") as tmp:
            try:
                return self.train(trial, values, seed, Path(tmp))
            except TrainingInterrupted:  # its message names the temporary folder, gone now
                raise TrainingInterrupted(
                    f"interrupted: trial {trial.number} of {self.plan.name} is marked failed and does not count "
                    "toward the budget; rerun the same command to go on with the study (a trial is not resumed: "
                    "the next one trains from the pretraining checkpoint)") from None

    def train(self, trial: optuna.Trial, values: dict[str, Any], seed: int, out: Path) -> float:
        plan = self.plan
        tags = {"stage": "tune", "experiment": plan.cfg.experiment, "method": plan.cfg.method, "seed": str(seed),
                "optuna.study_name": plan.name, "optuna.trial_number": str(trial.number)}
        if plan.parent_run_id:
            tags["mlflow.parentRunId"] = plan.parent_run_id
        tracker = RunTracker(plan.exp.mlflow_experiment, f"{plan.name}-t{trial.number}", card=self.data.card,
                             tags=tags, log_models=False)
        state = "FAIL"
        try:
            exp = apply_values(plan.raw_experiment, values, plan.where())
            run = RunSpec(exp, self.data, plan.cfg.method, seed, out, first_epoch=exp.pretrain_epochs,
                          last_epoch=exp.total_epochs, init=pretrain_checkpoint(plan, seed), device=plan.device,
                          desc=f"{plan.name}-t{trial.number}")
            summary = fit(run, tracker=tracker, on_epoch=reporter(trial, run.first_epoch, run.last_epoch, plan.metric))
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
            end_trial_run(tracker, tags, values, state)
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
