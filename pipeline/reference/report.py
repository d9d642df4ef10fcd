"""Tables of the reference sweep, built from the committed metrics files alone.

Per reference experiment, ``reports/reference/<experiment>.md`` holds:

- every run label's headline metrics, mean ± std over seeds and the per-seed values, for the
  final-epoch and the validation-selected weights;
- the paired difference of each label against CE and against the best baseline, with a 95 %
  t-interval over seeds: d_s = m_s − b_s for every seed s both ran, mean(d) ± t_{0.975, n−1} ·
  sd(d) / √n. The best baseline is the label, other than the subject's (``reference.subject``)
  and CE, with the best mean *validation* value of the selection metric: chosen without test;
- a "published vs ours" table beside the literature's numbers (``docs/published.yaml``), with the
  protocol differences stated on each row;
- the figures of :mod:`pipeline.reference.figures`.

``reports/reference/summary.json`` holds the same numbers for programs, and the README's results
section (between its ``reference`` markers) is rewritten from them: no number in it is typed by
hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats as scipy_stats

from pipeline.data.noisy import noisy_label_distribution
from pipeline.errors import UserError
from pipeline.evaluation.report import ORDER
from pipeline.layout import METRICS_DIR, REFERENCE, REPORTS_DIR, json_safe
from pipeline.params.file import Params
from pipeline.params.reference import ReferenceExperiment

REPORT_DIR = REPORTS_DIR / REFERENCE
PUBLISHED = Path("docs/published.yaml")
README = Path("README.md")
BEGIN, END = "<!-- reference results: begin (python -m pipeline.stages.reference_report) -->", \
    "<!-- reference results: end -->"
# The one number a scenario is judged by (the paired differences and the charts use it).
PRIMARY = {"longtail": "acc", "noisy": "acc", "subpop": "worst_group_acc", "glt": "glt_acc"}
RULES = ("selected", "final")
PRECISION_KEY = "network.precision"  # a variant changing only this is a precision twin (precision_twin)
MAX_GROUP_COLUMNS = 8  # ε per group as table columns up to this many groups
# What a scenario's headline keys mean, said on its page.
SCENARIO_NOTES = {
    "glt": ("Tang et al.'s protocols: `clt_acc` (CLT) on a class-balanced test set, `glt_acc` (GLT) on a test "
            "set balanced over classes and attributes, both after training on the class- and attribute-long-"
            "tailed set; `alt_class_mean_acc` is the class-mean accuracy on an attribute-balanced test set that "
            "keeps the class long tail. Tang et al.'s ALT trains on a class-balanced, attribute-long-tailed set: "
            "it is `glt_acc` of the experiment whose data has `class_imbalance_ratio: 1` (`glt_alt_ref`)."),
    "subpop": ("`worst_group_acc`: the lowest accuracy over the test groups (label, colour); `avg_acc`: accuracy "
               "on the whole test environment (colour agreement reversed: IRM's test accuracy). Selection uses "
               "the validation worst group, which is small, so selected and final differ more here."),
    "noisy": "`acc`: accuracy on the clean test set (the training labels were flipped, the test labels are not).",
}


@dataclass
class Label:
    """One run label of an experiment: its records by seed."""

    name: str
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def first(self) -> dict[str, Any]:
        return self.records[min(self.records)]

    @property
    def method(self) -> str:
        return self.first["method"]

    @property
    def protocol(self) -> str:
        return self.first.get("protocol", "deferred")

    def values(self, rule: str, key: str) -> dict[int, float]:
        """Seed -> the headline value (``nan`` where undefined)."""
        out = {}
        for seed, r in self.records.items():
            v = r[rule]["headline"].get(key)
            out[seed] = float("nan") if v is None else float(v)
        return out

    def val_values(self) -> dict[int, float]:
        """Seed -> the selection metric on validation, at the selected epoch."""
        key = self.first["selection_metric"].removeprefix("val_")
        return {seed: float(r["selected"]["val"][key]) for seed, r in self.records.items()}

    def val_value(self) -> float:
        """Mean over seeds of the selection metric on validation, at the selected epoch."""
        return float(np.mean(list(self.val_values().values())))


def load_records(root: Path = METRICS_DIR / REFERENCE) -> dict[str, dict[str, Label]]:
    """``{experiment: {label: Label}}`` from ``metrics/reference/<experiment>/*.json``."""
    from pipeline.reference.plan import read_record

    out: dict[str, dict[str, Label]] = {}
    for path in sorted(root.glob("*/*.json")):
        r = read_record(path)
        labels = out.setdefault(r["experiment"], {})
        labels.setdefault(r["label"], Label(r["label"])).records[int(r["seed"])] = r
    return out


def outdated_records(params: Params, root: Path = METRICS_DIR / REFERENCE) -> list[str]:
    """Metrics files of a sweep in ``params.reference`` that its params no longer produce: a run
    whose configuration changed since (a default, a hyperparameter, the profile), or a label or
    seed the sweep no longer has. Their numbers would be reported under today's params."""
    from pipeline.reference.plan import RECORD_FORMAT, plan, read_record

    sweeps = params.reference.experiments
    expected = {(j.exp.name, j.label, j.seed): j.config for j in plan(params, list(sweeps))} if sweeps else {}
    out = []
    for path in sorted(root.glob("*/*.json")):
        r = read_record(path)
        if r["experiment"] not in sweeps:
            continue  # an experiment given up: its page says so
        key = (r["experiment"], r["label"], int(r["seed"]))
        if key not in expected:
            out.append(f"{path} (label {r['label']!r}, seed {r['seed']} is no run of the sweep any more)")
        elif r.get("config") != expected[key] or r.get("format") != RECORD_FORMAT:
            out.append(f"{path} (its configuration changed: rerun python -m pipeline.stages.reference "
                       f"--experiment {key[0]} --seed {key[2]} --label {key[1]})")
    return out


def mean_std(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    if len(v) == 0 or np.isnan(v).any():
        return {"mean": None, "std": None, "n": len(v)}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def paired(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict[str, Any]:
    """Mean of d_s = a_s − b_s over the seeds both have, with its t-interval at ``level`` (None for
    one seed: no interval can be given)."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    if len(d) == 0 or np.isnan(d).any():
        return {"mean": None, "low": None, "high": None, "n": len(d), "seeds": seeds}
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1, "seeds": seeds}
    half = float(scipy_stats.t.ppf(1 - (1 - level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(d), "seeds": seeds}


def precision_twin(label: Label) -> str | None:
    """The label a precision variant repeats in fp32: the method's own label, for a variant that
    changes ``network.precision`` only (None for any other label)."""
    changed = label.first.get("changed", {})
    if set(changed) == {PRECISION_KEY} and changed[PRECISION_KEY] != "fp32":
        return label.method
    return None


def best_baseline(labels: dict[str, Label], subject: str) -> str | None:
    """The label with the best mean validation value among those whose method is neither the
    subject nor CE, and that are not another precision's repeat of a label (ties: the first in
    order)."""
    candidates = [lab for lab in labels.values() if lab.method not in (subject, "ce") and precision_twin(lab) is None]
    if not candidates:
        return None
    return max(candidates, key=lambda lab: lab.val_value()).name


def summarise(labels: dict[str, Label], subject: str, compare: dict[str, str] | None = None) -> dict[str, Any]:
    """The numbers of one experiment's report; ``compare``: further pairs (label -> the label it
    is compared with), reported as paired differences where both ran."""
    first = next(iter(labels.values())).first
    scenario = first["scenario"]
    primary = PRIMARY[scenario]
    keys = list(first["selected"]["headline"])
    best = best_baseline(labels, subject)
    ce = labels.get("ce")
    out: dict[str, Any] = {"scenario": scenario, "data": first["data"], "primary": primary,
                           "selection_metric": first["selection_metric"], "subject": subject,
                           "best_baseline": best, "labels": {}}
    for lab in labels.values():
        entry: dict[str, Any] = {"method": lab.method, "protocol": lab.protocol, "seeds": sorted(lab.records),
                                 "changed": lab.first.get("changed", {}), "val": lab.val_value()}
        for rule in RULES:
            entry[rule] = {k: {**mean_std(list(lab.values(rule, k).values())),
                               "per_seed": lab.values(rule, k)} for k in keys}
            entry[rule]["vs_ce"] = paired(lab.values(rule, primary), ce.values(rule, primary)) \
                if ce is not None and lab.name != "ce" else None
            entry[rule]["vs_best"] = paired(lab.values(rule, primary), labels[best].values(rule, primary)) \
                if best is not None and lab.name != best else None
        eps = [r["epsilon"] for r in lab.records.values() if "epsilon" in r]
        if eps:
            entry["epsilon"] = _epsilon_summary(eps)
        best_on_test = [max(v for v in r["curve"]["calibration_test_acc"] if v is not None)
                        for r in lab.records.values() if any(r.get("curve", {}).get("calibration_test_acc") or [])]
        if best_on_test:  # the papers' selection rule, for the calibration column only (never an estimate)
            entry["best_epoch_on_test"] = mean_std(best_on_test)
        seconds = [sum(x for x in r.get("curve", {}).get("epoch_seconds", []) if x) for r in lab.records.values()]
        entry["train_seconds"] = mean_std(seconds)
        entry["machine"] = lab.first.get("machine")
        out["labels"][lab.name] = entry
    # The subject's other labels (one switch each) are its ablations: kept out of the ranking of
    # methods, compared with the subject's default run and ordered by validation (never by test).
    # The order and the best setting use the validation difference paired by seed: an ablation run
    # on fewer seeds than the default is compared with the default on those seeds only.
    # A label that repeats another in another precision (bf16) is compared with it seed by seed,
    # and kept out of the ranking and the ablations: it is the same method.
    twins = {n: precision_twin(labels[n]) for n in out["labels"]}
    out["precision"] = [n for n, base in twins.items() if base is not None and base in labels]
    for n in out["precision"]:
        base = labels[twins[n]]
        out["labels"][n]["fp32_label"] = base.name
        for rule in RULES:
            out["labels"][n][rule]["vs_fp32"] = paired(labels[n].values(rule, primary), base.values(rule, primary))
        out["labels"][n]["val_vs_fp32"] = paired(labels[n].val_values(), base.val_values())
    ablations = [n for n, e in out["labels"].items() if e["method"] == subject and n != subject
                 and twins[n] is None]
    subject_lab = labels.get(subject)
    for n in ablations:
        for rule in RULES:
            out["labels"][n][rule]["vs_subject"] = paired(labels[n].values(rule, primary),
                                                          subject_lab.values(rule, primary)) if subject_lab else None
        out["labels"][n]["val_vs_subject"] = paired(labels[n].val_values(), subject_lab.val_values()) \
            if subject_lab else None
        # k ablations compared at once: one of them clears a 95 % interval by chance more often
        # than not for k ≳ 14 (1 − 0.95^k), so whether the seeds support a change of default is
        # judged on Bonferroni's interval at 1 − 0.05/k.
        out["labels"][n]["val_vs_subject_corrected"] = paired(
            labels[n].val_values(), subject_lab.val_values(), level=1 - 0.05 / len(ablations)) \
            if subject_lab else None
    gains = {n: _val_gain(out["labels"][n]) for n in ablations}
    out["ablations"] = sorted(ablations, key=lambda n: -gains[n])
    out["best_setting"] = max(gains, key=gains.get) if gains and max(gains.values()) > 0 else subject
    out["compare"] = [{"label": a, "other": b, **{rule: paired(labels[a].values(rule, primary),
                                                           labels[b].values(rule, primary)) for rule in RULES}}
                      for a, b in (compare or {}).items() if a in labels and b in labels]
    methods = [n for n in out["labels"] if n not in ablations and twins[n] is None]
    out["ranking"] = sorted(methods, key=lambda n: -(out["labels"][n]["selected"][primary]["mean"] or -1))
    return out


def noisy_label_entropy(kind: str, rate: float, num_classes: int) -> float:
    """H(ỹ | x) in nats for label noise of ``kind`` at ``rate`` when the clean label is a function
    of the image: the lowest expected cross-entropy on the noisy labels that any predictor reaches
    (by predicting the noise's label distribution). A training loss below it can only come from
    fitting individual flipped labels, i.e. memorising the noise."""
    return float(-sum(q * math.log(q) for q in noisy_label_distribution(kind, rate, num_classes) if q > 0))


def noise_fit(labels: dict[str, Label], kind: str, rate: float) -> dict[str, Any] | None:
    """CE's training loss at its last epoch (per seed) beside ``noisy_label_entropy``: whether CE
    memorised the flipped labels on this profile (the regime noise-robust methods are built for)."""
    ce = labels.get("ce")
    if ce is None:
        return None
    last = {s: r["curve"]["train_loss"][-1] for s, r in ce.records.items() if r["curve"].get("train_loss")}
    if not last:
        return None
    return {"kind": kind, "rate": rate, "floor": noisy_label_entropy(kind, rate, len(ce.first["train_class_counts"])),
            "ce_last_train_loss": {**mean_std(list(last.values())), "per_seed": last}}


def _noise_fit_text(fit: dict[str, Any]) -> str:
    loss, floor = fit["ce_last_train_loss"], fit["floor"]
    above = min(loss["per_seed"].values()) > floor
    return (f"CE's training loss at its last epoch is {loss['mean']:.2f} (seeds: "
            f"{', '.join(f'{v:.2f}' for _, v in sorted(loss['per_seed'].items()))}), "
            f"{'above' if above else 'not above'} {floor:.2f} nats, the lowest expected loss on these noisy "
            f"labels for a model that does not fit flipped labels one by one: "
            + ("CE did not memorise the noise on this profile" if above
               else "CE fitted flipped labels (memorised noise) on at least one seed"))


def _val_gain(entry: dict[str, Any]) -> float:
    """An ablation's mean validation difference to the default over the seeds both ran (its own
    mean validation value where the default did not run)."""
    vs = entry.get("val_vs_subject")
    return vs["mean"] if vs and vs["mean"] is not None else entry["val"]


def _epsilon_summary(eps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("mean", "adversarial_share", "clean_mean", "noisy_mean", "auroc_noisy_higher_eps"):
        if key in eps[0]:
            out[key] = mean_std([e[key] if e[key] is not None else math.nan for e in eps])
    for key in ("per_class_mean", "per_group_mean"):
        if key in eps[0]:
            out[key] = {k: mean_std([e[key].get(k, math.nan) for e in eps])["mean"] for k in eps[0][key]}
    return out


# --- markdown ----------------------------------------------------------------------------------


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def pm(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "—"
    return pct(s["mean"]) if s["n"] < 2 else f"{pct(s['mean'])} ± {pct(s['std'])}"


def diff(p: dict[str, Any] | None) -> str:
    if p is None or p["mean"] is None:
        return ""
    text = f"{100 * p['mean']:+.2f}"
    if p["low"] is not None:
        text += f" [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]"
    return text


def experiment_markdown(name: str, s: dict[str, Any], published: dict[str, Any] | None,
                        figures: list[str]) -> str:
    primary, labels = s["primary"], s["labels"]
    seeds = sorted({x for e in labels.values() for x in e["seeds"]})
    machine = next((e["machine"] for e in labels.values() if e.get("machine")), None) or {}
    lines = [f"# Reference runs: {name}", "",
             (f"Scenario {s['scenario']}, data {s['data']}, test metrics in %. Seeds {seeds}: each seed draws its own "
             "split and its own training randomness, so the spread holds both. *selected*: the weights of the epoch "
             f"with the best `{s['selection_metric']}` (validation; never test); *final*: after the last epoch. "
             "*deferred*: trained from the seed's CE pretraining; *scratch*: the whole schedule from a random "
             f"initialisation. Trained on {machine.get('cpu', '?')} ({'with' if machine.get('avx512') else 'without'}"
             f" AVX-512, torch threads: {machine.get('threads', '?')})."), ""]
    if s["scenario"] in SCENARIO_NOTES:
        lines += [SCENARIO_NOTES[s["scenario"]], ""]
    keys = sorted((k for k in next(iter(labels.values()))["selected"] if not k.startswith("vs_")),
                  key=lambda k: (k != primary, ORDER.index(k) if k in ORDER else len(ORDER), k))
    # a metric undefined for every run (few-shot accuracy where no class has under 20 images) is
    # no column: it would be "—" throughout
    keys = [k for k in keys if k == primary or any(e["selected"][k]["mean"] is not None for e in labels.values())]
    lines += ["## Headline metrics", "",
              "Ranked by the selected " + primary + ". Per seed: the selected " + primary + " of seeds "
              + ", ".join(map(str, seeds)) + ". Train min: the training time of one seed (the pretraining not "
              "included).", "",
              "| label | protocol | seeds | " + " | ".join(f"{k} selected" for k in keys)
              + f" | {primary} final | per seed | train min |",
              "|" + "---|" * (len(keys) + 6)]
    for label in s["ranking"]:
        e = labels[label]
        per_seed = ", ".join(pct(v) for _, v in sorted(e["selected"][primary]["per_seed"].items()))
        minutes = e["train_seconds"]["mean"]
        lines.append(f"| {label} | {e['protocol']} | {len(e['seeds'])} | "
                     + " | ".join(pm(e["selected"][k]) for k in keys)
                     + f" | {pm(e['final'][primary])} | {per_seed} | {'—' if minutes is None else f'{minutes / 60:.1f}'} |")
    best = s["best_baseline"]
    lines += ["", f"## Paired differences in {primary} (percentage points, 95 % interval over seeds)", "",
              (f"Each label minus CE, and minus the best baseline (`{best}`: the best mean validation "
              f"`{s['selection_metric']}` among the methods other than {s['subject']} and CE), seed by seed. "
              "An interval that excludes 0 is a difference the seeds support; with 3 seeds the intervals are wide."),
              "", "| label | vs ce (selected) | vs ce (final) | vs best baseline (selected) | vs best baseline (final) |",
              "|---|---|---|---|---|"]
    for label in s["ranking"]:
        e = labels[label]
        lines.append(f"| {label} | {diff(e['selected']['vs_ce'])} | {diff(e['final']['vs_ce'])} | "
                     f"{diff(e['selected']['vs_best'])} | {diff(e['final']['vs_best'])} |")
    if s.get("noise_fit"):
        fit = s["noise_fit"]
        lines += ["", "## Did CE fit the flipped labels?", "",
                  (f"{_noise_fit_text(fit)}. The bound is H(ỹ | x) of {fit['kind']} noise at rate {fit['rate']} "
                   "(the clean label a function of the image); the training loss is the mean over the last epoch's "
                   "batches, with augmentation.")]
    eps_rows = [(label, labels[label]["epsilon"]) for label in s["ranking"] if "epsilon" in labels[label]]
    if eps_rows:
        lines += ["", "## The learned ε (training samples, last epoch, mean over seeds)", ""] + epsilon_table(eps_rows)
    if s["ablations"]:
        lines += ablation_markdown(s)
    if s.get("precision"):
        lines += ["", "## Precision parity", "", PARITY_TEXT, "", *parity_table(s)]
    if s.get("compare"):
        lines += ["", "## Further paired differences", "", COMPARE_TEXT.format(p=primary), "", *compare_table(s)]
    calibrated = any("best_epoch_on_test" in e for e in labels.values())
    if published:
        lines += ["", "## Published vs ours", "",
                  (f"Published: {published['common']['data']}, {published['common']['network']}, "
                  f"{published['common']['epochs']}, selection: {published['common']['selection']}. "
                  f"Ours: this page's data and profile, validation-selected, mean over {len(seeds)} seeds."), "",
                  f"| method | published {published['metric']} | source | ours (selected) | ours (final) |"
                  + (CALIBRATION_HEAD if calibrated else ""),
                  "|---|---|---|---|---|" + ("---|" if calibrated else "")]
        for row in published["rows"]:
            value = "not published" if row["value"] is None else (
                f"{row['value']:.1f}" + (f" - {row['high']:.1f}" if row.get("high") else ""))
            ours = _published_label(labels, row["label"])
            lines.append(f"| {row['label']} | {value} | {row['source']} | "
                         f"{pm(ours['selected'][published['metric']]) if ours else 'not run'} | "
                         f"{pm(ours['final'][published['metric']]) if ours else 'not run'} |"
                         + (f" {pm(ours['best_epoch_on_test']) if ours and 'best_epoch_on_test' in ours else '—'} |"
                            if calibrated else ""))
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


COMPARE_TEXT = ("Pairs named in `params.yaml` (`reference.experiments.<e>.compare`): the first label minus the second, "
                "{p} in percentage points, seed by seed, with 95 % intervals over the seeds both ran.")


def compare_table(s: dict[str, Any]) -> list[str]:
    return _table(["difference", "selected", "final", "seeds"],
                  [[f"{c['label']} − {c['other']}", diff(c["selected"]), diff(c["final"]), str(c["selected"]["n"])]
                   for c in s["compare"]])


PARITY_TEXT = ("Each method trained with `network.precision: bf16` (the backbone under bfloat16 autocast, weights, "
               "losses and Ω in float32; its own CE pretraining in bf16 too) minus the same method in fp32, seed by "
               "seed on the same split, percentage points with 95 % intervals over seeds; train min: the "
               "training time of one seed in each precision, the pretraining not included.")


def parity_table(s: dict[str, Any]) -> list[str]:
    """One row per precision twin: its primary metric, the paired differences to its fp32 label
    (selected, final, validation) and the training times."""
    p, labels = s["primary"], s["labels"]
    rows = []
    for n in s["precision"]:
        e, base = labels[n], labels[labels[n]["fp32_label"]]
        minutes = [x["train_seconds"]["mean"] for x in (base, e)]
        rows.append([n, pm(e["selected"][p]), pm(base["selected"][p]), diff(e["selected"]["vs_fp32"]),
                     diff(e["final"]["vs_fp32"]), diff(e["val_vs_fp32"]),
                     " / ".join("—" if m is None else f"{m / 60:.1f}" for m in minutes)])
    return _table(["label", f"{p} (selected)", f"fp32 {p}", "minus fp32 (selected)", "minus fp32 (final)",
                   f"minus fp32 (val {s['selection_metric'].removeprefix('val_')})", "train min fp32 / bf16"], rows)


CALIBRATION_HEAD = (" best epoch on test, from the first lr step (the papers' selection rule; for calibration only, "
                    "not an estimate) |")


def _published_label(labels: dict[str, Any], label: str) -> dict[str, Any] | None:
    """Our entry for a published row: the label itself, or its from-scratch variant (LDAM-DRW and
    LA train from scratch in their papers)."""
    return labels.get(label) or labels.get(f"{label}-scratch")


def epsilon_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Mean ε and its share > 0; per clean / flipped label with the AUROC where the data has
    flipped labels, per group where it has groups (per class: the figure)."""
    first = rows[0][1]
    noisy, groups = "clean_mean" in first, sorted(first.get("per_group_mean", {}), key=int)
    head = ["label", "mean ε", "share ε > 0"]
    lines = []
    if noisy:
        head += ["clean", "flipped", "AUROC (higher ε = flipped label)"]
        lines += [("Clean / flipped: the mean ε of the samples whose training label is right / was flipped. "
                   "AUROC: how well a higher ε picks out a flipped label (1: every flipped label has a higher ε "
                   "than every clean one; 0.5: chance; below 0.5: flipped labels get the *lower* ε, and "
                   "1 − AUROC is how well a lower ε picks them out)."), ""]
    if len(groups) > MAX_GROUP_COLUMNS:  # (60 for GLT: the figure shows them)
        lines += [f"Per group: the figure below ({len(groups)} groups).", ""]
        groups = []
    if groups:
        head += [f"group {g}" for g in groups]
        lines += ["Per group: the mean ε of the training samples of each (label, attribute) group.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, eps in rows:
        cells = [label, _num(eps["mean"]["mean"]), pct(eps["adversarial_share"]["mean"], 1)]
        if noisy:
            cells += [_num(eps["clean_mean"]["mean"]), _num(eps["noisy_mean"]["mean"]),
                      _num(eps["auroc_noisy_higher_eps"]["mean"])]
        cells += [_num(eps["per_group_mean"].get(g)) for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ablation_markdown(s: dict[str, Any]) -> list[str]:
    """The subject's ablations: each label's switch, its validation value (the order), its test
    value and its paired difference to the subject's default run."""
    primary, labels, subject = s["primary"], s["labels"], s["subject"]
    metric = s["selection_metric"]
    rows = ([subject] if subject in labels else []) + s["ablations"]
    lines = ["", f"## Ablations of {subject}", "",
             (f"Each row changes one setting of `{subject}` (the default is the first row), same seeds, splits and "
              f"CE checkpoints. Ordered by the validation `{metric}` at the selected epoch minus the default's, "
              f"paired by seed (over the seeds both ran), which is what a choice of defaults may use; the test "
              f"columns are reported, not chosen on. Best by validation: `{s['best_setting']}`; "
              f"{_setting_verdict(s)}."), "",
             (f"| label | setting | seeds | val {metric.removeprefix('val_')} | val vs {subject} | "
              f"val vs {subject}, interval corrected for {len(s['ablations'])} | {primary} selected | "
              f"{primary} final | vs {subject} (selected) | vs {subject} (final) | mean ε | share ε > 0 |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in rows:
        e = labels[n]
        setting = _setting(e["changed"]) or "default"
        eps = e.get("epsilon", {})
        vs = (diff(e["selected"].get("vs_subject")), diff(e["final"].get("vs_subject"))) if n != subject else ("", "")
        val_vs = diff(e.get("val_vs_subject")) if n != subject else ""
        corrected = diff(e.get("val_vs_subject_corrected")) if n != subject else ""
        lines.append(f"| {n} | {setting} | {len(e['seeds'])} | {pct(e['val'])} | {val_vs} | {corrected} | "
                     f"{pm(e['selected'][primary])} | "
                     f"{pm(e['final'][primary])} | {vs[0]} | {vs[1]} | "
                     f"{_num(eps['mean']['mean']) if 'mean' in eps else '—'} | "
                     f"{pct(eps['adversarial_share']['mean'], 1) if 'adversarial_share' in eps else '—'} |")
    return lines


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _rows(s: dict[str, Any], labels: list[str]) -> list[tuple[str, dict[str, Any]]]:
    return [(label, s["labels"][label]) for label in labels]


def _setting(changed: dict[str, Any]) -> str:
    """``methods.meta_iada.beta: 2.0`` -> "`beta = 2.0`"."""
    return ", ".join(f"`{k.rsplit('.', 1)[-1]} = {v}`" for k, v in changed.items())


def _num(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.3f}"


def planned_runs(sweep: ReferenceExperiment, params: Params) -> int:
    """Runs of one reference experiment: each label's seeds (a variant may run fewer)."""
    return sum(len(params.reference.seeds_of(v)) for v in sweep.labels().values())


def coverage(name: str, s: dict[str, Any], params: Params) -> str:
    """How much of the planned sweep (``reference:`` in params.yaml) the metrics cover."""
    sweep = params.reference.experiments.get(name)
    if sweep is None:
        return "not in params.yaml's reference sweep any more"
    planned = planned_runs(sweep, params)
    present = sum(len(e["seeds"]) for e in s["labels"].values())
    missing = [label for label in sweep.labels() if label not in s["labels"]]
    return f"{present} of the {planned} planned runs" + (f"; not run yet: {', '.join(missing)}" if missing else "")


def headline(name: str, s: dict[str, Any]) -> str:
    """Where the subject ranks among the methods of ``name`` and its paired differences to CE
    and to the best baseline ('' when the subject did not run)."""
    subject, p, ranking = s["subject"], s["primary"], s["ranking"]
    if subject not in ranking:
        return ""
    e = s["labels"][subject]["selected"]
    n = len(s["labels"][subject]["seeds"])
    text = (f"**{name}**: {subject} ranks {ranking.index(subject) + 1} of {len(ranking)} by {p} "
            f"({pm(e[p])}, {n} seed{'s' if n > 1 else ''})")
    ahead = ranking[:ranking.index(subject)]
    if ahead:
        text += f", behind {', '.join(ahead)}"
    if e["vs_ce"] is not None and e["vs_ce"]["mean"] is not None:
        text += f"; vs ce {diff(e['vs_ce'])}"
    if e["vs_best"] is not None and e["vs_best"]["mean"] is not None:
        text += f"; vs the best baseline by validation, {s['best_baseline']}, {diff(e['vs_best'])}"
    if s.get("noise_fit"):
        text += f"; {_noise_fit_text(s['noise_fit'])}"
    if s["ablations"]:
        best = s["best_setting"]
        vs = s["labels"][best].get("val_vs_subject")
        paired_on = f"{diff(vs)} on validation over {vs['n']} seed{'s' if vs['n'] > 1 else ''}; " \
            if best != subject and vs and vs["mean"] is not None else ""
        text += (f"; its best setting by validation: {'the default' if best == subject else best} "
                 f"({paired_on}of {len(s['ablations']) + 1} tried)")
        text += f" ({_setting_verdict(s)})"
    return text + "."


def _setting_verdict(s: dict[str, Any]) -> str:
    """Whether the seeds support any ablation over the default. The rule of this project: a
    default changes only when an ablation's paired validation difference has its interval above 0,
    corrected for the number of ablations compared (Bonferroni); those above 0 before the
    correction only are named."""
    labels, k = s["labels"], len(s["ablations"])
    def above(n: str, key: str) -> bool:
        vs = labels[n].get(key)
        return bool(vs) and vs["low"] is not None and vs["low"] > 0
    if not any(labels[n].get("val_vs_subject") and labels[n]["val_vs_subject"]["low"] is not None
               for n in s["ablations"]):
        return "one seed each: no interval, the default is kept"
    supported = [n for n in s["ablations"] if above(n, "val_vs_subject_corrected")]
    if supported:
        return (f"the seeds support {', '.join(supported)} over the default, "
                f"interval corrected for {k} ablation{'s' if k > 1 else ''}")
    uncorrected = [n for n in s["ablations"] if above(n, "val_vs_subject")]
    text = f"none above the default with its interval corrected for {k} ablation{'s' if k > 1 else ''}"
    if uncorrected:
        text += f" ({', '.join(uncorrected)} above 0 at 95 % before the correction)"
    return text + ": the default is kept"


def readme_section(summaries: dict[str, dict[str, Any]], params: Params) -> str:
    """The README's results: per experiment, every label's primary metric and its paired
    differences (validation-selected), and how much of the planned sweep is there."""
    lines = [BEGIN, ""]
    headlines = [f"- {headline(name, s)}" for name, s in summaries.items() if headline(name, s)]
    if headlines:
        lines += ["In one line per experiment (validation-selected test values; the details below):", "",
                  *headlines, ""]
    for name, s in summaries.items():
        p = s["primary"]
        seeds = sorted({x for e in s["labels"].values() for x in e["seeds"]})
        lines += [(f"**{name}** ({s['scenario']}, {s['data']}; {p} in %, validation-selected, mean ± std over "
                  f"seeds {seeds}, each with its own split; differences with 95 % intervals; "
                  f"{coverage(name, s, params)}; [full report](reports/reference/{name}.md))"), "",
                  *_table(["label", "protocol", p, "vs ce", f"vs best baseline ({s['best_baseline']})"],
                          [[label, e["protocol"], pm(e["selected"][p]), diff(e["selected"]["vs_ce"]),
                            diff(e["selected"]["vs_best"])] for label, e in _rows(s, s["ranking"])])]
        if s["ablations"]:
            subject, metric = s["subject"], s["selection_metric"]
            val = f"val {metric.removeprefix('val_')}"
            lines += ["", (f"Ablations of {subject} (one setting each; ordered by validation `{metric}` minus the "
                           f"default's, paired by seed; the test values reported, not chosen on):"), "",
                      *_table(["label", "setting", val, f"{val} vs {subject}", p, f"vs {subject}"],
                              [[label, _setting(e["changed"]), pct(e["val"]), diff(e["val_vs_subject"]),
                                pm(e["selected"][p]), diff(e["selected"]["vs_subject"])]
                               for label, e in _rows(s, s["ablations"])])]
        if s.get("precision"):
            lines += ["", f"Precision parity on {name}: {PARITY_TEXT}", "", *parity_table(s)]
        if s.get("compare"):
            lines += ["", f"Further paired differences on {name}: {COMPARE_TEXT.format(p=p)}", "", *compare_table(s)]
        lines.append("")
    for name, sweep in params.reference.experiments.items():
        if name not in summaries:
            lines += [(f"**{name}**: none of the {planned_runs(sweep, params)} planned runs "
                       "has finished yet."), ""]
    lines.append(END)
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    if BEGIN not in text or END not in text:
        raise UserError(f"{README} has no reference results markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + section + tail


def build_reports(params: Params, *, check: bool = False, track: bool = False, readme: bool = True) -> list[Path]:
    """Write (or with ``check`` compare) every report file and the README section; returns the
    files that were out of date."""
    from pipeline.reference.figures import KINDS, write_figures

    outdated = outdated_records(params)
    if outdated:
        raise UserError(f"{len(outdated)} reference metrics file(s) do not match params.yaml; rerun or delete "
                        "them (git keeps the old ones): " + "; ".join(outdated))
    records = load_records()
    published = yaml.safe_load(PUBLISHED.read_text()) if PUBLISHED.is_file() else {}
    subject = params.reference.subject
    sweeps = params.reference.experiments
    summaries = {name: summarise(labels, subject, sweeps[name].compare if name in sweeps else None)
                 for name, labels in records.items()}
    for name, s in summaries.items():
        noisy = params.experiments[name].data.noisy if name in params.experiments else None
        if s["scenario"] == "noisy" and noisy is not None:
            s["noise_fit"] = noise_fit(records[name], noisy.kind, noisy.rate)
    files: dict[Path, str] = {}
    for name, s in summaries.items():
        if check:  # the figures there (PNG bytes are not compared)
            figures = [f"{name}-{kind}.png" for kind in KINDS if (REPORT_DIR / f"{name}-{kind}.png").is_file()]
        else:
            figures = write_figures(name, records[name], s, REPORT_DIR)
        files[REPORT_DIR / f"{name}.md"] = experiment_markdown(name, s, published.get(s["scenario"]), figures)
    files[REPORT_DIR / "summary.json"] = json.dumps(json_safe(summaries), indent=2, sort_keys=True) + "\n"
    if readme and README.is_file():
        files[README] = replace_section(README.read_text(), readme_section(summaries, params))
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    if not check:
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        for p in stale:
            p.write_text(files[p])
        if track and summaries:
            from pipeline.tracking_reference import log_reference_records, log_reference_report

            for name, s in summaries.items():
                log_reference_report(name, s, REPORT_DIR)
                log_reference_records(name, [r for label in records[name].values() for r in label.records.values()])
    return stale

