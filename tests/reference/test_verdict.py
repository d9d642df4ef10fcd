"""The verdict sentence of a reference experiment, from synthetic records: a loss of the subject
said as plainly as a win, the interval and the protocol of each comparison, and the sentence
first in the README's results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy import stats

from pipeline.params.file import load_params
from pipeline.report import reference as report, tables
from pipeline.report.summary import Budget, summarise
from pipeline.report.verdict import tuned_verdict, verdict
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


BUDGET = Budget("exp_budget", 100, ["la", "isda", "meta_iada"],
                {"isda": {"methods.isda.class_balanced": True}, "meta_iada": {"methods.meta_iada.alpha": 1.0}})


def tuned_records(*, with_meta_tuned: bool = True, drop: tuple[str, int] | None = None) -> dict:
    """A budget that searched la (kept its default), isda and meta_iada (both changed). The tuned
    runs are the best on validation, and isda-tuned the best of all: the default comparison must
    not see them, the tuned one must see them and nothing the budget passed over."""
    def run(label, method, seed, test, val, **changed):
        return {**record(label, seed, test, val, method=method), "changed": changed}

    meta_tuned = [0.66, 0.66, 0.64]
    isda_tuned = [0.70, 0.69, 0.71]
    recs = []
    for s in range(3):
        recs += [run("ce", "ce", s, 0.50, 0.50), run("la", "la", s, 0.60, 0.60),
                 run("la-scratch", "la", s, 0.62, 0.61, protocol="scratch"),
                 run("isda", "isda", s, 0.55, 0.55), run("isda-cb", "isda", s, 0.68, 0.66, **{"methods.isda.class_balanced": True}),
                 run("isda-tuned", "isda", s, isda_tuned[s], 0.90, **BUDGET.chosen["isda"]),
                 run("meta_iada", "meta_iada", s, 0.63, 0.63),
                 run("meta_iada-nocb", "meta_iada", s, 0.58, 0.58, **{"methods.meta_iada.class_balanced": False})]
        if with_meta_tuned:
            recs.append(run("meta_iada-tuned", "meta_iada", s, meta_tuned[s], 0.80, **BUDGET.chosen["meta_iada"]))
    return summarise(labels_of(*[r for r in recs if (r["label"], r["seed"]) != drop]), "meta_iada", budget=BUDGET)


def test_tuned_runs_stay_out_of_the_default_comparison():
    s = tuned_records()
    assert s["best_baseline"] == "isda-cb"  # not isda-tuned, whose validation is higher
    assert s["ranking"] == ["isda-cb", "meta_iada", "la-scratch", "la", "isda", "ce"]
    assert s["ablations"] == ["meta_iada-nocb"]  # the tuned config is no ablation of the default
    assert verdict("exp", s).endswith(f"isda-cb (`class_balanced = True`, deferred) {interval([-0.05] * 3)}.")


def test_the_tuned_comparison_has_each_method_at_its_chosen_config_and_nothing_it_passed_over():
    s = tuned_records()
    t = s["tuned"]
    # la kept its default: its runs of both protocols stand; isda and meta_iada changed: only their
    # -tuned runs stand (not the default, not isda-cb, not the ablation); ce as it runs
    assert t["ranking"] == ["isda-tuned", "meta_iada-tuned", "la-scratch", "la", "ce"]
    assert t["subject"] == "meta_iada-tuned" and t["best_baseline"] == "isda-tuned" and t["missing"] == []
    assert t["vs_best"]["selected"]["mean"] == pytest.approx(-0.0467, abs=1e-4)  # d = -0.04, -0.03, -0.07
    assert t["vs_ce"]["selected"]["mean"] == pytest.approx(0.1533, abs=1e-4)
    text = tuned_verdict("exp", s)
    assert text == ("**exp, tuned** (each method at the config `exp_budget` chose on tuning seed 100's validation; "
                    "otherwise as above): meta_iada-tuned (`alpha = 1.0`, deferred) is 15.33 points above ce "
                    f"(deferred) {interval([0.16, 0.16, 0.14])}, and 4.67 points below the best baseline by validation, "
                    f"isda-tuned (`class_balanced = True`, deferred) {interval([-0.04, -0.03, -0.07])} (the interval includes 0).")
    page = tables.experiment_markdown("exp", s, None, [])
    tuned_rows = [line.split(" | ")[0] for line in page.split("## Tuned")[1].split("\n## ")[0].splitlines()
                  if line.startswith("| ") and not line.startswith("| label")]
    assert tuned_rows == ["| isda-tuned", "| meta_iada-tuned", "| la-scratch", "| la", "| ce"]


def test_until_every_tuned_run_is_in_there_is_no_tuned_verdict_and_the_readme_says_what_is_missing():
    s = tuned_records(with_meta_tuned=False)
    assert s["tuned"]["missing"] == ["meta_iada-tuned"]
    assert tuned_verdict("exp", s).endswith("no verdict yet, not run yet: meta_iada-tuned.")
    assert report.tuned_headline("exp", s) == ""
    section = report.readme_section({"exp": s}, load_params(ROOT / "params.yaml")).splitlines()
    first = section.index(f"- {verdict('exp', s)}")
    assert section[first + 1] == f"- {tuned_verdict('exp', s)}"  # right under the default verdict
    done = tuned_records()
    assert report.tuned_headline("exp", done) == ("**exp, tuned** (budget `exp_budget`): meta_iada-tuned ranks 2 of 5 "
                                                  "by acc (65.33 ± 1.15, 3 seeds), behind isda-tuned.")
    assert f"- {report.tuned_headline('exp', done)}" in report.readme_section({"exp": done}, load_params(ROOT / "params.yaml"))


def test_a_tuned_run_short_of_seeds_is_named_wherever_the_tuned_comparison_is_said():
    assert tuned_records()["tuned"]["incomplete"] == []
    short = tuned_records(drop=("isda-tuned", 0))
    assert short["tuned"]["incomplete"] == ["isda-tuned (seed 0)"] and short["tuned"]["missing"] == []
    assert tuned_verdict("exp", short).endswith(" Not in yet: isda-tuned (seed 0); the best baseline may change.")
    assert report.tuned_headline("exp", short).endswith("; some on fewer seeds (above).")
    assert "Not in yet: isda-tuned (seed 0)." in tables.experiment_markdown("exp", short, None, [])


def test_without_a_budget_or_before_it_chose_there_is_no_tuned_comparison():
    params = load_params(ROOT / "params.yaml")
    assert report.budget_of(params, "lt_ref").name == "lt_ref_budget"
    assert report.budget_of(params, "glt_ref") is None  # declared, nothing chosen yet
    assert report.budget_of(params, "noisy_ref") is None
    assert "tuned" not in losing() and tuned_verdict("exp", losing()) is None
