"""GPU check: the device-dependent tests, the step benchmark and one epoch of the paper profile on
a CUDA device, summed up in one JSON line.

    make gpu-check                      # = python -m pipeline.bench.gpu_check
    python -m pipeline.bench.gpu_check --device cuda:1

1. ``pytest -m device`` with ``META_IADA_TEST_DEVICE`` set to the device: the meta gradient
   against finite differences, and the forward-mode shortcut with the device's BatchNorm kernel
   (cuDNN's saves other tensors than the CPU kernel, so the shortcut falls back to recomputing
   BatchNorm's tangent) against the plain forward-mode pass; the compiled CE and meta steps
   (``run.compile``: inductor and CUDA graphs) against the eager ones.
2. ``python -m pipeline.bench --json --device <device> --arch resnet32 --compile reduce-overhead``:
   the step-cost ratios, the peak step memory, and the CE and full Meta-IADA steps' img/s eager
   and compiled (``run.compile``, CUDA graphs) in the same rounds.
3. One epoch of ``lt_paper`` (ResNet-32): the CE pretraining's first epoch and Meta-IADA's first
   epoch from it, with their times and the peak GPU memory.

The last output line is one JSON object; the exit status is 0 when the tests passed. Nothing
else in the project needs a GPU; on a machine without CUDA this stops with one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCH_KEYS = ("model_img_per_s", "input_pipeline_ratio", "meta_head_over_ce", "meta_full_over_ce",
              "meta_full_shared_over_ce", "mwn_full_over_ce", "metasaug_full_over_ce", "meta_full_over_peer_style",
              "ce_step_median_s", "meta_full_step_median_s", "ce_peak_mb", "meta_full_peak_mb",
              # under bf16 autocast (network.precision: bf16): the issue-29 goals are read from these, and
              # bf16_native says whether they measure the device's own bf16 or an emulation
              "bf16_native", "bf16_model_img_per_s", "bf16_input_pipeline_ratio", "bf16_ce_speedup",
              "bf16_meta_full_over_ce", "bf16_meta_head_over_ce", "bf16_ce_step_median_s", "bf16_meta_full_peak_mb",
              # the same steps eager and with run.compile = reduce-overhead (CUDA graphs), in one run
              *(f"{p}{k}" for p in ("", "bf16_") for k in (
                  "ce_img_per_s", "ce_compiled_img_per_s", "meta_full_img_per_s", "meta_full_compiled_img_per_s",
                  "ce_compiled_speedup", "meta_full_compiled_speedup", "meta_full_compiled_over_ce", "compile_status")))


DEVICE_TESTS = ("tests/methods/test_meta_gradient_device.py", "tests/data/test_loader_device.py",
                "tests/engine/test_compiled.py")


def run_tests(device: str) -> dict[str, Any]:
    """``pytest -m device`` on ``device``: the counts of its summary line and the exit status."""
    env = {**os.environ, "META_IADA_TEST_DEVICE": device}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "device", "-p", "no:cacheprovider",
                           *DEVICE_TESTS], env=env, capture_output=True, text=True)
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", proc.stdout)}
    return {"rc": proc.returncode, "passed": counts.get("passed", 0),
            "failed": counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0),
            "skipped": counts.get("skipped", 0)}


def run_bench(device: str, arch: str, data: Path, batch: int, repeats: int) -> dict[str, Any]:
    """``python -m pipeline.bench --json`` on ``device``: its figures named in BENCH_KEYS."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench", "--json", "--device", device, "--arch", arch,
                           "--data", str(data), "--batch", str(batch), "--repeats", str(repeats),
                           "--compile", "reduce-overhead"],
                          capture_output=True, text=True)
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-2000:])
    if proc.returncode != 0:
        return {"rc": proc.returncode}
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rc": 0, **{k: figures[k] for k in BENCH_KEYS if k in figures}}


def one_epoch(params_file: str, experiment: str, device: str, folder: Path) -> tuple[dict[str, Any], Path]:
    """The experiment's data, then one epoch of CE from scratch and one epoch of Meta-IADA from it
    (``fit`` as the stages run it, without MLflow); their times, validation accuracy and peak
    memory. Returns the figures and the prepared data folder."""
    from pipeline.data.build import prepare_dataset
    from pipeline.data.prepared import load_prepared, save_prepared
    from pipeline.engine.loop import RunSpec, fit
    from pipeline.layout import LAST
    from pipeline.params.file import load_params

    exp = load_params(params_file).experiment(experiment)
    t0 = time.perf_counter()
    data_dir = folder / "data"
    save_prepared(prepare_dataset(exp.data), data_dir)
    data = load_prepared(data_dir)
    out: dict[str, Any] = {"experiment": experiment, "arch": exp.network.arch, "train_images": len(data.splits["train"]),
                           "prepare_s": time.perf_counter() - t0}
    # Meta-IADA's epoch continues from the CE epoch's checkpoint (epoch 1 of the schedule: a run
    # starts where its starting checkpoint ended)
    for label, method, first, init in (("ce", "ce", 0, None), ("meta_iada", "meta_iada", 1, folder / "ce" / LAST)):
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        spec = RunSpec(exp, data, method, 0, folder / label, first_epoch=first, last_epoch=first + 1, init=init,
                       device=device, desc=f"gpu-check {experiment} {label}")
        summary = fit(spec)
        epoch = summary["history"][-1]
        out[f"{label}_epoch_s"] = epoch["epoch_seconds"]
        out[f"{label}_img_per_s"] = epoch["train_img_per_s"]
        out[f"{label}_val_acc"] = epoch.get("val_acc")
        if torch.device(device).type == "cuda":
            out[f"{label}_peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    if "ce_epoch_s" in out and "meta_iada_epoch_s" in out:
        out["meta_iada_over_ce_epoch"] = out["meta_iada_epoch_s"] / out["ce_epoch_s"]
    return out, data_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="a CUDA device (default: cuda); cpu only to test this script")
    p.add_argument("--arch", default="resnet32", help="network of the step benchmark (default: resnet32)")
    p.add_argument("--experiment", default="lt_paper", help="experiment of the one-epoch run (default: lt_paper)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--batch", type=int, default=100, help="batch of the step benchmark (default: 100)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds of the step benchmark (default: 10)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
              "the GPU check needs one; nothing else in the project does", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    t0 = time.perf_counter()
    result["tests"] = run_tests(str(device))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result["epoch"], data_dir = one_epoch(args.params, args.experiment, str(device), Path(tmp))
        result["bench"] = run_bench(str(device), args.arch, data_dir, args.batch, args.repeats)
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result))
    ok = result["tests"]["rc"] == 0 and result["tests"]["passed"] > 0 and result["bench"].get("rc") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
