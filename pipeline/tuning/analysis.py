"""A study's analysis in ``studies/<study>/`` and on its MLflow parent run: trials table, fANOVA
importances, Optuna's figures, the sweep table and chart, the best values and the ``dvc exp run``
line that applies them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from pipeline.evaluation.plots import pyplot
from pipeline.layout import write_json
from pipeline.params.tune import SEED_PARAM, Plan
from pipeline.tracking import log_to_run, masked
from pipeline.tuning.budget import FINISHED
from pipeline.tuning.storage import experimental_features


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

