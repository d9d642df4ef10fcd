"""Where things live: the project root (also inside ``dvc exp run --temp`` copies) and its folders."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The real repository root.

    ``dvc exp run --queue/--temp`` runs stages in a temporary copy under ``.dvc/tmp/exps``
    and exports ``DVC_ROOT`` as the real root; stores that must outlive the copy (MLflow,
    Optuna) and the offline data beside the checkout are addressed from it.
    """
    env = os.environ.get("DVC_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[1]


def workdir() -> Path:
    """Root of the working copy the stage runs in (where DVC outputs are written)."""
    return Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The offline copies of public data sets (``../shared/data`` beside the checkout)."""
    env = os.environ.get("META_IADA_SHARED_DATA")
    if env:
        return Path(env)
    return project_root().parent / "shared" / "data"
