"""The numbers of the reference sweep, from the committed metrics files alone: each run label's
records by seed, mean ± std over seeds, the paired difference of each label against CE and against
the best baseline with a 95 % t-interval over seeds (d_s = m_s − b_s for every seed s both ran,
mean(d) ± t_{0.975, n−1} · sd(d) / √n), the best baseline chosen on validation, the subject's
ablations and precision twins (:func:`summarise`), and the experiment as its tuning budget left it
(:func:`tuned_view`); the pages are :mod:`pipeline.report.reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from pipeline.data.noisy import noisy_label_distribution
from pipeline.data.scenarios import SCENARIOS
from pipeline.report.stats import mean_std
from pipeline.layout import REFERENCE_METRICS_DIR
from pipeline.params.budget import tuned_label
from pipeline.params.file import Params
from pipeline.reference.plan import machine_kind

RULES = ("selected", "final")

PRECISION_KEY = "network.precision"  # a variant changing only this is a precision twin (precision_twin)


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


def load_records(root: Path = REFERENCE_METRICS_DIR) -> dict[str, dict[str, Label]]:
    """``{experiment: {label: Label}}`` from ``reference/metrics/<experiment>/*.json``."""
    from pipeline.reference.plan import read_record

    out: dict[str, dict[str, Label]] = {}
    for path in sorted(root.glob("*/*.json")):
        r = read_record(path)
        labels = out.setdefault(r["experiment"], {})
        labels.setdefault(r["label"], Label(r["label"])).records[int(r["seed"])] = r
    return out


def outdated_records(params: Params, root: Path = REFERENCE_METRICS_DIR) -> list[str]:
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


def machines(label: Label) -> dict[str, dict[str, list[int]]]:
    """The CPU kinds of ``label``'s records: kind -> the seeds trained on it and their torch threads."""
    out: dict[str, dict[str, list[int]]] = {}
    for seed, r in sorted(label.records.items()):
        entry = out.setdefault(machine_kind(r.get("machine")), {"seeds": [], "threads": []})
        entry["seeds"].append(seed)
        threads = (r.get("machine") or {}).get("threads")
        if threads is not None and threads not in entry["threads"]:
            entry["threads"].append(threads)
    return out


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


def best_baseline(labels: dict[str, Label], subject: str, among: set[str] | None = None) -> str | None:
    """The label with the best mean validation value among those whose method is neither the
    subject nor CE, and that are not another precision's repeat of a label (ties: the first in
    order); ``among``: only these labels are candidates."""
    candidates = [lab for lab in labels.values() if lab.method not in (subject, "ce") and precision_twin(lab) is None
                  and (among is None or lab.name in among)]
    if not candidates:
        return None
    return max(candidates, key=lambda lab: lab.val_value()).name


@dataclass
class Budget:
    """What a tuning budget (``tune.budgets``) did to an experiment: the methods it searched, and
    for those whose best config is not the default, that config (run as ``<method>-tuned``)."""

    name: str
    seed: int  # the tuning seed: never a reported one
    methods: list[str]
    chosen: dict[str, dict[str, Any]]

    def tuned_labels(self) -> set[str]:
        return {tuned_label(m) for m in self.chosen}


def summarise(labels: dict[str, Label], subject: str, compare: dict[str, str] | None = None,
              budget: Budget | None = None) -> dict[str, Any]:
    """The numbers of one experiment's report; ``compare``: further pairs (label -> the label it
    is compared with), reported as paired differences where both ran; ``budget``: the experiment's
    tuning budget, whose ``<method>-tuned`` runs are kept out of the default comparison (the
    ranking, the ablations, the best baseline) and make the tuned one (:func:`tuned_view`)."""
    first = next(iter(labels.values())).first
    scenario = first["scenario"]
    primary = SCENARIOS[scenario].primary  # the paired differences and the charts use it
    keys = list(first["selected"]["headline"])
    tuned = budget.tuned_labels() & set(labels) if budget else set()
    best = best_baseline(labels, subject, among=set(labels) - tuned)
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
        entry["machines"] = machines(lab)
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
                 and twins[n] is None and n not in tuned]
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
    methods = [n for n in out["labels"] if n not in ablations and twins[n] is None and n not in tuned]
    out["ranking"] = _ranked(out, methods)
    if budget:
        out["tuned"] = tuned_view(labels, out, budget)
    return out


def _ranked(s: dict[str, Any], names: list[str]) -> list[str]:
    """``names`` by their mean validation-selected test value of the primary metric, best first."""
    return sorted(names, key=lambda n: -(s["labels"][n]["selected"][s["primary"]]["mean"] or -1))


def tuned_view(labels: dict[str, Label], s: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """The experiment with every method at the config its tuning budget chose (DomainBed's tuned
    table): a searched method's ``<method>-tuned`` run where the budget chose another config than
    the default, its default run (and its protocol variants, e.g. ``-scratch``) where it kept the
    default; a method the budget did not search (CE, one without hyperparameters) as it runs.
    Every other label (an ablation, a hand-set variant such as ``isda-cb``, the default of a method
    whose config changed) is left out: it is a config the budget passed over or never tried. The
    subject's tuned label against CE and the best baseline by validation among these, paired by
    seed, as the default comparison does; ``missing``: the tuned runs not run yet."""
    subject, primary = s["subject"], s["primary"]
    members = [name for name, lab in labels.items() if name in budget.tuned_labels()
               or (lab.method not in budget.chosen and set(lab.first.get("changed", {})) <= {"protocol"})]
    me = tuned_label(subject) if subject in budget.chosen else subject
    best = best_baseline(labels, subject, among=set(members))
    out: dict[str, Any] = {
        "budget": budget.name, "seed": budget.seed, "searched": budget.methods, "subject": me,
        "missing": [n for n in sorted(budget.tuned_labels()) if n not in labels],
        # a tuned run that has not run every seed CE ran: its mean (and the ranking) may still move
        "incomplete": [f"{n} (seed{'s' if len(gap) > 1 else ''} {', '.join(map(str, gap))})"
                       for n in sorted(budget.tuned_labels() & set(labels))
                       if (gap := sorted(set(labels["ce"].records if "ce" in labels else ()) - set(labels[n].records)))],
        "best_baseline": best,
        "ranking": _ranked(s, members), "vs_ce": None, "vs_best": None}
    if me in labels:
        for side, other in (("vs_ce", "ce"), ("vs_best", best)):
            if other in labels and other != me:
                out[side] = {rule: paired(labels[me].values(rule, primary), labels[other].values(rule, primary))
                             for rule in RULES}
    # every member against this comparison's best baseline (its page's last column)
    out["vs_best_selected"] = {n: paired(labels[n].values("selected", primary), labels[best].values("selected", primary))
                               for n in members if best is not None and n != best}
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
    out = {"kind": kind, "rate": rate, "floor": noisy_label_entropy(kind, rate, len(ce.first["train_class_counts"])),
           "ce_last_train_loss": {**mean_std(list(last.values())), "per_seed": last}}
    # what memorising costs on clean data: CE's validation accuracy from its best epoch to its last
    peaks = {}
    for s, r in ce.records.items():
        val, epochs = r["curve"].get("val_acc"), r["curve"]["epoch"]
        if val:
            best = max(range(len(val)), key=lambda i: (val[i], -i))  # the first epoch of the highest value
            peaks[s] = {"peak": val[best], "peak_epoch": epochs[best], "last": val[-1], "fall": val[best] - val[-1]}
    if peaks:
        out["ce_val_fall"] = {**mean_std([p["fall"] for p in peaks.values()]), "per_seed": peaks}
    return out


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
