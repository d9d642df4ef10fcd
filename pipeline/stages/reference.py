"""The reference sweep: converged runs of every method, several seeds, each seed on its own split.

    python -m pipeline.stages.reference --experiment lt_ref             # everything missing (resumable)
    python -m pipeline.stages.reference --experiment lt_ref --seed 0 --label ce --label la
    python -m pipeline.stages.reference --dry-run                       # what is done, what is left

Trains every run of ``reference:`` in params/reference.yaml that has no up-to-date metrics file under
``metrics/reference/`` (commit those files); rerunning the same command continues a stopped
sweep. ``python -m pipeline.stages.reference_report`` then rebuilds the tables and figures.
"""

from __future__ import annotations

import argparse

from pipeline.stages.common import main_guard


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", action="append", help="a reference experiment (default: all); repeatable")
    p.add_argument("--seed", type=int, action="append", help="a seed (default: reference.seeds); repeatable")
    p.add_argument("--label", action="append", help="a method or variant label (default: all); repeatable")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 on a machine shared with "
                                               "other work)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done; train nothing")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")

    from pipeline.params.file import load_params
    from pipeline.reference.sweep import plan, run

    params = load_params(args.params)
    jobs = plan(params, args.experiment, args.seed, args.label)
    if args.dry_run:
        for job in jobs:
            print(f"{'done' if job.done() else 'todo'}  {job.exp.name} {job.label} s{job.seed} "
                  f"(split {job.split_seed}) -> {job.metrics_file}")
        return
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    run(params, jobs, device=params.run.device, track=not args.no_mlflow)


if __name__ == "__main__":
    raise SystemExit(main())
