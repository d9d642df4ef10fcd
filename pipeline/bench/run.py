"""Benchmarks (not tests): throughput of the input pipeline and cost of the Meta-IADA step.

    python -m pipeline.bench [--json] [--arch resnet32] [--steps 30]

In ONE process it times, on the same network and batch size:
1. ``model``: cross-entropy train steps on synthetic tensors already in memory (model alone);
2. ``pipeline``: the same steps fed by the real input pipeline (prepared long-tail CIFAR-10
   in memory as uint8, whole-batch crop/flip/normalise in torch);
3. a plain CE step, a Meta-IADA step with ``meta_scope: head`` and one with ``meta_scope: full``
   (:mod:`pipeline.bench.steps`), MWN, MetaSAug and the peer-style step,
each in fp32 and under bf16 autocast (``network.precision``): the bf16 keys carry a ``bf16_``
prefix, ``bf16_ce_speedup`` is the fp32 CE step's time over the bf16 one's (1 and 3 in the same
rounds, so the ratio is of one run).
Goals: ``input_pipeline_ratio`` >= 0.9, ``meta_head_over_ce`` <= 1.3, ``meta_full_over_ce`` <= 3.5;
``bf16_ce_speedup`` >= 1.8 for ResNet-32 on a CPU with AMX or AVX512-BF16.
Compare ratios measured in the same run; absolute times vary between machines. With ``--json``
the last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine.allocator import keep_freed_memory
from pipeline.engine.build import native_bf16
from pipeline.data.prepared import PreparedData, load_prepared
from pipeline.data.loader import Augmentation, BatchLoader, Order, channel_stats
from pipeline.networks import Precision, build_network


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_data(path: Path) -> PreparedData:
    """The prepared default data set if present, else CIFAR-10-LT built in memory from the source."""
    if (path / "arrays.npz").is_file():
        return load_prepared(path)
    from pipeline.data.build import prepare_dataset
    from pipeline.params.file import load_params

    return prepare_dataset(load_params().experiment("lt").data)


def time_ce_steps(arch: str, batches, steps: int, warmup: int, channels_last: bool, num_classes: int,
                  device: torch.device = torch.device("cpu"), *, precision: Precision = "fp32") -> float:
    """Images per second of CE train steps over ``batches`` (an iterator of (x, y) on ``device``)."""
    torch.manual_seed(0)
    net = build_network(arch, num_classes, precision=precision).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    net.train()
    n_img = 0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0, n_img = time.perf_counter(), 0
        x, y = next(batches)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_img += len(y)
    _sync(device)
    return n_img / (time.perf_counter() - t0)


def input_pipeline(arch: str, batch: int, steps: int, warmup: int, channels_last: bool, data_dir: Path,
                   device: torch.device = torch.device("cpu"), *, precision: Precision = "fp32") -> dict:
    """Images per second of CE steps on the model alone (synthetic tensors), through the real
    loader, and of the loader alone; their ratio ``input_pipeline_ratio`` (1: the loader costs
    nothing)."""
    data = bench_data(data_dir)
    split = data.splits["train"]
    mean, std = channel_stats(split.x)
    loader = BatchLoader(split, (mean, std), batch, augment=Augmentation(),
                         order=Order(shuffle=True, drop_last=True), channels_last=channels_last, device=device)

    def real():
        for b in loader.endless():
            yield b.x, b.y

    g = torch.Generator().manual_seed(0)
    c, h, w = data.image_shape
    xs = torch.randn(batch, c, h, w, generator=g).to(device)
    if channels_last:
        xs = xs.contiguous(memory_format=torch.channels_last)
    ys = torch.randint(0, data.num_classes, (batch,), generator=g).to(device)

    def synthetic():
        while True:
            yield xs, ys

    classes = data.num_classes
    model = time_ce_steps(arch, synthetic(), steps, warmup, channels_last, classes, device, precision=precision)
    pipe = time_ce_steps(arch, real(), steps, warmup, channels_last, classes, device, precision=precision)
    t0 = time.perf_counter()
    n = 0
    for b in loader.epoch(1):
        n += len(b.y)
    _sync(device)
    loader_only = n / (time.perf_counter() - t0)
    return {"model_img_per_s": model, "pipeline_img_per_s": pipe, "loader_only_img_per_s": loader_only,
            "input_pipeline_ratio": pipe / model}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--data", type=Path, default=Path("data/prepared/lt"))
    p.add_argument("--skip-meta", action="store_true", help="only the input-pipeline benchmark")
    p.add_argument("--json", action="store_true", help="last line: one JSON object with every figure")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds of the step benchmark")
    p.add_argument("--compile", default="none", choices=["none", "reduce-overhead"],
                   help="run.compile of a second CE and full Meta-IADA step timed in the same rounds (default: "
                        "none; on a CPU inductor compiles for minutes)")
    p.add_argument("--precision", action="append", choices=["fp32", "bf16"],
                   help="network.precision of the input-pipeline run and the steps (repeatable; default: fp32 "
                        "and bf16)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}: torch sees no CUDA device")
    keep_freed_memory()  # as training does (pipeline.engine.loop.fit)
    cl = not args.no_channels_last
    result: dict = {"arch": args.arch, "batch": args.batch, "threads": torch.get_num_threads(),
                    "device": str(device), "channels_last": cl}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    precisions = tuple(dict.fromkeys(args.precision or ["fp32", "bf16"]))
    result["precisions"] = list(precisions)
    result["bf16_native"] = native_bf16(device)  # False: bf16 is emulated here, and training refuses it
    if "bf16" in precisions and not result["bf16_native"]:
        print(f"bf16: {device} has no native bfloat16 convolutions (torch: {torch.backends.cpu.get_cpu_capability()}); "
              "the bf16 figures measure an emulation, and training refuses bf16 here (docs/precision.md)")
    for precision in precisions:
        prefix = "" if precision == "fp32" else f"{precision}_"
        pipe = input_pipeline(args.arch, args.batch, args.steps, args.warmup, cl, args.data, device,
                              precision=precision)
        result.update({prefix + k: v for k, v in pipe.items()})
        print(f"input pipeline ({precision}): model alone {pipe['model_img_per_s']:.0f} img/s, real pipeline "
              f"{pipe['pipeline_img_per_s']:.0f} img/s, ratio {pipe['input_pipeline_ratio']:.3f} (goal >= 0.9); "
              f"loader alone {pipe['loader_only_img_per_s']:.0f} img/s")
    if not args.skip_meta:
        from pipeline.bench.steps import time_steps

        steps = time_steps(arch=args.arch, batch=args.batch, device=str(device), repeats=args.repeats,
                           precisions=precisions, compile_mode=args.compile)
        result.update(steps)
        for prefix in ("" if p == "fp32" else f"{p}_" for p in precisions if args.compile != "none"):
            print(f"{prefix or 'fp32 '}compiled ({args.compile}): CE step {steps[prefix + 'ce_img_per_s']:.0f} -> "
                  f"{steps[prefix + 'ce_compiled_img_per_s']:.0f} img/s (goal on one H100/H200 >= 25,000), meta full "
                  f"{steps[prefix + 'meta_full_img_per_s']:.0f} -> {steps[prefix + 'meta_full_compiled_img_per_s']:.0f}"
                  f" img/s, meta full / CE compiled {steps[prefix + 'meta_full_compiled_over_ce']:.2f} (goal <= 4.0); "
                  f"{steps[prefix + 'compile_status']}")
        if "bf16_ce_speedup" in steps:
            print(f"bf16: CE step {steps['bf16_ce_speedup']:.2f}x faster than fp32 (goal >= 1.8 for ResNet-32 on a "
                  f"CPU with AMX or AVX512-BF16), meta full {steps['bf16_meta_full_speedup']:.2f}x; under bf16 "
                  f"meta head / CE = {steps['bf16_meta_head_over_ce']:.2f}, meta full / CE = "
                  f"{steps['bf16_meta_full_over_ce']:.2f}, MWN / CE = {steps['bf16_mwn_full_over_ce']:.2f}, "
                  f"MetaSAug / CE = {steps['bf16_metasaug_full_over_ce']:.2f}")
    if not args.skip_meta and "fp32" in precisions:
        print(f"step time: meta head / CE = {steps['meta_head_over_ce']:.2f} (goal <= 1.3; its floor, "
              f"1 + meta-batch forward / CE, is {1 + steps['meta_forward_over_ce']:.2f}), "
              f"meta full / CE = {steps['meta_full_over_ce']:.2f} (goal <= 3.5), shared real step "
              f"{steps['meta_full_shared_over_ce']:.2f} (goal <= 2.9), "
              f"MWN full / CE = {steps['mwn_full_over_ce']:.2f}, MetaSAug full / CE = "
              f"{steps['metasaug_full_over_ce']:.2f}, peer-style full / CE = "
              f"{steps['peer_style_full_over_ce']:.2f}, meta full / peer style = "
              f"{steps['meta_full_over_peer_style']:.2f} (goal <= 0.5)")
    if {"fp32", "bf16"} <= set(precisions):
        result["bf16_model_speedup"] = result["bf16_model_img_per_s"] / result["model_img_per_s"]
    if args.json:
        print(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
