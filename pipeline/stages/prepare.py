"""``prepare`` stage: build an experiment's biased data set and its data card.

    python -m pipeline.stages.prepare --experiment lt
"""

from __future__ import annotations

import time

from pipeline.params.schema import flatten, to_dict
from pipeline.data.prepared import save_prepared
from pipeline.stages.common import data_dir, load, main_guard, parser


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, seed=False).parse_args(argv)
    _, exp = load(args)
    from pipeline.data.build import prepare_dataset

    if not args.no_mlflow:
        from pipeline import tracking

        with tracking.store_errors():  # a broken store stops here, before the data is built
            tracking.setup(exp.mlflow_experiment)
    t0 = time.perf_counter()
    data = prepare_dataset(exp.data)
    out = data_dir(args.experiment)
    save_prepared(data, out)
    seconds = time.perf_counter() - t0
    print(f"prepared {out}: " + ", ".join(f"{k} {len(s)}" for k, s in data.splits.items()) + f" ({seconds:.1f}s)")
    if not args.no_mlflow:
        import mlflow

        with tracking.store_errors(), tracking.start_run(exp.mlflow_experiment, f"{args.experiment}-prepare",
                                tags={"stage": "prepare", "experiment": args.experiment}):
            tracking.log_params(flatten({"data": to_dict(exp.data)}))
            mlflow.log_metrics({f"n_{k}": len(s) for k, s in data.splits.items()} | {"prepare_seconds": seconds})
            mlflow.log_dict(data.card, "data_card.json")


if __name__ == "__main__":
    raise SystemExit(main())
