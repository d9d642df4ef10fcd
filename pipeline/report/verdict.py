"""The verdict of a reference experiment in one sentence: the subject (``reference.subject``)
against CE and against the best baseline by validation, each as the paired difference of the
validation-selected test value with its 95 % interval over seeds, and the protocol the numbers
come from (data, selection rule, seeds, deferred or scratch). A difference against the subject is
said in the same words as one for it ("0.91 points below isda-cb [-1.69, -0.14]"). Where a tuning
budget has run, :func:`tuned_verdict` says the same of the tuned comparison."""

from __future__ import annotations

from typing import Any

from pipeline.report.tables import setting_text


def verdict(name: str, s: dict[str, Any]) -> str:
    """The sentence for experiment ``name`` from :func:`~pipeline.report.summary.summarise`'s ``s``."""
    subject, labels = s["subject"], s["labels"]
    if subject not in labels:
        return f"**{name}**: no verdict yet, {subject} has not run."
    entry, best = labels[subject], s["best_baseline"]
    seeds = entry["seeds"]
    protocol = (f"{s['scenario']}, {s['data']}; test {s['primary']} of the epoch with the best "
                f"{s['selection_metric']}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} "
                f"paired by seed")
    against = []
    if entry["selected"]["vs_ce"] is not None:
        against.append(difference(entry["selected"]["vs_ce"], "ce", labels["ce"], len(seeds)))
    if entry["selected"]["vs_best"] is not None:
        against.append(difference(entry["selected"]["vs_best"], best, labels[best], len(seeds),
                                  role="the best baseline by validation, "))
    if not against:
        return f"**{name}** ({protocol}): {subject} ran, but neither CE nor another baseline did: nothing to compare."
    if best is None:
        against.append("no baseline other than CE has run")
    return f"**{name}** ({protocol}): {who(subject, entry)} is {', and '.join(against)}."


def tuned_verdict(name: str, s: dict[str, Any]) -> str | None:
    """The verdict of the tuned comparison (:func:`~pipeline.report.summary.tuned_view`): every
    method at the config its budget chose on the tuning seed's validation split (None without a
    budget)."""
    t = s.get("tuned")
    if t is None:
        return None
    head = (f"**{name}, tuned** (each method at the config `{t['budget']}` chose on tuning seed {t['seed']}'s "
            "validation; otherwise as above)")
    if t["missing"]:
        return f"{head}: no verdict yet, not run yet: {', '.join(t['missing'])}."
    me, labels = t["subject"], s["labels"]
    n = len(labels[me]["seeds"])
    against = [difference(t[side]["selected"], other, labels[other], n, role=role)
               for side, other, role in (("vs_ce", "ce", ""), ("vs_best", t["best_baseline"], "the best baseline by validation, "))
               if t[side] is not None]
    text = f"{head}: {who(me, labels[me])} is {', and '.join(against) or 'compared with nothing: no baseline ran'}."
    return text + (f" Not in yet: {', '.join(t['incomplete'])}; the best baseline may change." if t["incomplete"] else "")


def who(label: str, entry: dict[str, Any]) -> str:
    """``isda-cb (`class_balanced = True`, deferred)``: the label, its setting and its protocol."""
    setting = setting_text({k: v for k, v in (entry.get("changed") or {}).items() if k != "protocol"})
    return f"{label} ({setting + ', ' if setting else ''}{entry['protocol']})"


def difference(p: dict[str, Any], other: str, entry: dict[str, Any], n_seeds: int, role: str = "") -> str:
    """``2.10 points below the best baseline by validation, ldam_drw-scratch (scratch) [-3.50,
    -0.69]`` from a paired difference ``p`` (:func:`~pipeline.report.summary.paired`)."""
    them = f"{role}{who(other, entry)}"
    if p["mean"] is None:
        return f"not comparable with {them} (no seed both ran with a value)"
    points = 100 * p["mean"]
    side = "above" if points > 0 else "below" if points < 0 else "level with"
    text = f"{abs(points):.2f} points {side} {them}"
    if p["low"] is None:
        return text + " (one seed: no interval)"
    text += f" [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]"
    notes = (["the interval includes 0"] if p["low"] <= 0 <= p["high"] else []) + \
        ([f"over the {p['n']} seeds both ran"] if p["n"] < n_seeds else [])
    return text + (f" ({'; '.join(notes)})" if notes else "")
