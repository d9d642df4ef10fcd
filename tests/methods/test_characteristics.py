"""The training characteristics on a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.methods.characteristics import CHARACTERISTICS, Characteristics
from pipeline.params.schema import ParamError


def make(names=CHARACTERISTICS) -> Characteristics:
    # 3 classes with 2, 6 and 2 training samples; 10 training rows in all
    return Characteristics(names, torch.tensor([2, 6, 2]), num_train=10)


def by_name(values: torch.Tensor) -> dict[str, float]:
    return dict(zip(CHARACTERISTICS, values.tolist()))


# Sample at row 4 with label 1 and logits log(1, 2, 1): p = (1/4, 1/2, 1/4).
LOGITS = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))
LABELS = torch.tensor([1])
INDEX = torch.tensor([4])
FEATURES = torch.tensor([[1.0, 0.0]])
WEIGHT = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])  # w_1 = (1, 1): cos = 1/sqrt(2)


def test_first_visit_by_hand():
    c = by_name(make().compute(LOGITS, FEATURES, LABELS, INDEX, WEIGHT)[0])
    expected = {
        "loss": math.log(2),
        "label_logit": math.log(2),
        "label_prob": 0.5,
        "grad_norm": math.sqrt(0.25 ** 2 + 0.5 ** 2 + 0.25 ** 2),
        "margin": 0.25,
        "neg_entropy": 0.5 * math.log(0.25) + 0.5 * math.log(0.5),
        "class_proportion": 0.6,
        "class_avg_loss": math.log(3),
        "feature_weight_cosine": 1 / math.sqrt(2),
    }
    for name, value in expected.items():
        assert c[name] == pytest.approx(value, rel=1e-6), name
    assert all(c[f"d_{n}"] == 0 for n in ("loss", "label_logit", "label_prob", "grad_norm",
                                          "margin", "neg_entropy"))


def test_changes_on_the_next_visit_and_class_loss_after_the_epoch():
    ch = make()
    ch.record(LOGITS, LABELS, INDEX)
    # second visit: logits (0, 0, 0) -> p = 1/3 each
    c = by_name(ch.compute(torch.zeros(1, 3), FEATURES, LABELS, INDEX, WEIGHT)[0])
    assert c["d_loss"] == pytest.approx(math.log(3) - math.log(2), rel=1e-6)
    assert c["d_label_logit"] == pytest.approx(-math.log(2), rel=1e-6)
    assert c["d_label_prob"] == pytest.approx(1 / 3 - 0.5, rel=1e-6)
    assert c["d_margin"] == pytest.approx(0 - 0.25, abs=1e-6)
    assert c["d_neg_entropy"] == pytest.approx(math.log(1 / 3) - (-1.5 * math.log(2)), rel=1e-6)
    assert c["class_avg_loss"] == pytest.approx(math.log(3))  # previous epoch not finished yet
    # another class-1 sample (loss log 3) and a class-0 sample, then the epoch ends
    ch.record(torch.zeros(2, 3), torch.tensor([1, 0]), torch.tensor([5, 0]))
    ch.end_epoch()
    avg = ch.class_avg_loss
    assert avg[1].item() == pytest.approx((math.log(2) + math.log(3)) / 2, rel=1e-6)
    assert avg[0].item() == pytest.approx(math.log(3), rel=1e-6)
    assert avg[2].item() == pytest.approx(math.log(3))  # class 2 not visited: keeps log C
    ch.end_epoch()  # an epoch without visits keeps the values
    assert ch.class_avg_loss[1].item() == pytest.approx((math.log(2) + math.log(3)) / 2, rel=1e-6)


def test_subset_in_given_order():
    names = ["margin", "class_proportion", "loss"]
    c = make(names).compute(LOGITS, FEATURES, LABELS, INDEX, WEIGHT)
    assert c.shape == (1, 3)
    torch.testing.assert_close(c[0], torch.tensor([0.25, 0.6, math.log(2)]))


@pytest.mark.parametrize("names", [[], ["loss", "loss"], ["loss", "accuracy"]])
def test_bad_names_are_rejected(names):
    with pytest.raises(ParamError):
        make(names)


def test_buffers_round_trip():
    ch = make()
    ch.record(LOGITS, LABELS, INDEX)
    ch.end_epoch()
    fresh = make()
    fresh.load_state_dict(ch.state_dict())
    torch.testing.assert_close(fresh.compute(LOGITS, FEATURES, LABELS, INDEX, WEIGHT),
                               ch.compute(LOGITS, FEATURES, LABELS, INDEX, WEIGHT))
