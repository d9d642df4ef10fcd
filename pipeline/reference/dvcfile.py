"""The reference sweeps as DVC stages: ``reference/dvc.yaml``, written from the ``reference:``
params, one stage per run (an experiment's label for one seed), so that DVC decides what is
missing or stale and ``dvc.lock`` beside it records every committed result.

Each run's stage carries the hash of what its result depends on (:attr:`Job.config`: its data,
network, optimiser, schedule, protocol, method and method configuration, seed) in its command, so
a changed hyperparameter makes exactly the runs it touches stale, and nothing else does. The code
is deliberately not a dependency: a refactor must not mark days of CPU time stale; a change that
moves results is rerun on purpose (delete the run's metrics file, then ``dvc repro`` its stage).

Because the file is generated, it can fall behind the params: the ``sync`` stage, upstream of every
run and rerun by DVC whenever a params file or the code that computes the hashes changes, fails
with one line saying how to regenerate it, and so does a run whose hash no longer matches.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError
from pipeline.layout import REFERENCE_DVC_FILE, REFERENCE_SYNC_FILE
from pipeline.params.file import Params
from pipeline.reference.closure import ROOT, closure
from pipeline.reference.plan import Job, plan

HASH_CHARS = 12  # of the sha256 in Job.config: enough to tell configurations apart
SYNC_COMMAND = "python -m pipeline.stages.reference_sync"

PARAMS_FILES = ("params.yaml", "params")  # every params file
REPORT_INPUTS = ("reference/metrics", "docs/published.yaml")  # what the report stage reads besides the params


def code_deps(module: str) -> list[str]:
    """The import closure of ``module`` (:func:`pipeline.reference.closure.closure`) as DVC deps:
    a folder of the package where every module under it is in the closure (the outermost such
    folder), else the module's file; so a change to any module the stage's command imports reruns
    the stage, and no other does."""
    files = closure(module)
    deps = set()
    for f in files:
        folders = list(reversed(f.parents[:-2]))  # pipeline/x, pipeline/x/y, ... (not pipeline/ itself)
        whole = (d for d in folders if all(p.relative_to(ROOT) in files for p in (ROOT / d).rglob("*.py")))
        deps.add(str(next(whole, f)))
    return sorted(deps)


def sync_deps() -> list[str]:
    """The sync stage's deps: the params and the code that turns them into job hashes (the import
    closure of ``python -m pipeline.stages.reference_sync``)."""
    return [*PARAMS_FILES, *code_deps("pipeline.stages.reference_sync")]


def report_deps() -> list[str]:
    """The report stage's deps: the committed metrics, the published numbers, the params and the
    import closure of ``python -m pipeline.stages.reference_report``."""
    return [*REPORT_INPUTS, *PARAMS_FILES, *code_deps("pipeline.stages.reference_report")]


HEADER = f"""\
# The reference sweeps as DVC stages: one stage per run (an experiment's label, one seed) of the
# `reference:` params. GENERATED from the params by `{SYNC_COMMAND}`: do not edit.
#
#   dvc status reference/dvc.yaml                          what is missing or stale
#   dvc repro reference/dvc.yaml:run@lt_ref.ce.s0          one run (resumes an interrupted one)
#   dvc repro --glob 'reference/dvc.yaml:run@lt_paper.*.s0'   a seed of an experiment
#   dvc exp run --queue reference/dvc.yaml:run@<key> ...; dvc queue start -j 2   two at a time
#   dvc repro --single-item reference/dvc.yaml:report     the tables from the committed metrics
#
# A run's command carries the hash of its configuration, so a changed hyperparameter makes just
# the runs it touches stale; the code is not a dependency (docs/pipeline.md, "Reference sweeps").
# The metrics files are committed; `python -m pipeline.stages.reference_report` rebuilds the
# tables and the README's results from them without training.
"""


def job_key(job: Job) -> str:
    """The run's stage key: ``<experiment>.<label>.s<seed>`` (``run@lt_ref.ce.s0``)."""
    return f"{job.exp.name}.{job.label}.s{job.seed}"


def short_hash(job: Job) -> str:
    return job.config[:HASH_CHARS]


def render(jobs: list[Job]) -> str:
    """The text of ``reference/dvc.yaml`` for ``jobs`` (one line per run, in plan order)."""
    lines = [HEADER, "stages:", "  sync:", "    wdir: ..", "    cmd: python -m pipeline.stages.reference_sync --check",
             "    deps:"]
    lines += [f"      - {dep}" for dep in sync_deps()]
    lines += ["    outs:", f"      - {REFERENCE_SYNC_FILE}:", "          cache: false  # committed",
              "", "  run:", "    foreach:"]
    for job in jobs:
        lines.append(f"      {job_key(job)}: {{experiment: {job.exp.name}, label: {job.label}, seed: {job.seed}, "
                     f"config: {short_hash(job)}, metrics: {job.metrics_file}}}")
    lines += ["    do:", "      wdir: ..",
              "      cmd: >-",
              "        python -m pipeline.stages.reference --experiment ${item.experiment} --label ${item.label}",
              "        --seed ${item.seed} --config ${item.config}",
              "      deps:", f"        - {REFERENCE_SYNC_FILE}",
              "      outs:", "        - ${item.metrics}:",
              "            cache: false  # committed",
              "            persist: true  # a finished run's file is kept; the command skips a run it holds",
              "",
              "  # The tables and figures from the committed metrics (no training when every run is done;",
              "  # python -m pipeline.stages.reference_report also rewrites the README's results).",
              "  report:", "    wdir: ..", "    cmd: python -m pipeline.stages.reference_report --no-readme", "    deps:"]
    lines += [f"      - {dep}" for dep in report_deps()]
    lines += ["    outs:", "      - reports/reference:", "          cache: false  # committed: the tables and figures the README links"]
    return "\n".join(lines) + "\n"


def out_of_sync(params: Params, path: Path = REFERENCE_DVC_FILE) -> str | None:
    """None if ``path`` is what the params generate; else what differs, in a few words."""
    want = render(plan(params))
    have = path.read_text() if path.is_file() else None
    if have == want:
        return None
    if have is None:
        return f"{path} is missing"
    old, new = _keys(have), _keys(want)
    parts = [f"{n} {what}" for n, what in ((len(new.keys() - old.keys()), "runs added"),
                                           (len(old.keys() - new.keys()), "runs gone"),
                                           (sum(old[k] != new[k] for k in old.keys() & new.keys()), "runs changed"))
             if n]
    return f"{path} is out of date with the params ({', '.join(parts) or 'its text differs'})"


def check(params: Params, path: Path = REFERENCE_DVC_FILE) -> None:
    """Raise one :class:`UserError` saying how to regenerate ``path`` if it is out of date; else
    write the ``sync`` stage's output (``in_sync``) beside it, whatever the working directory."""
    problem = out_of_sync(params, path)
    if problem:
        raise UserError(f"{problem}: run `{SYNC_COMMAND}` and commit it, then rerun")
    (path.parent / REFERENCE_SYNC_FILE.name).write_text(f"{path} matches the params\n")


def sync(params: Params, path: Path = REFERENCE_DVC_FILE) -> bool:
    """Write ``path`` from the params; True if it changed."""
    text = render(plan(params))
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def _keys(text: str) -> dict[str, str]:
    """Stage key -> its line, from a rendered file's foreach block."""
    out = {}
    for line in text.splitlines():
        if line.startswith("      ") and ": {experiment:" in line:
            key, rest = line.strip().split(": ", 1)
            out[key] = rest
    return out
