"""Networks: shapes of h and z, depth of the CIFAR ResNets, and that h is the classifier's input."""

import pytest
import torch

from pipeline.networks import build_network


@pytest.mark.parametrize("arch, size, feature_dim", [("resnet8", 32, 64), ("resnet20", 32, 64),
                                                      ("resnet32", 32, 64), ("cnn", 28, 128), ("resnet8", 28, 64)])
def test_features_feed_the_classifier(arch, size, feature_dim):
    torch.manual_seed(0)
    net = build_network(arch, num_classes=7).eval()
    x = torch.randn(3, 3, size, size)
    h = net.features(x)
    assert h.shape == (3, feature_dim) and net.feature_dim == feature_dim
    assert torch.allclose(net(x), h @ net.classifier.weight.T + net.classifier.bias, atol=1e-6)


def test_resnet_depths_have_6n_plus_2_layers():
    def convs(net):
        return sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert [convs(build_network(f"resnet{d}", 10)) + 1 for d in (8, 20, 32, 56)] == [8, 20, 32, 56]
    assert sum(p.numel() for p in build_network("resnet32", 10).parameters()) == 464154  # He et al.: 0.46M
    with pytest.raises(ValueError, match="6n\\+2"):
        build_network("resnet10", 10)
    with pytest.raises(ValueError, match="unknown network"):
        build_network("vgg", 10)
