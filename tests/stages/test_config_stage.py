"""The ``config`` stage: every params key that ``dvc.yaml``'s stages name in
``configs/<experiment>.json`` is there for every experiment and method (DVC fails on an absent
key), with the value the run uses."""

import json
from pathlib import Path

import yaml

from pipeline.data.scenarios import SCENARIOS
from pipeline.params.file import load_params
from pipeline.params.schema import to_dict
from pipeline.stages import config

ROOT = Path(__file__).resolve().parents[2]


def resolved_keys() -> list[str]:
    """The keys of configs/${item.experiment}.json that the stages of dvc.yaml depend on."""
    keys = []
    for spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for entry in spec.get("params", []):
            if isinstance(entry, dict):
                keys += entry.get("configs/${item.experiment}.json", [])
    return keys


def test_every_key_a_stage_depends_on_is_in_every_experiments_resolved_config():
    keys = resolved_keys()
    assert {"data", "optim", "methods.${item.method}", "eval_batch_size"} <= set(keys)
    params = load_params(ROOT / "params.yaml")
    for name, exp in params.experiments.items():
        resolved = config.resolved_config(exp)
        for method in exp.methods:
            for key in keys:
                node = resolved
                for part in key.replace("${item.method}", method).split("."):
                    assert part in node, f"{name}: {key} ({method})"
                    node = node[part]
        assert resolved["methods"]["ldam_drw"] == to_dict(exp.method_config("ldam_drw"))  # derived values filled
        assert resolved["methods"]["ldam_drw"]["drw_epoch"] == exp.optim.milestones[0]
        assert resolved["optim"] == to_dict(exp.optim) and "search" not in resolved
        sections = {s for s in SCENARIOS if s in resolved["data"]}
        assert sections == {exp.data.scenario}, name  # only the section its builder reads
        assert resolved["data"][exp.data.scenario] == to_dict(getattr(exp.data, exp.data.scenario))


def test_the_stage_writes_the_resolved_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.main(["--experiment", "lt_ref", "--params", str(ROOT / "params.yaml")]) == 0
    written = json.loads((tmp_path / "configs" / "lt_ref.json").read_text())
    assert written == config.resolved_config(load_params(ROOT / "params.yaml").experiment("lt_ref"))
    assert written["optim"]["lr"] == 0.1 and written["optim"]["milestones"] == [96, 104]  # lt's, and its own
    assert config.main(["--experiment", "nope", "--params", str(ROOT / "params.yaml")]) == 2
    assert not (tmp_path / "configs" / "nope.json").exists()
