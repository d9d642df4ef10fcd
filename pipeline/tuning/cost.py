"""What a tuning budget costs, estimated from committed files: each method's seconds per epoch
are the mean of the ``epoch_seconds`` curves of its reference records
(``reference/metrics/<experiment>/<method>-s<seed>.json``, the reported seeds), times the
epochs of a trial and the budget's trials; the tuning seed's CE pretraining costs
``pretrain_epochs`` epochs at CE's seconds per epoch; rerunning the chosen configs costs each
method's epochs on every reported seed. An estimate: the records' machine (named
in the table) and its load at the time set the pace; another CPU kind runs at another speed
(docs/benchmarks.md).

    python -m pipeline.stages.tune_report --budget lt_ref_budget --cost
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.layout import REFERENCE_METRICS_DIR
from pipeline.params.file import Params
from pipeline.params.spaces import paper_space
from pipeline.tuning.budget import distinct_configs
from pipeline.reference.plan import read_record

PRETRAIN_PACE = "ce"  # the label whose epochs price the pretraining (the same loss and network)


@dataclass
class Pace:
    label: str
    seconds_per_epoch: float
    machines: set[str]


def pace(experiment: str, label: str, root: Path = REFERENCE_METRICS_DIR) -> Pace:
    """Mean seconds per epoch of ``label``'s committed records of ``experiment``, over every seed."""
    seconds, machines = [], set()
    for path in sorted((root / experiment).glob(f"{label}-s*.json")):
        if not re.fullmatch(rf"{re.escape(label)}-s\d+\.json", path.name):
            continue
        record = read_record(path)
        seconds += record["curve"]["epoch_seconds"]
        m = record["machine"]
        machines.add(f"{m['cpu']}{' (AVX-512)' if m['avx512'] else ''}, {m['threads']} thread(s)")
    if not seconds:
        raise UserError(f"no committed records of {label!r} under {root / experiment} with epoch_seconds: "
                        "the cost of its trials cannot be estimated (run its reference runs first)")
    return Pace(label, float(np.mean(seconds)), machines)


def cost_markdown(params: Params, budget: str, root: Path = REFERENCE_METRICS_DIR) -> str:
    """The estimate as a markdown table: per method, then the pretraining and the total (CPU hours).
    A study of a space with fewer configs than trials trains each config once (its repeats take
    the earlier value: :func:`pipeline.tuning.objective.repeat_of`)."""
    cfg = params.tune.budgets[budget]
    exp = params.experiment(cfg.experiment)
    epochs = cfg.train_epochs or exp.train_epochs
    lines = [f"| `{budget}` ({cfg.experiment}) | s/epoch | epochs x trials | CPU hours |", "|---|---|---|---|"]
    total, rerun, machines = 0.0, 0.0, set()
    for method in cfg.methods:
        p = pace(cfg.experiment, method, root)
        configs = distinct_configs(paper_space(method))
        trained = cfg.n_trials if configs is None else min(cfg.n_trials, configs)  # a repeat trains nothing
        hours = p.seconds_per_epoch * epochs * trained / 3600
        total += hours
        rerun += p.seconds_per_epoch * exp.train_epochs * len(params.reference.seeds) / 3600
        machines |= p.machines
        trials = f"{epochs} x {trained}" + (f" ({configs} configs)" if trained < cfg.n_trials else "")
        lines.append(f"| {method} | {p.seconds_per_epoch:.1f} | {trials} | {hours:.1f} |")
    ce = pace(cfg.experiment, PRETRAIN_PACE, root)
    pretrain_hours = ce.seconds_per_epoch * exp.pretrain_epochs / 3600
    total += pretrain_hours
    machines |= ce.machines
    lines.append(f"| CE pretraining of seed {cfg.seed} (at {PRETRAIN_PACE}'s pace) | {ce.seconds_per_epoch:.1f} | "
                 f"{exp.pretrain_epochs} x 1 | {pretrain_hours:.1f} |")
    lines.append(f"| **total of the studies** | | | **{total:.1f}** |")
    lines.append(f"| then each `<method>-tuned` on the reported seeds {params.reference.seeds} | | "
                 f"{exp.train_epochs} x {len(params.reference.seeds)} each | {rerun:.1f} |")
    lines += ["", f"Paces measured on: {'; '.join(sorted(machines))}."]
    return "\n".join(lines)


DOCS_PAGE = Path("docs/tuning.md")


def markers(budget: str) -> tuple[str, str]:
    return (f"<!-- tuning cost {budget}: begin (python -m pipeline.stages.tune_report --budget {budget} --cost "
            f"--docs) -->", f"<!-- tuning cost {budget}: end -->")


def with_cost_section(text: str, budget: str, section: str) -> str:
    """``text`` with the part between ``budget``'s cost markers replaced by ``section``."""
    begin, end = markers(budget)
    head, found, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not (found and found_end):
        raise UserError(f"{DOCS_PAGE} has no cost markers of budget {budget!r}: add the two lines {begin} and {end}")
    return f"{head}{begin}\n{section}\n{end}{tail}"
