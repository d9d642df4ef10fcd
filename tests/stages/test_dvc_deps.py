"""``dvc.yaml``'s dependency lists cannot drift from the code: each stage's ``deps`` cover exactly
the modules its command imports (statically, lazy imports inside functions included), so that a
change to any of them reruns the stage and no listed path is dead weight."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.reference.closure import closure
from tests.test_e2e import sh

ROOT = Path(__file__).resolve().parents[2]


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(stages()))
def test_deps_are_the_import_closure_of_the_stage_command(stage):
    spec = stages()[stage]
    module = re.search(r"python -m (pipeline(?:\.\w+)+)", spec["cmd"]).group(1)
    files = closure(module)
    deps = [Path(d) for d in spec.get("deps", []) if str(d).startswith("pipeline")]
    uncovered = sorted(str(f) for f in files if not any(f == d or d in f.parents for d in deps))
    assert not uncovered, f"{stage}: add to deps in dvc.yaml: {uncovered}"
    dead = sorted(str(d) for d in deps if not any(f == d or d in f.parents for f in files))
    assert not dead, f"{stage}: deps in dvc.yaml that {module} does not import: {dead}"
    broad = sorted(f"{d}/{p.relative_to(ROOT / d)}" for d in deps if (ROOT / d).is_dir()
                   for p in (ROOT / d).rglob("*.py") if p.relative_to(ROOT) not in files)
    assert not broad, f"{stage}: a folder in deps holds modules the stage does not import (list files instead): {broad}"


def test_closure_follows_lazy_imports_and_packages():
    """The walk itself: a lazy import inside a function counts, and so does every package's
    __init__ on the way."""
    files = closure("pipeline.stages.prepare")
    assert Path("pipeline/tracking.py") in files  # imported inside main(), only with MLflow on
    assert Path("pipeline/data/__init__.py") in files and Path("pipeline/__init__.py") in files
    assert Path("pipeline/tuning/study.py") not in files


def stale_entries(status: dict) -> list[str]:
    """What in ``dvc status --json`` says that ``dvc.lock`` was not written by the committed code
    and params: a dependency or output that is there but differs from the lock (``modified``), one
    the lock does not know (``new``), or a changed command. Missing outputs and the data they feed
    (``deleted``, ``not in cache``) are how a fresh clone looks before ``dvc repro``, and an
    ``always_changed`` stage is listed whatever the lock says."""
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed command" (or "always changed")
                if change != "always changed":
                    stale.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                for path, state in paths.items():
                    states = state.values() if isinstance(state, dict) else [state]  # params.yaml: key -> state
                    if any(s in ("modified", "new") for s in states):
                        stale.append(f"{stage}: {kind} {path}: {state}")
    return stale


def stale_in_repo(targets: list[str]) -> list[str]:
    """:func:`stale_entries` of ``dvc status --json <targets>`` in this repository."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = sh([sys.executable, "-m", "dvc", "status", "--json", *targets], ROOT, env, timeout=300)
    return stale_entries(json.loads(proc.stdout or "{}"))


def test_stale_entries_reads_dvc_status():
    status = {
        "prepare@lt": [{"changed deps": {"pipeline/methods": "modified"}},
                       {"changed outs": {"data/prepared/lt": "not in cache"}}],
        "train@lt-ce-0": [{"changed deps": {"data/prepared/lt": "deleted",
                                            "params.yaml": {"experiments.lt.optim": "modified"}}}],
        "report": ["changed command"],
        "reference_report": ["always changed"],
        "evaluate@lt-ce-0": [{"changed outs": {"metrics/lt/ce-s0.json": "deleted"}}],
    }
    assert stale_entries(status) == ["prepare@lt: changed deps pipeline/methods: modified",
                                     "train@lt-ce-0: changed deps params.yaml: {'experiments.lt.optim': 'modified'}",
                                     "report: changed command"]


def test_the_committed_lock_was_written_by_the_committed_code():
    """``dvc.lock`` (and so ``metrics/`` beside it) comes from the code and params in the tree: a
    change to a stage's code or params is committed with the ``dvc repro`` that it triggers. A
    fresh clone's missing outputs are not a change."""
    stale = stale_in_repo(["dvc.yaml"])  # (the reference sweeps' lock: tests/reference/test_reference_dvc.py)
    assert not stale, ("dvc.lock is stale: run `dvc repro` and commit dvc.lock with the metrics it writes:\n"
                       + "\n".join(stale[:20]))
