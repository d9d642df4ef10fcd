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

import codecs
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.data.prepared import Split
from pipeline.data.sampling import choose_per_class, stream
from pipeline.errors import UserError
from pipeline.layout import shared_data_dir

STREAMS = {
    "limit/train": "which training images of each class data.limit_per_class keeps",
    "limit/test": "which test images of each class data.test_limit_per_class keeps",
}

DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST"}
TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "mnist": "MNIST"}  # torchvision.datasets classes

CIFAR10_JPEG = "cifar10-jpeg.tar.gz"
CIFAR10_JPEG_SHA256 = "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"
MNIST_FOLDERS = ("MNIST/raw", "mnist", ".")
MNIST_FILES = {  # IDX file -> sha256 of the uncompressed bytes (shared/data/README.md)
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class DataSourceError(UserError, RuntimeError):
    """Source data that cannot be had or read: the message says what to fix."""


class ChecksumError(DataSourceError):
    """A file whose checksum differs from the pinned one."""

    def __init__(self, path: Path, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{path} fails its {algorithm} check (expected {expected}, got {actual}): the copy is "
            f"corrupt or truncated; replace it with a good copy or delete it")


class DataNotFoundError(DataSourceError):
    """No place holds the source data."""


class CifarUnpickler(pickle.Unpickler):
    """A pickle reader for CIFAR-10/100 python batches that loads no code.

    A batch is a dict of plain data (lists of labels and file names, strings) and one uint8
    numpy array. Of the globals a pickle may name, only those that rebuild such an array are
    allowed: numpy's ``_reconstruct``, ``ndarray`` and ``dtype`` (the official Python 2 files),
    ``_frombuffer`` (numpy's protocol-5 pickles) and ``_codecs.encode`` (bytes in Python 3's
    protocol <= 2 pickles). Any other (``os.system``, ``builtins.eval``...) is refused before it
    is imported, so a crafted file cannot run code."""

    ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which no CIFAR batch holds; a pickle can run "
                                         f"code, so it was not read") from None


def read_cifar_batch(path: Path, raw: bytes) -> dict[str, Any]:
    """The dict that CIFAR python batch ``path`` (its bytes ``raw``) holds, read by
    :class:`CifarUnpickler`; anything else is a :class:`DataSourceError`."""
    try:
        batch = CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataSourceError(f"{path} is not a readable CIFAR batch ({err}): replace it with the official "
                              "file") from err
    if not isinstance(batch, dict):
        raise DataSourceError(f"{path} is not a CIFAR batch (it holds a {type(batch).__name__}, not a dict): "
                              "replace it with the official file")
    return batch


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


@dataclass
class _Found:
    """A source found on disk: labels known, images fetched on demand (so that a subsample
    decodes only its own JPEGs)."""

    dataset: str
    path: Path
    files: dict[str, str]  # file -> sha256
    matches_official: bool
    reference: str  # what the files were compared with
    class_names: list[str]
    labels: dict[str, np.ndarray]  # "train" / "test" -> int64 labels in official order
    images: Callable[[str, np.ndarray], np.ndarray]  # (split, positions) -> uint8 [n, H, W, C]


def torchvision_dataset(name: str) -> type:
    """torchvision's dataset class of source ``name`` (its file lists, md5s and downloader).
    Imported here, not at the top: torchvision costs seconds at start-up, and only building a
    data set from CIFAR's pickle batches or downloading needs it (not ``evaluate``, which imports
    this module too)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION[name])


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


def _find(name: str, root: str | None) -> tuple[_Found, str, Path]:
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
        found = _read_location(name, Path(root), verify=False)
        if found:
            return found, "root", Path(root)
        raise DataNotFoundError(f"data.root = {root} does not hold {display}: expected {_expected_layouts(name)} "
                                "there, or set data.root: null to use the offline copies or the download")
    shared = shared_data_dir()
    found = _read_location(name, shared, verify=True)
    if found:
        return found, "shared", shared
    tried.append(f"offline copies in {shared}: {_expected_layouts(name)} not found")
    cache = download_dir()
    found = _read_location(name, cache, verify=True)
    if found:
        return found, "download", cache
    try:
        download_official(name, cache)
    except (OSError, RuntimeError) as err:
        tried.append(f"official download of {display} into {cache} "
                     f"(torchvision.datasets.{TORCHVISION[name]}): {err}")
    else:
        found = _read_location(name, cache, verify=True)
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


def _read_location(name: str, folder: Path, verify: bool) -> _Found | None:
    """Read ``name`` from ``folder`` in any layout it supports; None if no layout is there."""
    if name == "mnist":
        return _read_mnist(folder, verify)
    found = _read_cifar_pickle(folder, name, verify)
    if found is None and name == "cifar10" and (folder / CIFAR10_JPEG).is_file():
        found = _read_jpeg_tar(folder / CIFAR10_JPEG, verify)
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataSourceError(f"cannot read {path} ({err}): check the file and its permissions") from err


def _check(path: Path, raw: bytes, algorithm: str, expected: str, verify: bool) -> tuple[str, bool]:
    """sha256 of ``raw`` and whether its ``algorithm`` digest is ``expected``; raises
    :class:`ChecksumError` on a mismatch when ``verify``."""
    sha = hashlib.sha256(raw).hexdigest()
    actual = sha if algorithm == "sha256" else hashlib.new(algorithm, raw).hexdigest()
    if verify and actual != expected:
        raise ChecksumError(path, algorithm, expected, actual)
    return sha, actual == expected


def _read_cifar_pickle(folder: Path, name: str, verify: bool) -> _Found | None:
    """CIFAR python pickle batches; file names, md5s and keys from torchvision's dataset class."""
    cls = torchvision_dataset(name)
    base = folder / cls.base_folder
    if not base.is_dir():
        return None
    files: dict[str, str] = {}
    official: list[bool] = []

    def load(file: str, md5: str) -> dict[str, Any]:
        path = base / file
        raw = _read_bytes(path)
        sha, same = _check(path, raw, "md5", md5, verify)
        files[f"{cls.base_folder}/{file}"] = sha
        official.append(same)
        return read_cifar_batch(path, raw)

    def split(entries: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        batches = [load(file, md5) for file, md5 in entries]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate([b["labels"] if "labels" in b else b["fine_labels"] for b in batches])
        return np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64)

    arrays = {"train": split(cls.train_list), "test": split(cls.test_list)}
    names = list(load(cls.meta["filename"], cls.meta["md5"])[cls.meta["key"]])
    return _Found(
        dataset=DISPLAY_NAMES[name], path=base,
        files=files, matches_official=all(official), reference=f"md5 list of torchvision.datasets.{cls.__name__}",
        class_names=names, labels={s: a[1] for s, a in arrays.items()},
        images=lambda s, pos: arrays[s][0][pos])


def _read_jpeg_tar(path: Path, verify: bool) -> _Found:
    """The offline CIFAR-10 (JPEG) tarball: ``<split>/<class>/NNNN.jpg``, read in memory.

    Images are ordered as ``torchvision.datasets.ImageFolder`` orders them (class folders
    alphabetically = CIFAR-10 label order, then file names); ``index`` refers to that order.
    """
    raw = _read_bytes(path)
    sha, ok = _check(path, raw, "sha256", CIFAR10_JPEG_SHA256, verify)
    members: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    try:
        data = gzip.decompress(raw)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar.getmembers():
                parts = m.name.split("/")
                if m.isfile() and len(parts) == 3 and parts[0] in members:
                    members[parts[0]].append((parts[1], parts[2], data[m.offset_data:m.offset_data + m.size]))
    except (OSError, EOFError, tarfile.TarError) as err:
        raise DataSourceError(f"{path} is not a readable .tar.gz ({err}): replace it with a good copy") from err
    class_names = sorted({cls for cls, _, _ in members["train"]})
    if not class_names or sorted({cls for cls, _, _ in members["test"]}) != class_names:
        raise DataSourceError(f"{path} lacks the train/<class>/ and test/<class>/ folders of the "
                              f"CIFAR-10 (JPEG) layout: replace it with a good copy")
    for split in members:
        members[split].sort(key=lambda m: (m[0], m[1]))
    label_of = {c: i for i, c in enumerate(class_names)}
    return _Found(
        dataset="CIFAR-10 (JPEG)", path=path, files={path.name: sha}, matches_official=ok,
        reference="sha256 of the archive in shared/data/README.md", class_names=class_names,
        labels={s: np.array([label_of[c] for c, _, _ in ms], dtype=np.int64) for s, ms in members.items()},
        images=lambda s, pos: decode_jpegs(path, [members[s][i] for i in pos]))


def decode_jpegs(path: Path, members: list[tuple[str, str, bytes]]) -> np.ndarray:
    """Decode (class, file, JPEG bytes) members of archive ``path`` to uint8 [N, H, W, 3] with Pillow."""
    images = []
    for cls, file, blob in members:
        try:
            with Image.open(io.BytesIO(blob), formats=["JPEG"]) as image:
                images.append(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
        except OSError as err:
            raise DataSourceError(f"{path}: {cls}/{file} is not a readable JPEG ({err}): "
                                  f"replace the archive") from err
    return np.stack(images)


def _read_mnist(folder: Path, verify: bool) -> _Found | None:
    """The four MNIST IDX files (gzipped or not) in one of ``MNIST_FOLDERS`` under ``folder``."""
    for sub in MNIST_FOLDERS:
        base = folder / sub
        paths = {f: next((p for p in (base / f, base / f"{f}.gz") if p.is_file()), None) for f in MNIST_FILES}
        if all(paths.values()):
            break
    else:
        return None
    files, arrays, ok = {}, {}, True
    for file, path in paths.items():
        raw = _read_bytes(path)
        try:
            data = gzip.decompress(raw) if path.suffix == ".gz" else raw
        except (OSError, EOFError) as err:
            raise DataSourceError(f"{path} is not a readable gzip file ({err}): replace it") from err
        files[file], same = _check(path, data, "sha256", MNIST_FILES[file], verify)
        ok = ok and same
        arrays[file] = _parse_idx(path, data)
    x = {"train": arrays["train-images-idx3-ubyte"], "test": arrays["t10k-images-idx3-ubyte"]}
    return _Found(
        dataset="MNIST", path=base, files=files, matches_official=ok,
        reference="sha256 of the uncompressed IDX files in shared/data/README.md",
        class_names=[str(d) for d in range(10)],
        labels={"train": arrays["train-labels-idx1-ubyte"].astype(np.int64),
                "test": arrays["t10k-labels-idx1-ubyte"].astype(np.int64)},
        images=lambda s, pos: x[s][pos][..., None])


def _parse_idx(path: Path, data: bytes) -> np.ndarray:
    """An IDX file of unsigned bytes: magic 0x0000080D (D = number of dims), D big-endian int32
    sizes, then the values."""
    ndim = data[3] if len(data) >= 4 else 0
    header = 4 + 4 * ndim
    if len(data) < header or data[:3] != b"\x00\x00\x08" or ndim not in (1, 3):
        raise DataSourceError(f"{path} is not an MNIST IDX file of unsigned bytes: replace it")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise DataSourceError(f"{path} is truncated: expected {shape} values; replace it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
