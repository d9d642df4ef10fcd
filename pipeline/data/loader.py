"""In-memory batch loading with whole-batch augmentation in torch.

Images stay uint8 [N, C, H, W] in memory, on the loader's device (copied there once: on a GPU no
batch of images crosses from the host); a batch is gathered by index, randomly cropped (zero
padding ``pad`` pixels, as torchvision's ``RandomCrop(32, padding=4)``), flipped horizontally with
probability 1/2, converted to float and normalised, all as tensor ops on the whole batch on that
device: no per-image PIL work in the training loop. The random draws (order, offsets, flips) are
made on the host from a seeded generator, so every device sees the same batches. Each batch
carries its sample indices.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.data.prepared import Split


@dataclass
class Batch:
    """A training batch: augmented, normalised images, labels, and sample indices."""

    x: torch.Tensor  # float [B, C, H, W]
    y: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B], row in the training split (for per-sample buffers)


def to_tensor_images(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] array -> contiguous uint8 tensor [N, C, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def channel_stats(x: np.ndarray, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation, 0-255 scale, of uint8 images
    [N, H, W, C], from exact integer sums S = Σx and Q = Σx² taken ``chunk`` images at a time:
    mean = S/n, var = (Q − S²/n)/n. A float64 copy of the whole set would cost 8 bytes a pixel
    (2.4 GB for 50k CIFAR images); the sums stay within int64 for any data set that fits in memory."""
    channels = x.shape[-1]
    s = np.zeros(channels, dtype=np.int64)
    q = np.zeros(channels, dtype=np.int64)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk].reshape(-1, channels).astype(np.int64)
        s += block.sum(0)
        q += np.square(block).sum(0)
    n = len(x) * int(np.prod(x.shape[1:-1]))
    sums, squares = (int(v) for v in s), (int(v) for v in q)
    moments = [(si / n, (qi * n - si * si) / (n * n)) for si, qi in zip(sums, squares)]  # exact integers
    return [m for m, _ in moments], [math.sqrt(v) for _, v in moments]


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, for a whole batch.

    x: uint8 or float [B, C, H, W] on any device. Each sample gets its own offset (oy, ox) in
    [0, 2*pad] and its own flip bit, drawn from ``generator`` (a host generator: the draws are the
    same whatever the device; only these 3B small numbers are copied to it).
    """
    b, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [B, 1, H, 1]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [B, 1, 1, W]
        bidx = torch.arange(b, device=dev)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(dev)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding ``pad`` pixels (0: no crop) and a horizontal flip with
    probability 1/2 (``flip``)."""

    pad: int = 4
    flip: bool = True


@dataclass(frozen=True)
class Order:
    """How a loader draws its batches: in random order each epoch (``shuffle``, seeded by
    ``seed`` and the epoch number), and whether the last, smaller batch of an epoch is dropped
    (training) or kept (evaluation). With ``weights`` w [N] an epoch is instead N draws with
    replacement, sample i with probability w_i / Σ_j w_j (a weighted sampler, seeded the same
    way)."""

    shuffle: bool = False
    drop_last: bool = False
    seed: int = 0
    weights: torch.Tensor | None = field(default=None, compare=False)


class BatchLoader:
    """Iterates a split in batches; a fixed seed gives the same batches after a resume.

    Args:
        split: the data (uint8 images, labels, indices).
        stats: per-channel (mean, std) of the normalisation, on the 0-255 scale.
        batch_size: samples per batch.
        augment: the augmentation of every batch (None: none).
        order: shuffling, seed and whether to drop the last batch (default: in order, all kept).
    """

    def __init__(self, split: Split, stats: tuple[list[float], list[float]], batch_size: int, *,
                 augment: Augmentation | None = None, order: Order = Order(),
                 device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        mean, std = stats
        self.device = torch.device(device)
        # the split lives on the device once: uint8 images [N, C, H, W], labels, normalisation
        self.x = to_tensor_images(split.x).to(self.device)
        self.y = torch.from_numpy(split.y.astype(np.int64)).to(self.device)
        self.n = len(self.y)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.augment = augment is not None
        self.pad, self.flip = (augment.pad, augment.flip) if augment is not None else (0, False)
        self.shuffle, self.drop_last, self.seed = order.shuffle, order.drop_last, order.seed
        self.weights = None if order.weights is None else order.weights.detach().to("cpu", torch.float64)
        if self.weights is not None and (self.weights.shape != (self.n,) or (self.weights < 0).any()
                                         or not self.weights.sum() > 0):
            raise ValueError(f"Order.weights must be {self.n} non-negative weights with a positive sum, "
                             f"got shape {tuple(self.weights.shape)}")
        self.channels_last = channels_last

    def __len__(self) -> int:
        if self.drop_last:
            return max(self.n // self.batch_size, 1 if self.n else 0)
        return (self.n + self.batch_size - 1) // self.batch_size

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None, *,
              augment: bool | None = None) -> Batch:
        """The batch of the given sample indices (augmented when the loader augments, unless
        ``augment`` is False)."""
        idx = idx.to(self.device)  # host indices (B int64) are all that is copied per batch
        x = self.x[idx]
        if self.augment and augment is not False:
            x = random_crop_flip(x, self.pad, self.flip, generator or torch.Generator())
        x = (x.to(torch.float32) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, self.y[idx], idx)

    def epoch(self, epoch: int = 0, *, drop_last: bool | None = None, augment: bool | None = None,
              weighted: bool = True) -> Iterator[Batch]:
        """Batches of one epoch; the order and augmentation depend only on (seed, epoch).
        ``drop_last`` overrides the loader's own setting, ``augment=False`` turns augmentation off,
        ``weighted=False`` ignores the order's ``weights`` (every sample once)."""
        drop_last = self.drop_last if drop_last is None else drop_last
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is not None and weighted:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=gen)
        else:
            order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        bs = min(self.batch_size, self.n) if drop_last else self.batch_size
        stop = (self.n // bs) * bs if drop_last else self.n
        for start in range(0, stop, bs):
            yield self.batch(order[start:start + bs], gen, augment=augment)

    def sweep(self, *, augment: bool = True) -> Iterator[Batch]:
        """Every sample exactly once, shuffled and (unless ``augment`` is False) augmented as a
        training epoch would be, with the last, smaller batch kept (an epoch number no training
        epoch uses: -1); an order's sample weights are not used here."""
        return self.epoch(-1, drop_last=False, augment=None if augment else False, weighted=False)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def endless(self, start_epoch: int = 0) -> Iterator[Batch]:
        """Batches forever, epoch after epoch (for the meta set)."""
        epoch = start_epoch
        while True:
            yield from self.epoch(epoch)
            epoch += 1
