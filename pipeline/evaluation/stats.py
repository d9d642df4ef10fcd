"""Mean ± std over seeds (:func:`mean_std`) and its text in percent (:func:`pm`, :func:`pct`), for
every report of the package."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def mean_std(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    if len(v) == 0 or np.isnan(v).any():
        return {"mean": None, "std": None, "n": len(v)}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def pm(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "—"
    return pct(s["mean"]) if s["n"] < 2 else f"{pct(s['mean'])} ± {pct(s['std'])}"
