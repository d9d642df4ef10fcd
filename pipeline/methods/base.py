"""The training-method interface: one class per method, registered by name.

A method owns the loss and any auxiliary state (perturbation network, covariance estimates,
history buffers); the trainer owns the network, its SGD optimizer, the lr schedule, data,
checkpoints and tracking. Adding a method = one :class:`Method` subclass with a ``Config``
dataclass of hyperparameters (defaults here, overrides in ``params.yaml``), decorated with
:func:`register`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.loader import Batch
from pipeline.params.schema import ParamError
from pipeline.networks import FeatureClassifier, Head


@dataclass
class TrainInfo:
    """What a method may know about the run when it is created."""

    num_classes: int
    class_counts: torch.Tensor  # int64 [C], training-set label counts (observed labels)
    num_train: int
    feature_dim: int
    device: torch.device
    seed: int = 0
    train_groups: torch.Tensor | None = None  # int64 [num_train], group of each training row (subpop)
    # The network's state as the run's seeded random initialisation gives it (the scratch
    # protocol's start), built on each call; for a method that trains a fresh network (JTT's
    # stage 2). None where the trainer does not provide it.
    initial_state: Callable[[], dict[str, torch.Tensor]] | None = None


@dataclass
class StepContext:
    """Per-step facts from the trainer."""

    epoch: int  # global epoch, counting pretraining epochs
    total_epochs: int  # pretraining + training epochs (for the alpha ramp)
    step: int  # global iteration within this stage
    lr: float  # current learning rate of the network optimizer
    meta_batch: Callable[[], Batch]  # draws the next batch of the clean, balanced meta set


class Method(nn.Module):
    """Base class. Subclasses implement :meth:`loss` or override :meth:`update`.

    It is an ``nn.Module`` so that auxiliary networks and buffers (``register_buffer``) are
    saved with :meth:`state_dict` and restored on resume.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    head: ClassVar[Head] = "linear"  # the network's classifier head while training and at evaluation
    start_augmented: ClassVar[bool] = True  # whether :meth:`start` sees augmented batches
    # :meth:`loss` depends on the batch alone (not on the step context or the method's state), so
    # run.compile may compile it (pipeline/engine/compiled.py)
    compile_loss: ClassVar[bool] = False

    def __init__(self, cfg: Any, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = [net]  # in a list: not a submodule, so not saved twice in state_dict
        self.optimizer = optimizer
        self.info = info

    @property
    def network(self) -> FeatureClassifier:
        return self.net[0]

    def loss(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean training loss and the logits [B, C] of the batch."""
        raise NotImplementedError

    def update(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One training step on ``batch``: returns scalars to average over the epoch."""
        # the last step's gradients go first: a compiled loss's CUDA graph replay overwrites them
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = self.loss(batch, ctx)
        loss.backward()
        self.optimizer.step()
        return step_metrics(loss, logits, batch.y)

    def start(self, batches: Iterable[Batch]) -> None:
        """Called once before the first epoch of a fresh (not resumed) run with every training
        sample in batches (:meth:`pipeline.data.loader.BatchLoader.sweep`, augmented unless the
        class sets ``start_augmented = False``); e.g. to fill per-sample buffers. Nothing by
        default: the batches are not even drawn."""

    def sampling_weights(self) -> torch.Tensor | None:
        """How the training loader draws its batches: per-sample weights w [num_train] for a
        weighted sampler (each epoch num_train draws with replacement, sample i with probability
        w_i / Σ_j w_j, seeded by the run's seed and the epoch, as the shuffle, so a resumed run
        draws the same batches; e.g. GroupDRO's group-balanced sampler), or None (default) for
        every sample once per epoch in a shuffled order. Read once, when the run is set up."""
        return None

    def epoch_metrics(self) -> dict[str, float]:
        """Metrics to log at the end of an epoch (e.g. statistics of epsilon)."""
        return {}

    def sample_scores(self) -> dict[str, np.ndarray]:
        """Per-training-sample scores to keep for evaluation (e.g. the last epsilon)."""
        return {}

    def artifacts(self) -> dict[str, nn.Module]:
        """Learned auxiliary networks to save and log (e.g. ``perturbation_net``)."""
        return {}

    def extra_state_dict(self) -> dict[str, Any]:
        """State outside ``nn.Module`` (e.g. auxiliary optimizers) for resuming."""
        return {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PerSampleLoss(Method):
    """A method whose loss is the batch mean of a per-sample loss ℓ_i, optionally weighted:
    L = mean_i w_i ℓ_i (Σ_i w_i ℓ_i / B). Subclasses implement :meth:`per_sample` and may give
    :meth:`sample_weights`."""

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ℓ_i [B]."""
        raise NotImplementedError

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        """w_i [B], or None for an unweighted mean."""
        return None

    def loss(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(batch.x)
        per_sample = self.per_sample(logits, batch.y)
        w = self.sample_weights(batch.y)
        return (per_sample if w is None else w.to(per_sample.dtype) * per_sample).mean(), logits


def step_metrics(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """What every method's step reports: its own training loss (``loss``: what it minimises, not
    comparable between methods), the batch accuracy (``acc``) and the plain cross-entropy of the
    network's logits on the batch, CE(z, y) (``ce``: the same quantity for every method, so that
    one curve compares them; for a cosine head z is cos θ, as evaluation predicts from it)."""
    with torch.no_grad():
        z = logits.detach().float()
        acc = (z.argmax(1) == labels).float().mean()
        ce = F.cross_entropy(z, labels)
    return {"loss": loss.item(), "acc": acc.item(), "ce": ce.item()}


REGISTRY: dict[str, type[Method]] = {}


def method_class(name: str, where: str = "method") -> type[Method]:
    """The registered method ``name``; an unknown name is a :class:`ParamError` naming ``where``
    (the key or option that gave it) and the known methods."""
    if name not in REGISTRY:
        raise ParamError(f"unknown method {where}: {name!r} is not one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class NoConfig:
    """A method without hyperparameters."""


@register
class CrossEntropy(Method):
    """Plain cross-entropy: L = -log softmax(z)_y."""

    name = "ce"
    Config = NoConfig
    compile_loss = True

    def loss(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(batch.x)
        return F.cross_entropy(logits, batch.y), logits


@dataclass
class LogitAdjustmentConfig:
    tau: float = 1.0  # temperature of the prior term


@register
class LogitAdjustment(Method):
    """Logit-adjusted loss (Menon et al., 2021): CE on z_j + tau * log pi_j, pi = class prior."""

    name = "la"
    Config = LogitAdjustmentConfig
    compile_loss = True

    def __init__(self, cfg: LogitAdjustmentConfig, net: FeatureClassifier,
                 optimizer: torch.optim.Optimizer, info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        prior = info.class_counts.double().clamp_min(1) / info.class_counts.sum()
        self.register_buffer("log_prior", prior.log().float().to(info.device))

    def loss(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(batch.x)
        return F.cross_entropy(logits + self.cfg.tau * self.log_prior, batch.y), logits
