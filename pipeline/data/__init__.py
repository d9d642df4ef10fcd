"""Data sets of the four biased-learning scenarios: sources, builders, the prepared format.

Importing a scenario's module registers its :class:`~pipeline.data.scenarios.Scenario` record: a
new scenario is its module, imported here, and its parameters (``data.<scenario>``). The order of
the imports is the order of the data sections in a resolved config."""

from pipeline.data import longtail, noisy, subpop, glt  # noqa: F401  (registers each scenario)
