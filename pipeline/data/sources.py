"""Source data sets (CIFAR-10, CIFAR-100, MNIST) as uint8 arrays, with provenance for the data card.

:func:`load_source` looks in three places, in this order:

1. ``data.root`` if set, and then only there (a folder that is missing or lacks the data is an
   error, not a reason to read another copy): the torchvision layout (``cifar-10-batches-py/``, ``cifar-100-python/``,
   ``MNIST/raw/``; tried first) or the offline-copy layout (``cifar10-jpeg.tar.gz``, ``mnist/``). The
   user's files are read as they are: their sha256 is recorded and the card says whether they
   match the official checksums. CIFAR's python batches are pickles, which can run code: they are
   read by :class:`CifarUnpickler`, which builds nothing but numpy arrays and plain data.
2. The offline copies in :func:`pipeline.layout.shared_data_dir` (same layouts). Their checksums
   are verified and a mismatch stops the run with :class:`ChecksumError`: falling through to a
   download would silently swap CIFAR-10 (JPEG) for the original pixels.
3. The official download through torchvision (``download=True``, which checks md5) into
   :func:`download_dir`; a copy already there is verified and reused.

If none holds the data, one :class:`DataNotFoundError` names every place tried.

Seeds: ``limit/train`` and ``limit/test`` (see :mod:`pipeline.data.sampling`) choose the images
kept by ``limit_per_class`` / ``test_limit_per_class``, per class, from the labels alone, before
any image is decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.prepared import Split
from pipeline.data.sampling import choose_per_class, stream
from pipeline.data.source_files import (CIFAR10_JPEG, DISPLAY_NAMES, MNIST_FOLDERS, TORCHVISION, DataSourceError,
                                        Found, read_location, torchvision_dataset)
from pipeline.layout import shared_data_dir

STREAMS = {
    "limit/train": "which training images of each class data.limit_per_class keeps",
    "limit/test": "which test images of each class data.test_limit_per_class keeps",
}


class DataNotFoundError(DataSourceError):
    """No place holds the source data."""


@dataclass
class Source:
    """A source data set: the official train and test splits (possibly subsampled)."""

    name: str  # cifar10 | cifar100 | mnist
    train_x: np.ndarray  # uint8 [N, H, W, C]
    train_y: np.ndarray  # int64 [N]
    train_index: np.ndarray  # int64 [N], position in the official training split
    test_x: np.ndarray  # uint8 [M, H, W, C]
    test_y: np.ndarray  # int64 [M]
    test_index: np.ndarray  # int64 [M], position in the official test set
    class_names: list[str]
    provenance: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def take(self, split: str, positions: np.ndarray) -> Split:
        """The images at ``positions`` of ``split`` ("train" pool or "test" set) with their
        labels; ``index`` = their position in the official split."""
        x, y, index = (self.train_x, self.train_y, self.train_index) if split == "train" else (
            self.test_x, self.test_y, self.test_index)
        return Split(x[positions], y[positions], index[positions])


def download_dir() -> Path:
    """Cache of official downloads: ``$META_IADA_DOWNLOADS`` or ``~/.cache/meta_iada``."""
    return Path(os.environ.get("META_IADA_DOWNLOADS", Path.home() / ".cache" / "meta_iada"))


def download_official(name: str, folder: Path) -> None:
    """Fetch the official files with torchvision (``download=True`` verifies their md5)."""
    torchvision_dataset(name)(str(folder), train=True, download=True)


def load_source(name: str, root: str | None = None, *, limit_per_class: int | None = None,
                test_limit_per_class: int | None = None, seed: int = 0) -> Source:
    """Load source ``name`` from the first place that holds it (see the module docstring),
    keeping at most ``limit_per_class`` training / ``test_limit_per_class`` test images per class."""
    found, location, folder = _find(name, root)
    limits = {"train": limit_per_class, "test": test_limit_per_class}
    picked = {}
    for split, limit in limits.items():
        labels = found.labels[split]
        picked[split] = (np.arange(len(labels)) if limit is None else choose_per_class(
            labels, [limit] * len(found.class_names), stream(seed, f"limit/{split}")))
    provenance = {
        # The path within the location's folder: the card (and so the prepared data's hash in
        # dvc.lock) must not depend on where the checkout lives.
        "dataset": found.dataset, "location": location, "path": found.path.relative_to(folder).as_posix(),
        "sha256": found.files, "matches_official_checksums": found.matches_official,
        "checksum_reference": found.reference,
        "limit_per_class": limit_per_class, "test_limit_per_class": test_limit_per_class,
        "official_sizes": {split: len(found.labels[split]) for split in limits},
    }
    return Source(
        name=name,
        train_x=found.images("train", picked["train"]), train_y=found.labels["train"][picked["train"]],
        train_index=picked["train"],
        test_x=found.images("test", picked["test"]), test_y=found.labels["test"][picked["test"]],
        test_index=picked["test"],
        class_names=found.class_names, provenance=provenance)


def load_labels(name: str, root: str | None = None) -> dict[str, np.ndarray]:
    """The labels of the official "train" and "test" splits, in official order, found as by
    :func:`load_source` but without decoding any image (label-only work: noise, counts)."""
    return _find(name, root)[0].labels


def _find(name: str, root: str | None) -> tuple[Found, str, Path]:
    """The first of root, shared copy, download cache that holds ``name``: what was found there,
    the location's name and its folder."""
    display = DISPLAY_NAMES[name]
    tried = []
    if root is None:
        tried.append("data.root: not set")
    else:  # a user who set data.root meant that data: no fallback to another copy
        if not Path(root).is_dir():
            raise DataNotFoundError(f"data.root = {root} is not a folder: create it with {_expected_layouts(name)} "
                                    "inside, or set data.root: null to use the offline copies or the download")
        found = read_location(name, Path(root), verify=False)
        if found:
            return found, "root", Path(root)
        raise DataNotFoundError(f"data.root = {root} does not hold {display}: expected {_expected_layouts(name)} "
                                "there, or set data.root: null to use the offline copies or the download")
    shared = shared_data_dir()
    found = read_location(name, shared, verify=True)
    if found:
        return found, "shared", shared
    tried.append(f"offline copies in {shared}: {_expected_layouts(name)} not found")
    cache = download_dir()
    found = read_location(name, cache, verify=True)
    if found:
        return found, "download", cache
    try:
        download_official(name, cache)
    except (OSError, RuntimeError) as err:
        tried.append(f"official download of {display} into {cache} "
                     f"(torchvision.datasets.{TORCHVISION[name]}): {err}")
    else:
        found = read_location(name, cache, verify=True)
        if found:
            return found, "download", cache
        tried.append(f"official download into {cache}: finished but {_expected_layouts(name)} not found")
    raise DataNotFoundError(
        f"{display} could not be found. Places tried:\n  - " + "\n  - ".join(tried) +
        f"\nSupply it by setting data.root to a folder holding {_expected_layouts(name)}, or run "
        f"once with internet access (the download is kept in {cache}; set META_IADA_DOWNLOADS to "
        f"move it).")


def _expected_layouts(name: str) -> str:
    if name == "cifar10":
        return f"{torchvision_dataset(name).base_folder}/ or {CIFAR10_JPEG}"
    if name == "cifar100":
        return f"{torchvision_dataset(name).base_folder}/"
    return "the four MNIST IDX files (.gz or not) in " + ", ".join(f"{d}/" for d in MNIST_FOLDERS)
