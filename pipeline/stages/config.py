"""``config`` stage: write an experiment's configuration as it runs, every value resolved (its
bases, the ``methods`` block, the code's defaults and the derived values such as LDAM-DRW's
``drw_epoch``), to ``configs/<experiment>.json``.

    python -m pipeline.stages.config --experiment lt

params.yaml writes each experiment as a delta of its base, so a key a stage reads may be written
in another experiment, in the ``methods`` block or nowhere (a code default); DVC fails on a params
dependency whose key is absent from the file. The later stages of ``dvc.yaml`` therefore depend on
the keys of this file, where every key is present with the value the run uses: a variant reruns
exactly the stages whose resolved values it changes.
"""

from __future__ import annotations

from typing import Any

from pipeline.data.scenarios import SCENARIOS
from pipeline.layout import config_file, write_json
from pipeline.params.experiment import ExperimentConfig
from pipeline.params.schema import to_dict
from pipeline.stages.common import load, main_guard, parser


def resolved_config(exp: ExperimentConfig) -> dict[str, Any]:
    """The experiment's settings and each of its methods' config as the run reads them: without
    the search space, which no stage reads, and with only its own scenario's section of ``data``
    (a noisy experiment inherits lt's ``data.longtail``, which its builder never reads; a value
    written there would rerun nothing in DVC and changes nothing in a run)."""
    out = {k: v for k, v in to_dict(exp).items() if k not in ("methods", "search")}
    others = set(SCENARIOS) - {exp.data.scenario}
    out["data"] = {k: v for k, v in out["data"].items() if k not in others}
    out["methods"] = {name: to_dict(exp.method_config(name)) for name in exp.methods}
    return out


@main_guard
def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, seed=False).parse_args(argv)
    _, exp = load(args)
    path = config_file(exp.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(resolved_config(exp), path, sort_keys=False)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
