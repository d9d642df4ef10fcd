"""The default-vs-tuned table of a tuning budget (``tune.budgets``), from its studies in the
Optuna storage and the committed reference metrics.

Per method: the validation value of its default config (the budget's first trial, user attr
``default``), the best validation value over its COMPLETE trials and the values that gave it
(:func:`select`: the arg-max of the trial values, which are validation values; the objective never
loads a test split), and the test headline on the reported seeds of the default label
(``<method>``) and, once the reference sweep has rerun it, of ``<method>-tuned``: mean ± std
over seeds, from ``reference/metrics/<experiment>/`` records that match today's params.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from pipeline.report.stats import mean_std, pct, pm
from pipeline.params.budget import budget_study_names, find_plan, tuned_label
from pipeline.params.file import Params
from pipeline.params.spaces import paper_space
from pipeline.reference.plan import machine_kind
from pipeline.tuning.budget import DEFAULT_ATTR, MACHINE_ATTR, REPEAT_ATTR, Budget, distinct_configs
from pipeline.tuning.storage import open_storage

TestValues = Callable[[str], list[float]]  # reference label -> its test headline per reported seed


@dataclass
class TunedRow:
    method: str
    complete: int  # the distinct configs of its study's COMPLETE trials
    default_val: float | None  # the default trial's validation value (None: not run or not complete)
    best_val: float | None
    chosen: dict[str, Any] = field(default_factory=dict)  # the best trial's values (so far, until finished)
    default_test: list[float] = field(default_factory=list)
    tuned_test: list[float] = field(default_factory=list)
    n_trials: int = 0  # the configs its study trains (the budget's n_trials, or its space's size if smaller)
    best_is_default: bool = False  # the best trial is the default config's

    @property
    def finished(self) -> bool:
        """The study has spent the budget: only then is its best trial the method's tuned config."""
        return self.complete >= self.n_trials > 0

    @property
    def variant(self) -> dict[str, Any]:
        """The values of the ``<method>-tuned`` reference variant: the chosen config of a finished
        study, unless it is the default (whose runs are already the method's own label)."""
        return self.chosen if self.finished and not self.best_is_default else {}


def select(study: optuna.Study) -> FrozenTrial | None:
    """The selected trial: the highest value (validation) of the COMPLETE trials, the earliest on
    a tie; None when none is complete. Nothing else of a trial (user attrs) is read."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    return max(complete, key=lambda t: t.value, default=None)


def default_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return next((t for t in sorted(complete, key=lambda t: t.number) if t.user_attrs.get(DEFAULT_ATTR)), None)


def tuned_row(method: str, study: optuna.Study | None, test_values: TestValues, n_trials: int = 0) -> TunedRow:
    row = TunedRow(method, 0, None, None, default_test=test_values(method), tuned_test=test_values(tuned_label(method)),
                   n_trials=n_trials)
    if study is None:
        return row
    row.complete = Budget.counted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))  # distinct
    best, default = select(study), default_trial(study)
    if best is not None:
        row.best_val, row.chosen = float(best.value), dict(best.params)
    if default is not None:
        row.default_val = float(default.value)
        row.best_is_default = best is not None and best.params == default.params
    if row.finished and row.best_is_default:
        row.tuned_test = row.default_test  # the tuned config is the default: the same runs
    return row


def machines_line(studies: Mapping[str, optuna.Study | None], kinds: Callable[[str], set[str]]) -> str:
    """Which CPU kinds trained the trials and the test runs (kinds round convolutions differently,
    so a value of one kind beside one of another holds that too)."""
    trials: dict[str, int] = {}
    for study in studies.values():
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if study is not None else []:
            if REPEAT_ATTR not in t.user_attrs:
                kind = t.user_attrs.get(MACHINE_ATTR, "a CPU not recorded (trials older than the record)")
                trials[kind] = trials.get(kind, 0) + 1
    text = "Trained trials by CPU kind: " + ("; ".join(f"{k}: {n}" for k, n in sorted(trials.items())) or "none") + "."

    def named(label: str) -> str:
        return ", ".join(sorted(kinds(label))) or "—"
    tests = [f"{m}: default on {named(m)}, tuned on {named(tuned_label(m))}"
             for m in studies if kinds(tuned_label(m)) and kinds(tuned_label(m)) != kinds(m)]
    if tests:
        text += (" Test runs of two kinds (their difference includes the kinds' rounding): " + "; ".join(tests) + ".")
    return text


def shown(value: Any) -> Any:
    """A sampled float to 4 significant digits for the table (0.0008839874534247041 as 0.000884;
    0.9999 stays); the ``chosen:`` block keeps every digit."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def table(rows: list[TunedRow], metric: str, test_key: str) -> str:
    """Markdown: one row per method, default beside tuned, validation then test."""
    head = ["method", "trials", f"default {metric}", f"tuned {metric}", "chosen",
            f"default test {test_key}", f"tuned test {test_key}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        chosen = ", ".join(f"`{k.rpartition('.')[2]}={shown(v)}`" for k, v in r.chosen.items()) or "—"
        if r.chosen and r.best_is_default:
            chosen += " (the default)"
        if r.chosen and not r.finished:
            chosen += " (so far)"
        lines.append("| " + " | ".join([r.method, f"{r.complete} of {r.n_trials}", pct(r.default_val), pct(r.best_val),
                                        chosen, pm(mean_std(r.default_test)), pm(mean_std(r.tuned_test))]) + " |")
    return "\n".join(lines)


def chosen_block(rows: list[TunedRow]) -> str:
    """The ``chosen:`` mapping of the budget (paste it under ``tune.budgets.<name>``)."""
    chosen = {r.method: r.variant for r in rows if r.variant}
    return yaml.safe_dump({"chosen": chosen}, sort_keys=False, default_flow_style=False)


def rerun_command(experiment: str, rows: list[TunedRow]) -> str:
    """The commands that run every chosen config on the reported seeds: the reference stages
    regenerated (the chosen block adds the ``-tuned`` variants), then those stages."""
    targets = " ".join(f"'reference/dvc.yaml:run@{experiment}.{tuned_label(r.method)}.*'" for r in rows if r.variant)
    if not targets:
        return "# nothing to rerun yet: no finished study chose other values than its default"
    return f"python -m pipeline.stages.reference_sync && dvc repro --glob {targets}"


def reported_tests(params: Params, experiment: str) -> tuple[TestValues, Callable[[str], set[str]]]:
    """Label -> the test headline (the selection metric's key) of its up-to-date committed
    records, and label -> the CPU kinds that trained them."""
    from pipeline.reference.plan import plan, read_record

    key = params.experiment(experiment).selection_metric.removeprefix("val_")
    jobs = plan(params, [experiment]) if experiment in params.reference.experiments else []

    def records(label: str) -> list[dict[str, Any]]:
        return [read_record(j.metrics_file) for j in jobs if j.label == label and j.done()]

    def values(label: str) -> list[float]:
        return [float(r["selected"]["headline"][key]) for r in records(label)]

    def kinds(label: str) -> set[str]:
        return {machine_kind(r.get("machine")) for r in records(label)}
    return values, kinds


def budget_report(params: Params, budget: str, *, storage: str | None = None,
                  studies: Mapping[str, optuna.Study] | None = None) -> tuple[list[TunedRow], str]:
    """The rows and the markdown page of ``budget``: its studies read from their storage (or
    ``studies``, method -> study, e.g. in memory), the test values from the committed records."""
    names = budget_study_names(params, budget)  # an unknown budget is one error line
    cfg = params.tune.budgets[budget]
    exp = params.experiment(cfg.experiment)
    test_values, kinds = reported_tests(params, cfg.experiment)
    rows, loaded = [], {}
    for name, method in zip(names, cfg.methods):
        loaded[method] = studies.get(method) if studies is not None else load_study(params, name, storage)
        configs = distinct_configs(paper_space(method))
        target = cfg.n_trials if configs is None else min(cfg.n_trials, configs)  # as budget_of counts
        rows.append(tuned_row(method, loaded[method], test_values, target))
    metric, key = exp.selection_metric, exp.selection_metric.removeprefix("val_")
    page = "\n".join([
        f"# Tuning budget `{budget}`: {cfg.experiment}, default vs tuned", "",
        f"{cfg.n_trials} distinct configs trained per method (all of a space with fewer; the first the default "
        f"config), sampler {cfg.sampler.name} "
        f"(seed {cfg.sampler.seed}), pruner {cfg.pruner.name}, tuning seed {cfg.seed} on its own split; "
        f"selected on {metric}. Test columns: mean ± std over the reported seeds {params.reference.seeds} "
        f"(`{key}` at the selected epoch; — until the run is done). A study's best values become the "
        "method's tuned config once it has run all its trials (until then they are marked \"so far\"); "
        "where they are the default's, the default's runs are the tuned ones. A trial that repeats a complete "
        "trial's config takes its value without training and does not count.", "", machines_line(loaded, kinds), "",
        table(rows, metric, key), "",
        "Chosen configs of the finished studies that differ from the default (paste under `tune.budgets."
        + budget + "`), then rerun them on the reported seeds:", "",
        "```yaml", chosen_block(rows).rstrip(), "```", "", "```bash", rerun_command(cfg.experiment, rows), "```", ""])
    return rows, page


def load_study(params: Params, name: str, storage: str | None) -> optuna.Study | None:
    """The stored study, or None if it was never created."""
    plan = find_plan(params, name, storage=storage)
    try:
        return optuna.load_study(study_name=name, storage=open_storage(plan.storage))
    except KeyError:
        return None
