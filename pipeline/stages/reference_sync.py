"""``sync`` stage of ``reference/dvc.yaml``: that file, generated from the params, and the params
agree.

    python -m pipeline.stages.reference_sync            # write reference/dvc.yaml from the params
    python -m pipeline.stages.reference_sync --check    # exit 2 if it is out of date (the sync stage)
"""

from __future__ import annotations

import argparse

from pipeline.stages.common import main_guard


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 2, saying how to regenerate it, if reference/dvc.yaml "
                                                        "is out of date with the params; write nothing else")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = p.parse_args(argv)

    from pipeline.params.file import load_params
    from pipeline.reference import dvcfile

    params = load_params(args.params)
    if args.check:
        dvcfile.check(params)
        return
    changed = dvcfile.sync(params)
    print(f"{'wrote' if changed else 'up to date:'} {dvcfile.REFERENCE_DVC_FILE}")


if __name__ == "__main__":
    raise SystemExit(main())
