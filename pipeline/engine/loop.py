"""The training loop shared by the ``pretrain`` and ``train`` stages (and Optuna trials).

One call of :func:`fit` trains one network with one method over a range of GLOBAL epochs
(pretraining epochs count, so the lr schedule and the alpha ramp continue across stages).
After every epoch it evaluates the validation split, keeps the validation-selected weights in
``best.pt``, and writes the resumable state to ``last.pt`` atomically: an interrupted run that
is started again with the same configuration continues from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.engine.allocator import keep_freed_memory
from pipeline.params.schema import ParamError, flatten, to_dict
from pipeline.data.config import Scenario
from pipeline.data.prepared import PreparedData
from pipeline.params.experiment import ExperimentConfig, config_hash
from pipeline.jsonfile import write_json
from pipeline.data.loader import BatchLoader, channel_stats
from pipeline.methods import REGISTRY, Method, StepContext, TrainInfo
from pipeline.evaluation.metrics import predict, split_metrics
from pipeline.networks import FeatureClassifier, build_network

LAST, BEST, HISTORY, SCORES, RUN_INFO = "last.pt", "best.pt", "history.json", "sample_scores.npz", "run.json"


def artifact_file(name: str) -> str:
    """File name of a method's learned network (e.g. ``perturbation_net.pt``) in the run directory."""
    return f"{name}.pt"


CHECKPOINT_FORMAT = 1
META_EPOCH_STRIDE = 1000  # meta-loader epochs reserved per training epoch

EpochCallback = Callable[[int, dict[str, float]], None]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


class RunLockedError(CheckpointError):
    """Another process is training into the same run folder."""


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (``flock`` on ``.<name>.lock`` beside it, outside the
    DVC output) while training writes it: a second trainer, e.g. from a ``dvc repro`` started while
    an orphaned trainer of a killed one still runs, stops with one line instead of writing the
    same checkpoints and MLflow run. The kernel releases the lock when the process dies."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = out_dir.parent / f".{out_dir.name}.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise RunLockedError(f"run folder {out_dir} is being trained by another process (pid {owner}, lock "
                                 f"{path}): wait for it to finish or stop it, then rerun") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was saved and how to resume."""


def holds_run_lock(train: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Decorator: run ``train(exp, data, method, seed, out_dir, ...)`` under :func:`run_lock`; a
    Ctrl-C becomes one :class:`TrainingInterrupted` naming the saved epoch (instead of a
    KeyboardInterrupt traceback from deep in autograd)."""
    @functools.wraps(train)
    def locked(exp: ExperimentConfig, data: PreparedData, method_name: str, seed: int, out_dir: Path,
               **kwargs: Any) -> dict[str, Any]:
        with run_lock(out_dir):
            try:
                return train(exp, data, method_name, seed, out_dir, **kwargs)
            except KeyboardInterrupt:
                saved = "nothing yet"
                if (out_dir / LAST).is_file():
                    saved = f"epoch {load_checkpoint(out_dir / LAST)['epoch']} (finished epochs, in {out_dir / LAST})"
                raise TrainingInterrupted(f"interrupted: the run is saved at {saved}; rerun the same command "
                                          "(or dvc repro) to resume from there") from None
    return locked


def run_params(exp: ExperimentConfig, method_cfg: Any) -> dict[str, Any]:
    """The flat params a run logs: its experiment's settings without the other methods' blocks,
    the search space and the data sections of other scenarios, plus its own method's
    hyperparameters as ``method.<key>``."""
    settings = {k: v for k, v in to_dict(exp).items() if k not in ("methods", "search")}
    others = set(get_args(Scenario)) - {exp.scenario}  # each scenario's data section is named after it
    settings["data"] = {k: v for k, v in settings["data"].items() if k not in others}
    return {**flatten(settings), **{f"method.{k}": v for k, v in flatten(to_dict(method_cfg)).items()}}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device = 'cuda' but no CUDA device is available: use 'auto' or 'cpu'")
    return torch.device(device)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one clear error for a missing or broken file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: run the stage that writes it first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle error, foreign object...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: corrupt, truncated, or "
                              "not a weights-only checkpoint); delete it and rerun the stage that writes it") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this project (format "
                              f"{CHECKPOINT_FORMAT}); delete it and rerun the stage that writes it")
    return ckpt


def atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` through a temporary file and a rename (never half-written); a
    failed write (full disk, read-only folder: torch reports "unexpected pos" or a writer error
    without the path) removes the temporary file and raises one :class:`CheckpointError`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"cannot write {path} ({type(err).__name__}: {first}): free disk space or make "
                              "the folder writable, then rerun (training resumes from its last saved epoch)") from err


def normalisation(data: PreparedData) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training images (std floored at 1: MNIST-like blank channels)."""
    mean, std = channel_stats(data.splits["train"].x)
    return mean, [max(s, 1.0) for s in std]


@dataclass
class Loaders:
    train: BatchLoader
    meta: BatchLoader
    eval: dict[str, BatchLoader]


def make_loaders(exp: ExperimentConfig, data: PreparedData, seed: int, device: torch.device,
                 channels_last: bool) -> Loaders:
    mean, std = normalisation(data)
    aug = dict(augment=exp.augment.crop_padding > 0 or exp.augment.flip, pad=exp.augment.crop_padding,
               flip=exp.augment.flip)
    common = dict(device=device, channels_last=channels_last)
    train = BatchLoader(data.splits["train"], mean, std, exp.optim.batch_size, shuffle=True,
                        drop_last=True, seed=seed, **aug, **common)
    meta = BatchLoader(data.splits["meta"], mean, std, exp.meta_batch_size, shuffle=True,
                       drop_last=True, seed=seed + 7919, **aug, **common)
    evals = {name: BatchLoader(split, mean, std, exp.eval_batch_size, **common)
             for name, split in data.splits.items() if name not in ("train", "meta")}
    return Loaders(train, meta, evals)


def evaluate_split(net: FeatureClassifier, loader: BatchLoader, data: PreparedData, split: str) -> dict[str, float]:
    s = data.splits[split]
    return split_metrics(predict(net, loader), s.y, data.num_classes, s.extras.get("group"))


def build_model(exp: ExperimentConfig, data: PreparedData, device: torch.device) -> tuple[FeatureClassifier, torch.optim.SGD]:
    c, _, _ = data.image_shape
    net = build_network(exp.network.arch, data.num_classes, in_channels=c).to(device)
    if exp.network.channels_last:
        net = net.to(memory_format=torch.channels_last)
    o = exp.optim
    opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                          weight_decay=o.weight_decay)
    return net, opt


def is_interactive() -> bool:
    return sys.stderr.isatty()


@holds_run_lock
def fit(exp: ExperimentConfig, data: PreparedData, method_name: str, seed: int, out_dir: Path, *,
        first_epoch: int, last_epoch: int, init: Path | None = None, device: str = "auto",
        tracker: Any = None, on_epoch: EpochCallback | None = None, desc: str = "") -> dict[str, Any]:
    """Train epochs [first_epoch, last_epoch) with ``method_name``; returns the run summary.

    Args:
        exp: the experiment configuration.
        data: the prepared data set.
        out_dir: receives ``last.pt`` (resumable state), ``best.pt`` (validation-selected
            weights), ``history.json`` (per-epoch metrics), ``sample_scores.npz``, and the
            method's learned artefacts (``<name>.pt``).
        init: a checkpoint to start from (the pretrain stage's ``last.pt``): weights and SGD
            state; None starts from a seeded random initialisation.
        tracker: an object with ``log_epoch(epoch, metrics)`` and ``finish(out_dir, method)``
            (see :mod:`pipeline.stages.common`), or None.
        on_epoch: called after each epoch with the epoch's metrics (Optuna reporting/pruning).

    Sets the process's allocator to keep freed memory (:func:`pipeline.engine.allocator.keep_freed_memory`).
    """
    sizes = {"optim.batch_size": (exp.optim.batch_size, "train"), "meta_batch_size": (exp.meta_batch_size, "meta")}
    for key, (size, split) in sizes.items():  # a loader would shrink the batch silently
        if size > len(data.splits[split].y):
            raise ParamError(f"{key} = {size} is larger than the {split} split ({len(data.splits[split].y)} "
                             "images): lower it")
    keep_freed_memory()
    dev = resolve_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    init_ckpt = load_checkpoint(init) if init is not None else None
    method_cfg = exp.method_config(method_name)
    fingerprint = config_hash(exp.data, exp.network, exp.optim, exp.augment, exp.meta_batch_size,
                              method_name, method_cfg, seed, first_epoch, last_epoch,
                              init_ckpt["fingerprint"] if init_ckpt else None)

    torch.manual_seed(seed)
    net, opt = build_model(exp, data, dev)
    if init_ckpt is not None:
        try:
            net.load_state_dict(init_ckpt["model"])
            opt.load_state_dict(init_ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {init} does not fit experiment network "
                                  f"{exp.network.arch} ({err}); rerun the pretrain stage") from err
    train_y = torch.from_numpy(data.splits["train"].y.astype(np.int64))
    info = TrainInfo(num_classes=data.num_classes,
                     class_counts=torch.bincount(train_y, minlength=data.num_classes),
                     num_train=len(train_y), feature_dim=net.feature_dim, device=dev, seed=seed)
    method: Method = REGISTRY[method_name](method_cfg, net, opt, info).to(dev)
    loaders = make_loaders(exp, data, seed + first_epoch, dev, exp.network.channels_last)

    state = {"epoch": first_epoch, "history": [], "best": {"epoch": -1, "value": -math.inf}, "run_id": None}
    last_path = out_dir / LAST
    if last_path.is_file():
        prev = load_checkpoint(last_path)
        # A finished state (epoch == last_epoch) is reused too: a run killed while finishing
        # (scores, artifacts, MLflow logging) reruns only those steps.
        if prev.get("fingerprint") == fingerprint and prev["epoch"] <= last_epoch:
            net.load_state_dict(prev["model"])
            opt.load_state_dict(prev["optimizer"])
            method.load_state_dict(prev["method"])
            method.load_extra_state_dict(prev["method_extra"])
            torch.set_rng_state(prev["rng"])
            state = {k: prev[k] for k in ("epoch", "history", "best", "run_id")}
            print(f"resuming {out_dir} at epoch {state['epoch']}", file=sys.stderr)
    if state["epoch"] == first_epoch:  # a fresh run, not a resumed one
        method.start(loaders.train.sweep())
    if tracker is not None:
        state["run_id"] = tracker.start(state["run_id"], fingerprint=fingerprint,
                                        params={"method": method_name, "seed": seed,
                                                "first_epoch": first_epoch, "last_epoch": last_epoch,
                                                **run_params(exp, method_cfg)})

    metric_name = exp.selection_metric

    def save_last() -> None:  # the resumable state after state["epoch"] finished epochs
        atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": state["epoch"],
                     "model": net.state_dict(), "optimizer": opt.state_dict(), "method": method.state_dict(),
                     "method_extra": method.extra_state_dict(), "rng": torch.get_rng_state(),
                     "history": state["history"], "best": state["best"], "run_id": state["run_id"]}, last_path)

    def save_best(epoch: int, selected_by: str, value: float) -> None:
        atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch,
                     "model": net.state_dict(), "selected_by": selected_by, "selected_value": value}, out_dir / BEST)

    step = (state["epoch"] - first_epoch) * len(loaders.train)
    tty = is_interactive()
    epochs = tqdm(range(state["epoch"], last_epoch), desc=desc or method_name, initial=state["epoch"] - first_epoch,
                  total=last_epoch - first_epoch, disable=not tty, file=sys.stderr, dynamic_ncols=True)
    for epoch in epochs:
        net.train()
        sums: dict[str, float] = defaultdict(float)
        n_batches = 0
        # Meta batches restart from a per-epoch seed, so a resumed run draws the same ones.
        meta_next = functools.partial(next, loaders.meta.endless(start_epoch=epoch * META_EPOCH_STRIDE))
        t0 = time.perf_counter()
        lr = exp.optim.lr_at(epoch, len(loaders.train) - 1, len(loaders.train))  # the epoch's last lr, logged
        for i, batch in enumerate(tqdm(loaders.train.epoch(epoch), total=len(loaders.train), leave=False,
                                       disable=not tty, desc=f"epoch {epoch}")):
            lr = exp.optim.lr_at(epoch, i, len(loaders.train))  # per iteration (warm-up ramp)
            for group in opt.param_groups:
                group["lr"] = lr
            ctx = StepContext(epoch=epoch, total_epochs=exp.total_epochs, step=step, lr=lr,
                              meta_batch=meta_next)
            for k, v in method.update(batch, ctx).items():
                sums[k] += v
            n_batches += 1
            step += 1
        seconds = time.perf_counter() - t0
        metrics = {f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}
        metrics.update(method.epoch_metrics())
        metrics.update({"lr": lr, "epoch_seconds": seconds,
                        "train_img_per_s": n_batches * exp.optim.batch_size / max(seconds, 1e-9)})
        metrics.update({f"val_{k}": v for k, v in evaluate_split(net, loaders.eval["val"], data, "val").items()})
        if not all(math.isfinite(v) for k, v in metrics.items() if k.startswith("train_loss")):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {metrics.get('train_loss')}): "
                                     "lower optim.lr or the method's alpha/beta")
        state["history"].append({"epoch": epoch, **metrics})
        if metrics[metric_name] > state["best"]["value"]:
            state["best"] = {"epoch": epoch, "value": metrics[metric_name]}
            save_best(epoch + 1, metric_name, metrics[metric_name])
        state["epoch"] = epoch + 1
        save_last()
        epochs.set_postfix({"loss": round(metrics.get("train_loss", float("nan")), 3),
                            metric_name: round(metrics[metric_name], 4)})
        if not tty:
            print(f"[{desc or method_name}] epoch {epoch}: loss {metrics.get('train_loss', float('nan')):.4f} "
                  f"{metric_name} {metrics[metric_name]:.4f} ({seconds:.1f}s)", file=sys.stderr)
        if tracker is not None:
            tracker.log_epoch(epoch, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    if first_epoch == last_epoch:  # nothing to train (e.g. no CE pretraining): keep the initial state
        save_last()
        save_best(last_epoch, "initial", float("nan"))
    scores = method.sample_scores()
    tmp = out_dir / f".{SCORES}.tmp"
    with open(tmp, "wb") as f:  # the run's fingerprint too: evaluation checks every file is of this run
        np.savez(f, **scores, fingerprint=np.array(fingerprint))
    os.replace(tmp, out_dir / SCORES)
    for name, module in method.artifacts().items():
        atomic_save(module.state_dict(), out_dir / artifact_file(name))
    summary = {"method": method_name, "seed": seed, "fingerprint": fingerprint,
               "first_epoch": first_epoch, "last_epoch": last_epoch,
               "selection_metric": metric_name, "selected_epoch": state["best"]["epoch"],
               "selected_value": state["best"]["value"], "run_id": state["run_id"],
               "characteristics": list(getattr(method_cfg, "characteristics", []) or []),
               "history": state["history"]}
    write_json(summary, out_dir / HISTORY, sort_keys=False)  # strict JSON: an undefined value is null
    if tracker is not None:
        tracker.finish(out_dir, method)
    return summary
