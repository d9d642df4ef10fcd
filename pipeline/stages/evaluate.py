"""``evaluate`` stage: test metrics of one trained run (final epoch and validation-selected).

    python -m pipeline.stages.evaluate --experiment lt --method meta_iada --seed 0

Writes ``metrics/<experiment>/<method>-s<seed>.json`` (headline metrics, what ``dvc metrics
show`` prints), ``metrics/<experiment>/detail/<method>-s<seed>.json`` (every split, per class and
per group; without the MLflow run id and the epochs' times, which MLflow holds, so that a rerun
writes it byte for byte) and the plot data under ``plots/<experiment>/<method>-s<seed>/``; logs
them into the training run in MLflow.
"""

from __future__ import annotations

from pipeline.data.prepared import load_prepared
from pipeline.evaluation.evaluate import evaluate_run, metrics_summary, reproducible
from pipeline.layout import data_dir, metrics_file, plots_dir, run_dir, run_label, run_name, write_json
from pipeline.stages.common import load, main_guard, parser


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, method=True).parse_args(argv)
    params, exp = load(args)
    data = load_prepared(data_dir(exp.name))
    plots = plots_dir(exp.name, args.method, args.seed)
    result = evaluate_run(exp, data, run_dir(exp.name, args.seed, args.method), plots, params.run.device)
    write_json(reproducible(result), metrics_file(exp.name, args.method, args.seed, detail=True))
    write_json(metrics_summary(result), metrics_file(exp.name, args.method, args.seed))
    h = result["selected"]["headline"]
    print(f"{exp.name} {run_label(args.method, args.seed)}: selected (epoch {result['selected']['epoch']}) "
          + ", ".join(f"{k} {v:.4f}" for k, v in h.items()))
    if not args.no_mlflow:
        from pipeline import tracking

        tracking.log_evaluation(result, plots, exp.mlflow_experiment, run_name(exp.name, args.method, args.seed),
                                card=data.card, data_dir=data_dir(exp.name))


if __name__ == "__main__":
    raise SystemExit(main())
