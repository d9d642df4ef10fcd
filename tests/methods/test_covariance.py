"""The online class covariance equals the batch computation over all data it was fed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.methods.covariance import ClassCovariance


def feed(mode: str) -> tuple[ClassCovariance, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    classes, dim = 4, 5
    x = rng.normal(size=(90, dim)) * rng.uniform(0.5, 3, size=dim) + 2.0
    y = rng.integers(0, 3, size=90)  # class 3 is never seen
    y[17] = 2  # a batch below holds a single sample of class 2
    est = ClassCovariance(classes, dim, mode, dtype=torch.float64)
    for start, stop in ((0, 10), (10, 17), (17, 18), (18, 50), (50, 51), (51, 90)):
        est.update(torch.from_numpy(x[start:stop]), torch.from_numpy(y[start:stop]))
    return est, x, y


def test_full_covariance_equals_batch_computation():
    est, x, y = feed("full")
    for c in range(3):
        xc = x[y == c]
        np.testing.assert_allclose(est.covariance[c].numpy(), np.cov(xc.T, bias=True), atol=1e-12)
        np.testing.assert_allclose(est.mean[c].numpy(), xc.mean(0), atol=1e-12)
        assert est.amount[c].item() == len(xc)
    assert est.covariance.shape == (4, 5, 5)
    assert not est.covariance[3].any() and est.amount[3].item() == 0


def test_diagonal_covariance_equals_batch_variance():
    est, x, y = feed("diagonal")
    assert est.covariance.shape == (4, 5)
    for c in range(3):
        np.testing.assert_allclose(est.covariance[c].numpy(), x[y == c].var(0), atol=1e-12)
    assert not est.covariance[3].any()


def test_state_round_trips_through_state_dict():
    est, _, _ = feed("full")
    fresh = ClassCovariance(4, 5, "full", dtype=torch.float64)
    fresh.load_state_dict(est.state_dict())
    assert torch.equal(fresh.covariance, est.covariance) and torch.equal(fresh.mean, est.mean)


def test_update_ignores_the_graph():
    est = ClassCovariance(2, 3)
    h = torch.randn(6, 3, requires_grad=True)
    est.update(h, torch.tensor([0, 0, 1, 1, 0, 1]))
    assert not est.covariance.requires_grad


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="full or diagonal"):
        ClassCovariance(2, 3, "spherical")
