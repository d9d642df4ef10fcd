"""Noisy labels: realised rates on 50,000 labels, transition structure, clean meta set."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import balanced_labels, data_config, real_cifar10_labels, synthetic_source

from pipeline.data.build import build_from_source
from pipeline.data.noisy import corrupt_labels, expected_noise_rate, noisy_label_distribution, transition_counts
from pipeline.data.sampling import stream
from pipeline.params.schema import ParamError


def cifar10_train_labels() -> np.ndarray:
    """The 50,000 CIFAR-10 training labels (real ones from the shared archive if present)."""
    labels = real_cifar10_labels()
    return balanced_labels(10, 5000) if labels is None else labels["train"]


@pytest.mark.parametrize("kind", ["uniform", "uniform_with_true", "flip"])
def test_realised_rate_on_full_cifar10_labels(kind):
    labels = cifar10_train_labels()
    assert len(labels) == 50_000
    noisy = corrupt_labels(labels, 10, kind, 0.4, stream(0, "noisy/labels"))
    realised = float(np.mean(noisy != labels))
    # nominal realised rate: r = 0.4, or r (C-1) / C = 0.36 for uniform_with_true
    nominal = 0.36 if kind == "uniform_with_true" else 0.4
    assert expected_noise_rate(kind, 0.4, 10) == pytest.approx(nominal)
    assert abs(realised - nominal) <= 0.005
    # every class loses the same share: exactly round(r * n_c) labels are redrawn per class
    per_class = transition_counts(labels, noisy, 10)
    if kind != "uniform_with_true":
        assert per_class.sum(axis=1).tolist() == [5000] * 10
        assert np.diag(per_class).tolist() == [3000] * 10


def build(kind: str):
    """Noisy fixture: 10 classes x 57 training images (50 left for training), 3 meta + 4 val per class, r = 0.4."""
    source = synthetic_source(num_classes=10, train_per_class=57, test_per_class=3)
    cfg = data_config(scenario="noisy", source="cifar10", meta_per_class=3, val_per_class=4,
                      noisy={"kind": kind, "rate": 0.4})
    return source, build_from_source(source, cfg)


def test_flip_goes_to_the_mapped_class():
    source, data = build("flip")
    train = data.splits["train"]
    clean, noisy = train.extras["clean_y"], train.y
    assert np.array_equal(clean, source.train_y[train.index])
    corrupted = train.extras["is_noisy"]
    assert np.array_equal(noisy[corrupted], (clean[corrupted] + 1) % 10)
    assert np.array_equal(noisy[~corrupted], clean[~corrupted])
    counts = np.array(data.card["noisy"]["transition_counts"])
    off = counts - np.diag(np.diag(counts))
    assert (off[np.arange(10), (np.arange(10) + 1) % 10] == 20).all()  # round(0.4 * 50)
    assert off.sum() == 200 == data.card["noisy"]["num_noisy"]


def test_uniform_never_keeps_the_true_class():
    _, data = build("uniform")
    train = data.splits["train"]
    corrupted = train.extras["is_noisy"]
    assert corrupted.sum() == 200
    assert (train.y[corrupted] != train.extras["clean_y"][corrupted]).all()
    matrix = np.array(data.card["noisy"]["transition_matrix"])
    assert np.allclose(np.diag(matrix), 0.6)
    assert np.allclose(matrix.sum(axis=1), 1)
    assert data.card["noisy"]["realised_rate"] == pytest.approx(0.4)


def test_uniform_with_true_states_its_expected_rate():
    _, data = build("uniform_with_true")
    card = data.card["noisy"]
    assert card["expected_realised_rate"] == pytest.approx(0.36)
    assert "r*(C-1)/C" in card["definition"]
    assert card["realised_rate"] <= 0.4


@pytest.mark.parametrize("kind", ["uniform", "uniform_with_true", "flip"])
def test_label_distribution_is_what_corrupt_labels_draws(kind):
    """Each row of the measured transition matrix (30,000 labels per class, r = 0.3): the clean
    class keeps P(ỹ = c) = the first entry, and the classes that receive labels hold the rest."""
    clean = np.repeat(np.arange(10), 30_000)
    t = transition_counts(clean, corrupt_labels(clean, 10, kind, 0.3, np.random.default_rng(1)), 10)
    p = t / t.sum(axis=1, keepdims=True)
    expected = noisy_label_distribution(kind, 0.3, 10)
    assert sum(expected) == pytest.approx(1.0)
    for c in range(10):
        others = np.sort(np.delete(p[c], c)[np.delete(p[c], c) > 0])[::-1]
        assert p[c, c] == pytest.approx(expected[0], abs=0.01)
        assert others == pytest.approx(expected[1:], abs=0.01)
    with pytest.raises(ValueError, match="unknown noise kind 'pair'"):
        noisy_label_distribution("pair", 0.3, 10)


@pytest.mark.parametrize("kind", ["uniform", "flip"])
def test_meta_and_val_stay_clean_and_disjoint(kind):
    source, data = build(kind)
    for name in ("meta", "val", "test"):
        split = data.splits[name]
        origin = source.test_y if name == "test" else source.train_y
        assert np.array_equal(split.y, origin[split.index])
    assert data.card["counts"]["per_class"]["meta"] == [3] * 10
    assert data.card["counts"]["per_class"]["val"] == [4] * 10
    pooled = np.concatenate([data.splits[s].index for s in ("train", "meta", "val")])
    assert len(np.unique(pooled)) == len(pooled) == 570


def test_meta_clean_total():
    source = synthetic_source(num_classes=10, train_per_class=53, test_per_class=3)
    cfg = data_config(scenario="noisy", source="cifar10", val_per_class=4, noisy={"meta_clean_total": 20})
    data = build_from_source(source, cfg)
    assert data.card["counts"]["per_class"]["meta"] == [2] * 10
    with pytest.raises(ParamError, match="data.noisy.meta_clean_total"):
        data_config(scenario="noisy", source="cifar10", noisy={"meta_clean_total": 1001})


@pytest.mark.parametrize(("raw", "key"), [
    ({"noisy": {"rate": 1.0}}, "experiments.test.data.noisy.rate"),
    ({"noisy": {"kind": "pair"}}, "experiments.test.data.noisy.kind"),
    ({"source": "mnist"}, "data.source"),
])
def test_invalid_noisy_params_name_the_key(raw, key):
    with pytest.raises(ParamError, match=key):
        data_config(**{"scenario": "noisy", "source": "cifar10", **raw})
