"""``pretrain`` stage: cross-entropy training for ``pretrain_epochs`` epochs (method.md §6).

    python -m pipeline.stages.pretrain --experiment lt --seed 0

Writes ``models/<experiment>/s<seed>/pretrain/``; rerunning an interrupted run resumes it.
"""

from __future__ import annotations

from pipeline.stages.common import load, main_guard, parser, run_dir
from pipeline.stages.training import train_stage


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    params, exp = load(args)
    train_stage(params, exp, args.experiment, "ce", args.seed, run_dir(args.experiment, args.seed, "pretrain"),
                first_epoch=0, last_epoch=exp.pretrain_epochs, init=None, stage="pretrain",
                track=not args.no_mlflow)


if __name__ == "__main__":
    raise SystemExit(main())
