"""The prepare stage's library entry: :func:`prepare_dataset` builds one scenario's data set.

Data card keys always present: ``scenario``, ``num_classes``, ``class_names``, ``source``
(provenance with sha256 checksums), ``seeds`` (``data.seed`` and the named streams drawn from
it), ``config`` (the data parameters), ``index_source`` (which source split each split's
``index`` refers to), ``counts.per_class`` per split, and ``counts.per_group`` per split where
the splits carry groups; plus the scenario's own section (``longtail``, ``noisy``, ``subpop`` or
``glt``) and, for the long-tailed scenarios, ``shot_groups`` (Many / Medium / Few classes by
:func:`pipeline.data.longtail.shot_groups`).
"""

from __future__ import annotations

from pipeline.params.schema import to_dict
from pipeline.data import sources
from pipeline.data.config import DataConfig
from pipeline.data.prepared import PreparedData
from pipeline.data.sampling import class_counts
from pipeline.data.scenarios import SCENARIOS
from pipeline.data.sources import Source, load_source


def prepare_dataset(cfg: DataConfig) -> PreparedData:
    """Load the source named by ``cfg`` and build its scenario (see :func:`build_from_source`)."""
    source = load_source(cfg.source, cfg.root, limit_per_class=cfg.limit_per_class,
                         test_limit_per_class=cfg.test_limit_per_class, seed=cfg.seed)
    return build_from_source(source, cfg)


def build_from_source(source: Source, cfg: DataConfig) -> PreparedData:
    """Build ``cfg.scenario`` from a loaded source and complete its data card."""
    scenario = SCENARIOS[cfg.scenario]
    data = scenario.build(source, cfg)
    used = dict(scenario.streams)
    if cfg.limit_per_class is not None:
        used["limit/train"] = sources.STREAMS["limit/train"]
    if cfg.test_limit_per_class is not None:
        used["limit/test"] = sources.STREAMS["limit/test"]
    counts = {"per_class": {name: class_counts(s.y, data.num_classes) for name, s in data.splits.items()}}
    if "num_groups" in data.card:
        counts["per_group"] = {name: class_counts(s.extras["group"], data.card["num_groups"])
                               for name, s in data.splits.items()}
    data.card = {
        "scenario": cfg.scenario,
        "source": source.provenance,
        "seeds": {"seed": cfg.seed, "rule": "stream(name) = numpy.random.default_rng([crc32(name), seed])",
                  "streams": used},
        "config": to_dict(cfg),
        "index_source": {name: "test" if name.startswith("test") else "train" for name in data.splits},
        "counts": counts,
        **data.card,
    }
    return data
