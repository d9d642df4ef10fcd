"""What a small study shows, on in-memory Optuna studies with fake objectives (no training): no
trial pruned after its last epoch, no pruner where no epoch could be pruned, lt_smoke's trials
at different values, nothing attributed to tied trials (no importances, no surface plots) nor
where fANOVA's ranking depends on its seed (no importances), and the study definition kept out of
the user attributes the dashboard shows."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from pipeline.params.file import load_params
from pipeline.params.schema import ParamError
from pipeline.params.tune import make_plan
from pipeline.tuning import analysis
from pipeline.tuning import study as tuning_study
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


def tied_study(values: list[float]) -> optuna.Study:
    """Two varying parameters, the trials' values given (a fake objective)."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    it = iter(values)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float(LR, 0.02, 0.2, log=True)
        trial.suggest_categorical(ALPHA, [0.1, 0.5, 1.0])
        return next(it)

    study.optimize(objective, n_trials=len(values))
    return study


def plan_in(out: Path) -> Any:
    return SimpleNamespace(cfg=SimpleNamespace(sampler=SimpleNamespace(seed=0)), metric="val_acc", out_dir=out)


def test_trials_within_the_tolerance_get_no_importances_and_no_surface_plots(tmp_path):
    # the lt_smoke of the walkthrough: rounding noise between equal accuracies; an earlier contour stays no more
    (tmp_path / "contour.png").write_bytes(b"an earlier analysis's figure")
    study = tied_study([0.53, 0.53 + 1e-13, 0.53, 0.53 - 1e-13])
    imp = analysis.importances(study, plan_in(tmp_path))
    why = "all 4 complete trials within 1e-06 of each other (val_acc 0.5300): nothing to attribute"
    assert imp["not_computed"] == why and imp["importances"] == {}
    skipped = analysis.write_plots(study, plan_in(tmp_path), imp)
    assert skipped == dict.fromkeys(("slice.png", "parallel_coordinate.png", "contour.png",
                                     "param_importances.png"), why)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimization_history.png"]


def lt_smoke_study(trials: list[tuple[float, float, float]]) -> tuple[optuna.Study, Any]:
    """A study over lt_smoke's search space with the trials given as (lr, alpha, value), and lt_smoke's plan."""
    plan = make_plan(load_params(ROOT / "params.yaml"), "lt_smoke")
    study = optuna.create_study(direction="maximize")
    for lr, alpha, _ in trials:
        study.enqueue_trial({LR: lr, ALPHA: alpha})
    values = iter(value for *_, value in trials)

    def objective(trial: optuna.Trial) -> float:
        suggest(trial, plan)
        return next(values)

    study.optimize(objective, n_trials=len(trials))
    return study, plan


def test_trials_one_validation_image_apart_are_attributed(tmp_path):
    """lr decides the value, one validation image apart (alpha does not: each of its values goes with
    a lower and a higher lr): every evaluator seed ranks lr first, and the first seed's importances stand."""
    study, _ = lt_smoke_study([(0.03, 0.1, 0.53), (0.05, 0.5, 0.53), (0.1, 0.1, 0.535), (0.15, 0.5, 0.54)])
    imp = analysis.importances(study, plan_in(tmp_path))
    assert imp["not_computed"] is None and list(imp["importances"]) == [LR, ALPHA]  # most important first
    assert imp["importances"] == analysis.fanova(study, [LR, ALPHA], seed=0)
    assert (imp["seed"], imp["stability_seeds"]) == (0, analysis.STABILITY_SEEDS)
    assert analysis.write_plots(study, plan_in(tmp_path), imp) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["optimization_history.png", "slice.png", "parallel_coordinate.png", "contour.png", "param_importances.png"])


def test_a_ranking_that_changes_with_the_evaluator_seed_is_not_reported(tmp_path):
    """Four lt_smoke trials of a real study (rounded): whether lr or alpha comes first depends on
    the seed of fANOVA's forest. No importances, the reason in one line; the contour still shows
    the two parameters, which need no ranking."""
    study, plan = lt_smoke_study([(0.083, 0.5, 0.56), (0.168, 1.0, 0.585), (0.092, 0.1, 0.555), (0.021, 0.25, 0.485)])
    imp = analysis.importances(study, plan)
    first = plan.cfg.sampler.seed
    assert imp["importances"] == {} and imp["stability_seeds"] == analysis.STABILITY_SEEDS
    name = f"({re.escape(LR)}|{re.escape(ALPHA)})"
    found = re.fullmatch(rf"the fANOVA ranking changes with its random seed \(most important over seeds "
                         rf"{first}-{first + analysis.STABILITY_SEEDS - 1}: {name} (\d), {name} (\d)\): "
                         rf"the 4 complete trials single out no most important parameter", imp["not_computed"])
    assert found, imp["not_computed"]
    assert {found[1], found[3]} == {LR, ALPHA} and int(found[2]) + int(found[4]) == analysis.STABILITY_SEEDS
    assert analysis.write_plots(study, plan_in(tmp_path), imp) == {"param_importances.png": imp["not_computed"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["optimization_history.png", "slice.png", "parallel_coordinate.png", "contour.png"])


def definition_plan(definition: dict[str, Any]) -> Any:
    return SimpleNamespace(name="s", storage="sqlite:///x.db", definition=lambda: definition)


def test_the_definition_is_stored_out_of_the_user_attrs_and_still_checked():
    study = optuna.create_study(direction="maximize")
    tuning_study.check_definition(study, definition_plan({"settings": {"optim.momentum": 0.9}}))
    assert tuning_study.DEFINITION_ATTR not in study.user_attrs  # the dashboard shows user attrs
    tuning_study.check_definition(study, definition_plan({"settings": {"optim.momentum": 0.9}}))
    with pytest.raises(ParamError, match=r"created with settings.optim.momentum = 0.9, now 0.5"):
        tuning_study.check_definition(study, definition_plan({"settings": {"optim.momentum": 0.5}}))


def test_a_study_stored_with_the_definition_in_its_user_attrs_is_still_checked():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(tuning_study.DEFINITION_ATTR, {"settings": {"optim.momentum": 0.9}})
    with pytest.raises(ParamError, match=r"created with settings.optim.momentum = 0.9, now 0.5"):
        tuning_study.check_definition(study, definition_plan({"settings": {"optim.momentum": 0.5}}))
