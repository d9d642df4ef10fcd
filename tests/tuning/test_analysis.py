"""A study's figures: no warnings for what is understood (a parameter with one value), short axis
labels, the contour limited to the most important parameters (none without importances), the
importance evaluator named."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from pipeline.tuning import analysis

ALPHA, LR, WD, INTERVAL = ("methods.meta_iada.alpha", "optim.lr", "optim.weight_decay",
                           "methods.meta_iada.meta_interval")


def study_with(constant_alpha: bool, n_trials: int = 10, values: list[float] | None = None) -> optuna.Study:
    """Four parameters; alpha takes one value in every trial when ``constant_alpha``; lr decides the
    value, or the trials' values are ``values`` (no parameter decides them)."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    given = iter(values or [])

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical(ALPHA, [0.5] if constant_alpha else [0.1, 0.5, 1.0])
        trial.suggest_int(INTERVAL, 1, 4)
        trial.suggest_float(WD, 1e-4, 1e-3, log=True)
        lr = trial.suggest_float(LR, 0.02, 0.2, log=True)
        return next(given) if values else lr

    study.optimize(objective, n_trials=len(values) if values else n_trials)
    return study


def plan(out: Path) -> Any:
    return SimpleNamespace(cfg=SimpleNamespace(sampler=SimpleNamespace(seed=0)), metric="val_acc", out_dir=out)


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """What each Optuna plot function was called with (the study's parameter names and ``params``)."""
    from optuna.visualization import matplotlib as vis

    calls: dict[str, dict[str, Any]] = {}
    for name in ("plot_slice", "plot_contour", "plot_parallel_coordinate"):
        real = getattr(vis, name)

        def spy(study: optuna.Study, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] = {"names": sorted({k for t in study.trials for k in t.params}), "params": kwargs.get("params")}
            return _real(study, *args, **kwargs)

        monkeypatch.setattr(vis, name, spy)
    return calls


def test_a_parameter_with_one_value_is_left_out_without_a_warning(tmp_path, spied, caplog):
    study = study_with(constant_alpha=True)
    imp = analysis.importances(study, plan(tmp_path))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="optuna"):
        warnings.simplefilter("always")
        caplog.clear()
        notes = analysis.write_plots(study, plan(tmp_path), imp)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records] == []  # neither warnings nor "A new study created in memory"
    assert notes["slice.png"] == "left out, one value in every complete trial: alpha = 0.5"
    assert spied["plot_slice"]["params"] == spied["plot_parallel_coordinate"]["params"] == [
        "meta_interval", "optim.lr", "optim.weight_decay"]
    assert "alpha" not in spied["plot_contour"]["params"]
    for png in ("slice", "contour", "parallel_coordinate", "param_importances", "optimization_history"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000, png


def test_labels_are_short_and_the_contour_shows_the_three_most_important(tmp_path, spied):
    study = study_with(constant_alpha=False, n_trials=12)
    imp = analysis.importances(study, plan(tmp_path))
    notes = analysis.write_plots(study, plan(tmp_path), imp)
    short = {ALPHA: "alpha", INTERVAL: "meta_interval", LR: "optim.lr", WD: "optim.weight_decay"}
    assert spied["plot_slice"]["names"] == sorted(short.values())
    top3 = [short[k] for k in sorted(imp["importances"], key=lambda k: -imp["importances"][k])[:3]]
    assert imp["importances"][LR] == max(imp["importances"].values())  # the value is lr: sanity of the ranking
    assert spied["plot_contour"]["params"] == top3
    assert notes["contour.png"] == f"the 3 most important of 4 parameters: {', '.join(top3)}"


def test_without_importances_no_contour_is_drawn_of_more_than_three_parameters(tmp_path, spied):
    """Five trials whose values no parameter decides: fANOVA's first parameter changes with its seed,
    so there are no importances to pick the contour's three of the four parameters by."""
    study = study_with(constant_alpha=False, values=[0.5, 0.6, 0.55, 0.52, 0.58])
    imp = analysis.importances(study, plan(tmp_path))
    assert imp["importances"] == {}
    assert imp["not_computed"].startswith(
        "the fANOVA ranking changes with its random seed (most important over seeds 0-4: ")
    notes = analysis.write_plots(study, plan(tmp_path), imp)
    assert notes["contour.png"] == f"no importances to choose 3 of its 4 parameters by: {imp['not_computed']}"
    assert notes["param_importances.png"] == imp["not_computed"]
    assert "plot_contour" not in spied and not (tmp_path / "contour.png").exists()
    assert spied["plot_slice"]["params"] == ["alpha", "meta_interval", "optim.lr", "optim.weight_decay"]


def test_the_importance_figure_names_its_evaluator(tmp_path):
    study = study_with(constant_alpha=False)
    imp = analysis.importances(study, plan(tmp_path))
    fig = analysis.plot_importances(imp, analysis.short_names(list(imp["importances"])), "val_acc")
    assert "FanovaImportanceEvaluator, seed 0" in fig.axes[0].get_title()


def test_short_names_keep_full_keys_when_they_would_collide():
    assert analysis.short_names(["methods.a.lr", "optim.lr"]) == {"methods.a.lr": "lr", "optim.lr": "optim.lr"}
    assert analysis.short_names(["methods.a.lr", "methods.b.lr"]) == {"methods.a.lr": "methods.a.lr",
                                                                      "methods.b.lr": "methods.b.lr"}


def test_log_axes_get_a_few_plain_labels():
    """Labels at 1, 2, 5 x 10^k within 1.5 decades, at 10^k over more; none on minor ticks."""
    from pipeline.evaluation.plots import pyplot

    fig, (narrow, wide) = pyplot().subplots(1, 2)
    for ax, high in ((narrow, 1e-3), (wide, 1e-2)):
        ax.set_xscale("log")
        ax.set_xlim(1e-4, high)
    analysis.tidy(fig)
    fig.canvas.draw()

    def labels(ax: Any, minor: bool = False) -> list[str]:
        low, high = ax.get_xlim()
        return [t.get_text() for t in ax.get_xticklabels(minor=minor) if low <= t.get_position()[0] <= high * 1.0001]

    assert labels(narrow) == ["0.0001", "0.0002", "0.0005", "0.001"]
    assert labels(wide) == ["0.0001", "0.001", "0.01"]
    assert [t for t in labels(narrow, minor=True) + labels(wide, minor=True) if t] == []
