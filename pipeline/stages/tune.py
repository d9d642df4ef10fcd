"""``tune`` stage: run Optuna studies declared in params/tune.yaml (``tune.studies``).

    python -m pipeline.stages.tune --study lt_meta_iada [--workers 2] [--n-trials 20] [--storage URL]
    python -m pipeline.stages.tune --budget lt_ref_budget   # one study per method of tune.budgets.lt_ref_budget
    python -m pipeline.stages.tune            # every study listed in tune.run

The storage URL may come from ``META_IADA_STORAGE`` instead of ``--storage`` (``make tune
STORAGE=...`` passes it so): a password there is not on a command line, which other local users
can read in ``/proc``.

Resumes each named study in its storage up to its trial budget and writes its analysis to
``studies/<study>/`` (see :mod:`pipeline.tuning`). Exit status: 0; 2 on a user error (one line);
1 when a study ended short of its budget (one line, after its analysis; the studies after it in
tune.run are not started).
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.params.budget import budget_study_names, find_plan
from pipeline.params.file import load_params
from pipeline.params.schema import ParamError
from pipeline.stages.common import main_guard
from pipeline.tuning.budget import IncompleteStudy
from pipeline.tuning.study import run_study

STORAGE_ENV = "META_IADA_STORAGE"  # the storage URL when --storage is not given (make tune STORAGE=...)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run Optuna studies declared in params/tune.yaml (tune.studies).")
    p.add_argument("--study", help="study name, or <budget>-<method> (default: every study in tune.run)")
    p.add_argument("--budget", help="every method's study of this tune.budgets entry, in its order")
    p.add_argument("--workers", type=positive_int, help="parallel worker processes (default: the study's workers)")
    p.add_argument("--n-trials", type=positive_int, help="COMPLETE + PRUNED trials wanted in total")
    p.add_argument("--storage", help=f"URL of the study storage (default: ${STORAGE_ENV}, else the study's storage); "
                                     f"one with a password is safer in ${STORAGE_ENV}")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        return run_studies(argv)
    except IncompleteStudy as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


@main_guard
def run_studies(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    params = load_params(args.params)
    if args.study and args.budget:
        raise ParamError("--study and --budget: name one")
    names = [args.study] if args.study else budget_study_names(params, args.budget) if args.budget else params.tune.run
    storage = args.storage or os.environ.get(STORAGE_ENV) or None
    if not names:
        print("nothing to run: tune.run is empty (name a study with --study or a budget with --budget)")
    plans = [find_plan(params, name, n_trials=args.n_trials, storage=storage, workers=args.workers) for name in names]
    for plan in plans:  # every plan checked before the first trains
        run_study(params, plan)


if __name__ == "__main__":
    raise SystemExit(main())
