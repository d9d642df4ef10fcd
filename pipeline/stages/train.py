"""``train`` stage: continue from the pretrain checkpoint with one method.

    python -m pipeline.stages.train --experiment lt --method meta_iada --seed 0

Every method of one experiment and seed starts from the same checkpoint and seed. Writes
``models/<experiment>/s<seed>/<method>/``; rerunning an interrupted run resumes it.
"""

from __future__ import annotations

from pipeline.stages.common import load, main_guard, parser, run_dir
from pipeline.stages.training import train_stage
from pipeline.engine.loop import LAST


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, method=True).parse_args(argv)
    params, exp = load(args)
    train_stage(params, exp, args.experiment, args.method, args.seed,
                run_dir(args.experiment, args.seed, args.method),
                first_epoch=exp.pretrain_epochs, last_epoch=exp.total_epochs,
                init=run_dir(args.experiment, args.seed, "pretrain") / LAST, stage="train",
                track=not args.no_mlflow)


if __name__ == "__main__":
    raise SystemExit(main())
