"""What the stage entry points share: argument parsing, loading params, error reporting."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pipeline.engine.checkpoint import TrainingInterrupted
from pipeline.errors import UserError
from pipeline.params.experiment import ExperimentConfig
from pipeline.params.file import Params, load_params


def parser(description: str, *, method: bool = False, seed: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--experiment", required=True, help="experiment name declared in params.yaml")
    if seed:
        p.add_argument("--seed", type=int, required=True, help="training seed")
    if method:
        p.add_argument("--method", required=True, help="training method (a name of the methods registry)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return p


def main_guard(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Wrap a stage's ``main`` so that a user error (:class:`~pipeline.errors.UserError`, or a
    missing file) prints one clear line and exits 2, and a Ctrl-C exits 130 saying what was saved."""
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            main(argv)
        except (UserError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:  # TrainingInterrupted says what was saved
            print(str(err) if isinstance(err, TrainingInterrupted) else "interrupted", file=sys.stderr)
            return 130
        return 0
    return wrapped


def load(args: argparse.Namespace) -> tuple[Params, ExperimentConfig]:
    """All of params.yaml, validated (so every mistake shows before any work), and the experiment
    (and method) the command names."""
    params = load_params(args.params)
    exp = params.experiment(args.experiment)
    if getattr(args, "method", None) is not None:
        exp.method_config(args.method)
    return params, exp
