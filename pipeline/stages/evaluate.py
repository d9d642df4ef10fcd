"""``evaluate`` stage: test metrics of one trained run (final epoch and validation-selected).

    python -m pipeline.stages.evaluate --experiment lt --method meta_iada --seed 0

Writes ``metrics/<experiment>/<method>-s<seed>.json`` and the plot data under
``plots/<experiment>/<method>-s<seed>/``; logs both into the training run in MLflow.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from pipeline.config import flatten
from pipeline.data.prepared import load_prepared
from pipeline.evaluate import evaluate_run
from pipeline.stages.common import (METRICS_DIR, PLOTS_DIR, data_dir, json_safe, load, main_guard, parser, run_dir,
                                    write_json)


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, method=True).parse_args(argv)
    params, exp = load(args)
    data = load_prepared(data_dir(args.experiment))
    name = f"{args.method}-s{args.seed}"
    plots = PLOTS_DIR / args.experiment / name
    result = evaluate_run(exp, data, run_dir(args.experiment, args.seed, args.method), plots, params.run.device)
    out = METRICS_DIR / args.experiment / f"{name}.json"
    write_json(result, out)
    h = result["selected"]["headline"]
    print(f"{args.experiment} {name}: selected (epoch {result['selected']['epoch']}) "
          + ", ".join(f"{k} {v:.4f}" for k, v in h.items()))
    if not args.no_mlflow:
        from pipeline import tracking

        with tracking.store_errors():
            log_to_run(result, plots, exp.mlflow_experiment, f"{args.experiment}-{name}")


def log_to_run(result: dict, plots: Path, experiment: str, run_name: str) -> None:
    """Add the test metrics and plots to the MLflow run that trained the weights; if the store
    no longer holds that run (a reset store, checkpoints from another machine), to a new run
    ``<run_name>-evaluation`` tagged with the missing id, and say so in one line."""
    import mlflow

    from pipeline import tracking

    run_id = result.get("run_id")
    if run_id and tracking.run_exists(run_id):
        context = mlflow.start_run(run_id=run_id)
    else:
        print(f"note: MLflow run {run_id} of these weights is not in {tracking.masked(tracking.tracking_uri())}; "
              f"logging the evaluation to a new run {run_name}-evaluation", file=sys.stderr)
        tracking.setup(experiment)
        context = mlflow.start_run(run_name=f"{run_name}-evaluation",
                                   tags=tracking.run_tags({"stage": "evaluate", "training_run_id": str(run_id)}))
    with context:
        flat = flatten({k: result[k] for k in ("final", "selected", "epsilon") if k in result})
        mlflow.log_metrics({k: float(v) for k, v in flat.items() if isinstance(v, (int, float))
                            and math.isfinite(v) and "per_class" not in k and "per_group" not in k})
        mlflow.log_artifacts(str(plots), artifact_path="plots")
        mlflow.log_dict(json_safe(result), "metrics.json")


if __name__ == "__main__":
    raise SystemExit(main())
