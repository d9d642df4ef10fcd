"""run.compile: the compiled CE step and meta step give the eager step's weights, a failed
compilation falls back to the eager step with one line and a record, and checkpoints are those of
an eager run. On ``META_IADA_TEST_DEVICE`` (``make gpu-check``: cuda, with inductor and CUDA
graphs); on a CPU with the aot_eager backend (the same tracing, AOTAutograd and fallback without
inductor's code generation, which takes minutes here, see pipeline/engine/compiled.py)."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.engine import compiled
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.loop import RunSpec, fit
from pipeline.layout import LAST
from pipeline.params.file import RunConfig
from pipeline.params.schema import ParamError, build
from tests.tiny import tiny_data, tiny_experiment

DEVICE = torch.device(os.environ.get("META_IADA_TEST_DEVICE", "cpu"))
# Largest |Δw| over the largest |w| after 10 SGD steps (lr 0.05), compiled against eager. aot_eager
# runs the eager kernels on the traced graph: only float32 rounding of re-associated sums
# (~1e-7 per step) can differ, so 1e-5 leaves two orders of magnitude. inductor (CUDA) fuses
# BatchNorm and its reductions in other kernels and orders; its convolutions are cuDNN's, as eager's.
TOLERANCE = 2e-3 if DEVICE.type == "cuda" else 1e-5


@pytest.fixture(autouse=True)
def backend(monkeypatch):
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"META_IADA_TEST_DEVICE={DEVICE} but torch sees no CUDA device")
    if DEVICE.type == "cpu":
        monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    torch._dynamo.reset()


def run(tmp_path, label, method="ce", mode="none", first=0, last=2, init=None, **kw):
    exp = tiny_experiment(**kw)
    return fit(RunSpec(exp, tiny_data(), method, 0, tmp_path / label, first_epoch=first, last_epoch=last,
                       init=init, device=str(DEVICE), compile_mode=mode))


def state(tmp_path, label):
    return load_checkpoint(tmp_path / label / LAST)["model"]


def relative_gap(a, b):
    return max(((a[k].float() - b[k].float()).abs().max() / b[k].float().abs().max().clamp_min(1e-12)).item()
               for k in b if b[k].is_floating_point())


@pytest.mark.device
def test_compiled_ce_steps_give_the_eager_weights_and_running_statistics(tmp_path):
    eager = run(tmp_path, "eager")
    summary = run(tmp_path, "compiled", mode="reduce-overhead")
    assert summary["compile"] == {"mode": "reduce-overhead", "loss": "compiled"}  # no silent fallback
    assert "compile" not in eager  # an eager run's history.json is as before the switch
    a, b = state(tmp_path, "compiled"), state(tmp_path, "eager")
    run(tmp_path, "init", last=0)  # no epoch: last.pt holds the seeded initial weights
    init = state(tmp_path, "init")
    assert relative_gap(b, init) > 100 * TOLERANCE  # the 10 steps moved the weights: the check can fail
    assert relative_gap(a, b) < TOLERANCE  # weights and BatchNorm running statistics (updated once per step)


@pytest.mark.device
def test_the_compiled_meta_step_gives_the_eager_weights_and_perturbation_net(tmp_path):
    run(tmp_path, "pre")
    init = tmp_path / "pre" / LAST
    eager = run(tmp_path, "eager", "meta_iada", first=2, last=3, init=init)
    summary = run(tmp_path, "compiled", "meta_iada", "reduce-overhead", first=2, last=3, init=init)
    assert summary["compile"] == {"mode": "reduce-overhead", "meta_loss": "compiled"}
    assert relative_gap(state(tmp_path, "compiled"), state(tmp_path, "eager")) < TOLERANCE
    omega = {k: load_checkpoint(tmp_path / label / LAST)["method"] for k, label in (("c", "compiled"), ("e", "eager"))}
    omega = {k: {n: v for n, v in s.items() if n.startswith("perturbation_net.")} for k, s in omega.items()}
    assert omega["e"] and relative_gap(omega["c"], omega["e"]) < TOLERANCE
    assert eager["history"][0]["meta_loss"] == pytest.approx(summary["history"][0]["meta_loss"], rel=TOLERANCE)


@pytest.mark.parametrize("when", ["compile", "first call"])
def test_a_failed_compilation_runs_the_eager_step_says_so_once_and_records_it(tmp_path, monkeypatch, capsys, when):
    def broken(fn, **options):
        if when == "compile":
            raise RuntimeError("no C compiler found\nsecond line")

        def call(*args):
            raise RuntimeError("no C compiler found\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    run(tmp_path, "eager")
    capsys.readouterr()
    summary = run(tmp_path, "fallback", mode="reduce-overhead")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "run.compile" in ln]
    assert lines == [("run.compile = reduce-overhead: the ce step's forward and loss runs eagerly, its compilation "
                      "failed (RuntimeError: no C compiler found)")]
    assert summary["compile"]["loss"] == "eager after a failed compilation (RuntimeError: no C compiler found)"
    a, b = state(tmp_path, "fallback"), state(tmp_path, "eager")
    assert all(torch.equal(a[k], b[k]) for k in b)  # exactly the eager run: no step lost or repeated


def test_an_error_of_the_step_itself_is_raised_by_its_eager_run(tmp_path, monkeypatch):
    region = compiled.CompiledRegion(lambda x: x.view(-1, 7), "reduce-overhead", "step")
    with pytest.raises(RuntimeError, match="invalid for input of size 8"):
        region(torch.zeros(8))


class Interrupt(Exception):
    pass


def test_a_compiled_runs_checkpoint_is_an_eager_one_and_resumes_eagerly(tmp_path):
    def stop_after_first(epoch, metrics):
        if epoch == 0:
            raise Interrupt

    for label, mode in (("eager", "none"), ("mixed", "reduce-overhead")):  # both stopped after epoch 0 of 2
        with pytest.raises(Interrupt):
            fit(RunSpec(tiny_experiment(), tiny_data(), "ce", 0, tmp_path / label, first_epoch=0, last_epoch=2,
                        device=str(DEVICE), compile_mode=mode), on_epoch=stop_after_first)
    eager, mixed = load_checkpoint(tmp_path / "eager" / LAST), load_checkpoint(tmp_path / "mixed" / LAST)
    assert mixed["epoch"] == eager["epoch"] == 1
    assert mixed["fingerprint"] == eager["fingerprint"]  # run.compile is not part of the run's fingerprint
    assert list(mixed["model"]) == list(eager["model"])  # plain names, no torch.compile wrapper prefix
    assert mixed["optimizer"]["param_groups"] == eager["optimizer"]["param_groups"]
    seen = []
    fit(RunSpec(tiny_experiment(), tiny_data(), "ce", 0, tmp_path / "mixed", first_epoch=0, last_epoch=2,
                device=str(DEVICE)), on_epoch=lambda e, m: seen.append(e))
    assert seen == [1]  # resumed eagerly from the compiled epoch, not started over


def test_run_compile_defaults_to_none_and_refuses_other_values_in_one_error():
    assert build(RunConfig, {}, "run").compile == "none"
    assert build(RunConfig, {"compile": "reduce-overhead"}, "run").compile == "reduce-overhead"
    with pytest.raises(ParamError, match=r"^run.compile = 'max-autotune' is not allowed: use one of 'none', "
                                         r"'reduce-overhead'$"):
        build(RunConfig, {"compile": "max-autotune"}, "run")
