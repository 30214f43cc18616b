"""The clip-benchmark webdataset reader, on shards that the tests write with tarfile."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from mvlpt.datasets import wds
from mvlpt.datasets.catalog import lookup
from mvlpt.tasks import TaskError
from wds_fixture import image_pixels, write_wds_repository

KITTI_LABELS = {"train": [0, 1, 2, 3, 0, 1, 2], "test": [3, 2, 1, 0]}


@pytest.fixture()
def kitti_repo(tmp_path):
    spec = lookup("kitti-distance")
    return write_wds_repository(tmp_path / "wds_kitti", spec.classnames, KITTI_LABELS)


def test_load_counts_labels_and_keys(kitti_repo):
    spec = lookup("kitti-distance")
    task = wds.load_wds(kitti_repo, spec)

    assert task.name == "kitti-distance"
    assert task.metric == spec.metric
    assert task.templates == spec.templates
    assert task.classnames == spec.classnames
    assert {split: len(samples) for split, samples in task.splits.items()} == {"train": 7, "test": 4}
    assert [sample.label for sample in task.splits["train"]] == KITTI_LABELS["train"]
    assert [sample.label for sample in task.splits["test"]] == KITTI_LABELS["test"]
    # Three images per shard: image 4 of train is the second member of shard 1.
    assert task.splits["train"][4].key == "train/1/s0000004"
    assert task.splits["test"][0].key == "test/0/s0000000"


def test_task_named_apart_from_builtin_mnist(tmp_path):
    spec = lookup("elevater:mnist")
    labels = {"train": list(range(10)), "test": list(range(10))}
    repo = write_wds_repository(tmp_path / "wds_mnist", spec.classnames, labels)

    task = wds.load_wds(repo, spec)

    assert task.name == "elevater:mnist"


def test_images_have_written_pixels(kitti_repo):
    task = wds.load_wds(kitti_repo, lookup("kitti-distance"))

    for split, samples in task.splits.items():
        for index, sample in enumerate(samples):
            image = task.load_image(sample.key)
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), image_pixels(split, index))


def test_index_written_once_and_reused(kitti_repo, monkeypatch):
    spec = lookup("kitti-distance")
    wds.load_wds(kitti_repo, spec)
    index_path = kitti_repo / wds.INDEX_FILE
    assert index_path.is_file()
    written = index_path.stat().st_mtime_ns
    index = json.loads(index_path.read_text())
    assert len(index["samples"]["train"]) == 7

    def fail(*args, **kwargs):
        raise AssertionError("the shards were indexed again")

    monkeypatch.setattr(wds, "_index_shard", fail)
    task = wds.load_wds(kitti_repo, spec)
    assert len(task.splits["test"]) == 4
    assert index_path.stat().st_mtime_ns == written


def test_index_rebuilt_after_shard_changes(kitti_repo, tmp_path):
    spec = lookup("kitti-distance")
    wds.load_wds(kitti_repo, spec)

    changed = {"train": [3, 3, 3, 3, 3, 3, 3], "test": KITTI_LABELS["test"]}
    fresh = write_wds_repository(tmp_path / "fresh", spec.classnames, changed)
    (kitti_repo / "train" / "0.tar").write_bytes((fresh / "train" / "0.tar").read_bytes())

    task = wds.load_wds(kitti_repo, spec)
    assert [sample.label for sample in task.splits["train"][:3]] == [3, 3, 3]


def test_index_kept_at_given_path(kitti_repo, tmp_path):
    index_path = tmp_path / "elsewhere" / "index.json"
    wds.load_wds(kitti_repo, lookup("kitti-distance"), index_path=index_path)
    assert index_path.is_file()
    assert not (kitti_repo / wds.INDEX_FILE).exists()


def test_image_read_reads_one_member(kitti_repo, monkeypatch):
    task = wds.load_wds(kitti_repo, lookup("kitti-distance"))
    key = task.splits["train"][4].key
    location = task.image_loader.locations[key]
    shard_size = (kitti_repo / location.shard).stat().st_size

    bytes_read = []
    real_open = builtins.open

    class CountingFile:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def seek(self, offset):
            return self.handle.seek(offset)

        def read(self, size=-1):
            data = self.handle.read(size)
            bytes_read.append(len(data))
            return data

    monkeypatch.setattr(wds, "open", lambda path, mode: CountingFile(real_open(path, mode)), raising=False)
    image = task.load_image(key)

    np.testing.assert_array_equal(np.asarray(image), image_pixels("train", 4))
    assert bytes_read == [location.size]
    assert location.size < shard_size / 2


def test_multilabel_npy_labels(tmp_path):
    spec = lookup("voc-2007")
    labels = {"train": [[0], [3, 14], [19, 2, 7]], "test": [[14], [1, 2]]}
    repo = write_wds_repository(tmp_path / "wds_voc", spec.classnames, labels)

    task = wds.load_wds(repo, spec)

    assert task.multilabel
    assert task.metric == "map_11point"
    assert [sample.labels for sample in task.splits["train"]] == [(0,), (3, 14), (2, 7, 19)]
    assert task.splits["train"][2].label == 2
    assert task.splits["train"][2].other_labels == (7, 19)
    assert [sample.labels for sample in task.splits["test"]] == [(14,), (1, 2)]


def test_class_count_mismatch_rejected(tmp_path):
    repo = write_wds_repository(tmp_path / "wrong", ["near", "far", "none"], {"train": [0, 1], "test": [2]})
    with pytest.raises(TaskError, match="3 classes"):
        wds.load_wds(repo, lookup("kitti-distance"))


def test_multilabel_data_for_single_label_task_rejected(tmp_path):
    spec = lookup("kitti-distance")
    repo = write_wds_repository(tmp_path / "multi", spec.classnames, {"train": [[0, 1]], "test": [[2]]})
    with pytest.raises(TaskError, match="dataset type 'multilabel'"):
        wds.load_wds(repo, spec)


def test_missing_shards_named(tmp_path):
    spec = lookup("kitti-distance")
    repo = write_wds_repository(tmp_path / "partial", spec.classnames, KITTI_LABELS)
    (repo / "train" / "1.tar").unlink()
    with pytest.raises(TaskError, match="incomplete"):
        wds.load_wds(repo, spec)

    (repo / "train" / "nshards.txt").unlink()
    (repo / "train" / "0.tar").unlink()
    (repo / "train" / "2.tar").unlink()
    with pytest.raises(TaskError, match=r"no shards .*train/\*\.tar"):
        wds.load_wds(repo, spec)


def test_out_of_range_label_rejected(tmp_path):
    spec = lookup("kitti-distance")
    repo = write_wds_repository(tmp_path / "range", spec.classnames, {"train": [0, 9], "test": [1]})
    with pytest.raises(TaskError, match="label 9"):
        wds.load_wds(repo, spec)


def test_missing_classnames_file_named(kitti_repo):
    (kitti_repo / "classnames.txt").unlink()
    with pytest.raises(TaskError, match="classnames.txt not found"):
        wds.load_wds(kitti_repo, lookup("kitti-distance"))


def test_is_wds_folder(kitti_repo, tmp_path):
    assert wds.is_wds_folder(kitti_repo)
    assert not wds.is_wds_folder(tmp_path)
