"""The training loop: resumable, deterministic, validation-selected checkpoints, clear errors."""

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.params.file import load_params
from pipeline.methods import REGISTRY
from pipeline.engine.checkpoint import CheckpointError, load_checkpoint
from pipeline.engine.loop import RunSpec, fit
from pipeline.params.schema import ParamError
from pipeline.layout import BEST, HISTORY, LAST
from tests.tiny import tiny_data, tiny_experiment

ROOT = Path(__file__).resolve().parents[2]


class Interrupt(Exception):
    pass


def weights(path):
    return load_checkpoint(path)["model"]


SCENARIOS = {  # what a scenario's tiny data carries: group labels (subpop), clean labels (noisy)
    "longtail": {}, "glt": {}, "noisy": {"noisy": True}, "subpop": {"groups": True}}
APPLIES = {"groupdro": ["subpop"], "jtt": ["subpop"]}  # every other method: every scenario
METHOD_SCENARIOS = [(m, s) for m in sorted(REGISTRY) for s in APPLIES.get(m, SCENARIOS)]


@pytest.mark.parametrize("method, scenario", METHOD_SCENARIOS)
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, method, scenario):
    exp, data = tiny_experiment(scenario), tiny_data(**SCENARIOS[scenario])
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=2, device="cpu"))
    init = tmp_path / "pre" / LAST
    fit(RunSpec(exp, data, method, 0, tmp_path / "full", first_epoch=2, last_epoch=5, init=init, device="cpu"))

    def stop_after_first(epoch, metrics):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(RunSpec(exp, data, method, 0, tmp_path / "cut", first_epoch=2, last_epoch=5, init=init, device="cpu"),
            on_epoch=stop_after_first)
    assert load_checkpoint(tmp_path / "cut" / LAST)["epoch"] == 3
    seen = []
    summary = fit(RunSpec(exp, data, method, 0, tmp_path / "cut", first_epoch=2, last_epoch=5, init=init, device="cpu"),
                  on_epoch=lambda e, m: seen.append(e))
    assert seen == [3, 4]  # only the missing epochs were trained
    assert [h["epoch"] for h in summary["history"]] == [2, 3, 4]
    full, cut = weights(tmp_path / "full" / LAST), weights(tmp_path / "cut" / LAST)
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_changed_config_starts_over_instead_of_resuming(tmp_path):
    exp, data = tiny_experiment(), tiny_data()
    fit(RunSpec(exp, data, "ce", 0, tmp_path, first_epoch=0, last_epoch=2, device="cpu"))
    seen = []
    fit(RunSpec(tiny_experiment(optim={"lr": 0.01, "batch_size": 8, "warmup_epochs": 1}), data, "ce", 0, tmp_path,
                first_epoch=0, last_epoch=2, device="cpu"), on_epoch=lambda e, m: seen.append(e))
    assert seen == [0, 1]


def test_best_checkpoint_is_the_validation_argmax(tmp_path):
    exp, data = tiny_experiment(), tiny_data()
    fit(RunSpec(exp, data, "ce", 0, tmp_path, first_epoch=0, last_epoch=4, device="cpu"))
    history = json.loads((tmp_path / HISTORY).read_text())
    vals = [h["val_acc"] for h in history["history"]]
    best = load_checkpoint(tmp_path / BEST)
    first_argmax = vals.index(max(vals))
    assert best["epoch"] - 1 == first_argmax == history["selected_epoch"]
    assert best["selected_value"] == max(vals)


def test_lr_schedule_of_the_paper_profile_follows_the_spec():
    """method.md §6: lr 0.1, x0.01 at epochs 160 and 180 (0.1 -> 1e-3 -> 1e-5, as LDAM-DRW and
    MetaSAug), after a 5-epoch linear warm-up."""
    o = load_params(ROOT / "params.yaml").experiment("lt_paper").optim
    assert o.lr_at(159) == pytest.approx(0.1)
    assert o.lr_at(160) == pytest.approx(1e-3)
    assert o.lr_at(179) == pytest.approx(1e-3)
    assert o.lr_at(180) == pytest.approx(1e-5)
    assert o.lr_at(199) == pytest.approx(1e-5)
    # per epoch (one step an epoch) the warm-up is LDAM-DRW's lr * (epoch + 1) / 5
    assert [round(o.lr_at(e), 6) for e in range(6)] == [0.02, 0.04, 0.06, 0.08, 0.1, 0.1]


def test_warmup_ramps_over_its_epochs_per_iteration():
    o = tiny_experiment(pretrain_epochs=4, train_epochs=4,
                        optim={"lr": 0.1, "warmup_epochs": 1, "milestones": [4, 6], "gamma": 0.1}).optim
    # one warm-up epoch of 4 iterations: lr/4, lr/2, 3lr/4, lr; then the full lr
    assert [round(o.lr_at(0, i, 4), 6) for i in range(4)] == [0.025, 0.05, 0.075, 0.1]
    assert o.lr_at(1, 0, 4) == o.lr_at(3, 3, 4) == 0.1
    assert [round(o.lr_at(e, 0, 4), 6) for e in (4, 5, 6, 7)] == [0.01, 0.01, 0.001, 0.001]
    two = tiny_experiment(optim={"lr": 0.1, "warmup_epochs": 2}).optim
    assert [round(two.lr_at(e, i, 2), 6) for e in (0, 1) for i in (0, 1)] == [0.025, 0.05, 0.075, 0.1]
    none = tiny_experiment(optim={"lr": 0.1, "warmup_epochs": 0}).optim
    assert none.lr_at(0, 0, 4) == 0.1


def test_training_applies_the_per_iteration_warmup(tmp_path):
    """A one-epoch warm-up changes the trained weights (before the fix ``warmup_epochs: 1`` gave
    the full lr from the first step, i.e. the same weights as no warm-up)."""
    data = tiny_data()
    runs = {}
    for w in (0, 1):
        exp = tiny_experiment(optim={"lr": 0.05, "batch_size": 8, "warmup_epochs": w, "milestones": [3]})
        fit(RunSpec(exp, data, "ce", 0, tmp_path / f"w{w}", first_epoch=0, last_epoch=1, device="cpu"))
        runs[w] = weights(tmp_path / f"w{w}" / LAST)
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0] if runs[0][k].is_floating_point())


def test_history_warmup_fills_every_sample_before_the_first_meta_step(tmp_path):
    """With ``history_warmup`` the characteristics' history holds every training sample and the
    class-average loss is measured before the method's first step; the network is unchanged."""
    exp, data = tiny_experiment(), tiny_data()
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu"))
    init = load_checkpoint(tmp_path / "pre" / LAST)
    seen = {}

    for flag in (True, False):
        exp = tiny_experiment(methods={"meta_iada": {"history_warmup": flag}})
        original = REGISTRY["meta_iada"].start

        def spy(self, batches, original=original, flag=flag):
            buffers = {k: v.clone() for k, v in self.network.state_dict().items()}
            original(self, batches)
            seen[flag] = (self.characteristics.seen.clone(), self.characteristics.class_avg_loss.clone())
            after = self.network.state_dict()
            assert all(torch.equal(buffers[k], after[k]) for k in buffers)  # θ and BN statistics

        REGISTRY["meta_iada"].start = spy
        try:
            fit(RunSpec(exp, data, "meta_iada", 0, tmp_path / f"h{flag}", first_epoch=1, last_epoch=2,
                init=tmp_path / "pre" / LAST, device="cpu"))
        finally:
            REGISTRY["meta_iada"].start = original
    filled, class_loss = seen[True]
    assert bool(filled.all()) and len(filled) == len(data.splits["train"].y)
    assert not torch.allclose(class_loss, torch.full_like(class_loss, math.log(data.num_classes)))
    empty, initial = seen[False]
    assert not bool(empty.any())
    assert torch.equal(initial, torch.full_like(initial, math.log(data.num_classes)))
    assert init["epoch"] == 1


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


def test_a_starting_checkpoint_of_another_length_is_refused_before_any_work(tmp_path):
    """A deferred run starts at epoch pretrain_epochs: a pretraining stopped early (or one of
    another pretrain_epochs) is refused, instead of a run that records its epochs as if they
    followed a full pretraining."""
    exp, data = tiny_experiment(), tiny_data()
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu"))
    with pytest.raises(CheckpointError, match="holds 1 trained epochs, but this run starts at epoch 2"):
        fit(RunSpec(exp, data, "ce", 0, tmp_path / "run", first_epoch=2, last_epoch=4, init=tmp_path / "pre" / LAST,
                    device="cpu"))
    assert not (tmp_path / "run" / LAST).exists()


def test_the_calibration_test_curve_records_test_accuracy_from_the_first_lr_step_and_selects_nothing(tmp_path):
    """``calibration_test_curve``: every epoch from the first milestone (3) records the test
    accuracy of that epoch's weights; earlier epochs do not; selection stays on validation and
    the weights are those of a run without it."""
    from pipeline.engine.build import eval_loaders
    from pipeline.evaluation.metrics import predict, split_metrics

    data = tiny_data()
    plain = fit(RunSpec(tiny_experiment(), data, "ce", 0, tmp_path / "plain", first_epoch=0, last_epoch=4,
                        device="cpu"))
    exp = tiny_experiment(calibration_test_curve=True)
    summary = fit(RunSpec(exp, data, "ce", 0, tmp_path / "calib", first_epoch=0, last_epoch=4, device="cpu"))
    assert [("calibration_test_acc" in h) for h in summary["history"]] == [False, False, False, True]
    assert summary["selected_epoch"] == plain["selected_epoch"]
    last = weights(tmp_path / "calib" / LAST)
    assert all(torch.equal(last[k], v) for k, v in weights(tmp_path / "plain" / LAST).items())
    method = REGISTRY["ce"]  # the final weights' test accuracy, computed apart
    from pipeline.engine.build import build_net
    model = build_net(exp, data, torch.device("cpu"), method.head)
    model.load_state_dict(last)
    test = data.splits["test"]
    acc = split_metrics(predict(model, eval_loaders(exp, data, torch.device("cpu"))["test"]), test.y,
                        data.num_classes)["acc"]
    assert summary["history"][-1]["calibration_test_acc"] == acc


def test_checkpoint_of_another_network_is_refused(tmp_path):
    data = tiny_data()
    fit(RunSpec(tiny_experiment(), data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu"))
    other = tiny_experiment(network={"arch": "resnet20", "channels_last": False})
    with pytest.raises(CheckpointError, match="does not fit"):
        fit(RunSpec(other, data, "ce", 0, tmp_path / "t", first_epoch=1, last_epoch=2, init=tmp_path / "pre" / LAST,
            device="cpu"))


@pytest.mark.parametrize("method, scenario", METHOD_SCENARIOS)
def test_every_method_trains_from_the_pretrain_checkpoint(tmp_path, method, scenario):
    exp, data = tiny_experiment(scenario), tiny_data(**SCENARIOS[scenario])
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu"))
    summary = fit(RunSpec(exp, data, method, 0, tmp_path / method, first_epoch=1, last_epoch=2,
                  init=tmp_path / "pre" / LAST, device="cpu"))
    assert summary["method"] == method and len(summary["history"]) == 1
    row = summary["history"][0]
    metric = exp.selection_metric  # val_worst_group_acc for subpop
    assert row["epoch"] == 1 and torch.isfinite(torch.tensor(row["train_loss"])) and 0 <= row[metric] <= 1
    assert (tmp_path / method / BEST).is_file()


def test_a_method_that_needs_groups_refuses_data_without_them_in_one_line(tmp_path, capsys):
    exp, data = tiny_experiment(), tiny_data()
    with pytest.raises(ParamError, match=r"^groupdro needs group labels of the training samples"):
        fit(RunSpec(exp, data, "groupdro", 0, tmp_path / "run", first_epoch=0, last_epoch=1, device="cpu"))


@pytest.mark.parametrize("overrides, expect", [
    ({"optim": {"batch_size": 1000}}, r"optim\.batch_size = 1000 is larger than the train split \(42 images\)"),
    ({"meta_batch_size": 50}, r"meta_batch_size = 50 is larger than the meta split \(12 images\)"),
])
def test_a_batch_larger_than_its_split_is_refused_before_any_work(tmp_path, overrides, expect):
    from pipeline.params.schema import ParamError

    with pytest.raises(ParamError, match=expect):
        fit(RunSpec(tiny_experiment(**overrides), tiny_data(), "meta_iada", 0, tmp_path / "run", first_epoch=0,
            last_epoch=1, device="cpu"))
    assert not (tmp_path / "run").exists()


def test_a_run_killed_while_finishing_is_not_retrained(tmp_path, monkeypatch):
    """Killed after its last epoch (here: while writing the scores): the rerun reuses the
    finished ``last.pt``, trains no epoch and writes the missing files."""
    import numpy as np

    import pipeline.engine.loop as train

    exp, data = tiny_experiment(), tiny_data()
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "pre", first_epoch=0, last_epoch=1, device="cpu"))
    init = tmp_path / "pre" / LAST

    def killed(*args, **kwargs):
        raise Interrupt

    monkeypatch.setattr(train.np, "savez", killed)
    with pytest.raises(Interrupt):
        fit(RunSpec(exp, data, "meta_iada", 0, tmp_path / "run", first_epoch=1, last_epoch=3, init=init, device="cpu"))
    assert load_checkpoint(tmp_path / "run" / LAST)["epoch"] == 3 and not (tmp_path / "run" / HISTORY).exists()
    finished = weights(tmp_path / "run" / LAST)
    monkeypatch.undo()
    seen = []
    summary = fit(RunSpec(exp, data, "meta_iada", 0, tmp_path / "run", first_epoch=1, last_epoch=3, init=init,
                          device="cpu"), on_epoch=lambda e, m: seen.append(e))
    assert seen == [] and [h["epoch"] for h in summary["history"]] == [1, 2]
    assert (tmp_path / "run" / HISTORY).is_file() and (tmp_path / "run" / "perturbation_net.pt").is_file()
    assert all(torch.equal(finished[k], v) for k, v in weights(tmp_path / "run" / LAST).items())
    with np.load(tmp_path / "run" / "sample_scores.npz") as scores:
        assert np.isfinite(scores["epsilon"]).any()  # the restored ε, not a fresh buffer of NaNs


def test_a_run_folder_being_trained_is_locked(tmp_path):
    """A second trainer on the same run folder stops with one line naming the holder."""
    import fcntl

    from pipeline.engine.checkpoint import RunLockedError, run_lock

    exp, data = tiny_experiment(), tiny_data()
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=r"being trained by another process \(pid \d+"):
            fit(RunSpec(exp, data, "ce", 0, tmp_path / "run", first_epoch=0, last_epoch=1, device="cpu"))
    assert not (tmp_path / "run" / LAST).exists()
    with open(tmp_path / ".run.lock") as handle:  # released: another holder can take it
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fit(RunSpec(exp, data, "ce", 0, tmp_path / "run", first_epoch=0, last_epoch=1, device="cpu"))
    assert (tmp_path / "run" / LAST).is_file()


def test_a_failed_checkpoint_write_is_one_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full disk made torch.save fail with 'unexpected pos' and no path, leaving .last.pt.tmp."""
    import pipeline.engine.loop as train

    real_save = torch.save

    def full_disk(obj, path):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1408 vs 1302")

    exp, data = tiny_experiment(), tiny_data()
    monkeypatch.setattr(train.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write .*best\.pt \(RuntimeError: .*unexpected pos.*free disk"):
        fit(RunSpec(exp, data, "ce", 0, tmp_path / "run", first_epoch=0, last_epoch=1, device="cpu"))
    monkeypatch.setattr(train.torch, "save", real_save)
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_ctrl_c_during_training_is_one_line_naming_the_saved_epoch(tmp_path, capsys):
    from pipeline.stages.common import main_guard
    from pipeline.engine.checkpoint import TrainingInterrupted

    exp, data = tiny_experiment(), tiny_data()

    def ctrl_c(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    def main(argv):
        fit(RunSpec(exp, data, "ce", 0, tmp_path / argv[0], first_epoch=0, last_epoch=3, device="cpu"), on_epoch=ctrl_c)

    with pytest.raises(TrainingInterrupted, match=r"saved at epoch 2 .*rerun the same command"):
        main(["a"])
    assert main_guard(main)(["b"]) == 130
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[ce] epoch")]
    assert len(err) == 1 and err[0].startswith("interrupted: the run is saved at epoch 2")  # no traceback


def test_a_run_logs_only_its_own_experiment_and_method_params():
    """An lt ce run logged 85 params, with data.noisy.*, data.glt.* and methods.meta_iada.*."""
    from pipeline.params.experiment import run_params

    exp = load_params(ROOT / "params.yaml").experiment("lt")
    params = run_params(exp, exp.method_config("la"))
    assert params["data.longtail.imbalance_ratio"] == 100 and params["method.tau"] == 1.0
    assert params["optim.gamma"] == 0.01 and params["pretrain_epochs"] == 16
    foreign = [k for k in params if k.startswith(("data.noisy", "data.subpop", "data.glt", "methods.", "search."))]
    assert foreign == []
    assert [k for k in params if k.startswith("method.")] == ["method.tau"]


def test_the_protocol_decides_where_a_method_run_starts(tmp_path, monkeypatch):
    """deferred: epochs [pretrain_epochs, total) from the pretraining's last.pt, the same start
    for every method; scratch: epochs [0, total) from the seeded random init, no pretraining
    needed. Evaluation reports which."""
    from pipeline.data.prepared import save_prepared
    from pipeline.engine.runs import pretrain, train
    from pipeline.evaluation.evaluate import evaluate_run
    from pipeline.layout import data_dir, run_dir

    monkeypatch.chdir(tmp_path)
    data = tiny_data()
    save_prepared(data, data_dir("tiny"))
    deferred, scratch = tiny_experiment(), tiny_experiment(protocol="scratch")
    deferred.name = scratch.name = "tiny"
    with pytest.raises(CheckpointError, match="pretrain/last.pt not found"):
        train(deferred, "la", 0, device="cpu", track=False)
    summary = train(scratch, "la", 0, device="cpu", track=False)
    assert (summary["first_epoch"], summary["last_epoch"]) == (0, 4)
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2, 3]
    result = evaluate_run(scratch, data, run_dir("tiny", 0, "la"), tmp_path / "plots", device="cpu")
    assert result["protocol"] == "scratch"
    pretrain(deferred, 0, device="cpu", track=False)
    summary = train(deferred, "la", 0, device="cpu", track=False)  # a changed protocol starts over
    assert (summary["first_epoch"], summary["last_epoch"]) == (2, 4)
    assert [h["epoch"] for h in summary["history"]] == [2, 3]
    result = evaluate_run(deferred, data, run_dir("tiny", 0, "la"), tmp_path / "plots", device="cpu")
    assert result["protocol"] == "deferred"
