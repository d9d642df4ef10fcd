"""Cost of one training step: plain CE vs Meta-IADA (``meta_scope`` head and full).

:func:`time_steps` builds the three methods through the :class:`~pipeline.methods.Method`
interface on the same network architecture, CIFAR-shaped random tensors (train batch and meta
batch of the same size, as Meta-Weight-Net and MetaSAug), and times ``update`` (the whole step,
optimizer steps included) in ONE process, the variants interleaved round by round so that a
change of machine load hits them alike; the first ``warmup`` rounds are not timed.

Peak memory of a step, per variant:

- CUDA: ``torch.cuda.max_memory_allocated`` during one step minus the memory allocated just
  before it (the step's activations, graphs and temporaries), in this process;
- CPU (Linux): in a fresh process per variant (spawned) whose allocator gives every freed block
  of 64 KiB or more back to the OS (:func:`pipeline.engine.allocator.return_freed_memory`, so that the
  resident set follows the live tensors), after one warm-up step (which creates the optimizer
  states), the resident-set high-water mark is reset (``/proc/self/clear_refs``) and the peak
  ``VmHWM`` over two more steps minus the resident set before them is reported: the step's
  transient memory (activations, autograd graphs, temporaries), not the model. (With glibc's
  default allocator, memory kept after the warm-up step hid part of the peak: the figures
  moved by 100 MiB between runs.)

Step times are reported as the mean and the median over the timed rounds; the ratios use the
medians, which are robust to the load spikes of a shared machine. On CPU the median process
CPU time per step (all threads) and its ratios (``*_over_ce_cpu``) are reported as well: they
are much less sensitive than wall time to other processes competing for the cores.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.engine.allocator import return_freed_memory
from pipeline.engine.compiled import compile_method
from pipeline.params.schema import build
from pipeline.methods import REGISTRY, Batch, Method, StepContext, TrainInfo
from pipeline.methods.losses import alpha_at, iada_loss
from pipeline.methods.meta_gradient import stateless_forward
from pipeline.networks import Compile, Precision, build_network

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ce": ("ce", {}),
    "meta_head": ("meta_iada", {"meta_scope": "head"}),
    "meta_full": ("meta_iada", {"meta_scope": "full"}),
    "meta_full_shared": ("meta_iada", {"meta_scope": "full", "real_step": "shared"}),
    "mwn_full": ("mwn", {"meta_scope": "full"}),
    "metasaug_full": ("metasaug", {"meta_scope": "full"}),
    # Meta-IADA's full step written the peers' way (peer_style_step); its own meta step never runs
    "peer_style_full": ("meta_iada", {"meta_scope": "full", "meta_interval": 10 ** 9}),
}
PEER_STYLE = "peer_style_full"
# timed again with their regions compiled (run.compile), as "<variant>_compiled"
COMPILED = ("ce", "meta_full")


def peer_style_step(method: Any, batch: Batch, ctx: StepContext) -> None:
    """Meta-IADA's full-scope step as the peers' code (Meta-Weight-Net, MetaSAug) writes its meta
    step: a functional copy of θ, ∇_θ of the pseudo loss with ``create_graph=True``, θ' = θ − η·g,
    the meta batch's CE at θ' and a double backward to Ω, an AdamW step on Ω; then the real step
    with the updated Ω (``method.update``, whose own meta step is off)."""
    net = method.network
    params = dict(net.named_parameters())
    features, logits = stateless_forward(net, params, batch.x)
    c = method.characteristics.compute(logits.detach(), features.detach(), batch.y, batch.index,
                                       net.classifier.weight)
    alpha = alpha_at(method.cfg.alpha, ctx.epoch, ctx.total_epochs)
    loss = iada_loss(logits, features, batch.y, params["classifier.weight"], method.class_covariance.covariance,
                     epsilon=method.perturbation_net(c), alpha=alpha, beta=method.cfg.beta,
                     direction=method.cfg.direction).mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    pseudo = {k: p - ctx.lr * g for (k, p), g in zip(params.items(), grads)}
    meta = ctx.meta_batch()
    _, meta_logits = stateless_forward(net, pseudo, meta.x)
    omega = list(method.perturbation_net.parameters())
    method.perturbation_optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(meta_logits, meta.y).backward(inputs=omega)
    method.perturbation_optimizer.step()
    method.update(batch, dataclasses.replace(ctx, step=1))


def _setup(variant: str, arch: str, batch: int, num_classes: int, device: torch.device,
           channels_last: bool, precision: Precision = "fp32") -> tuple[Method, Batch, StepContext]:
    """A method of ``variant`` on a fresh network in ``precision``, one train batch and a step context."""
    name, params = VARIANTS[variant]
    torch.manual_seed(0)
    net = build_network(arch, num_classes, precision=precision).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    num_train = 10 * batch
    info = TrainInfo(num_classes, torch.full((num_classes,), num_train // num_classes), num_train,
                     net.feature_dim, device)
    cls = REGISTRY[name]
    method = cls(build(cls.Config, params, f"methods.{name}"), net, opt, info).to(device)

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)

    labels = torch.arange(batch, device=device) % num_classes
    train = Batch(images(), labels, torch.arange(batch, device=device))
    meta = Batch(images(), labels.clone(), torch.arange(batch, device=device))
    # epoch 160 of 200: alpha_t > 0, as in MetaSAug's Meta-IADA phase
    ctx = StepContext(epoch=160, total_epochs=200, step=0, lr=0.1, meta_batch=lambda: meta)
    return method, train, ctx


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _cpu_peak_child(variant: str, arch: str, batch: int, num_classes: int, channels_last: bool,
                    precision: Precision, queue: multiprocessing.Queue) -> None:
    # Blocks go back to the OS when freed, so the resident set follows the live tensors: memory
    # merely kept by the allocator after the warm-up step would hide the step's own peak.
    return_freed_memory()
    method, train, ctx = _setup(variant, arch, batch, num_classes, torch.device("cpu"), channels_last, precision)
    method.update(train, ctx)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError:  # not permitted here: the peak may then include the warm-up step's
        pass
    before = _proc_status_kib("VmRSS")
    for _ in range(2):
        method.update(train, ctx)
    queue.put((_proc_status_kib("VmHWM") - before) / 1024)


def _peak_memory_mb(variant: str, arch: str, batch: int, num_classes: int, device: torch.device,
                    channels_last: bool, precision: Precision) -> float:
    if device.type == "cuda":
        method, train, ctx = _setup(variant, arch, batch, num_classes, device, channels_last, precision)
        method.update(train, ctx)  # creates the optimizer state
        _sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        method.update(train, ctx)
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=_cpu_peak_child,
                          args=(variant, arch, batch, num_classes, channels_last, precision, queue))
    child.start()
    peak = queue.get()
    child.join()
    return peak


def time_steps(*, arch: str = "resnet32", batch: int = 100, repeats: int = 10, warmup: int = 2,
               device: str = "cpu", num_classes: int = 10, channels_last: bool = True,
               memory: bool = True, precisions: tuple[Precision, ...] = ("fp32",),
               compile_mode: Compile = "none") -> dict[str, Any]:
    """Seconds per step (``<variant>_step_s`` mean, ``<variant>_step_median_s``, on CPU also
    ``<variant>_step_cpu_s``) of CE (``ce``), Meta-IADA head (``meta_head``) and full
    (``meta_full``; ``meta_full_shared`` with ``real_step: shared``), Meta-Weight-Net and
    MetaSAug full (``mwn_full``, ``metasaug_full``) and Meta-IADA's full step written the peers'
    way (``peer_style_full``, :func:`peer_style_step`),
    the ratios of the medians
    ``<variant>_over_ce`` (on CPU also ``*_over_ce_cpu``) and ``meta_full_over_peer_style``, and
    (``memory``) each variant's peak step memory ``<variant>_peak_mb`` in MiB (see the module
    docstring for what is measured; not for the peer-style step).

    Also timed, interleaved with the steps: ``meta_forward``, the no-grad forward of the meta
    batch through the backbone, which a head step adds to a CE step at the least (its features
    at the current θ); ``meta_forward_over_ce`` + 1 is the floor of ``meta_head_over_ce``.

    Each precision in ``precisions`` (``network.precision``) times every variant, all of them
    interleaved in the same rounds; the keys of ``fp32`` are as above, those of another precision
    carry its name as a prefix (``bf16_ce_step_median_s``, ``bf16_meta_full_over_ce``: the ratio
    to the CE step of the same precision), and with both fp32 and bf16 ``bf16_ce_speedup`` is the
    fp32 CE step's median over the bf16 one's (``bf16_<variant>_speedup`` likewise).

    With ``compile_mode`` (``run.compile``) other than none, the CE and the full Meta-IADA step
    are timed again, in the same rounds, with their regions compiled (:mod:`pipeline.engine.compiled`;
    at least 3 warm-up rounds: compilation, CUDA graph recording, first replay):
    ``<variant>_compiled_*`` as above, ``ce_compiled_speedup`` (the eager CE step's median over
    the compiled one's; ``meta_full_compiled_speedup`` likewise), ``meta_full_compiled_over_ce``
    (both compiled), ``<variant>_img_per_s`` (batch / median) of the four, and ``compile_status``
    (each compiled region's :attr:`~pipeline.engine.compiled.CompiledRegion.status`); with the
    precision's prefix as above."""
    dev = torch.device(device)
    steps: dict[tuple[str, str], Any] = {}
    status: dict[str, dict[str, str]] = {}
    for precision in precisions:
        setups = {v: _setup(v, arch, batch, num_classes, dev, channels_last, precision) for v in VARIANTS}
        for v, (method, train, ctx) in setups.items():
            steps[precision, v] = (lambda m=method, b=train, c=ctx: peer_style_step(m, b, c)) if v == PEER_STYLE \
                else (lambda m=method, b=train, c=ctx: m.update(b, c))
        ce_net, meta_x = setups["ce"][0].network, setups["ce"][2].meta_batch().x

        def meta_forward(net=ce_net, x=meta_x) -> None:  # what the head step adds to a CE step, at the least
            with torch.no_grad():
                net.features(x)

        steps[precision, "meta_forward"] = meta_forward
        if compile_mode != "none":
            warmup = max(warmup, 3)
            status[precision] = {}
            for v in COMPILED:
                method, train, ctx = _setup(v, arch, batch, num_classes, dev, channels_last, precision)
                regions = compile_method(method, compile_mode)
                status[precision].update({f"{v}.{name}": region for name, region in regions.items()})
                steps[precision, f"{v}_compiled"] = lambda m=method, b=train, c=ctx: m.update(b, c)
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    for round_ in range(warmup + repeats):
        for key, step in steps.items():
            _sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            _sync(dev)
            if round_ >= warmup:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    result: dict[str, Any] = {}
    for precision in precisions:
        prefix = "" if precision == "fp32" else f"{precision}_"
        if compile_mode != "none":
            result[f"{prefix}compile_status"] = {k: r.status for k, r in status[precision].items()}
            for v in COMPILED:
                eager, compiled = wall[precision, v], wall[precision, f"{v}_compiled"]
                result[f"{prefix}{v}_compiled_speedup"] = statistics.median(eager) / statistics.median(compiled)
                for name, times in ((v, eager), (f"{v}_compiled", compiled)):
                    result[f"{prefix}{name}_img_per_s"] = batch / statistics.median(times)
            result[f"{prefix}meta_full_compiled_over_ce"] = (statistics.median(wall[precision, "meta_full_compiled"])
                                                            / statistics.median(wall[precision, "ce_compiled"]))
        for (p, variant), times in wall.items():
            if p != precision:
                continue
            result[f"{prefix}{variant}_step_s"] = statistics.mean(times)
            result[f"{prefix}{variant}_step_median_s"] = statistics.median(times)
            if dev.type == "cpu":
                result[f"{prefix}{variant}_step_cpu_s"] = statistics.median(cpu[p, variant])
        for variant in ("meta_head", "meta_full", "meta_full_shared", "meta_forward", "mwn_full", "metasaug_full",
                        PEER_STYLE):
            result[f"{prefix}{variant}_over_ce"] = (result[f"{prefix}{variant}_step_median_s"]
                                                    / result[f"{prefix}ce_step_median_s"])
            if dev.type == "cpu":
                result[f"{prefix}{variant}_over_ce_cpu"] = (result[f"{prefix}{variant}_step_cpu_s"]
                                                            / result[f"{prefix}ce_step_cpu_s"])
        result[f"{prefix}meta_full_over_peer_style"] = (result[f"{prefix}meta_full_step_median_s"]
                                                        / result[f"{prefix}{PEER_STYLE}_step_median_s"])
    if "fp32" in precisions and "bf16" in precisions:
        for variant in (*VARIANTS, "meta_forward"):
            result[f"bf16_{variant}_speedup"] = (result[f"{variant}_step_median_s"]
                                                 / result[f"bf16_{variant}_step_median_s"])
    if memory:
        del steps  # the timed methods: only one variant's process at a time holds memory
        for precision in precisions:
            prefix = "" if precision == "fp32" else f"{precision}_"
            for variant in (v for v in VARIANTS if v != PEER_STYLE):
                result[f"{prefix}{variant}_peak_mb"] = _peak_memory_mb(variant, arch, batch, num_classes, dev,
                                                                       channels_last, precision)
    return result
