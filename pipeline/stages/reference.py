"""The reference sweeps: converged runs of every method, several seeds, each seed on its own split.
DVC runs them, one stage per run, from ``reference/dvc.yaml`` (generated from the params)::

    dvc status reference/dvc.yaml                            what is missing or stale
    dvc repro reference/dvc.yaml:run@lt_ref.ce.s0            one run
    dvc repro --glob 'reference/dvc.yaml:run@lt_ref.*'       an experiment (resumable: rerun to continue)
    python -m pipeline.stages.reference_sync                 rewrite reference/dvc.yaml after a params change

A run's stage calls this module with its experiment, label, seed and configuration hash; the
same command by hand (``--experiment lt_ref --seed 0 --label ce``, ``--config`` optional) runs
the same code. A run whose metrics file holds its configuration is not trained again, an
interrupted one resumes from its ``last.pt``, and the metrics file is written (atomically) once
its run is evaluated. ``python -m pipeline.stages.reference_report`` then rebuilds the tables.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.stages.common import main_guard


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", action="append", help="a reference experiment (default: all); repeatable")
    p.add_argument("--seed", type=int, action="append", help="a seed (default: reference.seeds); repeatable")
    p.add_argument("--label", action="append", help="a method or variant label (default: all); repeatable")
    p.add_argument("--config", help="the configuration hash the run's DVC stage was generated with: refused "
                                    "(with how to regenerate reference/dvc.yaml) if the params now give another")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 on a machine shared with "
                                               "other work)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")

    from pipeline.errors import UserError
    from pipeline.params.file import load_params
    from pipeline.reference import dvcfile
    from pipeline.reference.plan import plan

    params = load_params(args.params)
    jobs = plan(params, args.experiment, args.seed, args.label)
    if args.config is not None:
        if len(jobs) != 1:
            raise UserError(f"--config names the hash of one run: give one --experiment, --label and --seed "
                            f"(these select {len(jobs)})")
        if dvcfile.short_hash(jobs[0]) != args.config:
            raise UserError(f"run {dvcfile.job_key(jobs[0])}: its configuration in the params is "
                            f"{dvcfile.short_hash(jobs[0])}, not {args.config} as {dvcfile.REFERENCE_DVC_FILE} says: "
                            f"run `{dvcfile.SYNC_COMMAND}` and commit it, then rerun")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from pipeline.reference.sweep import run

    print(f"[reference] {len(jobs)} run(s) selected", file=sys.stderr)
    run(params, jobs, device=params.run.device, track=not args.no_mlflow)


if __name__ == "__main__":
    raise SystemExit(main())
