"""The prepared data set: what the ``prepare`` stage writes and every later stage reads.

Layout of ``data/prepared/<experiment>/``:

- ``arrays.npz``: for each split ``s`` (``train``, ``meta``, ``val``, ``test`` and any extra test
  splits such as ``test_glt``): ``s/x`` uint8 images [N, H, W, C], ``s/y`` int64 labels as the
  learner sees them (noisy in the noisy-label scenario), ``s/index`` int64 position in the
  source split it was taken from, and optional per-sample extras ``s/<name>`` (``clean_y``,
  ``is_noisy``, ``group``, ``attribute``).
- ``card.json``: the data card (per-class / per-group counts, seeds, checksums, transition
  matrix...). ``card["num_classes"]`` and ``card["splits"]`` are always present.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

ARRAYS = "arrays.npz"
CARD = "card.json"


@dataclass
class Split:
    """One split: images, observed labels, source indices and per-sample extras."""

    x: np.ndarray  # uint8 [N, H, W, C]
    y: np.ndarray  # int64 [N]
    index: np.ndarray  # int64 [N], position in the source split
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.y)
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {self.x.dtype} {self.x.shape}")
        for name, arr in {"x": self.x, "index": self.index, **self.extras}.items():
            if len(arr) != n:
                raise ValueError(f"split array {name!r} has {len(arr)} rows, labels have {n}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class PreparedData:
    """All splits of one experiment's data set plus its data card."""

    splits: dict[str, Split]
    card: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.card["num_classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the network input."""
        _, h, w, c = self.splits["train"].x.shape
        return c, h, w

    def test_splits(self) -> list[str]:
        return [s for s in self.splits if s == "test" or s.startswith("test_")]


def save_prepared(data: PreparedData, out_dir: str | os.PathLike) -> None:
    """Write ``data`` to ``out_dir`` atomically: a crash leaves no half-written directory."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    card = dict(data.card)
    card["splits"] = {name: len(s) for name, s in data.splits.items()}
    arrays: dict[str, np.ndarray] = {}
    for name, s in data.splits.items():
        arrays[f"{name}/x"] = s.x
        arrays[f"{name}/y"] = s.y.astype(np.int64)
        arrays[f"{name}/index"] = s.index.astype(np.int64)
        for key, arr in s.extras.items():
            arrays[f"{name}/{key}"] = arr
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        np.savez(tmp / ARRAYS, **arrays)
        (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            for p in out_dir.iterdir():
                p.unlink()
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
        raise
    data.card = card


class PreparedDataError(UserError, ValueError):
    """A prepared data set that cannot be used; the message says which folder and what to do."""


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Read a prepared data set, with one clear error if it is missing or broken (truncated or
    garbage ``arrays.npz``, corrupt ``card.json``, a card without ``splits``, missing arrays)."""
    path = Path(path)
    if not (path / ARRAYS).is_file() or not (path / CARD).is_file():
        raise FileNotFoundError(
            f"no prepared data set at {path}: run the prepare stage first (dvc repro prepare)")
    fix = "delete the folder and rerun the prepare stage (dvc repro prepare)"
    try:
        card = json.loads((path / CARD).read_text())
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # BadZipFile, zlib/EOF errors of a truncated file, JSON errors...
        raise PreparedDataError(f"prepared data set at {path} is unreadable ({type(err).__name__}: {err}); "
                                f"{fix}") from err
    if not isinstance(card, dict) or not isinstance(card.get("splits"), dict) or "num_classes" not in card:
        raise PreparedDataError(f"{path / CARD} is not a data card of this project (it needs 'splits' and "
                                f"'num_classes'); {fix}")
    splits: dict[str, Split] = {}
    for name in card["splits"]:
        prefix = f"{name}/"
        missing = [k for k in ("x", "y", "index") if prefix + k not in arrays]
        if missing:
            raise PreparedDataError(f"{path / ARRAYS} has no array {prefix + missing[0]} for split {name!r} of the "
                                    f"card; {fix}")
        extras = {k[len(prefix):]: v for k, v in arrays.items()
                  if k.startswith(prefix) and k[len(prefix):] not in ("x", "y", "index")}
        try:
            splits[name] = Split(arrays[prefix + "x"], arrays[prefix + "y"], arrays[prefix + "index"], extras)
        except ValueError as err:
            raise PreparedDataError(f"prepared data set at {path}: split {name!r} is inconsistent ({err}); "
                                    f"{fix}") from err
    return PreparedData(splits, card)
