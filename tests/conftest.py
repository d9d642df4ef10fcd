"""Suite-wide check: the tests write only under their temporary folders, never into the work tree.

Before the session and after it, the work tree's untracked, ignored and modified paths are listed
(``git status --porcelain --ignored``), with its empty folders (git lists no folder without a file:
MLflow's ``mkdir`` of a SQLite URI's "folder" ``file:/tmp/...`` left only empty ones); any path
that appeared fails the run and is named. Byte code caches and pytest's own cache are not counted.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pytest's and ruff's caches, and DVC's scratch folder (ignored by .dvc/.gitignore), which a
# read-only `dvc status` of the repository itself creates (tests/stages/test_dvc_deps.py)
NOT_COUNTED = (".pytest_cache/", ".ruff_cache/", ".dvc/tmp/")


def work_tree_paths() -> set[str] | None:
    """Paths of ``git status --porcelain --ignored`` and the empty folders (None outside a git work tree)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = {line[3:] for line in out.splitlines()} | empty_folders()
    return {p for p in paths if not p.endswith("__pycache__/") and not p.startswith(NOT_COUNTED)}


def empty_folders() -> set[str]:
    """The work tree's folders without any entry (``a/b/``), outside ``.git`` and the virtual environment."""
    out = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in (".git", ".venv")]
        if not subfolders and not files:
            out.add(Path(folder).relative_to(ROOT).as_posix() + "/")
    return out


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core), torch in each worker, and in the
    processes it starts, uses one thread: a worker of two threads beside another would oversubscribe
    two cores. Set before any test module imports torch."""
    if is_xdist_worker(config):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not is_xdist_worker(session.config):  # the controller checks once, around all the workers
        session.config.stash[BEFORE] = work_tree_paths()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if is_xdist_worker(session.config):
        return
    before, after = session.config.stash.get(BEFORE, None), work_tree_paths()
    if before is None or after is None or session.config.option.collectonly:
        return
    left = sorted(after - before)
    if left:
        session.config.get_terminal_writer().line(
            f"error: the tests left {len(left)} path(s) in the work tree (write under tmp_path instead): "
            + ", ".join(left), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


BEFORE = pytest.StashKey[set[str] | None]()
