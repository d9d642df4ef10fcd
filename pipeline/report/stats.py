"""Mean ± std over seeds (:func:`mean_std`) and its text in percent (:func:`pm`, :func:`pct`), for
every report of the package."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and std over seeds (ddof=1; 0 for one seed) and their number ``n``; mean and std are
    None where the metric is undefined in any seed (``null`` in a metrics file, NaN in memory, e.g.
    no Few-shot class in CIFAR-10-LT with rho = 100) or there is no seed, so that JSON stays valid."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0 or np.isnan(v).any():
        return {"mean": None, "std": None, "n": len(v)}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction in percent with ``digits`` decimals; ``—`` where undefined."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def pm(s: dict[str, Any]) -> str:
    """:func:`mean_std`'s ``s`` as ``mean ± std`` in percent (just the mean for one seed); ``—``
    where undefined."""
    if s["mean"] is None:
        return "—"
    return pct(s["mean"]) if s["n"] < 2 else f"{pct(s['mean'])} ± {pct(s['std'])}"
