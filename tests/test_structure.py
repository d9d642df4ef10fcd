"""The package's layering, checked on the source: imports run one way (stages -> library), the
paper's parts stay free of the training engine, tracking and run files, and no function takes
more than 7 positional parameters: beyond 7, parameters are keyword-only (named at every call
site; e.g. the IADA loss's epsilon, alpha, beta, direction) or grouped in small named objects
(``fit(RunSpec)``, ``meta_step(batch=, meta=, pseudo=)``, ``BatchLoader(augment=, order=)``)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from tests.test_e2e import sh

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
MODULES = sorted(PACKAGE.rglob("*.py"))
PAPER_PARTS = ["losses", "covariance", "characteristics", "perturbation", "meta_gradient", "forward_primals"]


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", [p for p in MODULES if "stages" not in p.parts], ids=rel)
def test_the_library_never_imports_a_stage(path):
    assert not [n for n in imports(path) if n.startswith("pipeline.stages")]


@pytest.mark.parametrize("part", PAPER_PARTS)
def test_the_papers_parts_import_no_loop_tracking_or_run_files(part):
    bad = ("pipeline.engine", "pipeline.tracking", "pipeline.layout", "pipeline.stages", "pipeline.tuning", "mlflow",
           "dvc", "optuna")
    names = imports(PACKAGE / "methods" / f"{part}.py")
    assert not [n for n in names if n.startswith(bad)]


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_function_takes_more_than_seven_positional_parameters(path):
    wide = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            params = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
            if len(params) > 7:
                wide.append(f"{node.name}({', '.join(params)})")
    assert not wide


def test_the_stages_start_without_torchvision_or_sklearn():
    """torchvision (which pulls in torch._dynamo) and sklearn cost seconds at every stage's
    start-up, several seconds a stage on the slower machines; only building a CIFAR data set from
    its pickle batches, a download, GLT's k-means and a few metrics use them, and import them there."""
    stages = sorted(p.stem for p in (PACKAGE / "stages").glob("*.py") if p.stem not in ("__init__", "common"))
    code = ("import sys\n" + "".join(f"import pipeline.stages.{s}\n" for s in stages)
            + "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'sklearn'}))")
    proc = sh([sys.executable, "-c", code], ROOT, dict(os.environ), timeout=300)
    assert proc.stdout.split() == ["[]"], f"a stage imports at start-up: {proc.stdout.strip()}"


def top_level_imports(path: Path) -> set[str]:
    """The pipeline modules a module imports when it is loaded (its body's imports; those inside
    functions run later and cannot make a loop at import time)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("pipeline")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_loop():
    """No module of the package imports, through its load-time imports, a module that imports it
    back (the loop the report modules had: evaluation/report <-> reference/report <-> figures)."""
    known = {module_name(p): p for p in MODULES}
    graph = {name: {n for n in top_level_imports(path) if n in known and n != name} for name, path in known.items()}
    state: dict[str, int] = {}
    loops: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                loops.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [name, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert loops == [], loops


MAX_LINES = 400


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_module_is_over_400_lines(path):
    """A module over 400 lines holds more than one concept: split it by topic (lines counted as
    ``wc -l`` counts them: newline characters)."""
    lines = path.read_bytes().count(b"\n")
    assert lines <= MAX_LINES, f"{rel(path)} has {lines} lines (at most {MAX_LINES}): split it by topic"
