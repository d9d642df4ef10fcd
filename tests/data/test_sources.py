"""Source loading: layouts, resolution order, checksums, one clear error, data config checks."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
from fixtures import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    data_config,
    shared_mnist_present,
    write_cifar_pickle,
    write_jpeg_tarball,
    write_mnist_idx,
)

from pipeline.params.schema import ParamError
from pipeline.data import source_files, sources
from pipeline.data.build import prepare_dataset
from pipeline.data.source_files import CIFAR10_JPEG, CIFAR10_JPEG_SHA256, ChecksumError, DataSourceError
from pipeline.data.sources import DataNotFoundError, load_source
from pipeline.layout import shared_data_dir

REAL_SHARED = shared_data_dir()  # taken before any test points META_IADA_SHARED_DATA elsewhere


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared copy, an empty download cache, and a download step that fails (no network)."""
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    monkeypatch.setenv("META_IADA_SHARED_DATA", str(shared))
    monkeypatch.setenv("META_IADA_DOWNLOADS", str(cache))

    def no_network(name, folder):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "download_official", no_network)
    return shared, cache


def test_cifar100_loads_from_the_pickle_fixture(tmp_path, isolated):
    arrays = write_cifar_pickle(tmp_path / "root", "cifar100", train_per_class=3, test_per_class=2)
    source = load_source("cifar100", str(tmp_path / "root"))
    assert source.train_x.shape == (300, 32, 32, 3) and source.test_x.shape == (200, 32, 32, 3)
    assert np.array_equal(source.train_x, arrays["train_x"])
    assert np.array_equal(source.test_y, arrays["test_y"])
    assert source.class_names == CIFAR100_CLASSES
    prov = source.provenance
    assert prov["location"] == "root" and prov["dataset"] == "CIFAR-100"
    assert set(prov["sha256"]) == {"cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"}
    assert prov["matches_official_checksums"] is False  # a fixture, not the official files


def test_cifar10_pickle_with_limit_keeps_official_positions(tmp_path, isolated):
    arrays = write_cifar_pickle(tmp_path / "root", "cifar10", train_per_class=6, test_per_class=3)
    source = load_source("cifar10", str(tmp_path / "root"), limit_per_class=2, test_limit_per_class=1, seed=3)
    assert np.bincount(source.train_y).tolist() == [2] * 10
    assert np.bincount(source.test_y).tolist() == [1] * 10
    assert np.array_equal(source.train_x, arrays["train_x"][source.train_index])
    assert np.array_equal(source.train_y, arrays["train_y"][source.train_index])
    assert source.class_names == CIFAR10_CLASSES and source.provenance["dataset"] == "CIFAR-10"


class RunsCode:
    """What a crafted batch holds: unpickling it calls ``call(*args)``."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("crafted, names", [
    (lambda marker: RunsCode(os.system, f"touch {marker}"), os.system.__module__ + ".system"),
    (lambda marker: RunsCode(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    (lambda marker: RunsCode(getattr, RunsCode(__import__, "os"), "system"), "builtins.getattr"),
])
def test_a_crafted_cifar_batch_is_refused_without_running_its_code(tmp_path, isolated, crafted, names):
    write_cifar_pickle(tmp_path / "root", "cifar10", train_per_class=2, test_per_class=1)
    path = tmp_path / "root" / "cifar-10-batches-py" / "data_batch_3"
    marker = tmp_path / "marker"
    batch = pickle.loads(path.read_bytes())
    batch["batch_label"] = crafted(marker)  # beside the real data, as a forged copy would hide it
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataSourceError) as err:
        load_source("cifar10", str(tmp_path / "root"))
    message = str(err.value)
    assert message.startswith(f"{path} is not a readable CIFAR batch (it names {names},") and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol, numpy_1", [(p, False) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
                         + [(p, True) for p in (0, 1, 2)])
def test_a_cifar_batch_of_any_pickle_protocol_and_numpy_1s_names_loads(tmp_path, isolated, protocol, numpy_1):
    """The official batches are Python 2 pickles (protocol <= 2, whose globals are text, so the
    test can rename them) naming numpy.core.multiarray, numpy 1's module."""
    arrays = write_cifar_pickle(tmp_path / "root", "cifar10", train_per_class=2, test_per_class=1)
    for path in (tmp_path / "root" / "cifar-10-batches-py").iterdir():
        raw = pickle.dumps(pickle.loads(path.read_bytes()), protocol=protocol)
        path.write_bytes(raw.replace(b"numpy._core.", b"numpy.core.") if numpy_1 else raw)
    source = load_source("cifar10", str(tmp_path / "root"))
    assert np.array_equal(source.train_x, arrays["train_x"]) and source.class_names == CIFAR10_CLASSES


def test_a_cifar_batch_that_is_not_a_dict_is_one_clear_error(tmp_path, isolated):
    write_cifar_pickle(tmp_path / "root", "cifar10", train_per_class=2, test_per_class=1)
    path = tmp_path / "root" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataSourceError, match=f"^{path} is not a CIFAR batch \\(it holds a list, not a dict\\)"):
        load_source("cifar10", str(tmp_path / "root"))


def test_jpeg_tarball_decodes_only_the_chosen_files(tmp_path, isolated, monkeypatch):
    colours = write_jpeg_tarball(tmp_path / "root", train_per_class=5, test_per_class=2)
    decoded = []
    decode = source_files.decode_jpegs

    def counting_decode(path, members):
        decoded.append(len(members))
        return decode(path, members)

    monkeypatch.setattr(source_files, "decode_jpegs", counting_decode)
    source = load_source("cifar10", str(tmp_path / "root"), limit_per_class=2)
    assert decoded == [20, 20]  # 2 per class of the training split, the whole test split
    assert source.provenance["dataset"] == "CIFAR-10 (JPEG)"
    assert source.provenance["matches_official_checksums"] is False
    assert source.provenance["path"] == "cifar10-jpeg.tar.gz"  # within data.root: no checkout path
    assert np.bincount(source.train_y).tolist() == [2] * 10
    assert np.array_equal(source.train_y, source.train_index // 5)  # ImageFolder order
    for split, x, index in (("train", source.train_x, source.train_index), ("test", source.test_x, source.test_index)):
        expected = colours[split][index][:, None, None, :].astype(int)
        assert np.abs(x.astype(int) - expected).max() <= 3  # flat colours survive JPEG


def test_corrupt_shared_tarball_fails_its_checksum(tmp_path, isolated):
    shared, _ = isolated
    write_jpeg_tarball(shared, train_per_class=2, test_per_class=1)
    path = shared / CIFAR10_JPEG
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(ChecksumError) as err:
        load_source("cifar10")
    message = str(err.value)
    assert str(path) in message and CIFAR10_JPEG_SHA256 in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message


def test_truncated_tarball_in_root_is_a_clear_error(tmp_path, isolated):
    write_jpeg_tarball(tmp_path / "root", train_per_class=2, test_per_class=1)
    path = tmp_path / "root" / CIFAR10_JPEG
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataSourceError, match=f"{path} is not a readable .tar.gz"):
        load_source("cifar10", str(tmp_path / "root"))


def test_corrupt_shared_mnist_names_the_file(tmp_path, isolated):
    shared, _ = isolated
    write_mnist_idx(shared / "mnist", train_per_class=2, test_per_class=1)
    with pytest.raises(ChecksumError, match=r"mnist/train-images-idx3-ubyte\.gz fails its sha256 check"):
        load_source("mnist")


def test_missing_everywhere_names_every_place(tmp_path, isolated):
    shared, cache = isolated
    with pytest.raises(DataNotFoundError) as err:
        load_source("cifar100")
    message = str(err.value)
    for place in ("data.root: not set", str(shared), str(cache), "network is unreachable",
                  "cifar-100-python/", "Supply it by setting data.root"):
        assert place in message


def test_a_data_root_that_is_missing_or_lacks_the_data_is_an_error_not_a_fallback(tmp_path, isolated):
    """The shared copy holds MNIST, but a user who set data.root meant that folder."""
    shared, _ = isolated
    write_mnist_idx(shared / "mnist", train_per_class=2, test_per_class=1)
    with pytest.raises(DataNotFoundError, match=f"data.root = {tmp_path / 'nope'} is not a folder"):
        load_source("mnist", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=f"data.root = {tmp_path / 'empty'} does not hold MNIST"):
        load_source("mnist", str(tmp_path / "empty"))


def test_download_lands_in_the_cache_and_is_verified(tmp_path, isolated, monkeypatch):
    _, cache = isolated
    fetched = []

    def fake_download(name, folder):  # writes a fixture where torchvision would put the files
        fetched.append(name)
        write_cifar_pickle(folder, name, train_per_class=1, test_per_class=1)

    monkeypatch.setattr(sources, "download_official", fake_download)
    with pytest.raises(ChecksumError, match="cifar-100-python/train fails its md5 check"):
        load_source("cifar100")
    assert fetched == ["cifar100"]


def test_mnist_loads_from_the_shared_idx_files():
    if not shared_mnist_present():
        pytest.skip("shared MNIST not present")
    source = load_source("mnist", test_limit_per_class=5)
    assert source.train_x.shape == (60000, 28, 28, 1) and source.train_x.dtype == np.uint8
    assert len(source.test_y) == 50 and source.test_index.max() < 10000
    assert source.provenance["location"] == "shared" and source.provenance["matches_official_checksums"]
    assert np.bincount(source.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_in_torchvision_layout(tmp_path, isolated, gz):
    arrays = write_mnist_idx(tmp_path / "root" / "MNIST" / "raw", train_per_class=3, test_per_class=2, gz=gz)
    source = load_source("mnist", str(tmp_path / "root"))
    assert np.array_equal(source.train_x[..., 0], arrays["train_x"])
    assert np.array_equal(source.test_y, arrays["test_y"])
    assert source.provenance["location"] == "root" and source.provenance["path"] == "MNIST/raw"


def test_truncated_idx_file_is_a_clear_error(tmp_path, isolated):
    folder = tmp_path / "root" / "mnist"
    write_mnist_idx(folder, train_per_class=3, test_per_class=2, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataSourceError, match=f"{path} is truncated"):
        load_source("mnist", str(tmp_path / "root"))


def test_prepare_dataset_from_a_root(tmp_path, isolated):
    write_cifar_pickle(tmp_path / "root", "cifar100", train_per_class=8, test_per_class=1)
    cfg = data_config(scenario="longtail", source="cifar100", root=str(tmp_path / "root"),
                      meta_per_class=1, val_per_class=1, limit_per_class=6)
    data = prepare_dataset(cfg)
    assert data.card["counts"]["per_class"]["meta"] == [1] * 100
    assert data.card["longtail"]["train_counts"][0] == 4
    assert data.card["source"]["limit_per_class"] == 6
    assert "limit/train" in data.card["seeds"]["streams"]


@pytest.mark.parametrize(("raw", "key"), [
    ({"scenario": "longtail", "source": "cifar10", "imbalance_ratio": 10}, "experiments.test.data.imbalance_ratio"),
    ({"scenario": "longtail", "source": "svhn"}, "experiments.test.data.source"),
    ({"scenario": "longtail", "source": "mnist"}, "data.source"),
    ({"scenario": "longtail"}, "experiments.test.data.source"),
    ({"scenario": "imbalanced", "source": "cifar10"}, "experiments.test.data.scenario"),
    ({"scenario": "longtail", "source": "cifar10", "limit_per_class": 0}, "experiments.test.data.limit_per_class"),
])
def test_invalid_data_config_names_the_key(raw, key):
    with pytest.raises(ParamError, match=key):
        data_config(**raw)


def test_shared_mnist_checksums_are_of_the_uncompressed_bytes(isolated):
    """A copy gzipped differently from the shared one (as the official mirror's is) still verifies."""
    if not (REAL_SHARED / "mnist").is_dir():
        pytest.skip("shared MNIST not present")
    shared, _ = isolated
    (shared / "mnist").mkdir(parents=True)
    for file in source_files.MNIST_FILES:
        data = gzip.decompress((REAL_SHARED / "mnist" / f"{file}.gz").read_bytes())
        (shared / "mnist" / f"{file}.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    source = load_source("mnist", limit_per_class=1, test_limit_per_class=1)
    assert source.provenance["matches_official_checksums"] and source.provenance["location"] == "shared"
