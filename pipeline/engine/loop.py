"""The training loop shared by the ``pretrain`` and ``train`` stages (and Optuna trials).

One call of :func:`fit` trains one network with one method over a range of GLOBAL epochs
(pretraining epochs count, so the lr schedule and the alpha ramp continue across stages).
After every epoch it evaluates the validation split, keeps the validation-selected weights in
``best.pt``, and writes the resumable state to ``last.pt`` atomically: an interrupted run that
is started again with the same configuration continues from its last finished epoch.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.data.prepared import PreparedData
from pipeline.engine.allocator import keep_freed_memory
from pipeline.engine.build import (Loaders, build_model, build_net, check_batch_sizes, check_precision, make_loaders,
                                   resolve_device)
from pipeline.engine.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, atomic_save, load_checkpoint,
                                        read_run_record, run_lock, saved_on_interrupt, with_timings, without_timings,
                                        write_run_record)
from pipeline.engine.compiled import CompiledRegion, compile_method
from pipeline.evaluation.metrics import predict, split_metrics
from pipeline.layout import BEST, HISTORY, LAST, SCORES, artifact_file, write_json, write_npz
from pipeline.methods import Method, StepContext, TrainInfo, method_class
from pipeline.networks import Compile, FeatureClassifier, Head
from pipeline.params.experiment import ExperimentConfig, config_hash, run_params

META_EPOCH_STRIDE = 1000  # meta-loader epochs reserved per training epoch

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class RunSpec:
    """One training run: what trains, from where, over which epochs, into which folder."""

    exp: ExperimentConfig
    data: PreparedData
    method: str
    seed: int
    out_dir: Path  # receives last.pt, best.pt, history.json, sample_scores.npz, <network>.pt
    first_epoch: int
    last_epoch: int  # trains epochs [first_epoch, last_epoch)
    init: Path | None = None  # a checkpoint to start from (the pretraining's last.pt); None: seeded random init
    device: str = "auto"
    desc: str = ""  # progress label (default: the method)
    compile_mode: Compile = "none"  # run.compile: the step's regions compiled (pipeline/engine/compiled.py)


class Tracker(Protocol):
    """What :func:`fit` reports to (:class:`pipeline.tracking.RunTracker`)."""

    def start(self, run_id: str | None, *, fingerprint: str, params: Mapping[str, Any]) -> str: ...

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None: ...

    def finish(self, out_dir: Path, method: Method, summary: Mapping[str, Any]) -> None: ...


@dataclass
class Training:
    """A run being trained: its parts and the state that ``last.pt`` keeps."""

    run: RunSpec
    fingerprint: str
    net: FeatureClassifier
    opt: torch.optim.SGD
    method: Method
    loaders: Loaders
    epoch: int  # finished epochs (global)
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=lambda: {"epoch": -1, "value": -math.inf})
    run_id: str | None = None
    compiled: dict[str, CompiledRegion] = field(default_factory=dict)  # the step's compiled regions by name

    def save_last(self) -> None:
        """The resumable state after ``epoch`` finished epochs (the run id and epoch times in the
        run record, written first: a record ahead of ``last.pt`` is harmless)."""
        self.save_record()
        atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "epoch": self.epoch,
                     "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                     "method": self.method.state_dict(), "method_extra": self.method.extra_state_dict(),
                     "rng": torch.get_rng_state(), "history": without_timings(self.history), "best": self.best},
                    self.run.out_dir / LAST)

    def save_record(self) -> None:
        write_run_record(self.run.out_dir, self.fingerprint, self.run_id, self.history)

    def save_best(self, epoch: int, selected_by: str, value: float) -> None:
        atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "epoch": epoch,
                     "model": self.net.state_dict(), "selected_by": selected_by, "selected_value": value},
                    self.run.out_dir / BEST)

    def resume(self, prev: dict[str, Any]) -> None:
        self.net.load_state_dict(prev["model"])
        self.opt.load_state_dict(prev["optimizer"])
        self.method.load_state_dict(prev["method"])
        self.method.load_extra_state_dict(prev["method_extra"])
        torch.set_rng_state(prev["rng"])
        record = read_run_record(self.run.out_dir, self.fingerprint)
        self.epoch, self.best = prev["epoch"], prev["best"]
        self.history = with_timings(prev["history"], record)
        self.run_id = record.get("run_id") or prev.get("run_id")  # a checkpoint of before the run record had it


def fit(run: RunSpec, *, tracker: Tracker | None = None, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Train ``run``; returns the run summary (also written to ``history.json``).

    ``tracker`` receives the params, the metrics of every epoch and the finished run; ``on_epoch``
    is called after each epoch with its metrics (Optuna reporting and pruning). Holds the run
    folder's lock; a Ctrl-C says what was saved. Sets the process's allocator to keep freed
    memory (:func:`pipeline.engine.allocator.keep_freed_memory`).
    """
    check_precision(run.exp, resolve_device(run.device))  # before the run's folder or lock exists
    with run_lock(run.out_dir), saved_on_interrupt(run.out_dir):
        check_batch_sizes(run.exp, run.data)
        keep_freed_memory()
        t = set_up(run)
        if t.epoch == run.first_epoch:  # a fresh run, not a resumed one
            t.method.start(t.loaders.train.sweep(augment=t.method.start_augmented))
        if tracker is not None:
            t.run_id = tracker.start(t.run_id, fingerprint=t.fingerprint,
                                     params={"method": run.method, "seed": run.seed, "first_epoch": run.first_epoch,
                                             "last_epoch": run.last_epoch, **run_params(run.exp, t.method.cfg)})
            t.save_record()  # an interruption in the first epoch resumes the same MLflow run
        metric = run.exp.selection_metric
        progress = Progress(run, t.epoch, metric)
        for epoch in progress.epochs:
            metrics = train_one_epoch(t, epoch)
            metrics.update({f"val_{k}": v for k, v in validate(t.net, t.loaders, run.data).items()})
            if records_test_curve(run.exp, epoch):
                metrics["calibration_test_acc"] = calibration_test_accuracy(t.net, t.loaders, run.data)
            if not all(math.isfinite(v) for k, v in metrics.items() if k.startswith("train_loss")):
                raise FloatingPointError(f"training diverged at epoch {epoch} (loss {metrics.get('train_loss')}): "
                                         "lower optim.lr or the method's alpha/beta")
            end_epoch(t, epoch, metrics)
            progress.report(epoch, metrics)
            if tracker is not None:
                tracker.log_epoch(epoch, metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        summary = finish(t)
        if tracker is not None:
            tracker.finish(run.out_dir, t.method, summary)
        return summary


def set_up(run: RunSpec) -> Training:
    """Network, optimizer and method from the seed (and ``run.init``), the loaders, and the state
    of ``last.pt`` when it belongs to this run (same fingerprint)."""
    exp, data = run.exp, run.data
    dev = resolve_device(run.device)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    init_ckpt = load_checkpoint(run.init) if run.init is not None else None
    if init_ckpt is not None and init_ckpt.get("epoch") != run.first_epoch:
        # e.g. a pretraining stopped early, or one of another pretrain_epochs: the run would record
        # epochs [first_epoch, last_epoch) as if they followed first_epoch epochs of pretraining
        raise CheckpointError(f"checkpoint {run.init} holds {init_ckpt.get('epoch')} trained epochs, but this run "
                              f"starts at epoch {run.first_epoch} (pretrain_epochs): finish or rerun the pretraining "
                              "with this experiment's pretrain_epochs first")
    method_cfg = exp.method_config(run.method)
    fingerprint = config_hash(exp.data, exp.network, exp.optim, exp.augment, exp.meta_batch_size,
                              run.method, method_cfg, run.seed, run.first_epoch, run.last_epoch,
                              init_ckpt["fingerprint"] if init_ckpt else None)
    cls = method_class(run.method)
    torch.manual_seed(run.seed)
    net, opt = build_model(exp, data, dev, cls.head)
    if init_ckpt is not None:
        try:
            net.load_state_dict(init_ckpt["model"])
            opt.load_state_dict(init_ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {run.init} does not fit experiment network "
                                  f"{exp.network.arch} ({err}); rerun the pretrain stage") from err
    train_y = torch.from_numpy(data.splits["train"].y.astype(np.int64))
    groups = data.splits["train"].extras.get("group")
    info = TrainInfo(num_classes=data.num_classes, class_counts=torch.bincount(train_y, minlength=data.num_classes),
                     num_train=len(train_y), feature_dim=net.feature_dim, device=dev, seed=run.seed,
                     train_groups=None if groups is None else torch.from_numpy(groups.astype(np.int64)),
                     initial_state=functools.partial(seeded_initial_state, exp, data, cls.head, run.seed))
    method = cls(method_cfg, net, opt, info).to(dev)
    loaders = make_loaders(exp, data, run.seed + run.first_epoch, dev, method.sampling_weights())
    t = Training(run, fingerprint, net, opt, method, loaders, epoch=run.first_epoch,
                 compiled=compile_method(method, run.compile_mode))
    last = run.out_dir / LAST
    if last.is_file():
        prev = load_checkpoint(last)
        # A finished state (epoch == last_epoch) is reused too: a run killed while finishing
        # (scores, artifacts, MLflow logging) reruns only those steps.
        if prev.get("fingerprint") == fingerprint and prev["epoch"] <= run.last_epoch:
            t.resume(prev)
            print(f"resuming {run.out_dir} at epoch {t.epoch}", file=sys.stderr)
    return t


def seeded_initial_state(exp: ExperimentConfig, data: PreparedData, head: Head, seed: int) -> dict[str, torch.Tensor]:
    """The network's state as :func:`set_up` initialises it for ``seed`` before any checkpoint is
    loaded (built on the CPU, as there; the process's random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_net(exp, data, torch.device("cpu"), head).state_dict()


def train_one_epoch(t: Training, epoch: int) -> dict[str, float]:
    """One epoch of method steps, the lr set per iteration; returns the epoch's mean step
    metrics (``train_*``), the method's epoch metrics, lr and throughput."""
    exp, loaders, n_steps = t.run.exp, t.loaders, len(t.loaders.train)
    t.net.train()
    sums: dict[str, float] = defaultdict(float)
    n_batches = 0
    step = (epoch - t.run.first_epoch) * n_steps
    # Meta batches restart from a per-epoch seed, so a resumed run draws the same ones.
    meta_next = functools.partial(next, loaders.meta.endless(start_epoch=epoch * META_EPOCH_STRIDE))
    t0 = time.perf_counter()
    lr = exp.optim.lr_at(epoch, n_steps - 1, n_steps)  # the epoch's last lr, logged
    for i, batch in enumerate(tqdm(loaders.train.epoch(epoch), total=n_steps, leave=False,
                                   disable=not is_interactive(), desc=f"epoch {epoch}")):
        lr = exp.optim.lr_at(epoch, i, n_steps)  # per iteration (warm-up ramp)
        for group in t.opt.param_groups:
            group["lr"] = lr
        ctx = StepContext(epoch=epoch, total_epochs=exp.total_epochs, step=step, lr=lr, meta_batch=meta_next)
        for k, v in t.method.update(batch, ctx).items():
            sums[k] += v
        n_batches += 1
        step += 1
    seconds = time.perf_counter() - t0
    metrics = {f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}
    metrics.update(t.method.epoch_metrics())
    metrics.update({"lr": lr, "epoch_seconds": seconds,
                    "train_img_per_s": n_batches * exp.optim.batch_size / max(seconds, 1e-9)})
    return metrics


def validate(net: FeatureClassifier, loaders: Loaders, data: PreparedData) -> dict[str, float]:
    """Metrics of the validation split (accuracy, and worst-group accuracy where it has groups)."""
    split = data.splits["val"]
    return split_metrics(predict(net, loaders.eval["val"]), split.y, data.num_classes, split.extras.get("group"))


def records_test_curve(exp: ExperimentConfig, epoch: int) -> bool:
    """Whether ``epoch`` records ``calibration_test_acc`` (``calibration_test_curve``: from the first
    lr milestone on, where the best epoch on test of the published numbers lies)."""
    return exp.calibration_test_curve and epoch >= (exp.optim.milestones[0] if exp.optim.milestones else 0)


def calibration_test_accuracy(net: FeatureClassifier, loaders: Loaders, data: PreparedData) -> float:
    """Accuracy on the test split, for the calibration curve only (never for selection)."""
    split = data.splits["test"]
    return split_metrics(predict(net, loaders.eval["test"]), split.y, data.num_classes)["acc"]


def end_epoch(t: Training, epoch: int, metrics: dict[str, float]) -> None:
    """Record the epoch; save ``best.pt`` on a new best validation value, then ``last.pt``."""
    metric = t.run.exp.selection_metric
    t.history.append({"epoch": epoch, **metrics})
    if metrics[metric] > t.best["value"]:
        t.best = {"epoch": epoch, "value": metrics[metric]}
        t.save_best(epoch + 1, metric, metrics[metric])
    t.epoch = epoch + 1
    t.save_last()


def finish(t: Training) -> dict[str, Any]:
    """Write the per-sample scores, the method's learned networks and ``history.json`` (last:
    evaluation takes a run with it as finished); returns the run summary (with the run id and
    the epoch times, which ``history.json`` leaves to the run record)."""
    run = t.run
    if run.first_epoch == run.last_epoch:  # nothing to train (e.g. no CE pretraining): keep the initial state
        t.save_last()
        t.save_best(run.last_epoch, "initial", float("nan"))
    # The run's fingerprint too: evaluation checks every file is of this run.
    write_npz({**t.method.sample_scores(), "fingerprint": np.array(t.fingerprint)}, run.out_dir / SCORES)
    for name, module in t.method.artifacts().items():
        atomic_save(module.state_dict(), run.out_dir / artifact_file(name))
    summary = {"method": run.method, "seed": run.seed, "fingerprint": t.fingerprint,
               "first_epoch": run.first_epoch, "last_epoch": run.last_epoch,
               "selection_metric": run.exp.selection_metric, "selected_epoch": t.best["epoch"],
               "selected_value": t.best["value"], "run_id": t.run_id,
               "characteristics": list(getattr(t.method.cfg, "characteristics", []) or []),
               "history": t.history}
    if run.compile_mode != "none":  # what ran compiled, and why a region fell back to eager
        summary["compile"] = {"mode": run.compile_mode, **{k: r.status for k, r in t.compiled.items()}}
    hashed = {k: v for k, v in summary.items() if k != "run_id"} | {"history": without_timings(t.history)}
    write_json(hashed, run.out_dir / HISTORY, sort_keys=False)  # strict JSON: an undefined value is null
    return summary


def is_interactive() -> bool:
    return sys.stderr.isatty()


class Progress:
    """A tqdm bar over the epochs on a terminal, one line per epoch otherwise (logs, DVC)."""

    def __init__(self, run: RunSpec, start: int, metric: str) -> None:
        self.label, self.metric, self.tty = run.desc or run.method, metric, is_interactive()
        self.epochs = tqdm(range(start, run.last_epoch), desc=self.label, initial=start - run.first_epoch,
                           total=run.last_epoch - run.first_epoch, disable=not self.tty, file=sys.stderr,
                           dynamic_ncols=True)

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        loss, value = metrics.get("train_loss", float("nan")), metrics[self.metric]
        self.epochs.set_postfix({"loss": round(loss, 3), self.metric: round(value, 4)})
        if not self.tty:
            print(f"[{self.label}] epoch {epoch}: loss {loss:.4f} {self.metric} {value:.4f} "
                  f"({metrics['epoch_seconds']:.1f}s)", file=sys.stderr)
