"""Networks with the deep feature h and the linear classifier (W, b) separately reachable.

Every network here is an :class:`FeatureClassifier`: ``features(x) -> h`` [B, A] (the input of
the last linear layer) and ``classifier`` (``nn.Linear(A, C)``), so that the IADA loss and the
``meta_scope: head`` meta step can work on h and W directly.

Precision (``network.precision``): with ``bf16`` the backbone (image -> h) runs under
``torch.autocast`` in bfloat16 and h is returned in float32, so everything after it (the
classifier, logits, losses, softmax, the covariance Σ, the characteristics and the perturbation
network Ω) is float32, and so are the weights (the master copy the optimizer updates) and their
gradients: autocast casts the weights to bfloat16 for each convolution, and autograd casts the
gradients back. Every forward of every method goes through :meth:`FeatureClassifier.features`
(the real step, the pseudo and meta passes of the meta step, their forward-mode pass, the
evaluation), so the switch reaches them all.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

Arch = Literal["resnet8", "resnet20", "resnet32", "resnet56", "cnn"]
# linear: z = W h + b; cosine: z_j = cos θ_j = hᵀw_j / (||h|| ||w_j||) (LDAM-DRW's NormedLinear;
# the same W, its bias unused, so a CE checkpoint loads into either).
Head = Literal["linear", "cosine"]
Precision = Literal["fp32", "bf16"]
# run.compile: the steps eager, or their capturable regions under torch.compile(mode="reduce-overhead")
# (CUDA graphs on CUDA; pipeline/engine/compiled.py)
Compile = Literal["none", "reduce-overhead"]


def cosine_logits(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos θ_ij = h_iᵀ w_j / (||h_i|| ||w_j||) [B, C] for features h [B, A] and class weights W [C, A]."""
    return F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T


class FeatureClassifier(nn.Module):
    """Backbone F (image -> h) followed by the classifier head: logits z = W h + b, or cos θ with
    ``head = "cosine"``. Subclasses implement :meth:`backbone`."""

    feature_dim: int
    classifier: nn.Linear
    head: Head = "linear"
    precision: Precision = "fp32"  # bf16: the backbone under bfloat16 autocast (module docstring)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """h [B, A] in the precision of the surrounding autocast state."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """h [B, A], float32 whatever the precision."""
        if self.precision == "fp32":
            return self.backbone(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.backbone(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.head == "cosine":
            return cosine_logits(h, self.classifier.weight)
        return self.classifier(h)


class BasicBlock(nn.Module):
    """3x3-3x3 residual block with the parameter-free option-A shortcut of He et al. (2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # ReLU modules (one per call site) so that the meta step can reuse their outputs
        # (pipeline.methods.forward_primals.ForwardPrimals); in place on BatchNorm outputs, as torchvision's ResNets:
        # BatchNorm's backward needs its input, not its output, so nothing saved is overwritten.
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else 0
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pad and self.stride == 1:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(FeatureClassifier):
    """CIFAR ResNet of depth 6n+2 (3 stages of n blocks, 16/32/64 channels, 64-d feature)."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 64
        self.classifier = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)  # [B, 64]


class SmallCNN(FeatureClassifier):
    """Four conv layers for 28x28 inputs (MNIST-sized), 128-d feature, as in DomainBed's MNIST_CNN."""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        chans = (in_channels, 64, 128, 128, 128)
        strides = (1, 2, 1, 1)
        blocks = []
        for cin, cout, s in zip(chans[:-1], chans[1:], strides):
            blocks += [nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*blocks)
        self.feature_dim = 128
        self.classifier = nn.Linear(128, num_classes)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)  # [B, 128]


def build_network(arch: Arch, num_classes: int, in_channels: int = 3, head: Head = "linear",
                  precision: Precision = "fp32") -> FeatureClassifier:
    """Network by name: ``resnet8/20/32/56`` (CIFAR ResNets) or ``cnn`` (28x28 inputs), with a
    linear or cosine head, its backbone in ``precision``."""
    net: FeatureClassifier
    if arch.startswith("resnet"):
        net = CifarResNet(int(arch[len("resnet"):]), num_classes, in_channels)
    elif arch == "cnn":
        net = SmallCNN(num_classes, in_channels)
    else:
        raise ValueError(f"unknown network {arch!r}: use one of resnet8, resnet20, resnet32, resnet56, cnn")
    if precision not in get_args(Precision):
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(get_args(Precision))}")
    net.head, net.precision = head, precision
    return net

