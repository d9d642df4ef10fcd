"""Reports from metrics files alone, no training: the default pipeline's comparison
(:mod:`~pipeline.report.comparison`, the ``report`` stage) and the reference sweeps' pages, tables,
figures, verdicts and README section (:mod:`~pipeline.report.reference`, the ``report`` stage of
``reference/dvc.yaml``), with one mean ± std and interval (:mod:`~pipeline.report.stats`)."""
