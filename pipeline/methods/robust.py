"""Robust-training baselines of the peers: ``gce`` (noisy labels), ``groupdro`` and ``jtt``
(subpopulation shift).

Notation: logits z [B, C], labels y [B], p = softmax(z); groups g_i ∈ {0, .., G−1}; group
weights q [G] on the simplex.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from pipeline.params.schema import ParamError, bounded
from pipeline.methods.base import Batch, Method, PerSampleLoss, StepContext, TrainInfo, register
from pipeline.networks import FeatureClassifier


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample generalised cross-entropy (Zhang & Sabuncu, 2018): L_q = (1 − p_y^q)/q [B].

    q → 0 gives CE (−log p_y), q = 1 gives 1 − p_y (MAE up to a factor 2); its gradient is
    p_y^q times CE's. Computed as −expm1(q·log p_y)/q, exact for small q.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)  # log p_y [B]
    return -torch.expm1(q * log_p) / q


@dataclass
class GCEConfig:
    # q = 0.7: Zhang & Sabuncu (2018), the value of their CIFAR experiments. Their truncated
    # L_q (k = 0.5, with pruning) is not implemented.
    q: float = bounded(0.7, gt=0, le=1)


@register
class GeneralizedCrossEntropy(PerSampleLoss):
    """Generalised cross-entropy (Zhang & Sabuncu, 2018): L = mean_i (1 − p_iy^q)/q."""

    name = "gce"
    Config = GCEConfig

    def per_sample(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return gce_loss(logits, labels, self.cfg.q)


def group_losses(per_sample_loss: torch.Tensor, groups: torch.Tensor,
                 num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss per group and the group's count in the batch: ([G], [G]).

    loss_g = Σ_{i: g_i = g} ℓ_i / #{i: g_i = g}, 0 for a group absent from the batch (group_DRO's
    ``compute_group_avg``). Differentiable in ``per_sample_loss`` [B].
    """
    member = (groups[None, :] == torch.arange(num_groups, device=groups.device)[:, None])  # [G, B]
    member = member.to(per_sample_loss.dtype)
    count = member.sum(1)  # [G]
    return member @ per_sample_loss / count.clamp_min(1), count


def groupdro_update(q: torch.Tensor, group_loss: torch.Tensor, present: torch.Tensor, step_size: float,
                    adjustment: torch.Tensor | None = None) -> torch.Tensor:
    """One exponentiated-gradient step on the group weights (Sagawa et al., 2020, Algorithm 1):

        q_g ← q_g · exp(η_q · (loss_g + C/√n_g)),   then q ← q / Σ_g q_g,

    with loss_g taken as 0 for groups not ``present`` in the batch, so that their q_g is unchanged
    before the renormalisation (group_DRO's ``compute_robust_loss``, whose absent groups have
    loss 0). ``adjustment`` [G] is the generalisation adjustment C/√n_g (None: 0); as in their
    code it is added for every group, present or not. ``group_loss`` is used detached; returns
    the new q [G] (``q`` itself is not modified).
    """
    exponent = torch.where(present, group_loss.detach(), torch.zeros_like(group_loss))
    if adjustment is not None:
        exponent = exponent + adjustment
    new = q * torch.exp(step_size * exponent)
    return new / new.sum()


@dataclass
class GroupDROConfig:
    # η_q: group_DRO run_expt.py --robust_step_size default 0.01.
    step_size: float = bounded(0.01, gt=0)
    # C of the generalisation adjustment C/√n_g: run_expt.py --generalization_adjustment default 0.
    adjustment: float = bounded(0.0, ge=0)
    # Draw the training batches group-balanced: a weighted sampler with w_i = 1/n_{g_i}, N draws
    # with replacement per epoch (:meth:`GroupDRO.sampling_weights`), as group_DRO's
    # --reweight_groups (data/dro_dataset.py:57-61, WeightedRandomSampler(len/group_counts[g],
    # len, replacement=True)), which every command of its README sets (README.md:62, 76, 105).
    # false: a plain shuffle, what the reference runs did.
    group_sampler: bool = bounded(False, added=True)


@register
class GroupDRO(Method):
    """Online GroupDRO (Sagawa et al., 2020): per step, the CE loss_g of each group in the batch
    (:func:`group_losses`), the update of q (:func:`groupdro_update`), then the robust loss
    Σ_g q_g · loss_g with the updated q (their order). q starts uniform and is a buffer, so it is
    checkpointed; :meth:`loss` advances it, so it must be called once per step.

    Group labels are not in a :class:`Batch`: they are read from ``info.train_groups`` (int64
    [num_train], the group of each training row, indexed by ``batch.index``). In group_DRO the
    adjustment also enters the robust loss's value (an in-place add); here it does not: the
    gradient is the same, the adjustment being a constant.
    """

    name = "groupdro"
    Config = GroupDROConfig

    def __init__(self, cfg: GroupDROConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        groups = info.train_groups
        if groups is None:
            raise ParamError("groupdro needs group labels of the training samples (TrainInfo.train_groups); "
                             "use it on a scenario with groups (subpopulation shift)")
        groups = torch.as_tensor(groups, dtype=torch.int64)
        if groups.shape != (info.num_train,) or groups.min() < 0:
            raise ParamError(f"groupdro needs one group label >= 0 per training sample: got shape "
                             f"{tuple(groups.shape)} for {info.num_train} samples")
        # A plain attribute, not a buffer: the data's, not the run's state.
        self.train_groups = groups.to(info.device)  # [N]
        self.num_groups = int(groups.max()) + 1
        counts = torch.bincount(groups, minlength=self.num_groups).to(info.device, torch.float64)
        self.adjustment = (cfg.adjustment / counts.clamp_min(1).sqrt()) if cfg.adjustment > 0 else None
        self.register_buffer("q", torch.full((self.num_groups,), 1.0 / self.num_groups, device=info.device))

    def loss(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(batch.x)
        per_sample = F.cross_entropy(logits, batch.y, reduction="none")  # [B]
        loss_g, count = group_losses(per_sample, self.train_groups[batch.index], self.num_groups)
        adjustment = None if self.adjustment is None else self.adjustment.to(self.q.dtype)
        self.q.copy_(groupdro_update(self.q, loss_g.to(self.q.dtype), count > 0, self.cfg.step_size, adjustment))
        return (self.q.to(loss_g.dtype) * loss_g).sum(), logits

    def sampling_weights(self) -> torch.Tensor | None:
        """With ``group_sampler``: w_i = 1/n_{g_i} [N] (n_g the training count of group g), so that
        every group is drawn with probability 1/G; otherwise None (a shuffle)."""
        if not self.cfg.group_sampler:
            return None
        counts = torch.bincount(self.train_groups, minlength=self.num_groups).to(torch.float64)
        return (1.0 / counts)[self.train_groups]

    def epoch_metrics(self) -> dict[str, float]:
        """The group weights q_g (a state, not an average over the epoch)."""
        return {f"groupdro_q/{g}": float(v) for g, v in enumerate(self.q.tolist())}


Stage2Init = Literal["continue", "fresh"]


@dataclass
class JTTConfig:
    # λ_up: SubpopBench's default jtt_lambda (10); the JTT paper tunes it in {20, 50, 100}.
    lambda_up: float = bounded(10.0, ge=1)
    # Stage 2's network. continue: the stage-1 weights and optimizer state (what the reference
    # runs did); fresh: the run's seeded random initialisation and a new optimizer state, as JTT
    # (anniesch/jtt run_expt.py:148-155: the stage-2 run builds a new model with get_model,
    # ImageNet-pretrained there, from scratch here) and SubpopBench
    # (subpopbench/learning/algorithms.py:681: JTT_Stage2, a second ERM network beside stage 1's).
    stage2_init: Stage2Init = bounded("continue", added=True)


@register
class JTT(Method):
    """Just Train Twice (Liu et al., 2021) in the deferred protocol.

    Stage 1 is the CE pretraining: the ERM model after T = ``pretrain_epochs`` epochs (the run's
    starting checkpoint). Its error set E is the training samples it misclassifies, found once
    when the run starts (eval mode, no augmentation; a buffer, so kept on resume). Stage 2 starts
    from the stage-1 network (``stage2_init: continue``) or from the run's seeded random
    initialisation with a cleared optimizer state (``fresh``, the authors' recipe) and trains with
    cross-entropy weighted λ_up on E and 1 elsewhere, L = Σ_i w_i ℓ_i / Σ_i w_i: the expectation
    of upsampling E λ_up times. The peers do it otherwise: JTT's code appends λ_up copies of E
    to the training set (run_expt.py:80-106, so E is drawn 1 + λ_up times as often, in plain
    shuffled batches); SubpopBench uses no sampler and no fixed error set: each stage-2 batch
    weighs λ_up the samples that the frozen stage-1 model misclassifies in that batch, and the
    loss is the plain batch mean Σ_i w_i ℓ_i / B (algorithms.py:660-672).
    Under ``protocol: scratch`` stage 1 is the random initialisation: use ``deferred``.
    """

    name = "jtt"
    Config = JTTConfig
    start_augmented = False

    def __init__(self, cfg: JTTConfig, net: FeatureClassifier, optimizer: torch.optim.Optimizer,
                 info: TrainInfo) -> None:
        super().__init__(cfg, net, optimizer, info)
        self.register_buffer("error_set", torch.zeros(info.num_train, dtype=torch.bool, device=info.device))

    @torch.no_grad()
    def start(self, batches: Iterable[Batch]) -> None:
        """The error set E of the stage-1 network; then, with ``stage2_init: fresh``, the network
        takes ``info.initial_state()`` and the optimizer's state (momentum) is cleared."""
        net = self.network
        was_training = net.training
        net.eval()
        for batch in batches:
            self.error_set[batch.index] = net(batch.x).argmax(1) != batch.y
        net.train(was_training)
        if self.cfg.stage2_init == "fresh":
            if self.info.initial_state is None:
                raise RuntimeError("jtt stage2_init: fresh needs TrainInfo.initial_state (the trainer's seeded "
                                   "initialisation)")
            net.load_state_dict(self.info.initial_state())
            self.optimizer.state.clear()

    def loss(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(batch.x)
        w = 1 + (self.cfg.lambda_up - 1) * self.error_set[batch.index].to(logits.dtype)  # [B]
        per_sample = F.cross_entropy(logits, batch.y, reduction="none")
        return (w * per_sample).sum() / w.sum(), logits

    def epoch_metrics(self) -> dict[str, float]:
        return {"jtt_error_set_size": float(self.error_set.sum())}

