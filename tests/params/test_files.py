"""params.yaml and the files of ``params/`` beside it (pipeline.params.file.read_params): one set of
blocks, bases resolved across the files, the ``-S`` form of a key naming its file, and one error
naming the files for a block or experiment written twice, a stray file, or bad YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.params.file import load_params, read_params, set_option
from pipeline.params.schema import ParamError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw():
    return read_params(ROOT / "params.yaml")[0]


def write_split(folder: Path, raw: dict) -> Path:
    """``raw`` as the project lays it out: run, methods and lt in params.yaml, lt's heirs in
    params/experiments.yaml, tune and reference in their own files; returns params.yaml's path."""
    (folder / "params").mkdir(parents=True)
    exps = dict(raw["experiments"])
    files = {"params.yaml": {"run": raw["run"], "methods": raw["methods"], "experiments": {"lt": exps.pop("lt")}},
             "params/experiments.yaml": {"experiments": exps}, "params/tune.yaml": {"tune": raw["tune"]},
             "params/reference.yaml": {"reference": raw["reference"]}}
    for name, blocks in files.items():
        (folder / name).write_text(yaml.safe_dump(blocks, sort_keys=False))
    return folder / "params.yaml"


def test_the_files_beside_params_yaml_are_one_set_of_params(tmp_path, raw):
    """Found beside the params.yaml given (``--params``), merged, bases resolved across the files;
    the same experiments, studies and sweep as the one-file form."""
    one = tmp_path / "one" / "params.yaml"
    one.parent.mkdir()
    one.write_text(yaml.safe_dump(raw, sort_keys=False))
    split = load_params(write_split(tmp_path / "split", raw))
    whole = load_params(one)
    assert list(split.experiments) == list(whole.experiments) == list(raw["experiments"])
    assert split.experiments == whole.experiments and split.tune == whole.tune and split.reference == whole.reference
    assert split.experiment("lt_ref").optim.lr == split.experiment("lt").optim.lr  # its base, in params.yaml


def test_the_set_option_of_a_key_names_the_file_that_holds_it(tmp_path, raw):
    """The -S form (README): plain in params.yaml, + for a default, the file's path before either
    for a key of params/ (a key an experiment there only inherits goes to that experiment's file)."""
    written = load_params(write_split(tmp_path, raw)).written
    assert written["experiments.lt.optim.lr"] == "params.yaml"
    assert written["experiments.lt_ref.pretrain_epochs"] == "params/experiments.yaml"
    assert set_option(written, "methods.meta_iada.alpha", "0.25") == "methods.meta_iada.alpha=0.25"
    assert set_option(written, "experiments.lt.methods.meta_iada.alpha", "0.25") == \
        "+experiments.lt.methods.meta_iada.alpha=0.25"
    assert set_option(written, "experiments.lt_ref.pretrain_epochs", "48") == \
        "params/experiments.yaml:experiments.lt_ref.pretrain_epochs=48"
    assert set_option(written, "experiments.lt_ref.optim.lr", "0.05") == \
        "params/experiments.yaml:+experiments.lt_ref.optim.lr=0.05"
    assert set_option(written, "tune.run", "[lt_smoke]") == "params/tune.yaml:tune.run=[lt_smoke]"


@pytest.mark.parametrize("name, blocks, expect", [
    ("params/more.yaml", {"tune": {"run": []}}, r"block 'tune' is written in both \S*params/more.yaml and "
                                                 r"\S*params/tune.yaml: keep one"),  # (files in name order)
    ("params/more.yaml", {"experiments": {"lt": {}}}, r"experiment 'lt' is written in both \S*/params.yaml and "
                                                      r"\S*params/more.yaml: keep one"),
    ("params/more.yaml", {"experiments": {"noisy": {}}}, r"experiment 'noisy' is written in both "
                                                         r"\S*params/experiments.yaml and \S*params/more.yaml"),
    ("params/more.yaml", {"experiments": None}, r"experiments in \S*params/more.yaml must be a mapping"),
    ("params/tune.yml", {"tune": {"run": []}}, r"\S*params/tune.yml is not a params file: \S*params holds only "
                                               r"\.yaml files"),
])
def test_a_block_or_experiment_written_twice_or_a_stray_file_names_the_files(tmp_path, raw, name, blocks, expect):
    path = write_split(tmp_path, raw)
    (tmp_path / name).write_text(yaml.safe_dump(blocks))
    with pytest.raises(ParamError, match=expect):
        load_params(path)


@pytest.mark.parametrize("text, expect", [
    ("tune:\n  run: [\n", r"(?s)params/tune.yaml is not valid YAML: .*line 3"),
    ("tune:\n  run: []\ntuning: {}\n", r"params/tune.yaml line 3: unknown top-level key 'tuning'"),
    ("tune:\n  run: []\n  run: []\n", r"params/tune.yaml line 3: key 'run' is given twice"),
    ("tune: &t\n  run: []\n", r"params/tune.yaml line 1: YAML anchor &t"),
])
def test_bad_yaml_in_a_file_of_params_names_the_file_and_line(tmp_path, raw, text, expect):
    path = write_split(tmp_path, raw)
    (tmp_path / "params/tune.yaml").write_text(text)
    with pytest.raises(ParamError, match=expect):
        load_params(path)
