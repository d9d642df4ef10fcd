"""Optuna studies: hyperparameter search and sensitivity analysis of one experiment's method.

Modules: :mod:`~pipeline.tuning.study` (one study end to end), :mod:`~pipeline.tuning.objective`
(a trial), :mod:`~pipeline.tuning.budget` (trial budget), :mod:`~pipeline.tuning.workers`
(processes), :mod:`~pipeline.tuning.storage` (Optuna storages), :mod:`~pipeline.tuning.analysis`
(importances, figures, sweeps, best values), :mod:`~pipeline.tuning.budget_report` (a tuning
budget's default-vs-tuned table), :mod:`~pipeline.tuning.cost` (its CPU estimate); the CLIs are
the ``tune`` and ``tune_report`` stages. A tuning budget (``tune.budgets``,
:mod:`pipeline.params.budget`) is one study per method with the same trials, over each method's
paper space (:mod:`pipeline.params.spaces`), its first trial the method's default.

    python -m pipeline.stages.tune --study lt_meta_iada [--workers 2] [--n-trials 20] [--storage URL]
    python -m pipeline.stages.tune            # every study listed in tune.run

``params/tune.yaml`` declares the studies under ``tune.studies`` (:class:`StudyConfig`); the search
space is the experiment's ``search:`` block, next to the defaults it varies
(:class:`ParamSpace`, keys are dotted paths into the experiment config).

A trial starts from the experiment's pretrain checkpoint (``models/<exp>/s<seed>/pretrain/last.pt``,
trained once if missing), trains the method with the suggested values merged into the
experiment and re-validated like params.yaml, reports the selection metric (``val_acc``, or
``val_worst_group_acc`` for subpopulation shift; never a test metric: the test splits are not
even loaded) after each of its epochs as step 0, 1, ... and is pruned by the study's pruner. Its
value is the BEST validation value over its epochs, the value that selects the checkpoint of a
normal run (``best.pt``). Trial outputs go to a temporary directory removed after the trial; the
child MLflow run keeps its metrics, history and checkpoints.

Two modes:

- ``study``: a TPE (or random) search, ``n_trials`` trials counted as COMPLETE + PRUNED (failed
  trials do not count, so a study that lost trials to errors tops up when it is run again;
  rerunning a finished study runs nothing and refreshes the analysis).
- ``sweep``: exactly the grid ``values`` x ``seeds`` of one parameter (``param``), no pruning;
  each grid point without a complete trial is enqueued, so a rerun retries only what failed.

Storage, by URL (:data:`pipeline.params.tune.STORAGES`): ``sqlite:///PATH`` for one process
(``sqlite:///<project root>/optuna.db`` by default, the file ``make dashboard`` serves),
``journal:PATH`` (Optuna's journal file storage; PATH absolute or from the project root) for
several processes on one machine, ``postgresql://...`` for several machines; any other scheme is
one error line. ``--workers N`` starts N spawned processes on the same study. A worker stops once the
study holds ``n_trials`` COMPLETE + PRUNED + RUNNING trials (the rule of
``optuna.study.MaxTrialsCallback`` with those states); a trial that another worker's concurrent
start pushed past the budget is refused before training (recorded FAIL, user attr ``surplus``),
so exactly ``n_trials`` trials finish. A killed process's trial is failed (RDB: after the
heartbeat grace, ``GRACE_S``; journal, which has no heartbeat in Optuna 5: as soon as its process
is gone) and put back in the queue with the same parameters (:mod:`~pipeline.tuning.storage`). A
worker that dies is reported in one line; the study is still analysed, and the command exits 1
with one line when the budget is short (a dead worker, ``MAX_FAILURES_IN_A_ROW`` failed trials in
a row, a failed grid point of a sweep): rerunning it runs exactly the missing trials.
Once its own workers have ended, an invocation waits for trials RUNNING in other invocations
(they count toward the budget) before it analyses, and runs those put back meanwhile. Workers of one invocation use sampler seeds
derived from ``(sampler.seed, trials in the study at the start, worker index)``: reproducible for
one worker, never the same stream twice in one study.

MLflow: one parent run per study in the scenario's experiment (search space, sampler, pruner,
storage; at the end the best value and parameters, the sensitivity analysis); one child run per
trial (tags ``optuna.study_name``, ``optuna.trial_number``, ``optuna.state``). The parent run id
lives in the study's user attrs, claimed by compare-and-set in the storage, so every worker and
every invocation, concurrent ones included, nests under the same one (:func:`parent_run`).

Analysis, in ``studies/<study>/`` and on the parent run: ``trials.csv``, ``importances.json``
(fANOVA, :class:`optuna.importance.FanovaImportanceEvaluator`, seeded; none where ``STABILITY_SEEDS``
seeds rank different parameters first), ``summary.json``,
``best_params.yaml``, PNGs from ``optuna.visualization.matplotlib`` (parameters with one value
left out, the contour limited to the 3 most important) and the importance bars (evaluator in the
title), and for a sweep
``sweep.csv``, ``sweep.json``, ``sweep.png`` (mean +- sample std over seeds).
"""
