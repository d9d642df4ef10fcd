"""The training loop: resumable, deterministic, validation-selected checkpoints, clear errors."""

import json

import pytest
import torch

from pipeline.methods import REGISTRY
from pipeline.train import BEST, HISTORY, LAST, CheckpointError, fit, load_checkpoint
from tests.tiny import tiny_data, tiny_experiment


class Interrupt(Exception):
    pass


def weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("method", ["ce", "meta_iada"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, method):
    exp, data = tiny_experiment(), tiny_data()
    fit(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=2, device="cpu")
    init = tmp_path / "pre" / LAST
    fit(exp, data, method, 0, tmp_path / "full", first_epoch=2, last_epoch=5, init=init, device="cpu")

    def stop_after_first(epoch, metrics):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(exp, data, method, 0, tmp_path / "cut", first_epoch=2, last_epoch=5, init=init, device="cpu",
            on_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "cut" / LAST)["epoch"] == 3
    seen = []
    summary = fit(exp, data, method, 0, tmp_path / "cut", first_epoch=2, last_epoch=5, init=init, device="cpu",
                  on_epoch=lambda e, m: seen.append(e))
    assert seen == [3, 4]  # only the missing epochs were trained
    assert [h["epoch"] for h in summary["history"]] == [2, 3, 4]
    full, cut = weights(tmp_path / "full" / LAST), weights(tmp_path / "cut" / LAST)
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_changed_config_starts_over_instead_of_resuming(tmp_path):
    exp, data = tiny_experiment(), tiny_data()
    fit(exp, data, "ce", 0, tmp_path, first_epoch=0, last_epoch=2, device="cpu")
    seen = []
    fit(tiny_experiment(optim={"lr": 0.01, "batch_size": 8, "warmup_epochs": 1}), data, "ce", 0, tmp_path,
        first_epoch=0, last_epoch=2, device="cpu", on_epoch=lambda e, m: seen.append(e))
    assert seen == [0, 1]


def test_best_checkpoint_is_the_validation_argmax(tmp_path):
    exp, data = tiny_experiment(), tiny_data()
    fit(exp, data, "ce", 0, tmp_path, first_epoch=0, last_epoch=4, device="cpu")
    history = json.loads((tmp_path / HISTORY).read_text())
    vals = [h["val_acc"] for h in history["history"]]
    best = load_checkpoint(tmp_path / BEST)
    first_argmax = vals.index(max(vals))
    assert best["epoch"] - 1 == first_argmax == history["selected_epoch"]
    assert best["selected_value"] == max(vals)


def test_lr_schedule_warmup_and_milestones():
    o = tiny_experiment(optim={"lr": 0.1, "warmup_epochs": 2, "milestones": [4, 6], "gamma": 0.1}).optim
    assert [round(o.lr_at(e), 6) for e in range(8)] == [0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_broken_checkpoint_gives_one_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable.*delete it"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, bad)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_another_network_is_refused(tmp_path):
    data = tiny_data()
    fit(tiny_experiment(), data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu")
    other = tiny_experiment(network={"arch": "resnet20", "channels_last": False})
    with pytest.raises(CheckpointError, match="does not fit"):
        fit(other, data, "ce", 0, tmp_path / "t", first_epoch=1, last_epoch=2, init=tmp_path / "pre" / LAST,
            device="cpu")


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_from_the_pretrain_checkpoint(tmp_path, method):
    exp, data = tiny_experiment(), tiny_data()
    fit(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu")
    summary = fit(exp, data, method, 0, tmp_path / method, first_epoch=1, last_epoch=2,
                  init=tmp_path / "pre" / LAST, device="cpu")
    assert summary["method"] == method and len(summary["history"]) == 1
    row = summary["history"][0]
    assert row["epoch"] == 1 and torch.isfinite(torch.tensor(row["train_loss"])) and 0 <= row["val_acc"] <= 1
    assert (tmp_path / method / BEST).is_file()
