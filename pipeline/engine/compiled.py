"""The GPU path's compiled regions (``run.compile``): ``torch.compile(mode="reduce-overhead")``,
which on CUDA replays each captured region as a CUDA graph (one launch instead of hundreds of
kernel launches), with an eager fallback.

Regions a method's step has (:func:`compile_method`):

- ``loss``: the forward and loss of a step whose loss is a function of the batch alone
  (:attr:`~pipeline.methods.Method.compile_loss`: ``ce``, ``la``); AOTAutograd compiles its
  backward with it, so the CE step's forward, loss and backward are captured. Its SGD step stays
  eager: the lr changes every iteration of the warm-up, and a compiled step specialises on a float
  lr (a recompilation per iteration) unless the lr is a tensor, which would change what the
  checkpoints hold. On CUDA it is a handful of multi-tensor (``foreach``) kernels.
- ``meta_loss``: L_meta = CE(f_θ'(x_meta), y_meta) of the meta step at θ' and, when the meta step
  takes v = ∇_θ' L_meta, its backward (``meta_iada`` with ``meta_scope: full``,
  :func:`~pipeline.methods.meta_gradient.meta_cross_entropy`).

Not compiled: the rest of the meta step (the train batch's forward records its primals through
module hooks, the forward-mode pass uses dual tensors, and the loss head's gradient is taken with
``create_graph``: AOTAutograd refuses a double backward through a compiled region).

Fallback: when compiling or capturing a region fails (no C compiler, an operator the compiler
cannot lower, the recompilation limit reached by changing shapes), that region runs eagerly for
the rest of the process, one line on stderr says so, and :attr:`CompiledRegion.status` (recorded
in ``history.json``) keeps the reason. An error of the step itself is raised again by its eager
run. A failure after a compiled region ran (rare: a CUDA graph's replay) may have updated
BatchNorm's running statistics once more.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from pipeline.methods import Method
from pipeline.networks import Compile

# The torch.compile backend; "inductor" takes ``mode``. META_IADA_COMPILE_BACKEND=aot_eager (the
# same tracing, AOTAutograd and fallback, without code generation) is what the tests use on a CPU:
# inductor's C++ code generation for a ResNet-8 did not finish within 10 minutes on a loaded 2-core CPU.
BACKEND = os.environ.get("META_IADA_COMPILE_BACKEND", "inductor")


class CompiledRegion:
    """``fn`` compiled with ``mode`` (``none``: ``fn`` itself); call it as ``fn``."""

    def __init__(self, fn: Callable[..., Any], mode: Compile, name: str) -> None:
        self.fn, self.mode, self.name = fn, mode, name
        self.compiled: Callable[..., Any] | None = None
        self.status = "eager"
        self._first = True
        if mode == "none":
            return
        options: dict[str, Any] = {"mode": mode} if BACKEND == "inductor" else {"backend": BACKEND}
        try:
            self.compiled = torch.compile(fn, dynamic=False, **options)
            self.status = "compiled"
        except Exception as err:  # noqa: BLE001 (e.g. a Python version torch.compile does not support)
            self._fall_back(err)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args)
        from torch._dynamo.utils import counters  # here: torch._dynamo costs an eager run its import time

        skips = counters["inductor"]["cudagraph_skips"]
        try:
            # a new step: outputs of the previous replay (last step's gradients) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
            # a shape that keeps changing fails here instead of running eagerly without a word
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                out = self.compiled(*args)
        except Exception as err:  # noqa: BLE001 (any failure: the eager step, said once)
            self._fall_back(err)
            return self.fn(*args)
        if self._first:
            self._first = False
            if counters["inductor"]["cudagraph_skips"] > skips and args_on_cuda(args):
                self.status = "compiled without CUDA graphs"
                print(f"run.compile = {self.mode}: the {self.name} is compiled but runs without CUDA graphs "
                      "(TORCH_LOGS=perf_hints says why)", file=sys.stderr)
        return out

    def _fall_back(self, err: Exception) -> None:
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        self.compiled, self.status = None, f"eager after a failed compilation ({reason})"
        print(f"run.compile = {self.mode}: the {self.name} runs eagerly, its compilation failed ({reason})",
              file=sys.stderr)


def args_on_cuda(args: Any) -> bool:
    """Whether any tensor in ``args`` (or in a mapping or the fields of a batch among them) is on CUDA."""
    stack = list(args)
    while stack:
        a = stack.pop()
        if isinstance(a, torch.Tensor):
            if a.is_cuda:
                return True
        elif isinstance(a, dict):
            stack.extend(a.values())
        elif hasattr(a, "__dataclass_fields__"):
            stack.extend(getattr(a, f) for f in a.__dataclass_fields__)
    return False


def compile_method(method: Method, mode: Compile) -> dict[str, CompiledRegion]:
    """Replace the regions of ``method``'s step that can be compiled (module docstring) by
    :class:`CompiledRegion` s of ``mode``; returns them by name (none for ``mode = "none"``)."""
    if mode == "none":
        return {}
    regions = {}
    if method.compile_loss:
        regions["loss"] = method.loss = CompiledRegion(method.loss, mode, f"{method.name} step's forward and loss")
    if getattr(method, "meta_loss", None) is not None:
        regions["meta_loss"] = method.meta_loss = CompiledRegion(method.meta_loss, mode, "meta step's L_meta at θ'")
    return regions
