"""Subpopulation shift: exact group counts and correlations, rendering, clean carve-outs, IRM environments."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import CIFAR10_CLASSES, data_config, shared_mnist_present, synthetic_source

from pipeline.params.schema import ParamError
from pipeline.data.build import build_from_source, prepare_dataset
from pipeline.data.subpop import BORDER_COLOURS, BORDER_WIDTH

VEHICLE_IDS = [0, 1, 8, 9]  # airplane, automobile, ship, truck


def agreeing(n_per_label: list[int], share: float) -> list[int]:
    """Images with a = y per label value: round(share * n_v)."""
    return [int(np.floor(share * n + 0.5)) for n in n_per_label]


def check_groups(data, correlation: float, test_correlation: float, per_group: dict[str, int]) -> None:
    """Group counts in every split follow the configured correlation exactly."""
    counts = data.card["counts"]
    for name, share in (("train", correlation), ("test", test_correlation)):
        n_v = counts["per_class"][name]
        agree = agreeing(n_v, share)
        # g = 2y + a: a = y is group 0 for y = 0 and group 3 for y = 1
        assert counts["per_group"][name] == [agree[0], n_v[0] - agree[0], n_v[1] - agree[1], agree[1]]
        realised = data.card["subpop"]["realised_correlation"][name]
        assert realised == pytest.approx(sum(agree) / sum(n_v))
    for name, n in per_group.items():
        assert counts["per_group"][name] == [n] * 4
    for split in data.splits.values():
        assert np.array_equal(split.extras["group"], 2 * split.y + split.extras["attribute"])
    pooled = np.concatenate([data.splits[s].index for s in ("train", "meta", "val")])
    assert len(np.unique(pooled)) == len(pooled)


def test_colored_mnist_on_shared_mnist():
    if not shared_mnist_present():
        pytest.skip("shared MNIST not present")
    cfg = data_config(scenario="subpop", source="mnist", subpop={"correlation": 0.8, "test_correlation": 0.1})
    data = prepare_dataset(cfg)
    check_groups(data, 0.8, 0.1, {"meta": 10, "val": 20})
    assert data.card["subpop"]["realised_correlation"]["train"] == pytest.approx(0.8, abs=1e-4)
    assert data.card["subpop"]["realised_correlation"]["test"] == pytest.approx(0.1, abs=1e-3)
    test = data.splits["test"]
    # label noise 0.25 (benchmark default): exactly round(0.25 * n_v) flips per clean label
    clean = test.extras["clean_y"]
    for v in (0, 1):
        assert np.sum((clean == v) & (test.y != v)) == int(np.floor(0.25 * np.sum(clean == v) + 0.5))
    assert data.card["subpop"]["label_noise"] == 0.25
    assert data.splits["train"].x.shape[1:] == (28, 28, 3)


def test_colored_mnist_rendering_and_labels():
    source = synthetic_source(num_classes=10, train_per_class=30, test_per_class=10, shape=(28, 28, 1))
    cfg = data_config(scenario="subpop", source="mnist", meta_per_class=2, val_per_class=3,
                      subpop={"label_noise": 0.0})
    data = build_from_source(source, cfg)
    check_groups(data, 0.9, 0.1, {"meta": 2, "val": 3})
    for name, split in data.splits.items():
        grey = (source.test_x if name == "test" else source.train_x)[split.index, ..., 0]
        digits = (source.test_y if name == "test" else source.train_y)[split.index]
        assert np.array_equal(split.y, (digits >= 5).astype(int))
        a = split.extras["attribute"]
        assert np.array_equal(split.x[np.arange(len(a)), ..., a], grey)
        assert not split.x[np.arange(len(a)), ..., 1 - a].any()
        assert not split.x[..., 2].any()


def test_cifar_border_rendering_and_labels():
    source = synthetic_source(num_classes=10, train_per_class=30, test_per_class=10, class_names=CIFAR10_CLASSES)
    cfg = data_config(scenario="subpop", source="cifar10", meta_per_class=2, val_per_class=3,
                      subpop={"kind": "cifar_border", "correlation": 0.95, "test_correlation": 0.5})
    data = build_from_source(source, cfg)
    check_groups(data, 0.95, 0.5, {"meta": 2, "val": 3})
    assert data.card["subpop"]["label_noise"] == 0.0
    assert data.card["subpop"]["positive_classes"] == ["airplane", "automobile", "ship", "truck"]
    train = data.splits["train"]
    assert np.array_equal(train.y, np.isin(source.train_y[train.index], VEHICLE_IDS).astype(int))
    colour = BORDER_COLOURS[train.extras["attribute"]]
    w = BORDER_WIDTH
    for band in (train.x[:, :w], train.x[:, -w:], train.x[:, :, :w], train.x[:, :, -w:]):
        assert (band == colour[:, None, None, :]).all()
    inner = source.train_x[train.index][:, w:-w, w:-w]
    assert np.array_equal(train.x[:, w:-w, w:-w], inner)


def test_subpop_is_seeded():
    source = synthetic_source(num_classes=10, train_per_class=20, test_per_class=4, class_names=CIFAR10_CLASSES)
    cfg = data_config(scenario="subpop", source="cifar10", meta_per_class=2, val_per_class=2,
                      subpop={"kind": "cifar_border"})
    a, b = build_from_source(source, cfg), build_from_source(source, cfg)
    for name in a.splits:
        assert np.array_equal(a.splits[name].extras["attribute"], b.splits[name].extras["attribute"])
        assert np.array_equal(a.splits[name].index, b.splits[name].index)


def irm_build(**subpop):
    """Colored MNIST on a synthetic source sized so that every count below is exact: 46 images
    per digit = 230 per clean label; meta 2 + val 3 per group carve 10 per label, leaving 220
    (25 % = 55 flips, halves of 110: 90 % = 99, 80 % = 88); test 100 per label (25 flips, 10 agree)."""
    source = synthetic_source(num_classes=10, train_per_class=46, test_per_class=20, shape=(28, 28, 1))
    cfg = data_config(scenario="subpop", source="mnist", meta_per_class=2, val_per_class=3, subpop=subpop)
    return source, build_from_source(source, cfg)


def test_meta_and_val_keep_clean_labels_train_and_test_have_the_noise_rate():
    source, data = irm_build()  # label_noise null = 0.25 for colored_mnist
    flips = {"train": 55, "test": 25, "meta": 0, "val": 0}  # per clean label, by hand (see irm_build)
    for name, split in data.splits.items():
        digits = (source.test_y if name == "test" else source.train_y)[split.index]
        clean = (digits >= 5).astype(int)  # the truth from the source, not from the split's extras
        assert np.array_equal(split.extras["clean_y"], clean)
        for v in (0, 1):
            assert np.sum((clean == v) & (split.y != v)) == flips[name], (name, v)
    assert data.card["subpop"]["realised_label_noise"] == {"train": 0.25, "test": 0.25, "meta": 0.0, "val": 0.0}
    assert data.card["counts"]["per_group"]["meta"] == [2] * 4 and data.card["counts"]["per_group"]["val"] == [3] * 4
    assert np.array_equal(data.splits["train"].extras["environment"], np.zeros(440, dtype=int))
    assert data.card["subpop"]["realised_correlation"]["train"] == 0.9  # 198 of 220 per label


def test_two_environments_realise_irm_agreements_exactly():
    _, data = irm_build(environments=[0.9, 0.8])
    train = data.splits["train"]
    env, a = train.extras["environment"], train.extras["attribute"]
    for e, agree in ((0, 99), (1, 88)):  # 90 % and 80 % of 110 images per label and environment
        for v in (0, 1):
            members = (env == e) & (train.y == v)
            assert members.sum() == 110 and np.sum(members & (a == v)) == agree, (e, v)
    card = data.card["subpop"]
    assert card["realised_correlation_per_environment"] == [0.9, 0.8]
    assert card["environment_sizes"] == [220, 220] and card["environments"] == [0.9, 0.8]
    assert card["realised_correlation"]["train"] == 0.85 and card["realised_correlation"]["test"] == 0.1
    assert card["realised_label_noise"]["train"] == 0.25 and card["realised_label_noise"]["meta"] == 0.0
    assert "subpop/environment" in data.card["seeds"]["streams"]


@pytest.mark.parametrize("environments", [[], [0.9, 1.2], [-0.1]])
def test_bad_environments_give_one_param_error(environments):
    with pytest.raises(ParamError, match=r"experiments\.test\.data\.subpop\.environments = .* is not allowed") as err:
        data_config(scenario="subpop", source="mnist", subpop={"environments": environments})
    assert "[0, 1]" in str(err.value)


@pytest.mark.parametrize(("raw", "key"), [
    ({"source": "cifar10"}, "data.subpop.kind"),
    ({"subpop": {"kind": "cifar_border"}}, "data.subpop.kind"),
    ({"subpop": {"correlation": 1.5}}, "experiments.test.data.subpop.correlation"),
    ({"subpop": {"label_noise": 0.5}}, "experiments.test.data.subpop.label_noise"),
])
def test_invalid_subpop_params_name_the_key(raw, key):
    with pytest.raises(ParamError, match=key):
        data_config(**{"scenario": "subpop", "source": "mnist", **raw})
