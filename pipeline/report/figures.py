"""Figures of a reference experiment (PNG in ``reports/reference/``), from its metrics files:

- ``<experiment>-results.png``: the primary metric of every label, mean with ± std error bars
  and each seed as a dot, validation-selected and final;
- ``<experiment>-per_class.png``: test accuracy per class against the class's training size
  (validation-selected, mean over seeds), one line per label;
- ``<experiment>-curves.png``: the validation selection metric per epoch, one line per label
  (mean over seeds);
- ``<experiment>-epsilon.png``: the learned ε of the labels that learn one, per class, and per
  clean / noisy label or per group where the data has them;
- ``<experiment>-ablations.png``: the subject's default run and each ablation, validation (the
  order) beside test, mean ± std over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.evaluation.plots import pyplot

if TYPE_CHECKING:
    from pipeline.report.summary import Label


KINDS = ("results", "per_class", "curves", "epsilon", "ablations")  # file <experiment>-<kind>.png, in page order


def write_figures(name: str, labels: dict[str, Label], summary: dict[str, Any], out: Path) -> list[str]:
    """Write the figures; returns their file names (relative to ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    written = []
    drawers = {"results": _results, "per_class": _per_class, "curves": _curves, "epsilon": _epsilon,
               "ablations": _ablations}
    for kind in KINDS:
        draw = drawers[kind]
        fig = draw(plt, name, labels, summary)
        if fig is None:
            continue
        file = f"{name}-{kind}.png"
        fig.savefig(out / file, dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        written.append(file)
    for stale in out.glob(f"{name}-*.png"):  # a figure that no longer applies
        if stale.name not in written:
            stale.unlink()
    return written


def _results(plt: Any, name: str, labels: dict[str, Label], s: dict[str, Any]) -> Any:
    primary, order = s["primary"], s["ranking"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(order) + 2), 4.2))
    x = np.arange(len(order))
    subject = s["subject"]
    for offset, rule, color, highlight in ((-0.18, "selected", "tab:blue", "tab:orange"),
                                           (0.18, "final", "tab:gray", "navajowhite")):
        stats = [s["labels"][label][rule][primary] for label in order]
        means = [100 * (st["mean"] or np.nan) for st in stats]
        stds = [100 * (st["std"] or 0) for st in stats]
        # the method under study (reference.subject) in its own colour
        colors = [highlight if s["labels"][label]["method"] == subject else color for label in order]
        ax.bar(x + offset, means, width=0.34, yerr=stds, capsize=3, color=colors, alpha=0.75, label=rule)
        for i, st in enumerate(stats):
            seeds = [100 * v for v in st["per_seed"].values()]
            ax.scatter(np.full(len(seeds), x[i] + offset), seeds, s=9, color="black", zorder=3)
    low = min(100 * (st["mean"] or 0) - 100 * (st["std"] or 0) for st in (s["labels"][lab]["selected"][primary]
                                                                          for lab in order))
    bottom = max(0.0, 5 * np.floor(low / 5) - 5)
    ax.set_ylim(bottom, None)  # the differences, not the bars' common base: said on the axis
    ax.set_xticks(x, order, rotation=35, ha="right")
    for tick in ax.get_xticklabels():
        if s["labels"][tick.get_text()]["method"] == subject:
            tick.set_fontweight("bold")
    ax.set_ylabel(f"test {primary} (%; axis from {bottom:.0f})")
    ax.set_title(f"{name}: {primary} by method ({subject} in orange; bars: mean ± std over seeds; dots: seeds)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _per_class(plt: Any, name: str, labels: dict[str, Label], s: dict[str, Any]) -> Any:
    first = next(iter(labels.values())).first
    if "per_class_acc" not in first["selected"]["test"] or "train_class_counts" not in first:
        return None  # (metrics files written before evaluation kept the class sizes)
    counts = np.asarray(first["train_class_counts"], dtype=float)
    # Against class size where the classes are imbalanced (long tail); by class otherwise (the
    # sizes of a noisy-label split differ by a few images only).
    by_size = counts.max() >= 2 * max(counts.min(), 1)
    order = np.argsort(-counts) if by_size else np.arange(len(counts))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for i, label in enumerate(s["ranking"]):
        lab = labels[label]
        acc = np.mean([[r["selected"]["test"]["per_class_acc"][str(c)] for c in range(len(counts))]
                       for r in lab.records.values()], axis=0)
        color, dash = _style(plt, i)
        subject = lab.method == s["subject"]
        xs = counts[order] if by_size else order
        ax.plot(xs, 100 * acc[order], dash, marker="o" if subject or not by_size else None, color=color,
                lw=2.4 if subject else 1.2, ms=3, label=label)
    if by_size:
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log; seed 0's split)")
    else:
        ax.set_xticks(order)
        ax.set_xlabel("class (about equal training sizes)")
    ax.set_ylabel("test accuracy of the class (%, selected)")
    ax.set_title(f"{name}: per-class accuracy (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the lines, never on them
    return fig


def _curves(plt: Any, name: str, labels: dict[str, Label], s: dict[str, Any]) -> Any:
    """Validation per epoch, mean over seeds. Where deferred runs start after the CE pretraining
    and scratch runs span it, the main panel shows the method phase (the epochs every label
    trains; its y range from those values, so its differences are not squeezed by the scratch
    runs' first epochs) and a narrow one the scratch runs' whole schedule. The subject in black
    and thick, drawn on top and first in the legend; each entry ends with its last value."""
    metric = s["selection_metric"]
    lines = mean_curves(labels, s["ranking"], metric)
    if not lines:
        return None
    subject = [s["subject"]] if s["subject"] in lines else []
    others = [label for label in lines if label not in subject]
    order = subject + others
    deferred = [x[0] for label, (x, _) in lines.items() if labels[label].protocol != "scratch"]
    start = min(deferred) if deferred else min(x[0] for x, _ in lines.values())
    early = [label for label in order if lines[label][0][0] < start]
    fig, axes = plt.subplots(1, 2 if early else 1, figsize=(12.5 if early else 9, 4.8), squeeze=False,
                             gridspec_kw={"width_ratios": [2.3, 1]} if early else None)
    main = axes[0][0]
    styles = {label: {"color": _style(plt, i)[0], "ls": _style(plt, i)[1], "lw": 1.5, "zorder": 2}
              for i, label in enumerate(others)}
    styles.update({label: {"color": "black", "ls": "-", "lw": 2.8, "zorder": 5} for label in subject})
    for label in order:
        x, y = lines[label]
        keep = x >= start
        main.plot(x[keep], 100 * y[keep], label=f"{label}  {100 * y[-1]:.1f}", **styles[label])
    shown = np.concatenate([100 * y[x >= start] for x, y in lines.values()])
    low, high = np.nanmin(shown), np.nanmax(shown)
    pad = max(0.5, 0.06 * (high - low))
    bottom = max(0.0, low - pad)
    main.set_ylim(bottom, high + pad)
    main.set_ylabel(f"{metric} (%; axis from {bottom:.1f})")
    main.set_xlabel("epoch (global: the CE pretraining's epochs count)")
    phase = f"from epoch {start:.0f} (the method phase)" if early else "per epoch"
    main.set_title(f"{name}: validation {phase}, mean over seeds")
    main.grid(alpha=0.3)
    if early:
        ax = axes[0][1]
        for label in early:
            x, y = lines[label]
            ax.plot(x, 100 * y, **styles[label])
        ax.axvline(start, color="black", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_title("the scratch runs' whole schedule")
        ax.grid(alpha=0.3)
    handles, texts = main.get_legend_handles_labels()
    legend = fig.legend(handles, texts, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                        title=f"{metric} at the last epoch")
    for text in legend.get_texts()[:len(subject)]:
        text.set_fontweight("bold")
    fig.tight_layout()
    return fig


def mean_curves(labels: dict[str, Label], ranking: list[str], metric: str) -> dict[str, tuple[Any, Any]]:
    """Label -> (epochs, mean over seeds of ``metric``) over the epochs every seed has, in ``ranking``
    order; labels without a curve are left out."""
    out = {}
    for label in ranking:
        curves = [c for c in (r.get("curve", {}) for r in labels[label].records.values()) if c.get(metric)]
        if curves:
            n = min(len(c[metric]) for c in curves)
            y = np.mean([[np.nan if v is None else v for v in c[metric][:n]] for c in curves], axis=0)
            out[label] = (np.asarray(curves[0]["epoch"][:n], dtype=float), y)
    return out


def _epsilon(plt: Any, name: str, labels: dict[str, Label], s: dict[str, Any]) -> Any:
    learned = [label for label in s["ranking"] if "epsilon" in s["labels"][label]]
    if not learned:
        return None
    extra = "clean_mean" in s["labels"][learned[0]]["epsilon"] or "per_group_mean" in s["labels"][learned[0]]["epsilon"]
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(12 if extra else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(learned)
    for i, label in enumerate(learned):
        per_class = s["labels"][label]["epsilon"]["per_class_mean"]
        classes = sorted(per_class, key=int)
        ax.bar(np.arange(len(classes)) + i * width, [per_class[c] for c in classes], width=width, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(classes)), classes)
    ax.set_xlabel("class (0 = largest in the long-tailed scenarios)")
    ax.set_ylabel("mean learned ε (> 0: adversarial)")
    ax.set_title(f"{name}: ε per class (mean over seeds)")
    ax.legend(fontsize=7)
    if extra:
        ax = axes[0][1]
        for i, label in enumerate(learned):
            eps = s["labels"][label]["epsilon"]
            if "clean_mean" in eps:
                keys, values = ["clean", "noisy"], [eps["clean_mean"]["mean"], eps["noisy_mean"]["mean"]]
            else:
                groups = sorted(eps["per_group_mean"], key=int)
                keys, values = [f"g{g}" for g in groups], [eps["per_group_mean"][g] for g in groups]
            ax.bar(np.arange(len(keys)) + i * width, values, width=width, label=label)
            per = len(keys) // max(len(eps["per_class_mean"]), 1)
            if len(keys) > 12 and per > 1:  # groups = class * attributes + attribute: a tick per class
                ax.set_xticks(np.arange(0, len(keys), per), [f"class {c}" for c in range(len(keys) // per)],
                              rotation=45, ha="right")
                ax.set_xlabel(f"group: each class's {per} attributes in order (0 = its largest)")
            else:
                ax.set_xticks(np.arange(len(keys)), keys)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title("ε per clean / noisy label" if "clean_mean" in s["labels"][learned[0]]["epsilon"]
                     else "ε per group (label, attribute)")
        ax.legend(fontsize=7)
    return fig


def _ablations(plt: Any, name: str, labels: dict[str, Label], s: dict[str, Any]) -> Any:
    if not s["ablations"]:
        return None
    primary, metric = s["primary"], s["selection_metric"]
    rows = ([s["subject"]] if s["subject"] in s["labels"] else []) + s["ablations"]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]  # the default on top, then by validation
    for offset, what, color in ((0.18, "validation", "tab:orange"), (-0.18, "test", "tab:blue")):
        if what == "validation":
            key = metric.removeprefix("val_")
            per_seed = [[r["selected"]["val"][key] for r in labels[n].records.values()] for n in rows]
        else:
            per_seed = [list(s["labels"][n]["selected"][primary]["per_seed"].values()) for n in rows]
        means = [100 * np.mean(v) for v in per_seed]
        stds = [100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_seed]
        ax.barh(y + offset, means, height=0.34, xerr=stds, capsize=3, color=color, alpha=0.75,
                label=f"{what} {metric.removeprefix('val_') if what == 'validation' else primary} (selected)")
        for i, v in enumerate(per_seed):
            ax.scatter([100 * x for x in v], np.full(len(v), y[i] + offset), s=9, color="black", zorder=3)
    low = min(100 * min(min(r["selected"]["val"][metric.removeprefix("val_")] for r in labels[n].records.values()),
                        min(s["labels"][n]["selected"][primary]["per_seed"].values())) for n in rows)
    ax.set_xlim(max(0.0, 5 * np.floor(low / 5) - 5), None)
    ax.set_yticks(y, rows)
    ax.set_xlabel("%")
    ax.set_title(f"{name}: ablations of {s['subject']} (ordered by validation)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _style(plt: Any, i: int) -> tuple[Any, str]:
    """Colour and dash of the i-th line: ten colours, solid, then dashed."""
    return plt.get_cmap("tab10")(i % 10), "-" if i < 10 else "--"
