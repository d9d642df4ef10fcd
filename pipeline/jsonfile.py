"""Strict JSON files: undefined values (NaN, ±inf) as ``null``, written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=sort_keys, allow_nan=False, default=float) + "\n")
    tmp.replace(path)
