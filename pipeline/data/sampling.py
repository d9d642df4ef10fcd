"""Seeded sampling helpers shared by the source loader and the scenario builders.

Seeds: every random draw uses its own named stream, ``stream(seed, name)`` =
``numpy.random.default_rng([crc32(name), seed])`` with ``seed`` = ``data.seed``. Changing one
draw (say the noise rate) therefore leaves every other draw (say which images form the meta
set) unchanged. Each module lists its stream names and what they draw in ``STREAMS``; the data
card records the streams a build used.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.params.schema import ParamError


def stream(seed: int, name: str) -> np.random.Generator:
    """The generator of stream ``name``: ``default_rng([crc32(name), seed])``."""
    return np.random.default_rng([zlib.crc32(name.encode()), seed])


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Number of samples of each class 0..num_classes-1."""
    return np.bincount(labels, minlength=num_classes).tolist()


def choose_per_class(labels: np.ndarray, counts: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of min(counts[c], n_c) samples of each class c, drawn uniformly without
    replacement (classes in order 0..C-1, one ``rng.choice`` per class)."""
    chosen = []
    for c, n in enumerate(counts):
        pool = np.flatnonzero(labels == c)
        chosen.append(rng.choice(pool, size=min(n, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def carve_per_class(labels: np.ndarray, num_classes: int, sizes: Mapping[str, int],
                    rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Carve balanced sets out of a pool.

    For each class c (in order) the positions of class c are shuffled with one
    ``rng.permutation``; the first ``sizes[s1]`` go to set s1, the next ``sizes[s2]`` to s2, and so
    on; the rest stay in the pool. Returns the sorted positions of each set and of the rest.
    """
    need = sum(sizes.values())
    parts: dict[str, list[np.ndarray]] = {name: [] for name in sizes}
    rest = []
    for c in range(num_classes):
        perm = rng.permutation(np.flatnonzero(labels == c))
        if len(perm) < need:
            raise ParamError(
                f"class {c} has {len(perm)} training images, fewer than the {need} per class that "
                f"the {' and '.join(sizes)} sets need: lower data.meta_per_class / "
                f"data.val_per_class or raise data.limit_per_class")
        start = 0
        for name, n in sizes.items():
            parts[name].append(perm[start:start + n])
            start += n
        rest.append(perm[start:])
    carved = {name: np.sort(np.concatenate(p)).astype(np.int64) for name, p in parts.items()}
    return carved, np.sort(np.concatenate(rest)).astype(np.int64)


def floor_tol(value: float) -> int:
    """floor(value), tolerant to float rounding: an exact integer computed as 49.999999999 → 50."""
    return int(np.floor(value + 1e-9))
