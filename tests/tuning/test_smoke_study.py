"""What a small study shows, on in-memory Optuna studies with fake objectives (no training): no
trial pruned after its last epoch, no pruner where no epoch could be pruned, lt_smoke's trials
at different values."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from pipeline.params.file import load_params
from pipeline.params.tune import make_plan
from pipeline.tuning.objective import reporter, suggest
from pipeline.tuning.workers import make_pruner, make_sampler, no_pruning_reason

ROOT = Path(__file__).resolve().parents[2]
LR, ALPHA = "optim.lr", "methods.meta_iada.alpha"


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_trial_is_pruned_after_an_epoch_but_never_after_its_last():
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    early, last = study.ask(), study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned at trial epoch 0"):
        reporter(early, 16, 18, "val_acc")(16, {"val_acc": 0.5})  # epoch 16 of [16, 18): one more follows
    reporter(last, 16, 18, "val_acc")(17, {"val_acc": 0.6})  # its last epoch: the value stands
    assert last.should_prune()  # the pruner would have pruned it
    study.tell(last, 0.6)
    assert study.best_value == 0.6


def pruning_plan(train_epochs: int, warmup: int, name: str = "median", sweep: bool = False) -> Any:
    pruner = SimpleNamespace(name=name, n_startup_trials=2, n_warmup_steps=warmup)
    return SimpleNamespace(cfg=SimpleNamespace(pruner=pruner), exp=SimpleNamespace(train_epochs=train_epochs),
                           sweep=sweep)


@pytest.mark.parametrize(("train_epochs", "warmup", "pruned"), [(1, 0, False), (2, 0, True), (3, 1, True),
                                                                 (3, 2, False), (4, 9, False)])
def test_no_pruner_where_no_epoch_before_the_last_is_past_the_warmup(train_epochs, warmup, pruned):
    plan = pruning_plan(train_epochs, warmup)
    assert isinstance(make_pruner(plan), optuna.pruners.MedianPruner) is pruned
    assert (no_pruning_reason(plan) is None) is pruned
    if not pruned:
        assert no_pruning_reason(plan).startswith(f"{train_epochs} epoch(s) per trial and pruner.n_warmup_steps")


def test_no_reason_is_given_where_no_pruner_was_asked_for():
    assert no_pruning_reason(pruning_plan(1, 0, name="none")) is None
    assert no_pruning_reason(pruning_plan(1, 0, sweep=True)) is None


def test_lt_smoke_trials_take_different_values_and_are_not_pruned():
    """The four trials of a new lt_smoke study, as its one worker draws them (sampler stream
    [trials in the study at the start, worker index] = [0, 0]): four alphas, and lrs over most
    of the lr range's log width; one-epoch trials get no pruner."""
    plan = make_plan(load_params(ROOT / "params.yaml"), "lt_smoke")
    assert plan.space.keys() == {LR, ALPHA} and plan.n_trials == 4 and plan.exp.train_epochs == 1
    assert isinstance(make_pruner(plan), optuna.pruners.NopPruner)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(plan, [0, 0]))
    study.optimize(lambda trial: float(len(suggest(trial, plan)[0])), n_trials=plan.n_trials)
    alphas = [t.params[ALPHA] for t in study.trials]
    lrs = [t.params[LR] for t in study.trials]
    assert len(set(alphas)) == 4
    space = plan.space[LR]
    assert math.log(max(lrs) / min(lrs)) / math.log(space.high / space.low) > 0.8
