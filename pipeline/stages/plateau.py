"""Plateau check of a reference profile (:mod:`pipeline.report.plateau`).

    python -m pipeline.stages.plateau --experiment lt_ref [--seed 0] [--threads 1] [--doublings 1]

Writes ``metrics/plateau/<experiment>-s<seed>.json`` (commit it); runs go to ``models/plateau/``.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.stages.common import main_guard


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="a reference experiment of params.yaml")
    p.add_argument("--seed", type=int, default=0, help="training seed (and split seed with split: per_seed)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--doublings", type=int, default=1,
                   help="climb to 2^n times the schedule, stopping at the first one within 1 point of its double "
                        "(default 1: the schedule against its double)")
    args = p.parse_args(argv)
    if args.doublings < 1:
        p.error(f"--doublings must be at least 1, got {args.doublings}")

    from pipeline.layout import METRICS_DIR, MODELS_DIR, write_json
    from pipeline.params.file import load_params
    from pipeline.report.plateau import check

    params = load_params(args.params)
    exp = params.experiment(args.experiment)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data_seed = params.reference.split_seed(exp, args.seed)
    result = check(exp, args.seed, data_seed, MODELS_DIR / "plateau" / exp.name / f"s{args.seed}", args.doublings)
    out = METRICS_DIR / "plateau" / f"{exp.name}-s{args.seed}.json"
    write_json(result, out)
    print(f"{exp.name}: CE {result['metric']} {result['x1'][result['metric']]:.4f} over {result['x1']['epochs']}, "
          f"{result['x2'][result['metric']]:.4f} over {result['x2']['epochs']}; val_acc gap "
          f"{result['gap_val_acc_points']:+.1f} points ({'at' if result['at_plateau'] else 'not at'} a plateau) "
          f"-> {out}", file=sys.stderr)
    for pair in result["pairs"][1:]:
        f, g = pair["factors"]
        print(f"  x{f} against x{g}: val_acc gap {pair['gap_val_acc_points']:+.1f} points "
              f"({'at' if pair['at_plateau'] else 'not at'} a plateau)", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
