"""The ``pipeline`` modules a module imports, transitively: what a DVC stage running it depends on
(``dvc.yaml``'s lists are held to it by ``tests/stages/test_dvc_deps.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the pipeline package


def module_file(name: str) -> Path | None:
    """The file of module ``pipeline.x.y`` (a module or a package's ``__init__.py``)."""
    base = ROOT / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """The ``pipeline`` modules a file imports anywhere in it (``from pkg import sub`` counts
    ``pkg.sub`` when it is a module), with every package on the way (their ``__init__`` runs)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "pipeline" and module_file(name) is not None:
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def closure(module: str) -> set[Path]:
    """Files of ``module`` and of every ``pipeline`` module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)) - seen)
    return {module_file(name).relative_to(ROOT) for name in seen}
