"""The verdict sentence of a reference experiment, from synthetic records: a loss of the subject
said as plainly as a win, the interval and the protocol of each comparison, and the sentence
first in the README's results."""

from __future__ import annotations

import math
from pathlib import Path

from scipy import stats

from pipeline.params.file import load_params
from pipeline.report import reference as report
from pipeline.report.summary import summarise
from pipeline.report.verdict import verdict
from tests.reference.test_reference_report import labels_of, record

ROOT = Path(__file__).resolve().parents[2]


def interval(d: list[float]) -> str:
    """The 95 % t-interval of the mean of ``d`` (fractions), in points as the sentence writes it."""
    mean, sd = sum(d) / len(d), math.sqrt(sum((x - sum(d) / len(d)) ** 2 for x in d) / (len(d) - 1))
    half = stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d))
    return f"[{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]"


def losing() -> dict:
    """meta_iada above CE on every seed, below isda-cb (the best baseline by validation) on every seed."""
    ce = [0.50, 0.52, 0.49]
    subject = [0.60, 0.61, 0.60]
    isda_cb = [0.609, 0.618, 0.609]  # d = -0.009, -0.008, -0.009
    la = [0.70, 0.71, 0.72]  # better on test, worse on validation: not the best baseline
    recs = []
    for s in range(3):
        recs += [record("ce", s, ce[s], 0.5), record("meta_iada", s, subject[s], 0.6), record("la", s, la[s], 0.55),
                 {**record("isda-cb", s, isda_cb[s], 0.65, method="isda"), "changed": {"methods.isda.class_balanced": True}}]
    return summarise(labels_of(*recs), "meta_iada")


def test_a_loss_to_the_best_baseline_is_one_plain_sentence_with_its_interval_and_protocol():
    s = losing()
    assert s["best_baseline"] == "isda-cb"
    text = verdict("exp", s)
    below = interval([-0.009, -0.008, -0.009])
    above = interval([0.10, 0.09, 0.11])
    assert text == ("**exp** (longtail, CIFAR-10 (JPEG); test acc of the epoch with the best val_acc, seeds 0, 1, 2 "
                    f"paired by seed): meta_iada (deferred) is 10.00 points above ce (deferred) {above}, and 0.87 "
                    "points below the best baseline by validation, isda-cb (`class_balanced = True`, deferred) "
                    f"{below}.")
    assert below.startswith("[-") and below.endswith("]") and "+" not in below  # the seeds support the loss


def test_an_interval_through_zero_is_said_so_and_a_scratch_baseline_is_named_as_one():
    recs = []
    for s, (mine, theirs) in enumerate(((0.60, 0.61), (0.62, 0.60), (0.58, 0.60))):
        recs += [record("ce", s, 0.5, 0.5), record("meta_iada", s, mine, 0.6),
                 {**record("ldam_drw-scratch", s, theirs, 0.7, method="ldam_drw", protocol="scratch"),
                  "changed": {"protocol": "scratch"}}]
    text = verdict("exp", summarise(labels_of(*recs), "meta_iada"))
    assert text.endswith("and 0.33 points below the best baseline by validation, ldam_drw-scratch (scratch) "
                         f"{interval([-0.01, 0.02, -0.02])} (the interval includes 0).")


def test_one_seed_gives_no_interval_and_a_missing_subject_no_verdict():
    one = summarise(labels_of(record("ce", 0, 0.5, 0.5), record("meta_iada", 0, 0.45, 0.5)), "meta_iada")
    assert verdict("exp", one).endswith("meta_iada (deferred) is 5.00 points below ce (deferred) (one seed: no interval), "
                                        "and no baseline other than CE has run.")
    none = summarise(labels_of(record("ce", 0, 0.5, 0.5)), "meta_iada")
    assert verdict("exp", none) == "**exp**: no verdict yet, meta_iada has not run."


def test_the_verdict_comes_first_in_the_readme_section():
    params = load_params(ROOT / "params.yaml")
    s = losing()
    section = report.readme_section({"exp": s}, params).splitlines()
    first = next(i for i, line in enumerate(section) if line.startswith("- "))
    assert section[first] == f"- {verdict('exp', s)}"
    assert first < min(i for i, line in enumerate(section) if "reports/reference/exp.md" in line)
    assert first < min(i for i, line in enumerate(section) if "ranks" in line)
