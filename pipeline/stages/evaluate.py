"""``evaluate`` stage: test metrics of one trained run (final epoch and validation-selected).

    python -m pipeline.stages.evaluate --experiment lt --method meta_iada --seed 0

Writes ``metrics/<experiment>/<method>-s<seed>.json`` (headline metrics, what ``dvc metrics
show`` prints), ``metrics/<experiment>/detail/<method>-s<seed>.json`` (every split, per class and
per group) and the plot data under
``plots/<experiment>/<method>-s<seed>/``; logs both into the training run in MLflow.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from pipeline.params.schema import flatten
from pipeline.data.prepared import load_prepared
from pipeline.evaluation.evaluate import evaluate_run, metrics_summary
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
    write_json(result, METRICS_DIR / args.experiment / "detail" / f"{name}.json")
    write_json(metrics_summary(result), METRICS_DIR / args.experiment / f"{name}.json")
    h = result["selected"]["headline"]
    print(f"{args.experiment} {name}: selected (epoch {result['selected']['epoch']}) "
          + ", ".join(f"{k} {v:.4f}" for k, v in h.items()))
    if not args.no_mlflow:
        from pipeline import tracking

        with tracking.store_errors():
            log_to_run(result, plots, exp.mlflow_experiment, f"{args.experiment}-{name}")


def log_to_run(result: dict, plots: Path, experiment: str, run_name: str) -> None:
    """Add the test metrics and plots to the MLflow run that trained the weights, through the
    client: the finished run is not reopened, so its status and duration stay the training's.
    If the store no longer holds that run (a reset store, checkpoints from another machine),
    log to a new run ``<run_name>-evaluation`` tagged with the missing id, and say so."""
    import time

    import mlflow
    from mlflow.entities import Metric

    from pipeline import tracking

    run_id = result.get("run_id")
    client = mlflow.MlflowClient(tracking.tracking_uri())
    if not (run_id and tracking.run_exists(run_id)):
        print(f"note: MLflow run {run_id} of these weights is not in {tracking.masked(tracking.tracking_uri())}; "
              f"logging the evaluation to a new run {run_name}-evaluation", file=sys.stderr)
        exp_id = tracking.setup(experiment)
        missing = run_id
        run_id = client.create_run(exp_id, run_name=f"{run_name}-evaluation", tags=tracking.run_tags(
            {"stage": "evaluate", "training_run_id": str(missing)})).info.run_id
        client.set_terminated(run_id)
    flat = flatten({k: result[k] for k in ("final", "selected", "epsilon") if k in result})
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in flat.items() if isinstance(v, (int, float))
               and math.isfinite(v) and "per_class" not in k and "per_group" not in k]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])
    client.log_artifacts(run_id, str(plots), artifact_path="plots")
    client.log_dict(run_id, json_safe(result), "metrics.json")


if __name__ == "__main__":
    raise SystemExit(main())
