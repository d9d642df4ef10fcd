"""A study's analysis in ``studies/<study>/`` and on its MLflow parent run: trials table, fANOVA
importances, Optuna's figures, the sweep table and chart, the best values and the ``dvc exp run``
line that applies them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from pipeline.evaluation.plots import pyplot
from pipeline.layout import write_json
from pipeline.params.file import set_option
from pipeline.params.tune import SEED_PARAM, Plan
from pipeline.tracking import log_to_run
from pipeline.tuning.budget import FINISHED
from pipeline.tuning.storage import experimental_features, masked


CONTOUR_PARAMS = 3  # the contour plot shows the pairs of this many parameters (the most important)
# Complete trials whose values span less than this hold nothing to attribute: the differences are
# floating-point rounding (a contour of two tied trials drew a colour bar of 1e-13 + 0.53), far below
# one validation sample of an accuracy (1 / n_val >= 1e-4).
VALUE_TOLERANCE = 1e-6
# fANOVA fits a seeded random forest; on a few trials which parameter comes first can depend on that
# seed alone (an artefact, not a finding). Importances are reported only when this many consecutive
# evaluator seeds, from the sampler's seed on, rank the same parameter first.
STABILITY_SEEDS = 5


def constant_params(trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """The parameters with one value in every trial (name -> value)."""
    values: dict[str, set[str]] = {}
    for t in trials:
        for k, v in t.params.items():
            values.setdefault(k, set()).add(repr(v))
    return {k: next(t.params[k] for t in trials if k in t.params) for k, v in values.items() if len(v) == 1}


def flat_values(complete: list[optuna.trial.FrozenTrial], metric: str) -> str | None:
    """Why two or more complete trials hold nothing to attribute (their values span less than
    ``VALUE_TOLERANCE``), or None."""
    values = [t.value for t in complete]
    if len(values) < 2 or max(values) - min(values) >= VALUE_TOLERANCE:
        return None
    return (f"all {len(values)} complete trials within {VALUE_TOLERANCE:g} of each other ({metric} "
            f"{min(values):.4f}): nothing to attribute")


def evaluator_name(imp: Mapping[str, Any]) -> str:
    return f"{imp['evaluator']}, seed {imp['seed']}"


def fanova(study: optuna.Study, params: list[str], seed: int) -> dict[str, float]:
    """fANOVA importances of ``params`` (most important first) with the evaluator's forest seeded ``seed``."""
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                                             params=params).items()}


def unstable_ranking(by_seed: dict[int, dict[str, float]], n_complete: int) -> str | None:
    """Why importances computed under several evaluator seeds (seed -> importances) attribute
    nothing: the most important parameter is not the same under every seed; or None."""
    tops = Counter(max(imp, key=imp.__getitem__) for imp in by_seed.values())
    if len(tops) == 1:
        return None
    return ("the fANOVA ranking changes with its random seed (most important over seeds "
            f"{min(by_seed)}-{max(by_seed)}: " + ", ".join(f"{k} {n}" for k, n in tops.most_common())
            + f"): the {n_complete} complete trials single out no most important parameter")


def importances(study: optuna.Study, plan: Plan) -> dict[str, Any]:
    """fANOVA importances of the complete trials' values, under the sampler's seed, where
    ``STABILITY_SEEDS`` evaluator seeds agree on the most important parameter; ``not_computed``
    says why there are none."""
    seed = plan.cfg.sampler.seed
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict[str, Any] = {"evaluator": optuna.importance.FanovaImportanceEvaluator.__name__, "seed": seed,
                           "stability_seeds": STABILITY_SEEDS, "target": f"{plan.metric}, best over the trial's epochs",
                           "n_complete_trials": len(complete), "importances": {}, "notes": [], "not_computed": None}
    if len(complete) < 2:
        out["not_computed"] = f"fANOVA needs at least 2 complete trials, the study has {len(complete)}"
        return out
    if flat := flat_values(complete, plan.metric):
        out["not_computed"] = flat
        return out
    constant = constant_params(complete)
    chosen = [k for k in complete[0].params if k not in constant]
    if not chosen:
        out["not_computed"] = "no parameter takes two values across the complete trials"
        return out
    if constant:
        out["notes"].append("one value in every complete trial, so not measured: " + ", ".join(sorted(constant)))
    by_seed = {s: fanova(study, chosen, s) for s in range(seed, seed + STABILITY_SEEDS)}
    if unstable := unstable_ranking(by_seed, len(complete)):
        out["not_computed"] = unstable
    else:
        out["importances"] = by_seed[seed]
    return out


def short_names(params: list[str]) -> dict[str, str]:
    """Axis labels: each dotted key without its ``methods.<method>.`` prefix, where that stays unique."""
    short = {k: k.split(".", 2)[2] if k.startswith("methods.") and k.count(".") >= 2 else k for k in params}
    return short if len(set(short.values())) == len(short) else {k: k for k in params}


def display_study(study: optuna.Study, names: Mapping[str, str]) -> optuna.Study:
    """An in-memory copy of the finished trials with the parameters renamed (``names``) for plots."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory ..."
    try:
        copy = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials([optuna.trial.create_trial(
        state=t.state, value=t.value, params={names[k]: v for k, v in t.params.items()},
        distributions={names[k]: d for k, d in t.distributions.items()}, intermediate_values=t.intermediate_values)
        for t in study.get_trials(deepcopy=False, states=FINISHED)])
    return copy


def tidy(fig: Any) -> None:
    """Log axes labelled at 10^k (1, 2 and 5 x 10^k when they span 1.5 decades or less) as plain
    numbers, not every minor tick in scientific notation ('2x10^-4 3x10^-4 ...' overlapped; an
    axis within one decade had no label at all)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                low, high = sorted(axis.get_view_interval())
                decades = np.log10(high / low) if low > 0 else 2.0
                axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 1.5 else (1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())


def plot_importances(imp: Mapping[str, Any], names: Mapping[str, str], metric: str) -> Any:
    """Horizontal bars of the importances, the evaluator named in the title."""
    plt = pyplot()
    ranked = sorted(imp["importances"].items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(ranked) + 1.4))
    ax.barh([names[k] for k, _ in ranked], [v for _, v in ranked], color="tab:blue")
    for i, (_, v) in enumerate(ranked):
        ax.text(v, i, f" {v:.2f}", va="center")
    ax.set(xlim=(0, 1.12), xlabel=f"importance for {metric} (sums to 1)",
           title=f"Parameter importances ({evaluator_name(imp)}), {imp['n_complete_trials']} complete trials")
    return fig


def write_plots(study: optuna.Study, plan: Plan, imp: Mapping[str, Any]) -> dict[str, str]:
    """The PNGs (Optuna's ``optuna.visualization.matplotlib`` and the importance bars), with the
    parameters under short names; returns {file: why it was skipped or what it leaves out}.

    A parameter with one value in every complete trial is left out of the slice, contour and
    parallel coordinate plots (Optuna warned once per contour pair, and matplotlib about a
    singular axis); the contour shows only the ``CONTOUR_PARAMS`` most important parameters
    (5 gave 25 unreadable panels), all of them where there are no more, and none where more vary
    but no importances say which to show. Complete trials with values within ``VALUE_TOLERANCE``
    get no slice, contour or parallel coordinate plot (they would draw rounding noise), only the history."""
    plt = pyplot()
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = short_names(sorted({k for t in study.get_trials(deepcopy=False, states=FINISHED) for k in t.params}))
    shown = display_study(study, names)
    constant = constant_params(complete)
    varying = [names[k] for k in sorted(names) if k not in constant and any(k in t.params for t in complete)]
    ranked = [names[k] for k in sorted(imp["importances"], key=lambda k: -imp["importances"][k])] or varying
    notes = {}
    if not varying:
        why = f"no parameter takes two values across the {len(complete)} complete trial(s)"
        notes.update({"slice.png": why, "parallel_coordinate.png": why})
    elif constant:
        why = "left out, one value in every complete trial: " + ", ".join(f"{names[k]} = {v!r}" for k, v in constant.items())
        notes.update({"slice.png": why, "parallel_coordinate.png": why})
    makers: dict[str, Callable[[], Any]] = {
        "optimization_history.png": lambda: figure_of(vis.plot_optimization_history(shown, target_name=plan.metric)),
        "slice.png": lambda: figure_of(vis.plot_slice(shown, params=varying, target_name=plan.metric)),
        "parallel_coordinate.png": lambda: figure_of(
            vis.plot_parallel_coordinate(shown, params=varying, target_name=plan.metric)),
        "param_importances.png": lambda: plot_importances(imp, names, plan.metric),
        "contour.png": lambda: figure_of(
            vis.plot_contour(shown, params=ranked[:CONTOUR_PARAMS], target_name=plan.metric)),
    }
    skipped = {}
    if imp["not_computed"]:
        skipped["param_importances.png"] = imp["not_computed"]
    if not varying:
        skipped["slice.png"] = skipped["parallel_coordinate.png"] = notes["slice.png"]
    if len(varying) < 2:
        skipped["contour.png"] = f"a contour plot needs 2 parameters with two values or more, the study has {len(varying)}"
    elif len(varying) > CONTOUR_PARAMS and imp["not_computed"]:
        skipped["contour.png"] = (f"no importances to choose {CONTOUR_PARAMS} of its {len(varying)} parameters by: "
                                  + imp["not_computed"])
    elif len(varying) > CONTOUR_PARAMS:
        notes["contour.png"] = (f"the {CONTOUR_PARAMS} most important of {len(varying)} parameters: "
                                + ", ".join(ranked[:CONTOUR_PARAMS]))
    if flat := flat_values(complete, plan.metric):  # a flat surface: the plots would draw rounding noise
        skipped.update(dict.fromkeys(("slice.png", "parallel_coordinate.png", "contour.png"), flat))
    for name, make in makers.items():
        if name in skipped:
            (plan.out_dir / name).unlink(missing_ok=True)  # an earlier analysis's figure would be logged as this one's
            continue
        with experimental_features():
            fig = make()
        size = {"slice.png": (3.2 * len(varying) + 1.5, 3.6), "contour.png": (3.4 * min(len(varying), CONTOUR_PARAMS) + 1.5,
                3.2 * min(len(varying), CONTOUR_PARAMS) if len(varying) > 2 else 4.5),
                "parallel_coordinate.png": (1.8 * len(varying) + 4, 4.8)}.get(name)
        if size:
            fig.set_size_inches(*size)
        tidy(fig)
        fig.savefig(plan.out_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
    return {**notes, **skipped}


def figure_of(axes: Any) -> Any:
    """The figure of what an optuna.visualization.matplotlib function returns (Axes or an array)."""
    return np.asarray(axes).flat[0].figure


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
    sets = " ".join(f"-S '{set_option(plan.written, f'experiments.{plan.cfg.experiment}.{k}', yaml_scalar(v))}'"
                    for k, v in best["params"].items())
    return f"dvc exp run {sets}"


def analyse(study: optuna.Study, plan: Plan) -> dict[str, Any]:
    """Write the study's artefacts to ``studies/<study>/`` and log them to the parent run."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(plan.out_dir / "trials.csv", index=False)
    imp = importances(study, plan)
    write_json(imp, plan.out_dir / "importances.json")
    skipped = write_plots(study, plan, imp)
    if imp["importances"]:
        ranked = sorted(imp["importances"].items(), key=lambda kv: -kv[1])
        print(f"[{plan.name}] importances ({evaluator_name(imp)}, {imp['n_complete_trials']} complete trials): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ranked))
    for png, why in skipped.items():
        print(f"[{plan.name}] {png}: {why}")
    best = write_sweep(study, plan) if plan.sweep else best_of_study(study)
    trials = study.get_trials(deepcopy=False)
    summary = {"study": plan.name, "mode": plan.cfg.mode, "experiment": plan.cfg.experiment,
               "method": plan.cfg.method, "metric": plan.metric, "n_trials": plan.n_trials,
               "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
               "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
               "n_fail": sum(t.state == TrialState.FAIL for t in trials),
               "best": best, "importances": imp["not_computed"] or f"computed ({evaluator_name(imp)})",
               "skipped_plots": skipped, "storage": masked(plan.storage),
               "mlflow_parent_run_id": plan.parent_run_id}
    write_json(summary, plan.out_dir / "summary.json")
    if best is not None:
        print(f"[{plan.name}] best {plan.metric} = {best['value']:.4f} with {best['params']}\n"
              f"  apply with: {export_best(plan, best)}")
    else:
        print(f"[{plan.name}] no complete trial yet: nothing to export")
    log_results(plan, summary, best)
    return summary


def log_results(plan: Plan, summary: Mapping[str, Any], best: Mapping[str, Any] | None) -> None:
    """Trial counts, best value and parameters (metrics; tags for non-numbers) and the analysis
    artefacts, on the study's parent run."""
    metrics = {k: float(summary[k]) for k in ("n_complete", "n_pruned", "n_fail", "n_trials")}
    tags = {}
    if best is not None:
        metrics[f"best_{plan.metric}"] = best["value"]
        for key, value in best["params"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"best.{key}"] = float(value)
            else:
                tags[f"best.{key}"] = str(value)
    log_to_run(plan.exp.mlflow_experiment, f"study-{plan.name}", plan.parent_run_id, metrics=metrics, tags=tags,
               artifacts=plan.out_dir, artifact_path="study")

