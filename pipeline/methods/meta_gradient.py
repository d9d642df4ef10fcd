"""The meta step of Meta-IADA (method.md §5, steps 1-2), online bi-level as Meta-Weight-Net and
MetaSAug [related].

Given the train batch's features h and logits z under θ (from the real step's forward, which is
shared: θ does not change between the pseudo and the real step, so a second forward would give
the same values and the same graph), characteristics c, the perturbation network Ω and lr η:

1. pseudo step: ε = Ω(c), L(θ, Ω) = mean_i L_i^IADA, θ'(Ω) = θ − η·∇_θ L;
2. meta step: L_meta(Ω) = CE(f_θ'(x_meta), y_meta) without augmentation; the exact gradient
   ∇_Ω L_meta through θ'(Ω) (second order in θ, see :func:`meta_gradient` for how it is
   computed); Adam step on Ω.

``scope``:

- ``full``: θ is every parameter of the network (the paper's CIFAR setting). The meta forward
  and the forward-mode pass of the train batch use :func:`torch.func.functional_call` with
  copies of the buffers, so the real BatchNorm running statistics are never written by them.
- ``head``: θ = (W, b) only, on the detached h (MetaSAug's setting for large data [related]);
  the meta batch's features are computed once without graph (:func:`meta_features`), so the
  meta step costs one forward of the meta batch through the backbone. They depend only on θ and
  the meta batch, so a caller may compute them before the train batch's forward (as
  :class:`~pipeline.methods.iada.MetaIADA` does) and pass them in.

``pseudo_step`` [choice]: ``plain`` is θ' = θ − η·g, the pseudo step of the Meta-Weight-Net and
MetaSAug code (no momentum, no weight decay, η the network's current lr); ``optimizer`` applies
the network optimizer's SGD rule to g instead (weight decay λ, momentum μ with its current
buffer, dampening, Nesterov: d = g + λθ, b = μ·buf + (1 − dampening)·d, step = d + μ·b or b),
so θ' is the step the real optimizer would take. Both differ only through terms that do not
depend on Ω, apart from the factor (1 + μ) Nesterov puts on g.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from pipeline.networks import FeatureClassifier
from pipeline.methods.forward_primals import ForwardPrimals
from pipeline.methods.perturbation import PerturbationNet

MetaScope = Literal["full", "head"]
PseudoStep = Literal["plain", "optimizer"]

# (logits z [B, C], classifier weight W [C, A], ε [B]) -> per-sample IADA loss [B]
TrainLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _FeaturesAndLogits(nn.Module):
    """``x -> (h, z)`` of a :class:`FeatureClassifier`, for :func:`torch.func.functional_call`."""

    def __init__(self, net: FeatureClassifier) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net.features(x)
        return h, self.net.classifier(h)


def stateless_forward(net: FeatureClassifier, params: dict[str, torch.Tensor],
                      x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features h [B, A] and logits z [B, C] of ``x`` with the parameters in ``params`` (names as
    in ``net.named_parameters()``; the others are the network's own), in the network's current
    train/eval mode. Buffers are passed as copies: BatchNorm running statistics are not written."""
    wrapper = _FeaturesAndLogits(net)
    overrides = {f"net.{k}": v for k, v in params.items()}
    overrides.update({f"net.{k}": v.clone() for k, v in net.named_buffers()})
    return torch.func.functional_call(wrapper, overrides, (x,))


def meta_cross_entropy(net: FeatureClassifier, params: dict[str, torch.Tensor], meta_x: torch.Tensor,
                       meta_y: torch.Tensor) -> torch.Tensor:
    """L_meta = CE(f_θ'(x_meta), y_meta) with θ' = ``params`` (scope full; a caller may compile it)."""
    return F.cross_entropy(stateless_forward(net, params, meta_x)[1], meta_y)


def meta_features(net: FeatureClassifier, meta_x: torch.Tensor) -> torch.Tensor:
    """The meta batch's features h_meta [M, A] under the current θ, without graph, for
    ``scope="head"`` (BatchNorm as in the network's current mode, running statistics untouched)."""
    with torch.no_grad():
        return stateless_forward(net, {}, meta_x)[0]


def pseudo_update(params: dict[str, torch.Tensor], grads: Sequence[torch.Tensor], lr: float,
                  optimizer: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """θ' = θ − η·g (``optimizer`` None) or θ − η·(the SGD direction of ``optimizer`` for g),
    differentiable in g (see the module docstring)."""
    groups = {}
    if optimizer is not None:
        groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    updated = {}
    for (name, p), g in zip(params.items(), grads):
        if optimizer is not None:
            group = groups[id(p)]
            g = g + group["weight_decay"] * p
            momentum = group["momentum"]
            if momentum:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                b = g if buf is None else momentum * buf + (1 - group["dampening"]) * g
                g = g + momentum * b if group["nesterov"] else b
        updated[name] = p - lr * g
    return updated


@dataclass
class TrainForward:
    """The train batch and its forward under θ (the real step's forward, shared)."""

    x: torch.Tensor  # [B, ...]
    features: torch.Tensor  # h [B, A]
    logits: torch.Tensor  # z [B, C]; for scope full with its graph to the network's parameters
    characteristics: torch.Tensor  # c [B, K], Ω's input
    primals: ForwardPrimals | None = None  # that forward's convolutions, recorded (full scope)


@dataclass
class MetaInputs:
    """A batch of the clean meta set."""

    x: torch.Tensor  # [M, ...]
    y: torch.Tensor  # [M]
    features: torch.Tensor | None = None  # h_meta at θ (head scope; computed when None)
    loss: Callable[..., torch.Tensor] | None = meta_cross_entropy  # L_meta at θ' (scope full; e.g. compiled)


# (θ's parameters, ∇_θ L of the pseudo step, ε = Ω(c), L): what a shared real step reuses
PseudoCallback = Callable[[list[torch.Tensor], Sequence[torch.Tensor], torch.Tensor, torch.Tensor], None]


@dataclass
class PseudoUpdate:
    """How θ' is taken: lr η, which parameters, and with which rule (``pseudo_step``)."""

    lr: float
    scope: MetaScope = "full"
    optimizer: torch.optim.Optimizer | None = None  # the network's SGD for ``pseudo_step: optimizer``
    on_pseudo: PseudoCallback | None = None  # receives the pseudo step's gradient (``real_step: shared``)


def meta_gradient(net: FeatureClassifier, perturbation_net: PerturbationNet, train_loss: TrainLoss, *,
                  batch: TrainForward, meta: MetaInputs,
                  pseudo: PseudoUpdate) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L_meta and ∇_Ω L_meta (one tensor per parameter of Ω); nothing is written.

    ``batch`` is the train batch and its forward under θ; for ``scope="full"`` its logits carry
    their graph to the network's parameters, which is kept for the real step's backward, and its
    ``primals`` (if recorded) let the forward-mode pass below compute only the tangents.
    ``meta.features``: :func:`meta_features` of ``meta.x`` at the same θ (head scope; computed
    here if None).

    The second-order term is computed exactly, as a Jacobian-vector product instead of a
    backward pass through the graph of ∇_θ L. With v = ∇_θ' L_meta and u = (∂θ'/∂g)ᵀ v
    (u = −η·v for the plain step), the chain rule gives

        ∇_Ω L_meta = ∂/∂Ω ⟨u, ∇_θ L(θ, Ω)⟩ = ∂/∂Ω [ ⟨∂L/∂z, ż⟩ + ⟨∂L/∂W|_z, u_W⟩ ],

    where ż = (∂z/∂θ)·u is one forward-mode pass of the train batch along u (BatchNorm with the
    batch statistics, as in the real forward), and the bracket involves only the loss head
    (z, W, ε = Ω(c)). It equals backpropagating L_meta through θ' = θ − η·∇_θ L built with
    ``create_graph``, at a fraction of the cost (BatchNorm's double backward dominates that).
    """
    x, features, logits, primals = batch.x, batch.features, batch.logits, batch.primals
    lr, scope, optimizer = pseudo.lr, pseudo.scope, pseudo.optimizer
    meta_x, meta_y, meta_h = meta.x, meta.y, meta.features
    epsilon = perturbation_net(batch.characteristics)  # [B], with graph to Ω
    if scope == "full":
        live = {k: p for k, p in net.named_parameters() if p.requires_grad}
        weight_key = "classifier.weight"
        pseudo_loss = train_loss(logits, live[weight_key], epsilon.detach()).mean()
        grads = torch.autograd.grad(pseudo_loss, list(live.values()), retain_graph=True)
        if pseudo.on_pseudo is not None:
            pseudo.on_pseudo(list(live.values()), grads, epsilon.detach(), pseudo_loss.detach())
    elif scope == "head":
        live = dict(net.classifier.named_parameters())  # W, b
        weight_key = "weight"
        features = features.detach()
        logits = net.classifier(features)  # z recomputed on the detached h: graph to W, b only
        pseudo_loss = train_loss(logits, live[weight_key], epsilon.detach()).mean()
        grads = torch.autograd.grad(pseudo_loss, list(live.values()))
    else:
        raise ValueError(f"unknown meta_scope {scope!r}: use full or head")
    # 1. pseudo step θ'(g), differentiable in g only
    g = [t.detach().requires_grad_() for t in grads]
    updated = pseudo_update(live, g, lr, optimizer)
    # 2. meta loss and v = ∇_θ' L_meta
    new = {k: t.detach().requires_grad_() for k, t in updated.items()}
    if scope == "full":
        meta_loss = meta.loss(net, new, meta_x, meta_y)
    else:
        if meta_h is None:
            meta_h = meta_features(net, meta_x)  # [M, A]
        meta_loss = F.cross_entropy(torch.func.functional_call(net.classifier, new, (meta_h,)), meta_y)
    v = torch.autograd.grad(meta_loss, list(new.values()))
    # 3. u = (∂θ'/∂g)ᵀ v, and ż = (∂z/∂θ)·u by forward mode
    u = dict(zip(live, torch.autograd.grad(list(updated.values()), g, v)))
    theta = {k: p.detach() for k, p in live.items()}
    with fwAD.dual_level():
        dual = {k: fwAD.make_dual(p, u[k]) for k, p in theta.items()}
        if scope == "full":
            with primals.reuse() if primals is not None else contextlib.nullcontext():
                _, z_dual = stateless_forward(net, dual, x)
        else:
            z_dual = torch.func.functional_call(net.classifier, dual, (features,))
        z_dot = fwAD.unpack_dual(z_dual).tangent  # [B, C]
    # 4. ∇_Ω of the directional derivative of L along u, through the loss head only
    z0 = logits.detach().requires_grad_()
    w0 = theta[weight_key].requires_grad_()
    # (a loss that reaches W only through z, e.g. Meta-Weight-Net's, has no second term)
    dz, dw = torch.autograd.grad(train_loss(z0, w0, epsilon).mean(), [z0, w0], create_graph=True, allow_unused=True)
    directional = (dz * z_dot).sum() + (0 if dw is None else (dw * u[weight_key]).sum())
    omega = list(perturbation_net.parameters())
    # A part of Ω the loss does not reach this step has meta gradient 0 (MetaSAug's Σ at epoch 0
    # of a schedule without pretraining, where its ramp α_0 = 0 removes the covariance term).
    return meta_loss.detach(), list(torch.autograd.grad(directional, omega, allow_unused=True, materialize_grads=True))


def meta_step(net: FeatureClassifier, perturbation_net: PerturbationNet,
              perturbation_optimizer: torch.optim.Optimizer, train_loss: TrainLoss, *,
              batch: TrainForward, meta: MetaInputs, pseudo: PseudoUpdate) -> torch.Tensor:
    """Steps 1-2: :func:`meta_gradient`, then one step of ``perturbation_optimizer`` on Ω.
    Returns L_meta as a detached 0-d tensor (no host sync: the caller sums it on the device)."""
    meta_loss, grads = meta_gradient(net, perturbation_net, train_loss, batch=batch, meta=meta, pseudo=pseudo)
    perturbation_optimizer.zero_grad(set_to_none=True)
    for p, g in zip(perturbation_net.parameters(), grads):
        p.grad = g
    perturbation_optimizer.step()
    return meta_loss
