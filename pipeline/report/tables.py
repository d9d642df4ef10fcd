"""The markdown of a reference experiment's page (``reports/reference/<experiment>.md``) and the
tables the README's results reuse, from :func:`pipeline.report.summary.summarise`'s numbers."""

from __future__ import annotations

import math
from typing import Any

from pipeline.data.scenarios import SCENARIOS
from pipeline.report.comparison import ORDER
from pipeline.report.stats import pct, pm

MAX_GROUP_COLUMNS = 8  # ε per group as table columns up to this many groups


def _noise_fit_text(fit: dict[str, Any], short: bool = False) -> str:
    """Whether CE's last training loss went below the noise bound; ``short``: the README's clause."""
    loss, floor = fit["ce_last_train_loss"], fit["floor"]
    above = min(loss["per_seed"].values()) > floor
    if short:
        return (f"CE's last training loss, {loss['mean']:.2f}, is {'above' if above else 'not above'} {floor:.2f} nats "
                "(the floor without fitting flipped labels): "
                + ("CE did not memorise the noise" if above else "CE memorised noise on at least one seed"))
    return (f"CE's training loss at its last epoch is {loss['mean']:.2f} (seeds: "
            f"{', '.join(f'{v:.2f}' for _, v in sorted(loss['per_seed'].items()))}), "
            f"{'above' if above else 'not above'} {floor:.2f} nats, the lowest expected loss on these noisy "
            f"labels for a model that does not fit flipped labels one by one: "
            + ("CE did not memorise the noise on this profile" if above
               else "CE fitted flipped labels (memorised noise) on at least one seed"))


def _val_fall_text(fall: dict[str, Any]) -> str:
    """CE's clean validation accuracy from its peak epoch to its last (what memorising costs)."""
    seeds = "; ".join(f"seed {s}: {pct(p['peak'])} at epoch {p['peak_epoch']}, {pct(p['last'])} at the last"
                      for s, p in sorted(fall["per_seed"].items()))
    return (f"CE's clean validation accuracy fell by {100 * fall['mean']:.2f} points from its best epoch to its last "
            f"(mean over seeds; {seeds}).")


def diff(p: dict[str, Any] | None) -> str:
    if p is None or p["mean"] is None:
        return ""
    text = f"{100 * p['mean']:+.2f}"
    if p["low"] is not None:
        text += f" [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]"
    return text


def seeds_of(labels: dict[str, dict[str, Any]]) -> list[int]:
    """Every seed that any of the summarised ``labels`` ran, in order."""
    return sorted({x for e in labels.values() for x in e["seeds"]})


def machines_sentence(labels: dict[str, dict[str, Any]]) -> str:
    """Which CPU kind trained the runs: the kind of most runs, and each run of another kind by
    label and seed (a difference between runs of two kinds includes the kinds' rounding)."""
    kinds: dict[str, list[tuple[str, list[int]]]] = {}
    threads: dict[str, set[int]] = {}
    for name, e in labels.items():
        for kind, m in (e.get("machines") or {}).items():
            kinds.setdefault(kind, []).append((name, m["seeds"]))
            threads.setdefault(kind, set()).update(m["threads"])
    if not kinds:
        return "The machine was not recorded."
    main = max(kinds, key=lambda k: sum(len(seeds) for _, seeds in kinds[k]))
    text = f"Trained on {main}" + (f" (torch threads: {', '.join(map(str, sorted(threads[main])))})"
                                   if threads[main] else "")
    others = [k for k in kinds if k != main]
    if not others:
        return text + "."
    runs = "; ".join(", ".join(f"{name} (seeds {', '.join(map(str, seeds))})" for name, seeds in kinds[k]) + f" on {k}"
                     for k in sorted(others))
    return (f"{text}, except {runs}. CPU kinds round convolutions differently "
            "([docs/results-cpu-profiles.md](../../docs/results-cpu-profiles.md)): a difference between runs of two "
            "kinds includes that.")


def experiment_markdown(name: str, s: dict[str, Any], published: dict[str, Any] | None,
                        figures: list[str]) -> str:
    primary, labels = s["primary"], s["labels"]
    seeds = seeds_of(labels)
    lines = [f"# Reference runs: {name}", "",
             (f"Scenario {s['scenario']}, data {s['data']}, test metrics in %. Seeds {seeds}: each seed draws its own "
             "split and its own training randomness, so the spread holds both. *selected*: the weights of the epoch "
             f"with the best `{s['selection_metric']}` (validation; never test); *final*: after the last epoch. "
             "*deferred*: trained from the seed's CE pretraining; *scratch*: the whole schedule from a random "
             f"initialisation. {machines_sentence(labels)}"), ""]
    note = SCENARIOS[s["scenario"]].note  # what its headline keys mean
    if note:
        lines += [note, ""]
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
    if s.get("tuned"):
        lines += tuned_markdown(s)
    if s.get("noise_fit"):
        fit = s["noise_fit"]
        lines += ["", "## Did CE fit the flipped labels?", "",
                  (f"{_noise_fit_text(fit)}. The bound is H(ỹ | x) of {fit['kind']} noise at rate {fit['rate']} "
                   "(the clean label a function of the image); the training loss is the mean over the last epoch's "
                   "batches, with augmentation." + (f" {_val_fall_text(fit['ce_val_fall'])}" if "ce_val_fall" in fit
                                                    else ""))]
    eps_rows = [(label, labels[label]["epsilon"]) for label in s["ranking"] if "epsilon" in labels[label]]
    if eps_rows:
        lines += ["", "## The learned ε (training samples, last epoch, mean over seeds)", ""] + epsilon_table(eps_rows)
    if s["ablations"]:
        lines += ablation_markdown(s)
    if s.get("precision"):
        lines += ["", "## Precision parity", "", PARITY_TEXT, "", *parity_table(s)]
    if s.get("compare"):
        lines += ["", "## Further paired differences", "", COMPARE_TEXT.format(p=primary), "", *compare_table(s)]
    if published:
        lines += ["", "## Published vs ours", "", *published_table(labels, published)]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def tuned_markdown(s: dict[str, Any]) -> list[str]:
    """The tuned comparison (:func:`~pipeline.report.summary.tuned_view`): each method at the config
    its budget chose, ranked as the default table is, with the subject's paired differences."""
    t, labels, primary = s["tuned"], s["labels"], s["primary"]
    best = t["best_baseline"]
    lines = ["", f"## Tuned: every method at the config budget `{t['budget']}` chose", "",
             (f"Each method the budget searched ({', '.join(t['searched'])}) at the config its study chose on the "
              f"validation split of tuning seed {t['seed']} (not a reported seed; "
              f"[reports/tuning/{t['budget']}.md](../tuning/{t['budget']}.md)): its `-tuned` run where that is not "
              "the default, its default runs (all protocols) where it is; CE and methods without hyperparameters as "
              "they run. Hand-set variants and ablations are left out. The best baseline is chosen on validation "
              f"among these (`{best}`)." + (f" Not run yet: {', '.join(t['missing'])}." if t["missing"] else "")
              + (f" Not in yet: {', '.join(t['incomplete'])}." if t["incomplete"] else "")), "",
             f"| label | chosen | seeds | {primary} selected | {primary} final | vs ce (selected) | vs best baseline (selected) |",
             "|---|---|---|---|---|---|---|"]
    for label in t["ranking"]:
        e = labels[label]
        lines.append(f"| {label} | {setting_text(e['changed']) or 'the default'} | {len(e['seeds'])} | "
                     f"{pm(e['selected'][primary])} | {pm(e['final'][primary])} | {diff(e['selected']['vs_ce'])} | "
                     f"{diff(t['vs_best_selected'].get(label))} |")
    return lines


def seeds_text(counts: set[int]) -> str:
    """How many seeds the values of a table are over: one number when every row ran as many."""
    if len(counts) == 1:
        n = next(iter(counts))
        return f"mean over {n} seed{'s' if n > 1 else ''}"
    return (f"mean ± std over the seeds each row ran ({min(counts)} to {max(counts)}; "
            "a value without ± is one seed)")


def published_table(labels: dict[str, Any], published: dict[str, Any], *, ran_only: bool = False) -> list[str]:
    """The literature's rows (``docs/published.yaml``) beside ours, validation-selected and final,
    and where the runs recorded it the best epoch on test (calibration only); ``ran_only``: only
    the rows we ran. The header says over how many seeds, per row where the rows differ."""
    calibrated = any("best_epoch_on_test" in e for e in labels.values())
    metric = published["metric"]
    shown = [ours for row in published["rows"] if (ours := _published_label(labels, row["label"]))]
    counts = {len(ours["seeds"]) for ours in shown} or {0}
    lines = [(f"Published: {published['common']['data']}, {published['common']['network']}, "
              f"{published['common']['epochs']}, selection: {published['common']['selection']}. "
              f"Ours: this page's data and profile, validation-selected, {seeds_text(counts)}."), "",
             f"| method | published {metric} | source | ours (selected) | ours (final) |"
             + (CALIBRATION_HEAD if calibrated else ""),
             "|---|---|---|---|---|" + ("---|" if calibrated else "")]
    for row in published["rows"]:
        ours = _published_label(labels, row["label"])
        if ran_only and not ours:
            continue
        value = "not published" if row["value"] is None else (
            f"{row['value']:.1f}" + (f" - {row['high']:.1f}" if row.get("high") else ""))
        lines.append(f"| {row['label']} | {value} | {row['source']} | "
                     f"{pm(ours['selected'][metric]) if ours else 'not run'} | "
                     f"{pm(ours['final'][metric]) if ours else 'not run'} |"
                     + (f" {pm(ours['best_epoch_on_test']) if ours and 'best_epoch_on_test' in ours else '—'} |"
                        if calibrated else ""))
    return lines


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
        setting = setting_text(e["changed"]) or "default"
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


def setting_text(changed: dict[str, Any]) -> str:
    """``methods.meta_iada.beta: 2.0`` -> "`beta = 2.0`"."""
    return ", ".join(f"`{k.rsplit('.', 1)[-1]} = {v}`" for k, v in changed.items())


def _num(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.3f}"


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
