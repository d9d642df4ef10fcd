"""Fixture generators for the data tests: tiny source data sets written in the real layouts,
in-memory sources, and the labels of the real shared CIFAR-10 read once per test session."""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.params.schema import build
from pipeline.data.config import DataConfig
from pipeline.data.source_files import CIFAR10_JPEG
from pipeline.data.sources import Source, load_labels
from pipeline.layout import shared_data_dir

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STYLE_COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
CIFAR100_CLASSES = ["bicycle", "bus", "motorcycle", "pickup_truck", "train"] + [f"class_{c}" for c in range(5, 100)]


def data_config(**raw) -> DataConfig:
    """A validated :class:`DataConfig` from keyword arguments (nested sections as dicts)."""
    return build(DataConfig, raw, "experiments.test.data")


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    """Labels 0,0,..,1,1,.. with ``per_class`` of each class (the order of CIFAR-10 (JPEG))."""
    return np.repeat(np.arange(num_classes), per_class).astype(np.int64)


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def synthetic_source(num_classes: int = 10, train_per_class: int = 60, test_per_class: int = 20,
                     shape: tuple[int, int, int] = (32, 32, 3), class_names: list[str] | None = None,
                     seed: int = 0) -> Source:
    """An in-memory source of random images with balanced classes."""
    train_y = balanced_labels(num_classes, train_per_class)
    test_y = balanced_labels(num_classes, test_per_class)
    return Source(
        name="synthetic", train_x=random_images(len(train_y), shape, seed), train_y=train_y,
        train_index=np.arange(len(train_y)), test_x=random_images(len(test_y), shape, seed + 1),
        test_y=test_y, test_index=np.arange(len(test_y)),
        class_names=class_names or [f"class_{c}" for c in range(num_classes)],
        provenance={"dataset": "synthetic"})


def styled_source(num_classes: int, train_sizes: list[int], test_sizes: list[int],
                  seed: int = 0) -> tuple[Source, dict[str, np.ndarray]]:
    """A source whose class c has ``train_sizes[s]`` / ``test_sizes[s]`` images of style s: a
    flat colour ``STYLE_COLOURS[s]`` with noise ±4. With strictly decreasing sizes the GLT
    attribute of an image is its style. Returns the source and the style of every image per split."""
    rng = np.random.default_rng(seed)
    parts, styles = {}, {}
    for split, sizes in (("train", train_sizes), ("test", test_sizes)):
        styles[split] = np.tile(np.repeat(np.arange(len(sizes)), sizes), num_classes)
        colour = STYLE_COLOURS[styles[split]][:, None, None, :]
        x = np.clip(colour + rng.integers(-4, 5, size=(len(styles[split]), 32, 32, 3)), 0, 255)
        parts[split] = (x.astype(np.uint8), np.repeat(np.arange(num_classes), sum(sizes)).astype(np.int64))
    source = Source("styled", parts["train"][0], parts["train"][1], np.arange(len(parts["train"][1])),
                    parts["test"][0], parts["test"][1], np.arange(len(parts["test"][1])),
                    [f"class_{c}" for c in range(num_classes)], {"dataset": "styled"})
    return source, styles


def write_cifar_pickle(root: Path, name: str, train_per_class: int, test_per_class: int,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-10 (``cifar-10-batches-py/``: five data batches, test_batch,
    batches.meta) or CIFAR-100 (``cifar-100-python/``: train, test, meta) pickle set under
    ``root``; returns the arrays written, images as [N, 32, 32, 3]."""
    classes = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    key = "labels" if name == "cifar10" else "fine_labels"
    arrays = {"train_y": np.tile(np.arange(len(classes)), train_per_class),
              "test_y": np.tile(np.arange(len(classes)), test_per_class)}
    arrays["train_x"] = random_images(len(arrays["train_y"]), (32, 32, 3), seed)
    arrays["test_x"] = random_images(len(arrays["test_y"]), (32, 32, 3), seed + 1)

    def batch(x: np.ndarray, y: np.ndarray) -> dict:
        return {"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), key: y.tolist()}

    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    if name == "cifar10":
        parts = np.array_split(np.arange(len(arrays["train_y"])), 5)
        files = {f"data_batch_{i + 1}": batch(arrays["train_x"][p], arrays["train_y"][p]) for i, p in enumerate(parts)}
        files["test_batch"] = batch(arrays["test_x"], arrays["test_y"])
        files["batches.meta"] = {"label_names": classes}
    else:
        files = {"train": batch(arrays["train_x"], arrays["train_y"]), "test": batch(arrays["test_x"], arrays["test_y"]),
                 "meta": {"fine_label_names": classes, "coarse_label_names": ["coarse"]}}
    for file, content in files.items():
        (folder / file).write_bytes(pickle.dumps(content))
    return arrays


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic bytes 0, 0, 8, ndim; sizes as big-endian int32; values."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist_idx(folder: Path, train_per_class: int, test_per_class: int, gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four MNIST IDX files (gzipped if ``gz``) of a tiny random set into ``folder``."""
    arrays = {"train_y": np.tile(np.arange(10), train_per_class), "test_y": np.tile(np.arange(10), test_per_class)}
    arrays["train_x"] = random_images(len(arrays["train_y"]), (28, 28), 0)
    arrays["test_x"] = random_images(len(arrays["test_y"]), (28, 28), 1)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train-images-idx3-ubyte": arrays["train_x"], "train-labels-idx1-ubyte": arrays["train_y"],
             "t10k-images-idx3-ubyte": arrays["test_x"], "t10k-labels-idx1-ubyte": arrays["test_y"]}
    for file, array in files.items():
        data = idx_bytes(array)
        (folder / (file + ".gz" if gz else file)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def write_jpeg_tarball(folder: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``cifar10-jpeg.tar.gz`` in the shared layout (``<split>/<class>/NNNN.jpg``) into
    ``folder``; each image is one flat colour (JPEG keeps it within a few levels). Returns the
    colours [N, 3] per split in ImageFolder order (class, then file name)."""
    rng = np.random.default_rng(seed)
    colours = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            colours[split] = rng.integers(0, 256, size=(10 * per_class, 3), dtype=np.uint8)
            for i, colour in enumerate(colours[split]):
                jpeg = io.BytesIO()
                Image.new("RGB", (32, 32), tuple(int(v) for v in colour)).save(jpeg, "JPEG", quality=95)
                info = tarfile.TarInfo(f"{split}/{CIFAR10_CLASSES[i // per_class]}/{i % per_class:04d}.jpg")
                info.size = jpeg.tell()
                jpeg.seek(0)
                tar.addfile(info, jpeg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CIFAR10_JPEG).write_bytes(buffer.getvalue())
    return colours


@functools.lru_cache(maxsize=1)
def real_cifar10_labels() -> dict[str, np.ndarray] | None:
    """The labels of the shared CIFAR-10 (JPEG), read once per test session without decoding
    images; None if the archive is not there."""
    if not (shared_data_dir() / CIFAR10_JPEG).is_file():
        return None
    return load_labels("cifar10")


def labels_only_source(labels: dict[str, np.ndarray], num_classes: int) -> Source:
    """A source with real labels and 1x1 black placeholder images (zero-stride views: no memory)."""
    blank = {s: np.broadcast_to(np.zeros((1, 1, 1, 3), dtype=np.uint8), (len(y), 1, 1, 3)) for s, y in labels.items()}
    return Source("labels-only", blank["train"], labels["train"], np.arange(len(labels["train"])),
                  blank["test"], labels["test"], np.arange(len(labels["test"])),
                  [f"class_{c}" for c in range(num_classes)], {"dataset": "labels only"})


def shared_mnist_present() -> bool:
    return (shared_data_dir() / "mnist" / "train-images-idx3-ubyte.gz").is_file()
