"""The real forward's primals reused in the meta step's forward-mode pass of the train batch
(:func:`pipeline.methods.meta_gradient.meta_gradient`, step 3): :class:`ForwardPrimals` and the
tangent-only forwards of the convolutions, ReLUs and BatchNorms it records."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn


class ForwardPrimals:
    """The primals of one forward (inputs and outputs of a network's convolutions, outputs of its
    ReLUs, batch statistics of its BatchNorms), for a forward-mode pass of the same batch at the
    same θ that then computes only the tangents of these modules.

    A convolution's JVP is conv(ẋ, W) + conv(x, Ẇ) (+ ḃ) next to its primal conv(x, W), a ReLU's
    is ẋ·[y > 0] next to y = max(x, 0); in the meta step's forward-mode pass of the train batch
    (:func:`meta_gradient`, step 3) the primals are exactly the real forward's, so recomputing
    them costs a third of that pass for nothing. ``record()`` around the real forward keeps
    references to every ``nn.Conv2d``'s input and output, every ``nn.ReLU``'s output and, for
    every ``nn.BatchNorm2d`` in training mode, its input and the batch mean and inverse standard
    deviation its autograd node saved (tensors autograd keeps anyway: a convolution saves its
    input, the BatchNorm after it its input and statistics, a ReLU its output, so no extra
    memory); ``reuse()`` around the forward-mode pass makes each recorded module return its
    recorded output with the exact tangent above, and each such BatchNorm compute its output
    from the recorded statistics (one pass instead of torch's statistics and normalisation
    passes) and its tangent with :func:`_batch_norm_tangent` (the same derivative as torch's
    forward-mode rule, from torch's fused BatchNorm backward kernel instead of a dozen passes
    over memory; a training-mode BatchNorm without a recording computes its statistics again).
    Everything else (functional ReLUs, shortcuts, pooling, the classifier, and modules called
    more than once in the forward, such as one ReLU shared by several layers) goes through
    torch's forward-mode AD. ``reuse()`` refuses if a weight or a recorded tensor changed since
    ``record()`` (an optimizer step, an in-place operation in between) or a module sees an input
    of another shape, and forgets the recording when it ends.
    """

    def __init__(self, net: nn.Module) -> None:
        self.convs = [m for m in net.modules() if type(m) is nn.Conv2d]
        self.relus = [m for m in net.modules() if type(m) is nn.ReLU]
        self.norms = [m for m in net.modules() if type(m) is nn.BatchNorm2d and m.affine]
        # module -> (recorded tensors, the tensors whose in-place changes would void them)
        self.saved: dict[nn.Module, tuple[tuple[torch.Tensor, ...], list[tuple[torch.Tensor, int]]]] = {}
        self.called_again: set[nn.Module] = set()  # one record per module: these are not reused

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        self.saved.clear()
        self.called_again.clear()
        handles = [m.register_forward_hook(self._save_conv) for m in self.convs]
        handles += [m.register_forward_hook(self._save_relu) for m in self.relus]
        handles += [m.register_forward_hook(self._save_norm) for m in self.norms]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _save(self, module: nn.Module, tensors: tuple[torch.Tensor, ...], watched: tuple[torch.Tensor, ...]) -> None:
        if module in self.saved or module in self.called_again:
            self.saved.pop(module, None)
            self.called_again.add(module)
            return
        self.saved[module] = (tensors, [(t, t._version) for t in watched])

    def _save_conv(self, module: nn.Conv2d, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x, out = args[0].detach(), output.detach()
        self._save(module, (x, out), (module.weight, x, out))

    def _save_relu(self, module: nn.ReLU, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        out = output.detach()
        self._save(module, (out,), (out,))

    def _save_norm(self, module: nn.BatchNorm2d, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # The batch mean and 1/√(σ² + eps) that the forward computed, as saved for its backward
        # (torch's documented ``grad_fn._saved_*`` access); other kernels (cuDNN) save other
        # things: such a BatchNorm is not recorded and computes its statistics again.
        node = output.grad_fn
        if not module.training or type(node).__name__ != "NativeBatchNormBackward0":
            return
        x = args[0].detach()
        self._save(module, (x, node._saved_result1, node._saved_result2), (module.weight, module.bias, x))

    @contextlib.contextmanager
    def reuse(self) -> Iterator[None]:
        if any(t._version != version for _, checks in self.saved.values() for t, version in checks):
            self.saved.clear()
            raise RuntimeError("ForwardPrimals.reuse: the network's weights or the recorded tensors "
                               "changed since record()")
        norms = [m for m in self.norms if m.training and m not in self.saved] if self.saved else []
        try:
            for module, (tensors, _) in self.saved.items():
                module.forward = functools.partial(_REUSE[type(module)], module, *tensors)
            for module in norms:
                module.forward = functools.partial(_batch_norm_dual, module)
            yield
        finally:
            for module in [*self.saved, *norms]:
                module.__dict__.pop("forward", None)
            self.saved.clear()


def _check_shape(module: nn.Module, inp: torch.Tensor, recorded: torch.Tensor) -> None:
    if inp.shape != recorded.shape:
        raise RuntimeError(f"ForwardPrimals.reuse: {type(module).__name__} input {tuple(inp.shape)} is "
                           f"not the recorded {tuple(recorded.shape)}")


def _tangent_only_conv(self: nn.Conv2d, x: torch.Tensor, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """``nn.Conv2d.forward`` under :meth:`ForwardPrimals.reuse`: the recorded output ``out`` as
    the primal, the tangent conv(ẋ, W) + conv(x, Ẇ) + ḃ from the recorded input ``x``."""
    _check_shape(self, inp, x)
    weight, weight_dot = fwAD.unpack_dual(self.weight)
    tangent = self._conv_forward(x, weight_dot, None) if weight_dot is not None else torch.zeros_like(out)
    inp_dot = fwAD.unpack_dual(inp).tangent
    if inp_dot is not None:
        tangent = tangent.add_(self._conv_forward(inp_dot, weight, None))
    if self.bias is not None:
        bias_dot = fwAD.unpack_dual(self.bias).tangent
        if bias_dot is not None:
            tangent = tangent.add_(bias_dot.view(1, -1, 1, 1))
    return fwAD.make_dual(out, tangent)


def _tangent_only_relu(self: nn.ReLU, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """``nn.ReLU.forward`` under :meth:`ForwardPrimals.reuse`: the recorded output ``out`` as the
    primal, the tangent ẋ·[out > 0] (the input is not written, even for ``inplace=True``)."""
    _check_shape(self, inp, out)
    inp_dot = fwAD.unpack_dual(inp).tangent
    if inp_dot is None:
        return out
    return fwAD.make_dual(out, torch.ops.aten.threshold_backward(inp_dot, out, 0))


def _batch_norm_dual(self: nn.BatchNorm2d, inp: torch.Tensor,
                     recorded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``nn.BatchNorm2d.forward`` in training mode under :meth:`ForwardPrimals.reuse`: the primal
    with the batch's statistics (running statistics untouched) and its tangent. With ``recorded``
    = (x, μ, r), the real forward's input and batch statistics, the primal
    γ·r·(x − μ) + β = a·x + (β − a·μ), a = γ·r, takes one pass; without, torch computes them."""
    x, x_dot = fwAD.unpack_dual(inp)
    weight, weight_dot = fwAD.unpack_dual(self.weight)
    bias, bias_dot = fwAD.unpack_dual(self.bias)
    if recorded is None:
        out, mean, rstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, self.eps)
    else:
        x, mean, rstd = recorded
        _check_shape(self, inp, x)
        shape = [1, -1] + [1] * (x.dim() - 2)  # per-channel vectors broadcast over [N, C, ...]
        scale = weight * rstd
        out = torch.addcmul((bias - scale * mean).view(shape), x, scale.view(shape))
    if x_dot is None and weight_dot is None and bias_dot is None:
        return out
    tangent = _batch_norm_tangent(x, x_dot, mean, rstd, weight=weight, weight_dot=weight_dot, bias_dot=bias_dot,
                                  eps=self.eps)
    return fwAD.make_dual(out, tangent)


def _recorded_batch_norm_dual(self: nn.BatchNorm2d, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                              inp: torch.Tensor) -> torch.Tensor:
    """:func:`_batch_norm_dual` from the statistics recorded by :meth:`ForwardPrimals.record`."""
    return _batch_norm_dual(self, inp, (x, mean, rstd))


def _batch_norm_tangent(x: torch.Tensor, x_dot: torch.Tensor | None, mean: torch.Tensor, rstd: torch.Tensor, *,
                        weight: torch.Tensor, weight_dot: torch.Tensor | None, bias_dot: torch.Tensor | None,
                        eps: float) -> torch.Tensor:
    """Tangent of y = γ·x̂ + β, x̂ = (x − μ)·r with the batch's mean μ and r = 1/√(σ² + eps) per
    channel (statistics over every dimension but 1):

        ẏ = γ·r·(ẋ − mean(ẋ) − x̂·mean(ẋ·x̂)) + γ̇·x̂ + β̇.

    The first term is J·ẋ with J = ∂y/∂x, which is symmetric (γ·r·(I − 11ᵀ/n − x̂x̂ᵀ/n) per
    channel), so J·ẋ = Jᵀ·ẋ is exactly what BatchNorm's backward computes for the output gradient
    ẋ: torch's fused backward kernel gives it in one pass over memory (a third of the time of
    the same formula in separate tensor operations). γ̇·x̂ + β̇ = a·x + (β̇ − a·μ), a = γ̇·r, is one
    more pass."""
    shape = [1, -1] + [1] * (x.dim() - 2)  # per-channel vectors broadcast over [N, C, ...]
    if x_dot is not None:
        tangent = torch.ops.aten.native_batch_norm_backward(
            x_dot, x, weight, None, None, mean, rstd, True, eps, [True, False, False])[0]
    else:
        tangent = torch.zeros_like(x)
    if weight_dot is not None:
        a = weight_dot * rstd
        tangent = tangent.addcmul_(x, a.view(shape))
        bias_dot = -a * mean if bias_dot is None else bias_dot - a * mean
    if bias_dot is not None:
        tangent = tangent.add_(bias_dot.view(shape))
    return tangent


# What a recorded module computes under ForwardPrimals.reuse, by its type.
_REUSE = {nn.Conv2d: _tangent_only_conv, nn.ReLU: _tangent_only_relu, nn.BatchNorm2d: _recorded_batch_norm_dual}
