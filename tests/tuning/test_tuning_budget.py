"""The same tuning budget for every method (``tune.budgets``, issue 30): the expansion into one
study per method, the refused tuning seeds, the paper spaces against the method Configs,
selection on validation only, the default-vs-tuned table from in-memory studies, the
``<method>-tuned`` variants and the cost section of docs/tuning.md. Nothing here trains."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from pipeline.methods import method_class
from pipeline.params.budget import budget_studies, budget_study_names, find_plan, study_name
from pipeline.params.file import load_params, parse_params, read_params
from pipeline.params.schema import ParamError, build
from pipeline.params.spaces import PAPER_SPACES, paper_space
from pipeline.reference.plan import read_record
from pipeline.tuning.budget import DEFAULT_ATTR
from pipeline.tuning.budget_report import budget_report, select
from pipeline.tuning.cost import DOCS_PAGE, cost_markdown, markers
from pipeline.tuning.study import enqueue_default

ROOT = Path(__file__).resolve().parents[2]
BUDGET = "lt_ref_budget"


@functools.cache
def raw_params() -> dict[str, Any]:
    return read_params(ROOT / "params.yaml")[0]


def params_with(budget: dict[str, Any] | None = None, **reference: Any):
    """params.yaml with keys of the budget and of ``reference:`` changed."""
    raw = copy.deepcopy(raw_params())
    raw["tune"]["budgets"][BUDGET].update(budget or {})
    raw["reference"].update(reference)
    return parse_params(raw)


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def test_a_budget_gives_every_method_the_same_trials_sampler_and_seed(params):
    budget = params.tune.budgets[BUDGET]
    studies = budget_studies(params.tune)
    assert [s for s in studies if s.startswith(f"{BUDGET}-")] == [study_name(BUDGET, m) for m in budget.methods]
    plans = [find_plan(params, name) for name in budget_study_names(params, BUDGET)]
    assert len(plans) == len(budget.methods) >= 2
    for plan, method in zip(plans, budget.methods):
        assert plan.cfg.method == method
        assert plan.space == paper_space(method) != {}
        assert plan.n_trials == budget.n_trials >= 8
        assert plan.cfg.sampler == budget.sampler and plan.cfg.pruner == budget.pruner
        assert (plan.cfg.seed, plan.exp.data.seed) == (budget.seed, budget.seed)  # the tuning seed draws the split
        assert plan.exp.train_epochs == params.experiment(budget.experiment).train_epochs
        assert plan.data_tree.data.name == f"split{budget.seed}"
        assert plan.cfg.storage == budget.storage and plan.cfg.workers == budget.workers
    samplers = [p.cfg.sampler for p in plans]
    assert len({id(s) for s in samplers}) == len(samplers)  # copies: one study cannot change another's


def test_n_trials_of_one_method_cannot_be_overridden(params):
    with pytest.raises(ParamError, match=r"same n_trials: change tune.budgets.lt_ref_budget.n_trials"):
        find_plan(params, study_name(BUDGET, "la"), n_trials=20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_reported_seed_is_refused_as_tuning_seed(seed):
    with pytest.raises(ParamError, match=rf"seed = {seed} is one of the reported seeds reference.seeds"):
        params_with({"seed": seed})


def test_a_fixed_split_is_refused_and_another_seed_is_accepted():
    with pytest.raises(ParamError, match=r"reference.split = 'fixed'.*use reference.split: per_seed"):
        params_with(split="fixed")
    assert params_with({"seed": 7}).tune.budgets[BUDGET].seed == 7


@pytest.mark.parametrize("change, message", [
    ({"n_trials": 7}, r"n_trials = 7 is out of range: it must be >= 8"),
    ({"methods": ["ce", "la"]}, r"'ce' has no search space in pipeline/params/spaces.py"),
    ({"methods": ["la", "la"]}, r"list each method to tune once"),
    ({"methods": ["groupdro"]}, r"'groupdro' has no block in experiments.lt_ref.methods"),
    ({"chosen": {"la": {"methods.la.tau": 9.0}}}, r"chosen.la.methods.la.tau = 9.0 is outside its space"),
    ({"chosen": {"la": {"methods.la.s": 1.0}}}, r"'methods.la.s' is not searched for la"),
])
def test_bad_budgets_are_refused_in_one_line(change, message):
    with pytest.raises(ParamError, match=message):
        params_with(change)


def test_a_second_budget_of_the_same_experiment_is_refused():
    """Two budgets of one experiment would both make `<method>-tuned` variants, and the report has
    one tuned table per experiment."""
    raw = copy.deepcopy(raw_params())
    raw["tune"]["budgets"]["lt_ref_again"] = {**copy.deepcopy(raw["tune"]["budgets"][BUDGET]), "chosen": {}}
    with pytest.raises(ParamError, match=r"tune.budgets.lt_ref_again.experiment = 'lt_ref' is tuned by budget "
                                         r"'lt_ref_budget' already: one budget per experiment"):
        parse_params(raw)


def test_a_default_outside_its_paper_space_is_refused():
    raw = copy.deepcopy(raw_params())
    raw["experiments"]["lt_ref"].setdefault("methods", {}).setdefault("la", {})["tau"] = 3.0  # a delta of lt_ref
    with pytest.raises(ParamError, match=r"the default methods.la.tau = 3.0 .* outside its paper space"):
        parse_params(raw)


@pytest.mark.parametrize("method", sorted(PAPER_SPACES))
def test_every_space_key_is_a_field_of_its_methods_config_and_every_end_builds(method):
    cls = method_class(method, "test").Config
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, entry in PAPER_SPACES[method].items():
        prefix, _, name = key.rpartition(".")
        assert prefix == f"methods.{method}" and name in fields, key
        entry.space.validate(key)
        assert entry.source
        for value in entry.space.ends():
            assert getattr(build(cls, {name: value}, key), name) == value


def study_of(values: list[tuple[float, float]], test: list[float]) -> optuna.Study:
    """An in-memory study whose trial i suggests ``values[i]`` (tau, validation) through a fake
    objective that also records a test accuracy as a user attr."""
    study = optuna.create_study(direction="maximize")
    for (tau, val), test_acc in zip(values, test):
        study.enqueue_trial({"methods.la.tau": tau})

    def objective(trial: optuna.Trial) -> float:
        tau = trial.suggest_float("methods.la.tau", 0.5, 2.5)
        index = [v[0] for v in values].index(tau)
        trial.set_user_attr("test_acc", test[index])
        trial.set_user_attr(DEFAULT_ATTR, index == 0)
        return values[index][1]

    study.optimize(objective, n_trials=len(values))
    return study


# tau -> validation, 8 trials (the budget's n_trials), the first the default (tau 1.0); the test
# accuracies are anti-correlated, so reading them picks another trial.
VALUES = [(1.0, 0.70), (0.5, 0.66), (1.7, 0.74), (2.5, 0.72), (0.8, 0.69), (1.2, 0.71), (2.0, 0.73), (0.6, 0.67)]
TESTS = [0.69, 0.75, 0.60, 0.64, 0.70, 0.68, 0.62, 0.66]


def test_selection_is_the_arg_max_of_validation_never_test():
    study = study_of(VALUES, TESTS)
    best = select(study)
    assert best.params == {"methods.la.tau": 1.7} and best.value == 0.74
    assert best.number != max(range(len(TESTS)), key=TESTS.__getitem__)  # the test arg-max is another trial


def test_selection_ignores_pruned_and_failed_trials():
    study = study_of(VALUES, TESTS)
    study.add_trial(optuna.trial.create_trial(params={"methods.la.tau": 2.0}, value=0.99, state=TrialState.PRUNED,
                                              distributions={"methods.la.tau": optuna.distributions.FloatDistribution(0.5, 2.5)},
                                              intermediate_values={0: 0.99}))
    assert select(study).params == {"methods.la.tau": 1.7}
    assert select(optuna.create_study(direction="maximize")) is None


def test_the_report_puts_default_and_tuned_side_by_side(params):
    rows, page = budget_report(params, BUDGET, studies={"la": study_of(VALUES, TESTS)})
    la = rows[params.tune.budgets[BUDGET].methods.index("la")]
    assert (la.complete, la.default_val, la.best_val, la.chosen) == (8, 0.70, 0.74, {"methods.la.tau": 1.7})
    committed = [read_record(ROOT / f"reference/metrics/lt_ref/la-s{s}.json")["selected"]["headline"]["acc"]
                 for s in params.reference.seeds]
    assert la.default_test == committed and len(committed) == 3
    assert la.tuned_test == []  # la-tuned is not run yet
    assert "| la | 8 of 8 | 70.00 | 74.00 | `tau=1.7` |" in page
    others = [r for r in rows if r.method != "la"]
    assert others and all(r.complete == 0 and r.best_val is None and not r.chosen for r in others)
    assert "| ldam_drw | 0 of 8 | — | — | — |" in page
    assert yaml.safe_load(page.split("```yaml\n")[1].split("```")[0]) == {"chosen": {"la": {"methods.la.tau": 1.7}}}
    assert ("python -m pipeline.stages.reference_sync && dvc repro --glob 'reference/dvc.yaml:run@lt_ref.la-tuned.*'\n"
            in page)


def test_an_unfinished_study_chooses_nothing_yet(params):
    """Before a study has run its n_trials, its best values are shown as "so far" and become no
    tuned variant: the budget is the same for every method only once each has spent it."""
    rows, page = budget_report(params, BUDGET, studies={"la": study_of(VALUES[:3], TESTS[:3])})
    la = next(r for r in rows if r.method == "la")
    assert not la.finished and la.chosen == {"methods.la.tau": 1.7} and la.variant == {}
    assert "| la | 3 of 8 | 70.00 | 74.00 | `tau=1.7` (so far) |" in page
    assert yaml.safe_load(page.split("```yaml\n")[1].split("```")[0]) == {"chosen": {}}
    assert "dvc repro" not in page.split("```bash\n")[1]


def test_the_table_rounds_a_sampled_value_and_the_chosen_block_keeps_it(params):
    tau = 1.7123456789
    rows, page = budget_report(params, BUDGET, studies={"la": study_of(VALUES[:2] + [(tau, 0.74)] + VALUES[3:], TESTS)})
    assert "| la | 8 of 8 | 70.00 | 74.00 | `tau=1.712` |" in page
    assert yaml.safe_load(page.split("```yaml\n")[1].split("```")[0]) == {"chosen": {"la": {"methods.la.tau": tau}}}


def test_a_finished_study_whose_best_is_the_default_keeps_the_default_runs(params):
    """All trials run and none beats the default (ties go to the earlier trial, the default): no
    -tuned variant would repeat the default's runs; the tuned test column is the default's."""
    values = [(1.0, 0.74)] + VALUES[1:2] + [(1.7, 0.74)] + VALUES[3:]
    rows, page = budget_report(params, BUDGET, studies={"la": study_of(values, TESTS)})
    la = next(r for r in rows if r.method == "la")
    assert la.finished and la.best_is_default and la.chosen == {"methods.la.tau": 1.0} and la.variant == {}
    assert la.tuned_test == la.default_test and len(la.default_test) == 3
    assert "| la | 8 of 8 | 74.00 | 74.00 | `tau=1.0` (the default) |" in page
    assert yaml.safe_load(page.split("```yaml\n")[1].split("```")[0]) == {"chosen": {}}


def test_a_chosen_config_becomes_the_tuned_reference_variant():
    params = params_with({"chosen": {"la": {"methods.la.tau": 1.5}, "isda": {"methods.isda.class_balanced": True}}})
    variants = params.reference.experiments["lt_ref"].variants
    assert variants["la-tuned"].method == "la" and variants["la-tuned"].set == {"methods.la.tau": 1.5}
    assert variants["isda-tuned"].set == {"methods.isda.class_balanced": True}
    from pipeline.reference.plan import plan

    jobs = {(j.label, j.seed): j for j in plan(params, ["lt_ref"], labels=["la-tuned"])}
    assert sorted(jobs) == [("la-tuned", s) for s in params.reference.seeds]
    assert jobs[("la-tuned", 0)].exp.method_config("la").tau == 1.5


def test_the_default_config_is_the_first_trial_and_is_enqueued_once():
    from pipeline.params.search import ParamSpace

    plan = SimpleNamespace(default_values={"methods.la.tau": 1.0}, n_trials=8, sweep=False,
                           space={"methods.la.tau": ParamSpace(type="float", low=0.5, high=2.5)})
    study = optuna.create_study(direction="maximize")
    enqueue_default(study, plan)
    enqueue_default(study, plan)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].number == 0 and waiting[0].user_attrs[DEFAULT_ATTR]
    trial = study.ask()
    assert trial.suggest_float("methods.la.tau", 0.5, 2.5) == 1.0
    study.tell(trial, state=TrialState.FAIL)
    enqueue_default(study, plan)  # a failed default is put back
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_the_docs_cost_section_is_computed_from_the_committed_timings(params):
    begin, end = markers(BUDGET)
    text = (ROOT / DOCS_PAGE).read_text()
    section = text.split(begin + "\n")[1].split("\n" + end)[0]
    assert section == cost_markdown(params, BUDGET, ROOT / "reference" / "metrics")


def test_the_cost_is_seconds_per_epoch_times_epochs_times_trials(params, tmp_path):
    """Every method's records average 15 s an epoch (10 and 20): 15 s x 12 epochs x 8 trials =
    0.4 h each, or fewer trainings where the space has fewer configs than trials, the pretraining
    15 s x 96 epochs = 0.4 h, the reruns 15 s x 12 x 3 seeds = 0.15 h each."""
    from pipeline.reference.plan import write_record

    budget = params.tune.budgets[BUDGET]
    for label in [*budget.methods, "ce"]:
        for seed, seconds in ((0, [10.0, 10.0]), (1, [20.0, 20.0])):
            write_record({"curve": {"epoch_seconds": seconds}, "machine": {"cpu": "X", "avx512": False, "threads": 2}},
                         tmp_path / "lt_ref" / f"{label}-s{seed}.json")
    table = cost_markdown(params, BUDGET, tmp_path)
    assert "| la | 15.0 | 12 x 8 | 0.4 |" in table  # tau is continuous: 8 configs
    assert "| cb_ce | 15.0 | 12 x 4 (4 configs) | 0.2 |" in table  # 4 betas: the repeats train nothing
    assert "| CE pretraining of seed 100 (at ce's pace) | 15.0 | 96 x 1 | 0.4 |" in table
    trained = {"ldam_drw": 8, "meta_iada": 8, "metasaug": 5, "cb_ce": 4, "focal": 3}  # 3x3, 5x2, 5, 4, 3 configs
    hours = sum(15 * 12 * trained.get(m, 8) / 3600 for m in budget.methods) + 0.4
    assert f"| **{hours:.1f}** |" in table
    assert f"12 x 3 each | {0.15 * len(budget.methods):.1f} |" in table
    assert "Paces measured on: X, 2 thread(s)." in table


def test_a_budget_study_prepares_and_pretrains_on_the_tuning_seeds_split(params, monkeypatch):
    from pipeline.tuning import objective

    plan = find_plan(params, study_name(BUDGET, "la"))
    calls = []
    monkeypatch.setattr(objective, "ensure_prepared", lambda exp, tree: calls.append((exp.data.seed, tree)))
    objective.ensure_data(params, plan)
    assert calls == [(100, plan.tree)] and plan.tree.data.parts[-3:] == ("reference", "lt_ref", "split100")
    assert objective.pretrain_checkpoint(plan, 100).parts[-4:] == ("lt_ref", "s100", "pretrain", "last.pt")
    assert objective.base_experiment(params, plan).data.seed == 100


def test_a_trial_that_repeats_a_complete_config_takes_its_value_without_training(monkeypatch):
    """TPE repeats configs of a discrete space (meta_iada's 5 x 2 grid repeated two of its first 8);
    training is deterministic, so a repeat costs no training and gets the earlier value. A repeat
    of a failed trial is trained."""
    from pipeline.params.search import ParamSpace
    from pipeline.tuning.budget import REPEAT_ATTR
    from pipeline.tuning.objective import Objective

    plan = SimpleNamespace(sweep=False, name="s", cfg=SimpleNamespace(seed=100),
                           space={"methods.x.alpha": ParamSpace(type="categorical", choices=[0.25, 0.5, 1.0])})
    trained = []

    def train(self, trial, values, seed, out):
        trained.append(values["methods.x.alpha"])
        if len(trained) == 1:
            raise RuntimeError("the first training fails")
        return values["methods.x.alpha"] / 10

    monkeypatch.setattr(Objective, "train", train)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"methods.x.alpha": 0.5})
    study.enqueue_trial({"methods.x.alpha": 0.5})  # a repeat of a failed trial
    study.optimize(Objective(plan, None, SimpleNamespace(admits=lambda t: True)), n_trials=9, catch=(RuntimeError,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 8 and trained[:2] == [0.5, 0.5]
    assert sorted(trained[1:]) == sorted({t.params["methods.x.alpha"] for t in complete})  # each config once
    repeats = [t for t in complete if REPEAT_ATTR in t.user_attrs]
    assert len(repeats) == 8 - len(trained[1:]) >= 5
    for t in repeats:
        origin = study.trials[t.user_attrs[REPEAT_ATTR]]
        assert origin.params == t.params and t.value == origin.value and REPEAT_ATTR not in origin.user_attrs


def test_the_page_says_which_cpu_kinds_trained_the_trials_and_the_test_runs():
    """Kinds round convolutions differently: the page counts the trained trials per kind (repeats
    trained nothing) and names a method whose tuned test runs are of another kind than its default's."""
    from pipeline.tuning.budget import MACHINE_ATTR, REPEAT_ATTR
    from pipeline.tuning.budget_report import machines_line

    study = optuna.create_study(direction="maximize")
    dist = {"methods.la.tau": optuna.distributions.FloatDistribution(0.5, 2.5)}
    for (tau, val), attrs in zip(VALUES, ({MACHINE_ATTR: "A with AVX-512"}, {MACHINE_ATTR: "B without AVX-512"},
                                          {MACHINE_ATTR: "B without AVX-512", REPEAT_ATTR: 1}, {})):
        study.add_trial(optuna.trial.create_trial(params={"methods.la.tau": tau}, distributions=dist, value=val,
                                                  user_attrs=attrs))
    kinds = {"la": {"A with AVX-512"}, "la-tuned": {"B without AVX-512"}, "cb_ce": {"A with AVX-512"}}
    text = machines_line({"la": study, "cb_ce": None}, lambda label: kinds.get(label, set()))
    assert text.startswith("Trained trials by CPU kind: A with AVX-512: 1; B without AVX-512: 1; a CPU not recorded")
    assert ": 1." in text.split(";")[-1]  # the unrecorded one; the repeat counts nowhere
    assert "la: default on A with AVX-512, tuned on B without AVX-512" in text and "cb_ce:" not in text
    kinds["la-tuned"] = {"A with AVX-512"}
    assert "Test runs of two kinds" not in machines_line({"la": study}, lambda label: kinds.get(label, set()))


def test_every_study_trains_the_same_number_of_distinct_configs_or_its_whole_space(monkeypatch):
    """DomainBed's rule, counted in configs: TPE's random start repeats configs of a discrete space
    (metasaug's 5 alphas came out as 4 distinct configs in 8 trials), so a repeat does not count
    and a study ends once it has trained n_trials distinct configs, or every config of a smaller
    space. Repeats trained before the rule (no repeat_of attr) count once too."""
    from pipeline.params.search import ParamSpace
    from pipeline.tuning.budget import Budget
    from pipeline.tuning.objective import Objective

    def run(choices, n_trials, study=None):
        space = {"methods.x.alpha": ParamSpace(type="categorical", choices=choices)}
        plan = SimpleNamespace(sweep=False, name="s", cfg=SimpleNamespace(seed=100), space=space)
        budget = Budget(n_trials, False, len(choices))
        trained = []
        monkeypatch.setattr(Objective, "train", lambda self, trial, values, seed, out:
                            trained.append(values["methods.x.alpha"]) or values["methods.x.alpha"] / 10)
        study = study or optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
        study.optimize(Objective(plan, None, budget), n_trials=500, callbacks=[budget.after_trial])
        return study, trained

    study, trained = run([0.1, 0.25, 0.5, 0.75, 1.0], 8)
    assert sorted(trained) == [0.1, 0.25, 0.5, 0.75, 1.0]  # the whole space, each config once
    assert Budget.counted(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    study, trained = run([round(0.1 * i, 1) for i in range(1, 21)], 8)
    assert len(trained) == len(set(trained)) == 8  # 8 of a 20-config space
    dist = {"methods.x.alpha": optuna.distributions.CategoricalDistribution([0.1, 0.25, 0.5])}
    old = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    for value in (0.1, 0.1):  # a repeat trained before the rule: the same config twice
        old.add_trial(optuna.trial.create_trial(params={"methods.x.alpha": value}, distributions=dist, value=value))
    _, trained = run([0.1, 0.25, 0.5], 3, old)
    assert sorted(trained) == [0.25, 0.5]  # the two missing configs, not one


def test_an_interrupted_trial_says_it_is_failed_not_saved(monkeypatch):
    """Ctrl-C in a trial: the training loop's message names a checkpoint in the trial's temporary
    folder, deleted on the way out; the study's message says what happens to the trial instead."""
    from pipeline.engine.checkpoint import TrainingInterrupted
    from pipeline.params.search import ParamSpace
    from pipeline.tuning.budget import Budget
    from pipeline.tuning.objective import Objective

    folders = []

    def interrupted(self, trial, values, seed, out):
        folders.append(out)
        raise TrainingInterrupted(f"interrupted: the run is saved at epoch 3 (in {out}/last.pt); rerun ...")

    monkeypatch.setattr(Objective, "train", interrupted)
    space = {"methods.x.alpha": ParamSpace(type="categorical", choices=[0.1, 0.5])}
    plan = SimpleNamespace(sweep=False, name="s", cfg=SimpleNamespace(seed=100), space=space)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(TrainingInterrupted) as err:
        study.optimize(Objective(plan, None, Budget(2, False, 2)), n_trials=2)
    message = str(err.value)
    assert "trial 0 of s is marked failed" in message and "rerun the same command" in message
    assert str(folders[0]) not in message and not folders[0].exists()
    assert [t.state for t in study.trials] == [TrialState.FAIL]
