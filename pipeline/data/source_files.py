"""The files of each source layout read into labels and images, with their checksums: CIFAR's
python batches (read by :class:`CifarUnpickler`, which loads no code), the offline CIFAR-10 (JPEG)
tarball and MNIST's IDX files. :mod:`pipeline.data.sources` decides where to look."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import UserError

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
class Found:
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


def read_location(name: str, folder: Path, verify: bool) -> Found | None:
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


def _read_cifar_pickle(folder: Path, name: str, verify: bool) -> Found | None:
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
    return Found(
        dataset=DISPLAY_NAMES[name], path=base,
        files=files, matches_official=all(official), reference=f"md5 list of torchvision.datasets.{cls.__name__}",
        class_names=names, labels={s: a[1] for s, a in arrays.items()},
        images=lambda s, pos: arrays[s][0][pos])


def _read_jpeg_tar(path: Path, verify: bool) -> Found:
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
    return Found(
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


def _read_mnist(folder: Path, verify: bool) -> Found | None:
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
    return Found(
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
