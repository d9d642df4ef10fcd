"""The loader on the test device: ``META_IADA_TEST_DEVICE`` (default ``cpu``; ``make gpu-check``
runs these with ``cuda``). The split is copied to the device once; each batch is gathered,
cropped, flipped and normalised there, from the same host draws as on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.data.loader import Augmentation, BatchLoader, Order
from tests.tiny import tiny_data

DEVICE = torch.device(os.environ.get("META_IADA_TEST_DEVICE", "cpu"))
pytestmark = pytest.mark.device


def loader(device: torch.device) -> BatchLoader:
    split = tiny_data().splits["train"]
    return BatchLoader(split, ([120.0, 130.0, 140.0], [60.0, 50.0, 40.0]), 8, augment=Augmentation(pad=2),
                       order=Order(shuffle=True, drop_last=True, seed=3), device=device, channels_last=True)


def test_the_split_lives_on_the_device_and_every_batch_is_the_cpus():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"META_IADA_TEST_DEVICE={DEVICE} but torch sees no CUDA device")
    on_device, on_cpu = loader(DEVICE), loader(torch.device("cpu"))
    assert on_device.x.device.type == on_device.y.device.type == DEVICE.type
    assert on_device.x.dtype == torch.uint8  # a quarter of float32's memory
    for epoch in (0, 5):
        batches = list(zip(on_device.epoch(epoch), on_cpu.epoch(epoch), strict=True))
        assert batches
        for a, b in batches:
            assert a.x.device.type == a.y.device.type == a.index.device.type == DEVICE.type
            assert a.x.is_contiguous(memory_format=torch.channels_last)
            # uint8 gather, crop and flip are exact; the normalisation is one subtraction and one
            # division in float32 on either device
            torch.testing.assert_close(a.x.cpu(), b.x, rtol=0, atol=1e-6)
            assert torch.equal(a.y.cpu(), b.y) and torch.equal(a.index.cpu(), b.index)
