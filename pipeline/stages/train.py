"""``train`` stage: continue from the pretrain checkpoint with one method.

    python -m pipeline.stages.train --experiment lt --method meta_iada --seed 0

Every method of one experiment and seed starts from the same checkpoint and seed. Writes
``models/<experiment>/s<seed>/<method>/``; rerunning an interrupted run resumes it.
"""

from __future__ import annotations

from pipeline.engine.runs import train
from pipeline.stages.common import load, main_guard, parser


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, method=True).parse_args(argv)
    params, exp = load(args)
    train(exp, args.method, args.seed, device=params.run.device, compile_mode=params.run.compile, track=not args.no_mlflow)


if __name__ == "__main__":
    raise SystemExit(main())
