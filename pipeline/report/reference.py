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
- the figures of :mod:`pipeline.report.figures`.

``reports/reference/summary.json`` holds the same numbers for programs, and the README's results
section (between its ``reference`` markers) is rewritten from them: no number in it is typed by
hand. The numbers: :mod:`pipeline.report.summary`; the pages' markdown:
:mod:`pipeline.report.tables`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.report.stats import pm
from pipeline.layout import REFERENCE, REPORTS_DIR, json_safe
from pipeline.params.file import Params
from pipeline.params.reference import ReferenceExperiment
from pipeline.report.summary import Budget, load_records, noise_fit, outdated_records, summarise
from pipeline.report.tables import (_noise_fit_text, _setting_verdict, diff, experiment_markdown, published_table,
                                       seeds_of)
from pipeline.report.verdict import tuned_verdict, verdict

REPORT_DIR = REPORTS_DIR / REFERENCE

PUBLISHED = Path("docs/published.yaml")

README = Path("README.md")

BEGIN, END = "<!-- reference results: begin (python -m pipeline.stages.reference_report) -->", \
    "<!-- reference results: end -->"


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
    return f"{present} of the {planned} planned runs" + (f" (not run yet: {', '.join(missing)})" if missing else "")


def headline(name: str, s: dict[str, Any]) -> str:
    """Where the subject ranks among the methods of ``name``, and its best setting ('' when the
    subject did not run; its differences to CE and the best baseline are the verdict's)."""
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
    if s.get("noise_fit"):
        text += f"; {_noise_fit_text(s['noise_fit'], short=True)}"
    if s["ablations"]:
        best = s["best_setting"]
        vs = s["labels"][best].get("val_vs_subject")
        paired_on = f"{diff(vs)} on validation over {vs['n']} seed{'s' if vs['n'] > 1 else ''}; " \
            if best != subject and vs and vs["mean"] is not None else ""
        text += (f"; its best setting by validation: {'the default' if best == subject else best} "
                 f"({paired_on}of {len(s['ablations']) + 1} tried)")
        if best != subject:  # when the default is the best, the verdict adds nothing
            text += f" ({_setting_verdict(s)})"
    return text + "."


def tuned_headline(name: str, s: dict[str, Any]) -> str:
    """Where the subject's tuned config ranks among the methods at their tuned configs ('' without
    a budget, or before every tuned run is in)."""
    t = s.get("tuned")
    if t is None or t["missing"] or t["subject"] not in t["ranking"]:
        return ""
    me, p, ranking = t["subject"], s["primary"], t["ranking"]
    e, n = s["labels"][me]["selected"], len(s["labels"][me]["seeds"])
    ahead = ranking[:ranking.index(me)]
    return (f"**{name}, tuned** (budget `{t['budget']}`): {me} ranks {ranking.index(me) + 1} of {len(ranking)} by {p} "
            f"({pm(e[p])}, {n} seed{'s' if n > 1 else ''})" + (f", behind {', '.join(ahead)}" if ahead else "")
            + ("; some on fewer seeds (above)" if t["incomplete"] else "")
            + ".")


def budget_of(params: Params, experiment: str) -> Budget | None:
    """The tuning budget of ``experiment`` (``tune.budgets``; at most one: the params check it),
    once it has chosen a config other than a default (before, its tuned table would be the defaults'
    under another name)."""
    for name, b in params.tune.budgets.items():
        if b.experiment == experiment and b.chosen:
            return Budget(name, b.seed, list(b.methods), dict(b.chosen))
    return None


def readme_section(summaries: dict[str, dict[str, Any]], params: Params) -> str:
    """The README's results: the verdict of each experiment first (:mod:`pipeline.report.verdict`),
    then where the subject ranks, the calibration against the published numbers where the runs
    recorded it, and per experiment how much of the planned sweep is there and a link to its page
    (the tables stay on the pages: the README is a manual)."""
    lines = [BEGIN, ""]
    if summaries:
        subject = params.reference.subject
        lines += [(f"The verdict per experiment: {subject}'s validation-selected test value minus CE's and minus "
                   "the best baseline's (the other method with the best mean validation value: chosen without "
                   "test), in points, with 95 % intervals paired by seed (each seed its own split):"), "",
                  *[f"- {line}" for name, s in summaries.items()
                    for line in (verdict(name, s), tuned_verdict(name, s)) if line], ""]
    headlines = [f"- {line}" for name, s in summaries.items() for line in (headline(name, s), tuned_headline(name, s))
                 if line]
    if headlines:
        lines += ["Where it ranks (validation-selected test values; each experiment's page has the details):", "", *headlines, ""]
    published = yaml.safe_load(PUBLISHED.read_text()) if PUBLISHED.is_file() else {}
    for name, s in summaries.items():
        rows = published.get(s["scenario"])
        if rows and any("best_epoch_on_test" in e for e in s["labels"].values()):
            lines += [f"Calibration on **{name}** against the published numbers:", "",
                      *published_table(s["labels"], rows, ran_only=True), ""]
    lines += ["Each experiment's page (every label's metrics, paired differences, ablations, ε, figures):", ""]
    for name, s in summaries.items():
        seeds = ", ".join(map(str, seeds_of(s["labels"])))
        lines.append(f"- [{name}](reports/reference/{name}.md): seeds {seeds}; {coverage(name, s, params)}")
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
    from pipeline.report.figures import KINDS, write_figures

    outdated = outdated_records(params)
    if outdated:
        raise UserError(f"{len(outdated)} reference metrics file(s) do not match params.yaml; rerun or delete "
                        "them (git keeps the old ones): " + "; ".join(outdated))
    records = load_records()
    published = yaml.safe_load(PUBLISHED.read_text()) if PUBLISHED.is_file() else {}
    subject = params.reference.subject
    sweeps = params.reference.experiments
    summaries = {name: summarise(labels, subject, sweeps[name].compare if name in sweeps else None,
                                 budget=budget_of(params, name))
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
