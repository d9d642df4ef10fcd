"""Comparison table of methods: headline metrics, mean ± std over seeds, both selection rules."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def collect(metrics_dir: Path, experiments: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{experiment: {method: [result per seed]}}`` from ``metrics/<experiment>/<method>-s<seed>.json``."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for exp in experiments:
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for f in sorted((metrics_dir / exp).glob("*-s*.json")):
            r = json.loads(f.read_text())
            runs[r["method"]].append(r)
        out[exp] = dict(runs)
    return out


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in percent (std over seeds, ddof=1; just the value for one seed)."""
    v = 100 * np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]], methods: list[str]) -> dict[str, Any]:
    """Mean and std over seeds of every headline metric, per experiment, method and rule."""
    summary: dict[str, Any] = {}
    for exp, runs in results.items():
        for method in [m for m in methods if m in runs] + [m for m in runs if m not in methods]:
            for rule in ("final", "selected"):
                for key in runs[method][0][rule]["headline"]:
                    vals = [r[rule]["headline"][key] for r in runs[method]]
                    summary.setdefault(exp, {}).setdefault(method, {})[f"{rule}.{key}"] = {
                        "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                        "seeds": len(vals)}
    return summary


def markdown(results: dict[str, dict[str, list[dict[str, Any]]]], methods: list[str]) -> str:
    """One table per experiment: a row per method, headline metrics in % (mean ± std over seeds)."""
    lines = ["# Method comparison", "",
             "Test metrics in %, mean ± std over seeds. *final*: weights after the last epoch; "
             "*selected*: weights of the epoch with the best validation metric (never selected on test).", ""]
    for exp, runs in results.items():
        if not runs:
            continue
        first = next(iter(runs.values()))[0]
        keys = list(first["final"]["headline"])
        lines += [f"## {exp}: {first['scenario']}, data {first['data']}, selection on {first['selection_metric']}", ""]
        header = ["method", "seeds"] + [f"{k} (final)" for k in keys] + [f"{k} (selected)" for k in keys]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        ordered = [m for m in methods if m in runs] + [m for m in runs if m not in methods]
        for m in ordered:
            rs = runs[m]
            cells = [m, str(len(rs))]
            cells += [mean_std([r["final"]["headline"][k] for r in rs]) for k in keys]
            cells += [mean_std([r["selected"]["headline"][k] for r in rs]) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
