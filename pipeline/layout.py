"""Where a run's files live: the project's folders, the names of a run's files, and how every
file is written (atomically: through a temporary file beside it and a rename, so a reader never
sees half a file and a killed writer leaves the old file or none).

Layout of the outputs (all relative to the working copy; DVC tracks them)::

    configs/<experiment>.json                    the experiment as it runs (every default, base and
                                                 derived value resolved): the keys DVC's stages depend on
    data/prepared/<experiment>/                  prepared data set and its data card
    models/<experiment>/s<seed>/pretrain/        the CE pretraining run
    models/<experiment>/s<seed>/<method>/        one method's run: last.pt, best.pt,
                                                 history.json, sample_scores.npz, <network>.pt,
                                                 run.json (run id, epoch times; not hashed by DVC)
    metrics/<experiment>/<method>-s<seed>.json   headline test metrics (dvc metrics show)
    metrics/<experiment>/detail/<method>-s<seed>.json   every split, per class and per group
    plots/<experiment>/<method>-s<seed>/         a run's plot data and figures (logged to MLflow)
    reports/                                     comparison.md, summary.json, figures/ and the
                                                 methods side by side: <overlay>/<experiment>.csv
    studies/<study>/                             an Optuna study's analysis

The reference sweeps (``reference/dvc.yaml``, a DVC stage per run) keep their runs apart, one
split per seed::

    reference/dvc.yaml, dvc.lock                     the sweeps' stages (generated) and their record

    data/prepared/reference/<experiment>/split<k>/   the split of data.seed = k
    models/reference/<experiment>/s<seed>/<label>/   its runs (not committed)
    reference/metrics/<experiment>/<label>-s<seed>.json   each run's metrics (committed)
    plots/reference/<experiment>/<label>-s<seed>/    its plot data and figures (logged to MLflow)
    reports/reference/                               tables and figures rebuilt from them

The stores that must outlive a ``dvc exp run --temp`` copy (MLflow, Optuna) are addressed from
:func:`project_root`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS_DIR = Path("configs")
DATA_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")
STUDIES_DIR = Path("studies")
REFERENCE = "reference"  # the reference sweep's sub-folder of data/prepared, models, metrics, reports
REFERENCE_DVC_FILE = Path(REFERENCE) / "dvc.yaml"  # its stages, generated from the params
REFERENCE_SYNC_FILE = Path(REFERENCE) / "in_sync"  # written by the stage that checks them against the params
REFERENCE_METRICS_DIR = Path(REFERENCE) / "metrics"  # the reference runs' committed metrics

PRETRAIN = "pretrain"  # the run folder (and MLflow label) of the CE pretraining
# The files of a run folder.
LAST = "last.pt"  # resumable state after the last finished epoch
BEST = "best.pt"  # the validation-selected weights
HISTORY = "history.json"  # per-epoch metrics and the run summary, written when the run finishes
SCORES = "sample_scores.npz"  # per-training-sample scores (e.g. the last epsilon)
# What differs between two runs of one configuration on one machine: the MLflow run id and the
# epochs' wall-clock times. Kept out of the files above (which DVC hashes, so a rerun leaves
# dvc.lock as it was) and listed in .dvcignore; pipeline/engine/checkpoint.py writes and reads it.
RUN_RECORD = "run.json"


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


# --- names -------------------------------------------------------------------------------------


def run_label(method: str, seed: int) -> str:
    """``<method>-s<seed>``: a run within its experiment (file names of metrics and plots)."""
    return f"{method}-s{seed}"


def run_name(experiment: str, method: str, seed: int) -> str:
    """``<experiment>-<method>-s<seed>``: a run's MLflow name and progress label."""
    return f"{experiment}-{run_label(method, seed)}"


def config_file(experiment: str) -> Path:
    """``configs/<experiment>.json``: the resolved configuration the ``config`` stage writes."""
    return CONFIGS_DIR / f"{experiment}.json"


def data_dir(experiment: str) -> Path:
    return DATA_DIR / experiment


def run_dir(experiment: str, seed: int, method: str) -> Path:
    """``models/<experiment>/s<seed>/<method>``; the CE pretraining uses method ``pretrain``."""
    return MODELS_DIR / experiment / f"s{seed}" / method


def metrics_file(experiment: str, method: str, seed: int, *, detail: bool = False,
                 root: Path = METRICS_DIR) -> Path:
    """The headline metrics file of a run, or with ``detail`` the full one."""
    folder = root / experiment / "detail" if detail else root / experiment
    return folder / f"{run_label(method, seed)}.json"


def plots_dir(experiment: str, method: str, seed: int, *, root: Path = PLOTS_DIR) -> Path:
    return root / experiment / run_label(method, seed)


# The report's plot data, one folder per chart kind (a top-level plot of dvc.yaml each):
# ``reports/<kind>/<experiment>.csv``, a column per method.
OVERLAYS = ("curves", "per_class")


def overlay_file(kind: str, experiment: str, *, root: Path = REPORTS_DIR) -> Path:
    return root / kind / f"{experiment}.csv"


@dataclass(frozen=True)
class Tree:
    """Where an experiment's prepared data and its runs live."""

    data: Path  # the prepared data set
    models: Path  # run folders s<seed>/<label> below it

    def run_dir(self, seed: int, label: str) -> Path:
        return self.models / f"s{seed}" / label


def pipeline_tree(experiment: str) -> Tree:
    """The DVC pipeline's: ``data/prepared/<experiment>``, ``models/<experiment>``."""
    return Tree(data_dir(experiment), MODELS_DIR / experiment)


def reference_tree(experiment: str, split_seed: int) -> Tree:
    """A reference split's: ``data/prepared/reference/<experiment>/split<k>``,
    ``models/reference/<experiment>``."""
    return Tree(DATA_DIR / REFERENCE / experiment / f"split{split_seed}", MODELS_DIR / REFERENCE / experiment)


def reference_metrics_file(experiment: str, label: str, seed: int) -> Path:
    """``reference/metrics/<experiment>/<label>-s<seed>.json`` (committed), beside the stages that
    write them: not under ``metrics/``, which the default pipeline's report stage depends on as a
    whole (a DVC out inside a stage's directory dependency makes its stage upstream, so plain
    ``dvc repro`` would train every missing reference run)."""
    return REFERENCE_METRICS_DIR / experiment / f"{run_label(label, seed)}.json"


def reference_plots_dir(experiment: str, label: str, seed: int) -> Path:
    """``plots/reference/<experiment>/<label>-s<seed>``."""
    return plots_dir(experiment, label, seed, root=PLOTS_DIR / REFERENCE)


def study_dir(study: str) -> Path:
    return STUDIES_DIR / study


def artifact_file(name: str) -> str:
    """File name of a method's learned network (e.g. ``perturbation_net.pt``) in the run folder."""
    return f"{name}.pt"


# --- writing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``, on an
    error it is removed (and the error propagates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: NaN and ±inf (undefined metrics, e.g.
    ``few_acc`` with no Few-shot class) become None (``null``), numpy scalars and arrays become
    Python numbers and lists, tuples become lists; mappings and lists are converted recursively."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json(obj: Any, path: Path, *, sort_keys: bool = True) -> None:
    """Write ``obj`` as strict JSON (undefined values as ``null``, see :func:`json_safe`;
    ``allow_nan=False`` so that no NaN slips through), atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=sort_keys, allow_nan=False, default=float) + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """``np.savez`` of ``arrays``, atomically."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
