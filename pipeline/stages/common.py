"""What the stage entry points share: paths of outputs, argument parsing, error reporting, MLflow."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.params.schema import ParamError
from pipeline.params.experiment import ExperimentConfig, Params, load_params
from pipeline.jsonfile import json_safe, write_json  # noqa: F401  (the stages' writer)

DATA_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")


def data_dir(experiment: str) -> Path:
    return DATA_DIR / experiment


def run_dir(experiment: str, seed: int, method: str) -> Path:
    """``models/<experiment>/s<seed>/<method>``; the CE pretraining uses method ``pretrain``."""
    return MODELS_DIR / experiment / f"s{seed}" / method


def run_name(experiment: str, method: str, seed: int) -> str:
    return f"{experiment}-{method}-s{seed}"


def parser(description: str, *, method: bool = False, seed: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--experiment", required=True, help="experiment name declared in params.yaml")
    if seed:
        p.add_argument("--seed", type=int, required=True, help="training seed")
    if method:
        p.add_argument("--method", required=True, help="training method (ce, la, isda, iada, meta_iada)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: reported in one line, without a traceback."""
    from pipeline.data.prepared import PreparedDataError
    from pipeline.data.sources import DataSourceError
    from pipeline.tracking import TrackingError
    from pipeline.engine.loop import CheckpointError
    return (ParamError, DataSourceError, CheckpointError, PreparedDataError, TrackingError, FileNotFoundError)


def main_guard(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Wrap a stage's ``main`` so that a user error prints one clear line and exits 2."""
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            main(argv)
        except user_errors() as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:  # TrainingInterrupted says what was saved
            from pipeline.engine.loop import TrainingInterrupted

            print(str(err) if isinstance(err, TrainingInterrupted) else "interrupted", file=sys.stderr)
            return 130
        return 0
    return wrapped


def load(args: argparse.Namespace) -> tuple[Params, ExperimentConfig]:
    """Validate all of params.yaml (so every mistake shows before any work), then pick the experiment."""
    params = load_params(args.params)
    from pipeline.params.tune import load_tune

    load_tune(params)  # the studies and their search spaces are params too
    exp = params.experiment(args.experiment)
    if getattr(args, "method", None) is not None:
        exp.method_config(args.method)
    return params, exp


