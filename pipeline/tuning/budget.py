"""The trial budget of a study: when a worker stops, which trials may run, and why a study ended
short (in one line)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from pipeline.params.search import ParamSpace
from pipeline.params.tune import Plan
from pipeline.tuning.storage import grace_s

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
GRID_ATTR = "grid_point"  # trial user attr of an enqueued sweep point
DEFAULT_ATTR = "default"  # trial user attr of a tuning budget's default-config trial (tune.budgets)
REPEAT_ATTR = "repeat_of"  # trial user attr: the number of the complete trial whose config it repeats
MACHINE_ATTR = "machine"  # trial user attr: the CPU kind that trained it (kinds round differently)
MAX_FAILURES_IN_A_ROW = 5
MAX_REPEATS_IN_A_ROW = 200  # repeats cost no training; this many in a row: the sampler is stuck


def distinct_configs(space: dict[str, ParamSpace]) -> int | None:
    """How many configs ``space`` holds; None where a key is continuous."""
    n = 1
    for s in space.values():
        if s.type == "categorical":
            n *= len(s.choices or [])
        elif s.type == "int":
            n *= (int(s.high) - int(s.low)) // int(s.step or 1) + 1
        else:
            return None
    return n


class SurplusTrial(RuntimeError):
    """A trial started past the budget by a concurrent worker: refused before any training."""


@dataclass
class Budget:
    """When a worker stops and which trials may run.

    Study: ``n_trials`` is the number of configs trained (``configs`` where the space holds fewer:
    each once). A trial that repeats a complete trial's config takes its value without training
    (:func:`pipeline.tuning.objective.repeat_of`) and does not count, so every method of a budget
    trains the same number of distinct configs: TPE's random start repeats configs of a discrete
    space (metasaug's 5 alphas came out as 4 distinct configs in 8 trials). Stop once the distinct
    configs of COMPLETE + PRUNED + RUNNING trials reach it; a trial runs only if the
    lower-numbered COMPLETE, PRUNED, RUNNING or WAITING trials hold fewer (trial numbers are
    assigned atomically by the storage, so this is exact across processes).
    Sweep: stop once no enqueued grid point waits; only enqueued grid points run.
    A worker also stops after ``MAX_FAILURES_IN_A_ROW`` failed trials (something is broken), or
    after ``MAX_REPEATS_IN_A_ROW`` repeats (the sampler finds no new config).
    """

    n_trials: int
    sweep: bool
    configs: int | None = None  # the space's distinct configs (None: continuous)
    failures_in_a_row: int = 0
    repeats_in_a_row: int = 0

    @property
    def target(self) -> int:
        return self.n_trials if self.sweep or self.configs is None else min(self.n_trials, self.configs)

    @staticmethod
    def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
        """The distinct configs of the finished (COMPLETE, PRUNED) ``trials``, plus each other one
        (a RUNNING or WAITING trial is not known to repeat: two workers may draw the same values)."""
        return len({json.dumps(t.params, sort_keys=True) if t.state in FINISHED else f"#{t.number}" for t in trials})

    def finished(self, study: optuna.Study) -> int:
        """Trials of the budget done: the distinct configs of COMPLETE + PRUNED trials, or grid points
        with a COMPLETE trial."""
        if self.sweep:
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            return len({json.dumps(t.params, sort_keys=True) for t in complete})
        return self.counted(study.get_trials(deepcopy=False, states=FINISHED))

    def remaining(self, study: optuna.Study) -> int:
        """Trials still to start: waiting grid points, or target - the distinct configs of COMPLETE +
        PRUNED + RUNNING trials."""
        if self.sweep:
            return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        return self.target - self.counted(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))

    def done(self, study: optuna.Study) -> bool:
        return self.remaining(study) <= 0

    def admits(self, trial: optuna.Trial) -> bool:
        if self.sweep:
            return GRID_ATTR in trial.user_attrs
        states = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
        earlier = [t for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
        return self.counted(earlier) < self.target

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """``study.optimize`` callback."""
        self.failures_in_a_row = self.failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        self.repeats_in_a_row = self.repeats_in_a_row + 1 if REPEAT_ATTR in trial.user_attrs else 0
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            print(f"[{study.study_name}] {self.failures_in_a_row} trials failed in a row: this worker stops "
                  "(see the errors above; the trials' user attr 'error' keeps them)")
            study.stop()
        elif self.repeats_in_a_row >= MAX_REPEATS_IN_A_ROW:
            print(f"[{study.study_name}] the sampler repeated trained configs {self.repeats_in_a_row} times in a "
                  "row: this worker stops")
            study.stop()
        elif self.done(study):
            study.stop()


def budget_of(plan: Plan) -> Budget:
    """The budget of ``plan``'s study (the space's size bounds a study's distinct configs)."""
    return Budget(plan.n_trials, plan.sweep, None if plan.sweep else distinct_configs(plan.space))


class IncompleteStudy(RuntimeError):
    """A study ended short of its budget; the message says why and what to do (one line)."""


def failure_streak(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The failed trials since the last COMPLETE or PRUNED one (refused surplus trials left out)."""
    ended = [t for t in sorted(trials, key=lambda t: t.number)
             if t.state.is_finished() and not t.user_attrs.get("surplus")]
    streak: list[optuna.trial.FrozenTrial] = []
    for t in reversed(ended):
        if t.state != TrialState.FAIL:
            break
        streak.insert(0, t)
    return streak


def shortfall(study: optuna.Study, plan: Plan, dead: list[str]) -> str | None:
    """Why the study ended short of its budget and what to do, in one line; None when it is done."""
    budget = budget_of(plan)
    done = budget.finished(study)
    if done >= budget.target:
        return None
    trials = study.get_trials(deepcopy=False)
    why = [f"{len(dead)} worker(s) died ({'; '.join(dead)})"] if dead else []
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    streak = failure_streak(trials)
    if failed:
        errors = [t.user_attrs["error"] for t in streak or failed if "error" in t.user_attrs]
        last = errors[-1].splitlines()[0][:300] if errors else "no error recorded"
        why.append(f"{len(streak)} trial(s) failed in a row" if streak else f"{len(failed)} trial(s) failed")
        why[-1] += f", the last with {last}"
    todo = "rerun the same command to run exactly the missing trials (failed trials do not count)"
    running = [str(t.number) for t in trials if t.state == TrialState.RUNNING]
    if running and plan.storage.startswith("journal:"):  # no heartbeat: a dead process's trial is failed at once
        todo = f"trial(s) {', '.join(running)} are RUNNING in live processes: once they end, {todo}"
    elif running:
        todo = (f"trial(s) {', '.join(running)} stay RUNNING until they have had no heartbeat for {grace_s()} s "
                f"and are then failed and put back in the queue: after that, {todo}")
    return (f"study {plan.name!r} ended with {done} of its {budget.target} trials done (COMPLETE or PRUNED): "
            f"{'; '.join(why) or 'trials are missing'}; {todo}")
