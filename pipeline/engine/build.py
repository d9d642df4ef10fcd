"""What a run is built from: the device, the network and its SGD optimizer, and the loaders
(training and meta batches augmented and seeded, evaluation splits in order)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipeline.data.loader import Augmentation, BatchLoader, Order, channel_stats
from pipeline.data.prepared import PreparedData
from pipeline.networks import FeatureClassifier, Head, build_network
from pipeline.params.experiment import ExperimentConfig
from pipeline.params.schema import ParamError

TRAINING_SPLITS = ("train", "meta")  # every other split is an evaluation split


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamError(f"run.device = {device!r} but no CUDA device is available: use 'auto' or 'cpu'")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ParamError(f"run.device = {device!r} but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(device)


# Set to 1 to train in bf16 on a device without native bfloat16 convolutions (check_precision).
EMULATED_BF16_ENV = "META_IADA_ALLOW_EMULATED_BF16"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively: a CUDA device that supports bf16,
    or a CPU on which oneDNN has a bf16 path (AVX-512 or newer: ``avx512_bf16``, ``amx_bf16``);
    on an AVX2 CPU oneDNN has none and autocast's bf16 convolutions fall back to a slow reference
    path (docs/precision.md). Other devices are not judged (True)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def check_precision(exp: ExperimentConfig, device: torch.device) -> None:
    """Refuse ``network.precision: bf16`` on a device without native bf16 (:func:`native_bf16`),
    unless ``$META_IADA_ALLOW_EMULATED_BF16`` is 1: there a run takes many times as long as in
    fp32 (14x for ResNet-32 on an AVX2 CPU, docs/precision.md), which nobody wants by accident."""
    if exp.network.precision != "bf16" or os.environ.get(EMULATED_BF16_ENV) == "1" or native_bf16(device):
        return
    where = torch.cpu.get_capabilities().get("cpu_name", "this CPU") if device.type == "cpu" else str(device)
    raise ParamError(f"network.precision = bf16, but {where} ({torch.backends.cpu.get_cpu_capability()}) has no native "
                     "bfloat16 convolutions: bf16 is emulated there, many times slower than fp32 (docs/precision.md). "
                     "Run on a CPU with AVX-512 or a GPU, or set network.precision=fp32 (a different run), or set "
                     f"{EMULATED_BF16_ENV}=1 to run it anyway")


def normalisation(data: PreparedData) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training images (std floored at 1: MNIST-like blank channels)."""
    mean, std = channel_stats(data.splits["train"].x)
    return mean, [max(s, 1.0) for s in std]


def build_net(exp: ExperimentConfig, data: PreparedData, device: torch.device,
              head: Head = "linear") -> FeatureClassifier:
    c, _, _ = data.image_shape
    net = build_network(exp.network.arch, data.num_classes, in_channels=c, head=head,
                        precision=exp.network.precision).to(device)
    if exp.network.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def build_model(exp: ExperimentConfig, data: PreparedData, device: torch.device,
                head: Head = "linear") -> tuple[FeatureClassifier, torch.optim.SGD]:
    """The network and its SGD optimizer (lr set per iteration by the loop)."""
    net = build_net(exp, data, device, head)
    o = exp.optim
    opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                          weight_decay=o.weight_decay)
    return net, opt


def check_batch_sizes(exp: ExperimentConfig, data: PreparedData) -> None:
    """A batch larger than its split is a mistake (a loader would shrink it silently)."""
    sizes = {"optim.batch_size": (exp.optim.batch_size, "train"), "meta_batch_size": (exp.meta_batch_size, "meta")}
    for key, (size, split) in sizes.items():
        if size > len(data.splits[split].y):
            raise ParamError(f"{key} = {size} is larger than the {split} split ({len(data.splits[split].y)} "
                             "images): lower it")


@dataclass
class Loaders:
    train: BatchLoader
    meta: BatchLoader
    eval: dict[str, BatchLoader]


def eval_loaders(exp: ExperimentConfig, data: PreparedData, device: torch.device,
                 stats: tuple[list[float], list[float]] | None = None) -> dict[str, BatchLoader]:
    """One in-order, unaugmented loader per evaluation split (every split but train and meta)."""
    stats = stats or normalisation(data)
    return {name: BatchLoader(split, stats, exp.eval_batch_size, device=device,
                              channels_last=exp.network.channels_last)
            for name, split in data.splits.items() if name not in TRAINING_SPLITS}


def make_loaders(exp: ExperimentConfig, data: PreparedData, seed: int, device: torch.device,
                 train_weights: torch.Tensor | None = None) -> Loaders:
    """Training (shuffled, augmented, seeded by ``seed``; with ``train_weights`` [N] drawn by a
    weighted sampler instead, see :class:`Order`), meta (shuffled, augmented, its own seed) and
    evaluation loaders."""
    stats = normalisation(data)
    a = exp.augment
    augment = Augmentation(a.crop_padding, a.flip) if a.crop_padding > 0 or a.flip else None
    common = dict(augment=augment, device=device, channels_last=exp.network.channels_last)
    train = BatchLoader(data.splits["train"], stats, exp.optim.batch_size,
                        order=Order(shuffle=True, drop_last=True, seed=seed, weights=train_weights), **common)
    meta = BatchLoader(data.splits["meta"], stats, exp.meta_batch_size,
                       order=Order(shuffle=True, drop_last=True, seed=seed + 7919), **common)
    return Loaders(train, meta, eval_loaders(exp, data, device, stats))
