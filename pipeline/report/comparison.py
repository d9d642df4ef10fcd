"""Comparison table of methods: headline metrics, mean ± std over seeds, both selection rules."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.report.stats import mean_std, pm
from pipeline.layout import OVERLAYS, metrics_file, overlay_file


def collect(metrics_dir: Path, experiments: list[str], methods: list[str],
            seeds: list[int]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{experiment: {method: [result per seed]}}`` of the run matrix, read from the detail files
    ``metrics/<experiment>/detail/<method>-s<seed>.json`` (files of runs no longer in the matrix are
    ignored)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for exp in experiments:
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for method in methods:
            for seed in seeds:
                f = metrics_file(exp, method, seed, detail=True, root=metrics_dir)
                if f.is_file():
                    runs[method].append(json.loads(f.read_text()))
        out[exp] = dict(runs)
    return out


# Column order of the headline metrics (others follow in their own order).
ORDER = ("acc", "many_acc", "medium_acc", "few_acc", "worst_group_acc", "avg_acc")


def stats(values: list[float | None]) -> dict[str, Any]:
    """:func:`~pipeline.report.stats.mean_std` of ``values`` with their number under
    ``seeds``, as ``reports/summary.json`` writes it."""
    s = mean_std(values)
    return {"mean": s["mean"], "std": s["std"], "seeds": s["n"]}


def summarise(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """:func:`stats` of every headline metric, per experiment, method and rule."""
    summary: dict[str, Any] = {}
    for exp, runs in results.items():
        for method in runs:
            for rule in ("final", "selected"):
                for key in runs[method][0][rule]["headline"]:
                    vals = [r[rule]["headline"][key] for r in runs[method]]
                    summary.setdefault(exp, {}).setdefault(method, {})[f"{rule}.{key}"] = stats(vals)
    return summary


def markdown(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """One table per experiment: a row per method, headline metrics in % (mean ± std over seeds)."""
    lines = ["# Method comparison", "",
             "Test metrics in %, mean ± std over seeds. *final*: weights after the last epoch; "
             "*selected*: weights of the epoch with the best validation metric (never selected on test). "
             "*deferred*: trained from the CE pretraining's checkpoint; *scratch*: the whole schedule from a "
             "random initialisation.", ""]
    for exp, runs in results.items():
        if not runs:
            continue
        first = next(iter(runs.values()))[0]
        keys = sorted(first["final"]["headline"], key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
        lines += [f"## {exp}: {first['scenario']}, data {first['data']}, selection on {first['selection_metric']}", ""]
        header = ["method", "protocol", "seeds"] + [f"{k} (final)" for k in keys] + [f"{k} (selected)" for k in keys]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in runs:
            rs = runs[m]
            cells = [m, "/".join(sorted({r.get("protocol", "deferred") for r in rs})), str(len(rs))]
            cells += [pm(mean_std([r["final"]["headline"][k] for r in rs])) for k in keys]
            cells += [pm(mean_std([r["selected"]["headline"][k] for r in rs])) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_comparison_figures(results: dict[str, dict[str, list[dict[str, Any]]]], subject: str, out: Path) -> None:
    """The figures of :mod:`pipeline.report.figures` for the methods of each experiment run
    (``<experiment>-results.png``, ``-per_class.png``, ``-curves.png``, ``-epsilon.png``), every
    method on the same chart; files of experiments no longer run are removed."""
    from pipeline.report.summary import Label
    from pipeline.report.summary import summarise as summarise_labels
    from pipeline.report.figures import write_figures

    out.mkdir(parents=True, exist_ok=True)
    kept: set[str] = set()
    for exp, runs in results.items():
        labels = {m: Label(m, {int(r["seed"]): r for r in rs}) for m, rs in runs.items() if rs}
        if not labels:
            continue
        kept.update(write_figures(exp, labels, summarise_labels(labels, subject), out))
    for stale in out.glob("*.png"):
        if stale.name not in kept:
            stale.unlink()


def write_overlays(results: dict[str, dict[str, list[dict[str, Any]]]], root: Path) -> None:
    """The data of the top-level plots of dvc.yaml, every method of an experiment on one chart
    (a column each, the mean over seeds; empty where undefined): ``curves/<experiment>.csv``, the
    validation selection metric per epoch, and ``per_class/<experiment>.csv``, the test accuracy
    per class of the validation-selected weights beside the class's training images. Files of
    experiments no longer run are removed."""
    for kind in OVERLAYS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for stale in (root / kind).glob("*.csv"):
            if stale.stem not in results:
                stale.unlink()
    for exp, runs in results.items():
        if runs:
            write_csv(curve_rows(runs), ["epoch", *runs], overlay_file("curves", exp, root=root))
            write_csv(per_class_rows(runs), ["class", "train_images", *runs], overlay_file("per_class", exp, root=root))


def curve_rows(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``{"epoch": e, <method>: mean over seeds of the selection metric at e}`` per epoch of any method."""
    by_epoch: dict[int, dict[str, Any]] = defaultdict(dict)
    for method, rs in runs.items():
        values: dict[int, list[float | None]] = defaultdict(list)
        for r in rs:
            curve = r["curve"]
            for epoch, v in zip(curve["epoch"], curve.get(r["selection_metric"], [])):
                values[epoch].append(v)
        for epoch, vs in values.items():
            by_epoch[epoch][method] = mean_std(vs)["mean"]
    return [{"epoch": e, **by_epoch[e]} for e in sorted(by_epoch)]


def per_class_rows(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``{"class": c, "train_images": n_c, <method>: mean over seeds of its test accuracy}`` per class."""
    counts = next(iter(runs.values()))[0]["train_class_counts"]
    return [{"class": c, "train_images": n,
             **{m: mean_std([r["selected"]["test"]["per_class_acc"].get(str(c)) for r in rs])["mean"]
                for m, rs in runs.items()}}
            for c, n in enumerate(counts)]


def write_csv(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    """``rows`` as CSV; floats with 4 decimals, a missing or None value empty."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows({k: f"{v:.4f}" if isinstance(v, float) else "" if v is None else v for k, v in row.items()}
                    for row in rows)
