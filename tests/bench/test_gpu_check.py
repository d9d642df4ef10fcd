"""The GPU check's CPU-side parts: its refusal without CUDA, and the whole script on the CPU at a
tiny size (the same code path as on a GPU, with the device named cpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.bench import gpu_check
from pipeline.engine.build import native_bf16
from pipeline.layout import shared_data_dir

ROOT = Path(__file__).resolve().parents[2]


def test_without_cuda_it_stops_with_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: no CUDA device")


def tiny_params(path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lt = params["experiments"]["lt"]
    lt.update(data={"scenario": "longtail", "source": "cifar10", "meta_per_class": 3, "val_per_class": 4,
                    "limit_per_class": 40, "test_limit_per_class": 15, "longtail": {"imbalance_ratio": 10}},
              pretrain_epochs=2, train_epochs=1, meta_batch_size=10, eval_batch_size=100)
    lt["optim"].update(batch_size=16, warmup_epochs=1, milestones=[2])
    params.update(experiments={"tiny": lt}, tune={"run": [], "studies": {}}, reference={"experiments": {}},
                  run={"experiments": ["tiny"], "methods": ["ce"], "seeds": [0], "device": "cpu"})
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_the_whole_check_runs_on_the_cpu_and_prints_one_json_line(tmp_path):
    tiny_params(tmp_path / "params.yaml")
    # aot_eager: the compiled steps' tracing and fallback without inductor's code generation (minutes on a CPU)
    env = {**os.environ, "META_IADA_SHARED_DATA": str(shared_data_dir()), "PYTHONPATH": str(ROOT),
           "META_IADA_COMPILE_BACKEND": "aot_eager"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench.gpu_check", "--device", "cpu", "--arch", "resnet8",
                           "--params", str(tmp_path / "params.yaml"), "--experiment", "tiny", "--batch", "8",
                           "--repeats", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu"
    assert result["tests"]["passed"] >= 4 and result["tests"]["failed"] == 0
    epoch = result["epoch"]
    assert epoch["experiment"] == "tiny" and epoch["train_images"] > 0
    assert epoch["ce_epoch_s"] > 0 and epoch["meta_iada_epoch_s"] > 0
    assert epoch["meta_iada_over_ce_epoch"] == epoch["meta_iada_epoch_s"] / epoch["ce_epoch_s"]
    bench = result["bench"]
    # one timed round on a shared CPU: the ratios are checked for what they are, not for a speed
    assert bench["rc"] == 0 and bench["ce_peak_mb"] > 0
    assert bench["meta_full_over_ce"] == bench["meta_full_step_median_s"] / bench["ce_step_median_s"]
    assert bench["bf16_ce_speedup"] > 0 and bench["bf16_meta_full_over_ce"] > 0  # the bf16 keys reach the line
    assert bench["bf16_native"] is native_bf16(torch.device("cpu"))  # whether those are the CPU's own bf16
    for p in ("", "bf16_"):  # the CE and meta steps eager and compiled (run.compile), in each precision
        assert bench[f"{p}compile_status"] == {"ce.loss": "compiled", "meta_full.meta_loss": "compiled"}
        assert bench[f"{p}ce_compiled_speedup"] == pytest.approx(bench[f"{p}ce_compiled_img_per_s"]
                                                                 / bench[f"{p}ce_img_per_s"], rel=1e-12)
        assert bench[f"{p}meta_full_compiled_over_ce"] == pytest.approx(bench[f"{p}ce_compiled_img_per_s"]
                                                                        / bench[f"{p}meta_full_compiled_img_per_s"],
                                                                        rel=1e-12)
        assert bench[f"{p}meta_full_img_per_s"] > 0 and bench[f"{p}meta_full_compiled_speedup"] > 0
