"""The reference report: paired differences with their t-interval, the best baseline chosen on
validation, the tables and the README section rebuilt from metrics files alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.reference.plan import write_record
from pipeline.params.file import load_params
from pipeline.report import reference as report, summary, tables
from pipeline.report.reference import build_reports
from pipeline.report.summary import Label, best_baseline, paired, summarise

ROOT = Path(__file__).resolve().parents[2]


def record(label: str, seed: int, test: float, val: float, *, method: str | None = None, final: float | None = None,
           protocol: str = "deferred", epsilon: bool = False) -> dict:
    per_class = {str(c): test + 0.01 * (c - 1) for c in range(3)}
    r = {"format": 1, "config": "x", "experiment": "exp", "label": label, "method": method or label, "seed": seed,
         "scenario": "longtail", "data": "CIFAR-10 (JPEG)", "selection_metric": "val_acc", "protocol": protocol,
         "changed": {}, "split_seed": seed, "train_class_counts": [300, 60, 10],
         "curve": {"epoch": [0, 1], "val_acc": [val - 0.1, val], "epoch_seconds": [30.0, 30.0]},
         "machine": {"cpu": "test cpu", "avx512": True, "threads": 2}}
    for rule, acc in (("selected", test), ("final", test if final is None else final)):
        r[rule] = {"epoch": 1, "headline": {"acc": acc, "many_acc": acc + 0.1, "medium_acc": acc - 0.1, "few_acc": None},
                   "test": {"acc": acc, "per_class_acc": per_class}, "val": {"acc": val}}
    if epsilon:
        r["epsilon"] = {"mean": 0.1, "adversarial_share": 0.6, "per_class_mean": {"0": -0.5, "1": 0.2, "2": 0.9}}
    return r


def test_paired_difference_has_the_t_interval_over_seeds():
    a, b = {0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.49, 1: 0.58, 2: 0.67}  # d = 0.01, 0.02, 0.03
    p = paired(a, b)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t_{0.975, 2} * sd(d) / sqrt(n)
    assert p["n"] == 3 and p["mean"] == pytest.approx(0.02)
    assert p["low"] == pytest.approx(0.02 - half) and p["high"] == pytest.approx(0.02 + half)


def test_paired_difference_uses_only_the_seeds_both_ran_and_gives_no_interval_for_one():
    p = paired({0: 0.5, 1: 0.9}, {1: 0.6, 2: 0.1})
    assert p["seeds"] == [1] and p["mean"] == pytest.approx(0.3) and p["low"] is None


def labels_of(*records: dict) -> dict[str, Label]:
    out: dict[str, Label] = {}
    for r in records:
        out.setdefault(r["label"], Label(r["label"])).records[r["seed"]] = r
    return out


def test_the_best_baseline_is_chosen_on_validation_never_on_test():
    labels = labels_of(record("ce", 0, 0.50, 0.50), record("la", 0, 0.70, 0.55),  # better on test
                       record("ldam_drw", 0, 0.60, 0.60),  # better on validation
                       record("meta_iada", 0, 0.80, 0.90))  # the subject never counts
    assert best_baseline(labels, "meta_iada") == "ldam_drw"


def test_summary_ranks_and_differences(tmp_path):
    recs = [record(lab, s, acc + 0.01 * s, val, method=m)
            for lab, m, acc, val in (("ce", "ce", 0.5, 0.5), ("la", "la", 0.6, 0.62), ("meta_iada", "meta_iada", 0.55, 0.6),
                                     ("la-scratch", "la", 0.58, 0.61))
            for s in range(3)]
    s = summarise(labels_of(*recs), "meta_iada")
    assert s["ranking"] == ["la", "la-scratch", "meta_iada", "ce"]
    assert s["best_baseline"] == "la"  # la-scratch has a lower validation mean
    mi = s["labels"]["meta_iada"]["selected"]
    assert mi["vs_ce"]["mean"] == pytest.approx(0.05) and mi["vs_best"]["mean"] == pytest.approx(-0.05)
    assert mi["acc"]["per_seed"] == {0: pytest.approx(0.55), 1: pytest.approx(0.56), 2: pytest.approx(0.57)}
    assert s["labels"]["ce"]["selected"]["vs_ce"] is None and s["labels"]["la"]["selected"]["vs_best"] is None
    assert s["labels"]["la-scratch"]["protocol"] == "deferred"  # as its records say


def test_ablations_are_compared_with_the_default_and_ordered_on_validation_never_on_test(tmp_path, monkeypatch):
    def ablation(label, seed, test, val, **changed):
        r = record(label, seed, test + 0.01 * seed, val, method="meta_iada", epsilon=True)
        r["changed"] = changed
        return r

    recs = [r for s in range(3) for r in (
        record("ce", s, 0.5, 0.5), record("la", s, 0.6, 0.62),
        record("meta_iada", s, 0.55 + 0.01 * s, 0.6, epsilon=True),
        ablation("meta_iada-beta2", s, 0.50, 0.65, **{"methods.meta_iada.beta": 2.0}),  # best on validation
        ablation("meta_iada-wd0", s, 0.58, 0.61, **{"methods.meta_iada.perturbation_weight_decay": 0.0}))]  # best on test
    s = summarise(labels_of(*recs), "meta_iada")
    assert s["ablations"] == ["meta_iada-beta2", "meta_iada-wd0"]
    assert s["ranking"] == ["la", "meta_iada", "ce"]  # ablations are not methods
    assert s["best_baseline"] == "la"
    assert s["labels"]["meta_iada-wd0"]["selected"]["vs_subject"]["mean"] == pytest.approx(0.03)
    assert s["labels"]["meta_iada-beta2"]["selected"]["vs_subject"]["low"] < -0.05
    assert s["best_setting"] == "meta_iada-beta2"
    page = "\n".join(tables.ablation_markdown(s))
    assert "Best by validation: `meta_iada-beta2`" in page
    rows = [line for line in page.splitlines() if line.startswith("| meta_iada")]
    assert [r.split(" | ")[0] for r in rows] == ["| meta_iada", "| meta_iada-beta2", "| meta_iada-wd0"]
    assert "`beta = 2.0`" in rows[1] and "+3.00" in rows[2]
    monkeypatch.chdir(tmp_path)
    from pipeline.report.figures import write_figures

    assert "exp-ablations.png" in write_figures("exp", labels_of(*recs), s, tmp_path)
    assert (tmp_path / "exp-ablations.png").stat().st_size > 10_000


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with reference metrics of one experiment, a README with the markers and
    the real params.yaml and published numbers."""
    monkeypatch.chdir(tmp_path)
    for r in [record(lab, s, acc + 0.01 * s, val, epsilon=lab == "meta_iada")
              for lab, acc, val in (("ce", 0.5, 0.5), ("la", 0.6, 0.62), ("meta_iada", 0.55, 0.6)) for s in range(2)]:
        write_record(r, Path("reference/metrics/exp") / f"{r['label']}-s{r['seed']}.json")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/published.yaml").write_text((ROOT / "docs/published.yaml").read_text())
    Path("README.md").write_text(f"# Title\n\nbefore\n\n{report.BEGIN}\nold numbers\n{report.END}\n\nafter\n")
    return load_params(ROOT / "params.yaml")


def test_the_planned_count_is_the_number_of_runs_the_sweep_plans():
    """A variant may run fewer seeds (`meta_iada-scratch` runs one): the report's "N planned runs"
    counts what `pipeline.reference.plan` would run, not labels × seeds."""
    from pipeline.reference.plan import plan

    params = load_params(ROOT / "params.yaml")
    for name in params.reference.experiments:
        assert report.coverage(name, {"labels": {}}, params).startswith(f"0 of the {len(plan(params, [name]))} planned")
    assert len(plan(params, ["lt_ref"])) < len(params.reference.experiments["lt_ref"].labels()) * 3


def test_report_rebuilds_tables_figures_and_the_readme_section_from_metrics_alone(project):
    stale = build_reports(project)
    assert {p.as_posix() for p in stale} == {"reports/reference/exp.md", "reports/reference/summary.json", "README.md"}
    page = Path("reports/reference/exp.md").read_text()
    assert "| la | deferred | 2 | 60.50 ± 0.71 |" in page  # mean ± std over the two seeds
    assert "medium_acc selected" in page and "few_acc selected" not in page  # no column of "—" only
    assert "| meta_iada | −" not in page and "-5.00 [" in page  # meta_iada − la, with an interval
    assert "| ce | 70.4 |" in page  # published vs ours
    for kind in ("results", "per_class", "curves", "epsilon"):
        assert (Path("reports/reference") / f"exp-{kind}.png").stat().st_size > 10_000
        assert f"exp-{kind}.png" in page
    readme = Path("README.md").read_text()
    assert "old numbers" not in readme and readme.startswith("# Title\n\nbefore\n") and readme.endswith("after\n")
    assert "| meta_iada | deferred | 55.50 ± 0.71 | +5.00 [" not in readme  # the tables are on the page
    assert "55.50 ± 0.71" in page
    assert "- [exp](reports/reference/exp.md): seeds 0, 1; " in readme  # one link per experiment
    assert "**lt_ref**: none of the" in readme  # planned in params.yaml, no metrics here
    assert "- **exp**: meta_iada ranks 2 of 3 by acc (55.50 ± 0.71, 2 seeds), behind la.\n" in readme
    assert ("meta_iada (deferred) is 5.00 points above ce (deferred) [" in readme
            and "and 5.00 points below the best baseline by validation, la (deferred) [" in readme)  # the verdict
    summary = json.loads(Path("reports/reference/summary.json").read_text())
    assert summary["exp"]["best_baseline"] == "la"
    assert build_reports(project, check=True) == []  # up to date now


def test_check_finds_a_report_older_than_its_metrics(project):
    build_reports(project)
    f = Path("reference/metrics/exp/la-s1.json")
    r = json.loads(f.read_text())
    r["selected"]["headline"]["acc"] = 0.9
    write_record(r, f)
    assert {p.as_posix() for p in build_reports(project, check=True)} >= {"reports/reference/exp.md", "README.md"}


def test_the_committed_readme_and_reports_match_the_committed_metrics(monkeypatch):
    """What the README and reports/reference/ say is what the committed metrics give: no number
    typed by hand (rebuild with python -m pipeline.stages.reference_report)."""
    monkeypatch.chdir(ROOT)
    assert build_reports(load_params(ROOT / "params.yaml"), check=True) == []


def test_metrics_that_params_yaml_no_longer_produces_stop_the_report(project):
    """A changed default (or a dropped ablation) leaves metrics files of another configuration:
    the report refuses to show them under today's params and names each with what to do."""
    from pipeline.errors import UserError
    from pipeline.reference.sweep import plan

    job = plan(project, ["lt_ref"], [0], ["ce"])[0]
    r = record("ce", 0, 0.6, 0.6)
    r.update(experiment="lt_ref", config=job.config)
    f = Path("reference/metrics/lt_ref/ce-s0.json")
    write_record(r, f)
    build_reports(project)  # today's configuration: reported
    assert "lt_ref" in json.loads(Path("reports/reference/summary.json").read_text())

    write_record({**r, "config": "an older default"}, f)
    with pytest.raises(UserError, match=r"lt_ref/ce-s0.json \(its configuration changed: rerun .*--seed 0 --label ce"):
        build_reports(project)
    write_record(r, f)
    write_record({**r, "label": "meta_iada-dropped"}, Path("reference/metrics/lt_ref/meta_iada-dropped-s0.json"))
    with pytest.raises(UserError, match="meta_iada-dropped-s0.json .label 'meta_iada-dropped', seed 0 is no run"):
        build_reports(project)


def test_an_ablation_with_fewer_seeds_is_compared_with_the_default_on_its_own_seeds():
    """The default ran seeds 0-2 (validation 0.70, 0.60, 0.60: mean 0.633), the ablation seed 0
    only (0.66): above the default's mean, below the default on the one seed both ran. Compared
    seed by seed, the default stays the best setting."""
    recs = [record("ce", s, 0.5, 0.5) for s in range(3)]
    recs += [record("meta_iada", s, 0.6, val, epsilon=True) for s, val in enumerate((0.70, 0.60, 0.60))]
    beta = record("meta_iada-beta2", 0, 0.62, 0.66, method="meta_iada", epsilon=True)
    beta["changed"] = {"methods.meta_iada.beta": 2.0}
    wd = record("meta_iada-wd0", 0, 0.5, 0.72, method="meta_iada", epsilon=True)
    wd["changed"] = {"methods.meta_iada.perturbation_weight_decay": 0.0}
    s = summarise(labels_of(*recs, beta), "meta_iada")
    assert s["labels"]["meta_iada-beta2"]["val_vs_subject"]["mean"] == pytest.approx(-0.04)
    assert s["best_setting"] == "meta_iada"
    assert "its best setting by validation: the default (of 2 tried)" in report.headline("exp", s)
    s = summarise(labels_of(*recs, beta, wd), "meta_iada")  # +0.02 on seed 0: better than the default
    assert s["ablations"] == ["meta_iada-wd0", "meta_iada-beta2"] and s["best_setting"] == "meta_iada-wd0"
    assert "its best setting by validation: meta_iada-wd0 (+2.00 on validation over 1 seed; of 3 tried) " \
        "(one seed each: no interval, the default is kept)" in report.headline("exp", s)


@pytest.mark.parametrize("anti, beta2, verdict", [
    ((0.72, 0.63, 0.62), None, "the seeds support meta_iada-anti over the default, interval corrected for 1 ablation"),
    ((0.80, 0.59, 0.61), None, "none above the default with its interval corrected for 1 ablation: the default is kept"),
    ((0.71, 0.62, 0.615), (0.69, 0.59, 0.59), ("none above the default with its interval corrected for 2 ablations "
     "(meta_iada-anti above 0 at 95 % before the correction): the default is kept"))])
def test_the_headline_says_whether_the_seeds_support_an_ablation_over_the_default(anti, beta2, verdict):
    """Default validation 0.70, 0.60, 0.60. Anti +2, +3, +2 points: its 95 % interval is above 0.
    +10, -1, +1: mean +3.33, interval across 0. +1, +2, +1.5 beside a second ablation: above 0 at
    95 % (t_.975,2 = 4.30: +1.50 ± 1.24), not at the Bonferroni level 1 − 0.05/2 (t = 6.21: ± 1.79)."""
    recs = [record("ce", s, 0.5, 0.5) for s in range(3)]
    recs += [record("meta_iada", s, 0.6, val, epsilon=True) for s, val in enumerate((0.70, 0.60, 0.60))]
    recs += [record("meta_iada-anti", s, 0.6, v, method="meta_iada", epsilon=True) for s, v in enumerate(anti)]
    if beta2:
        recs += [record("meta_iada-beta2", s, 0.6, v, method="meta_iada", epsilon=True) for s, v in enumerate(beta2)]
    s = summarise(labels_of(*recs), "meta_iada")
    assert s["best_setting"] == "meta_iada-anti"
    assert f"on validation over 3 seeds; of {3 if beta2 else 2} tried) ({verdict})" in report.headline("exp", s)
    assert f"Best by validation: `meta_iada-anti`; {verdict}." in "\n".join(tables.ablation_markdown(s))


@pytest.mark.parametrize("kind", ["uniform", "uniform_with_true", "flip"])
def test_the_noise_bound_is_the_entropy_of_the_labels_the_data_stage_draws(kind):
    """H(ỹ | x) with the clean label a function of the image is Σ_y p(y) H(ỹ | y): measured on
    labels corrupted by the data stage's own `corrupt_labels` (40,000 per class), it matches the
    closed form to 3 decimals."""
    from pipeline.data.noisy import corrupt_labels, transition_counts

    clean = np.repeat(np.arange(10), 40_000)
    noisy = corrupt_labels(clean, 10, kind, 0.4, np.random.default_rng(0))
    t = transition_counts(clean, noisy, 10).astype(float)
    p = t / t.sum(axis=1, keepdims=True)
    measured = float(-(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis=1).mean())
    assert summary.noisy_label_entropy(kind, 0.4, 10) == pytest.approx(measured, abs=1e-3)


@pytest.mark.parametrize("last_loss, verdict", [(1.86, "above 1.55 nats"), (0.9, "not above 1.55 nats")])
def test_the_noisy_page_says_whether_ce_went_below_the_noise_bound(last_loss, verdict):
    """Uniform noise at 0.4 over 10 classes: the bound is -0.6 ln 0.6 - 0.4 ln(0.4/9) = 1.55 nats.
    A CE run whose last training loss is below the bound has fitted flipped labels; the page and
    the headline say which."""
    recs = [record("ce", s, 0.5, 0.5) for s in range(2)] + [record("meta_iada", s, 0.6, 0.6) for s in range(2)]
    for r in recs:
        r["scenario"], r["train_class_counts"] = "noisy", [100] * 10
        r["curve"]["train_loss"] = [2.3, last_loss]
    recs[1]["curve"].update(epoch=[0, 1, 2], val_acc=[0.40, 0.70, 0.65], train_loss=[2.3, 2.0, last_loss])
    labels = labels_of(*recs)
    s = summarise(labels, "meta_iada")
    s["noise_fit"] = summary.noise_fit(labels, "uniform", 0.4)
    assert s["noise_fit"]["floor"] == pytest.approx(-0.6 * math.log(0.6) - 0.4 * math.log(0.4 / 9))
    page = tables.experiment_markdown("exp", s, None, [])
    assert f"is {last_loss:.2f} (seeds: {last_loss:.2f}, {last_loss:.2f}), {verdict}" in page
    assert ("CE did not memorise" in page) == (last_loss > 1.55)
    # the fall of CE's clean validation accuracy from its best epoch to its last, per seed and mean:
    # seed 0 ends at its peak (0.4 -> 0.5: no fall), seed 1 peaks at epoch 1 (0.70) and ends at 0.65
    assert ("fell by 2.50 points from its best epoch to its last (mean over seeds; seed 0: 50.00 at epoch 1, "
            "50.00 at the last; seed 1: 70.00 at epoch 1, 65.00 at the last)") in page
    assert f"{verdict}" in report.headline("exp", s)


def test_a_precision_twin_is_compared_with_its_fp32_run_and_ranks_nowhere():
    """A variant that changes only network.precision is paired with its method's own label seed by
    seed (selected, final, validation), and stays out of the ranking, the ablations and the choice
    of the best baseline, even when it would win them."""
    def twin(label, method, seed, test, val):
        r = record(label, seed, test, val, method=method)
        r["changed"] = {"network.precision": "bf16"}
        return r

    recs = [r for s in range(3) for r in (
        record("ce", s, 0.50, 0.50), record("la", s, 0.60 + 0.01 * s, 0.60, method="la"),
        record("meta_iada", s, 0.55, 0.55), twin("la-bf16", "la", s, 0.58 + 0.02 * s, 0.99),
        twin("meta_iada-bf16", "meta_iada", s, 0.54, 0.98))]
    s = summarise(labels_of(*recs), "meta_iada")
    assert s["precision"] == ["la-bf16", "meta_iada-bf16"]
    assert s["ranking"] == ["la", "meta_iada", "ce"] and s["ablations"] == [] and s["best_baseline"] == "la"
    la16 = s["labels"]["la-bf16"]
    assert la16["fp32_label"] == "la"
    assert la16["selected"]["vs_fp32"]["mean"] == pytest.approx(-0.01)  # d_s = -0.02 + 0.01 s
    assert la16["selected"]["vs_fp32"]["low"] < -0.01 < la16["selected"]["vs_fp32"]["high"]
    assert la16["val_vs_fp32"]["mean"] == pytest.approx(0.39)
    page = tables.experiment_markdown("exp", s, None, [])
    assert "## Precision parity" in page and "| la-bf16 |" in page.split("## Precision parity")[1]


def test_the_calibration_column_is_the_best_test_epoch_and_only_there():
    """The published-vs-ours table gets the best epoch on test (the papers' rule) where the runs
    recorded a calibration curve, labelled as calibration only; a published row finds our
    from-scratch variant when the method itself did not run."""
    recs = []
    for s in range(2):
        for label, method, curve in (("ce", "ce", [0.60, 0.64 + 0.02 * s, 0.62]),
                                     ("ldam_drw-scratch", "ldam_drw", [0.70, 0.71, 0.75])):
            r = record(label, s, 0.6, 0.6, method=method)
            r["curve"]["calibration_test_acc"] = [None, *curve]  # none before the first lr step
            recs.append(r)
    s = summarise(labels_of(*recs), "meta_iada")
    assert s["labels"]["ce"]["best_epoch_on_test"]["mean"] == pytest.approx(0.65)
    published = {"common": {"data": "d", "network": "n", "epochs": "e", "selection": "best epoch on test"},
                 "metric": "acc", "rows": [{"label": "ce", "value": 70.4, "source": "x"},
                                           {"label": "ldam_drw", "value": 77.0, "source": "y"}]}
    page = tables.experiment_markdown("exp", s, published, [])
    table = page.split("## Published vs ours")[1]
    assert "for calibration only" in table
    assert "| ce | 70.4 | x | 60.00 ± 0.00 | 60.00 ± 0.00 | 65.00 ± 1.41 |" in table
    assert "| ldam_drw | 77.0 | y | 60.00 ± 0.00 | 60.00 ± 0.00 | 75.00 ± 0.00 |" in table
    assert "calibration" not in page.split("## Published vs ours")[0]


def test_a_hand_edited_or_truncated_metrics_file_is_one_error_naming_it(project, capsys):
    """A committed record whose number was edited by hand (the README once showed such an edit
    with every check passing) no longer matches its digest; a truncated one is not JSON. Both stop
    the report, the --check and the sweep's plan with one line naming the file and how to restore
    it, instead of a reported number, a traceback or a silent rerun that overwrites it."""
    from pipeline.errors import UserError
    from pipeline.stages.reference_report import main

    build_reports(project)
    f = Path("reference/metrics/exp/la-s1.json")
    good = f.read_text()
    f.write_text(good.replace('"acc": 0.61', '"acc": 0.91', 1))
    assert f.read_text() != good
    for check in (False, True):
        with pytest.raises(UserError, match=r"exp/la-s1.json does not match the digest its run wrote .*git checkout"):
            build_reports(project, check=check)
    f.write_text(good[:len(good) // 2])
    with pytest.raises(UserError, match=r"exp/la-s1.json is damaged \(not valid JSON"):
        build_reports(project)
    assert main(["--check", "--params", str(ROOT / "params.yaml")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "la-s1.json is damaged" in err[0]
    f.write_text(good)
    assert build_reports(project, check=True) == []


def test_the_sweep_refuses_a_damaged_record_of_its_own_run_instead_of_calling_it_todo(tmp_path, monkeypatch):
    from pipeline.errors import UserError
    from pipeline.reference.plan import plan

    monkeypatch.chdir(tmp_path)
    params = load_params(ROOT / "params.yaml")
    job = plan(params, ["lt_ref"], [0], ["ce"])[0]
    job.metrics_file.parent.mkdir(parents=True)
    job.metrics_file.write_text('{"format": 1, "config": "')
    with pytest.raises(UserError, match="lt_ref/ce-s0.json is damaged"):
        job.done()


def test_a_compare_pair_is_reported_as_its_paired_difference():
    """``compare: {meta_iada: isda-cb}``: meta_iada minus isda-cb seed by seed (Ω's share over ISDA
    with the same class weights), on the page; a pair of which one side has not run is left out."""
    recs = [record("ce", s, 0.50, 0.5) for s in range(3)]
    recs += [record("isda-cb", s, 0.60 + 0.01 * s, 0.6, method="isda") for s in range(3)]
    recs += [record("meta_iada", s, 0.62, 0.6) for s in range(3)]
    s = summarise(labels_of(*recs), "meta_iada", {"meta_iada": "isda-cb", "cb_ce": "ce"})
    assert [(c["label"], c["other"]) for c in s["compare"]] == [("meta_iada", "isda-cb")]
    d = s["compare"][0]["selected"]
    assert d["mean"] == pytest.approx(0.01) and d["n"] == 3 and d["low"] < 0.01 < d["high"]
    page = tables.experiment_markdown("exp", s, None, [])
    assert "| meta_iada − isda-cb | +1.00 [" in page.split("## Further paired differences")[1]


def test_a_compare_pair_must_name_two_labels_of_the_sweep():
    from pipeline.params.file import parse_params, read_params
    from pipeline.params.schema import ParamError

    raw = read_params(ROOT / "params.yaml")[0]
    raw["reference"]["experiments"]["lt_ref"]["compare"] = {"meta_iada": "isda-nope"}
    with pytest.raises(ParamError, match=r"compare: 'meta_iada': 'isda-nope' must pair two different labels"):
        parse_params(raw)


def test_the_published_table_says_over_how_many_seeds_each_row_is():
    """ce ran seeds 0 and 1, cb_ce seed 0 only: "mean over 2 seeds" would be false for cb_ce."""
    published = {"metric": "acc", "common": {"data": "d", "network": "n", "epochs": "e", "selection": "s"},
                  "rows": [{"label": "ce", "value": 70.4, "source": "x"}, {"label": "cb_ce", "value": 72.7, "source": "y"}]}
    recs = [record("ce", s, 0.6, 0.6) for s in (0, 1)] + [record("meta_iada", s, 0.7, 0.7, epsilon=True) for s in (0, 1)]
    both = summarise(labels_of(*recs), "meta_iada")["labels"]
    assert "validation-selected, mean over 2 seeds." in tables.published_table(both, published, ran_only=True)[0]
    mixed = summarise(labels_of(*recs, record("cb_ce", 0, 0.65, 0.65)), "meta_iada")["labels"]
    assert ("validation-selected, mean ± std over the seeds each row ran (1 to 2; a value without ± is one seed)."
            in tables.published_table(mixed, published, ran_only=True)[0])
    one = summarise(labels_of(record("ce", 0, 0.6, 0.6), record("meta_iada", 0, 0.7, 0.7, epsilon=True)),
                    "meta_iada")["labels"]
    assert "validation-selected, mean over 1 seed." in tables.published_table(one, published)[0]


def test_the_report_names_each_run_trained_on_another_cpu_kind():
    """Kinds round convolutions differently: a page that says "trained on" one CPU must name the
    runs of any other kind, or a tuned run on one kind beside a default on another reads as a
    difference of the method alone."""
    other = {**record("meta_iada-tuned", 1, 0.6, 0.6, method="meta_iada"),
             "machine": {"cpu": "AMD EPYC", "avx512": False, "threads": 2}}
    recs = [record(lab, s, 0.5, 0.5, method=lab) for lab in ("ce", "meta_iada") for s in range(3)]
    s = summarise(labels_of(*recs, record("meta_iada-tuned", 0, 0.6, 0.6, method="meta_iada"), other), "meta_iada")
    assert s["labels"]["meta_iada-tuned"]["machines"] == {"test cpu with AVX-512": {"seeds": [0], "threads": [2]},
                                                          "AMD EPYC without AVX-512": {"seeds": [1], "threads": [2]}}
    text = tables.machines_sentence(s["labels"])
    assert text.startswith("Trained on test cpu with AVX-512 (torch threads: 2), except meta_iada-tuned (seeds 1) on "
                           "AMD EPYC without AVX-512.")
    same = summarise(labels_of(*recs), "meta_iada")
    assert tables.machines_sentence(same["labels"]) == "Trained on test cpu with AVX-512 (torch threads: 2)."
