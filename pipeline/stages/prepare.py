"""``prepare`` stage: build an experiment's biased data set and its data card.

    python -m pipeline.stages.prepare --experiment lt
"""

from __future__ import annotations

import time

from pipeline.data.build import prepare_dataset
from pipeline.data.prepared import save_prepared
from pipeline.layout import data_dir
from pipeline.params.schema import to_dict
from pipeline.stages.common import load, main_guard, parser


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, seed=False).parse_args(argv)
    _, exp = load(args)
    if not args.no_mlflow:
        from pipeline import tracking

        tracking.check_store(exp.mlflow_experiment)  # a broken store stops here, before the data is built
    t0 = time.perf_counter()
    data = prepare_dataset(exp.data)
    out = data_dir(exp.name)
    save_prepared(data, out)
    seconds = time.perf_counter() - t0
    print(f"prepared {out}: " + ", ".join(f"{k} {len(s)}" for k, s in data.splits.items()) + f" ({seconds:.1f}s)")
    if not args.no_mlflow:
        tracking.log_prepared(exp.mlflow_experiment, exp.name, data_params=to_dict(exp.data),
                              counts={k: len(s) for k, s in data.splits.items()}, seconds=seconds, card=data.card)


if __name__ == "__main__":
    raise SystemExit(main())
