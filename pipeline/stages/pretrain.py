"""``pretrain`` stage: cross-entropy training for ``pretrain_epochs`` epochs (method.md §6).

    python -m pipeline.stages.pretrain --experiment lt --seed 0

Writes ``models/<experiment>/s<seed>/pretrain/``; rerunning an interrupted run resumes it.
"""

from __future__ import annotations

from pipeline.engine.runs import pretrain
from pipeline.stages.common import load, main_guard, parser


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)
    params, exp = load(args)
    pretrain(exp, args.seed, device=params.run.device, compile_mode=params.run.compile, track=not args.no_mlflow)


if __name__ == "__main__":
    raise SystemExit(main())
