"""Name resolution between the suites, offline reuse of a prepared copy, and errors of `mvlpt data prepare` on broken data."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import huggingface_hub
import pytest

from mvlpt.builtin import registry
from mvlpt.cli import main
from mvlpt.datasets import prepare
from mvlpt.datasets.catalog import lookup
from mvlpt.datasets.labelmap import match_classnames
from mvlpt.tasks import ImageLoadError, TaskError
from wds_fixture import write_wds_repository

SST2_LABELS = {"train": [0, 1, 0, 1], "test": [1, 0]}
COOP_DATASET_NAMES = {
    "ImageNet": "coop:imagenet",
    "Caltech101": "coop:caltech-101",
    "OxfordPets": "coop:oxford-pets",
    "StanfordCars": "coop:stanford-cars",
    "OxfordFlowers": "coop:flowers-102",
    "Food101": "coop:food-101",
    "FGVCAircraft": "coop:fgvc-aircraft",
    "SUN397": "coop:sun397",
    "DescribableTextures": "coop:dtd",
    "EuroSAT": "coop:eurosat",
    "UCF101": "coop:ucf101",
}


@pytest.fixture()
def no_hub(monkeypatch):
    """Fail the test if the hub client is asked to download."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: pytest.fail("download attempted"))


def write_sst2(folder):
    return write_wds_repository(folder, ["negative", "positive"], SST2_LABELS, per_shard=2)


def prepared_sst2_folder(root):
    return root / "benchmarks" / "elevater" / "rendered-sst2"


# CoOp's DATASET.NAME spellings ----------------------------------------------------------------


@pytest.mark.parametrize(("coop_name", "expected"), sorted(COOP_DATASET_NAMES.items()))
def test_coop_dataset_name_resolves_to_coop(coop_name, expected):
    assert lookup(coop_name).qualified_name == expected
    assert lookup(coop_name).coop_name == coop_name
    assert registry.task_identity(coop_name) == expected


@pytest.mark.parametrize(("spelling", "expected"), [("caltech101", "elevater:caltech-101"), ("eurosat", "elevater:eurosat"),
                                                    ("FOOD101", "elevater:food-101"), ("coop:food101", "coop:food-101")])
def test_other_spellings_keep_suite_rule(spelling, expected):
    assert lookup(spelling).qualified_name == expected


def test_data_list_shows_coop_names(tmp_path, capsys):
    assert main(["data", "list", "--data-root", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    for coop_name in COOP_DATASET_NAMES:
        assert f"also named {coop_name} (CoOp's DATASET.NAME, case-sensitive)" in output


def test_unknown_name_explains_coop_names():
    with pytest.raises(TaskError, match="CoOp's exact DATASET.NAME such as 'Caltech101'"):
        lookup("caltech-102")


# Offline reuse of a prepared copy --------------------------------------------------------------


def test_offline_uses_complete_copy(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: pytest.fail("download attempted"))
    write_sst2(prepared_sst2_folder(tmp_path))

    with caplog.at_level(logging.INFO, logger="mvlpt.datasets.prepare"):
        prepared = prepare.prepare_task("rendered-sst2", root=tmp_path)

    assert prepared.source == "wds"
    assert prepared.marker_path.is_file()
    assert "using the complete copy of clip-benchmark/wds_renderedsst2 already in" in caplog.text


def test_connection_error_uses_complete_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    write_sst2(prepared_sst2_folder(tmp_path))
    assert prepare.prepare_task("rendered-sst2", root=tmp_path).marker_path.is_file()


def test_offline_incomplete_copy_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy = write_sst2(prepared_sst2_folder(tmp_path))
    (copy / "train" / "1.tar").unlink()

    with pytest.raises(TaskError, match="HF_HUB_OFFLINE is set") as raised:
        prepare.prepare_task("rendered-sst2", root=tmp_path)
    assert "huggingface-cli download clip-benchmark/wds_renderedsst2" in str(raised.value)


# Broken --from folders -------------------------------------------------------------------------


def test_from_file_is_not_folder(tmp_path, no_hub):
    archive = tmp_path / "wds.tar"
    archive.write_bytes(b"")
    with pytest.raises(TaskError, match=r"is not a folder"):
        prepare.prepare_task("cifar-10", root=tmp_path / "data", from_path=archive)


def test_from_shards_without_classnames(tmp_path, no_hub):
    copy = write_sst2(tmp_path / "copy")
    (copy / "classnames.txt").unlink()

    with pytest.raises(TaskError) as raised:
        prepare.prepare_task("rendered-sst2", root=tmp_path / "data", from_path=copy)
    message = str(raised.value)
    assert "has webdataset shards" in message
    assert "no classnames.txt" in message
    assert "--source wds" in message
    assert "download_datasets.py" not in message


def test_from_empty_folder_lists_sources(tmp_path, no_hub):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskError) as raised:
        prepare.prepare_task("cifar-10", root=tmp_path / "data", from_path=empty)
    message = str(raised.value)
    assert "has none of the layouts CIFAR-10 can be read from" in message
    assert "--source wds: a copy of clip-benchmark/wds_cifar10" in message
    assert "--source vision-datasets: ELEVATER's download with classification/cifar_10_20211007/train.txt" in message


def test_hateful_memes_detects_elevater_download(tmp_path):
    dataset = tmp_path / "elevater" / "classification" / "hateful_memes_20211014"
    dataset.mkdir(parents=True)
    (dataset / "train_meta.json").write_text("{}")
    assert prepare.detect_source(lookup("hateful-memes"), tmp_path / "elevater") == "vision-datasets"


def test_hateful_memes_empty_folder_lists_both(tmp_path):
    with pytest.raises(TaskError) as raised:
        prepare.detect_source(lookup("hateful-memes"), tmp_path)
    message = str(raised.value)
    assert "--source manual: the Hateful Memes release with train.jsonl" in message
    assert "--source vision-datasets" in message


# Errors that name the file and the fix -----------------------------------------------------------


def test_invalid_shard_count_named(tmp_path, no_hub):
    copy = write_sst2(tmp_path / "copy")
    (copy / "train" / "nshards.txt").write_text("two\n")
    with pytest.raises(TaskError, match=r"nshards.txt contains 'two', not a shard count"):
        prepare.prepare_task("rendered-sst2", root=tmp_path / "data", from_path=copy, source="wds")


def test_non_utf8_classnames_named(tmp_path, no_hub):
    copy = write_sst2(tmp_path / "copy")
    (copy / "classnames.txt").write_bytes(b"negative\n\xffpositive\n")
    with pytest.raises(TaskError, match=r"classnames.txt is not UTF-8 text"):
        prepare.prepare_task("rendered-sst2", root=tmp_path / "data", from_path=copy)


def test_non_utf8_label_member_named(tmp_path, no_hub):
    copy = write_sst2(tmp_path / "copy")
    shard = copy / "test" / "0.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (("s0000000.png", (copy / "classnames.txt").read_bytes()), ("s0000000.cls", b"\xff")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

    with pytest.raises(TaskError) as raised:
        prepare.prepare_task("rendered-sst2", root=tmp_path / "data", from_path=copy)
    message = str(raised.value)
    assert str(shard) in message
    assert "'s0000000.cls' is not UTF-8 text" in message


def test_undecodable_image_names_shard_and_key(tmp_path, no_hub):
    copy = write_sst2(tmp_path / "copy")
    shard = copy / "test" / "0.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in (("s0000000.png", b"not a png"), ("s0000000.cls", b"1"), ("s0000001.png", b"x"),
                           ("s0000001.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    task = prepare.prepare_task("rendered-sst2", root=tmp_path / "data", from_path=copy).task

    key = task.splits["test"][0].key
    with pytest.raises(ImageLoadError) as raised:
        task.image_loader(key)
    message = str(raised.value)
    assert str(shard) in message
    assert "member key 's0000000'" in message
    assert "BytesIO" not in message


def test_marker_without_source_named(tmp_path, no_hub):
    copy = write_sst2(tmp_path / "copy")
    prepared = prepare.prepare_task("rendered-sst2", root=tmp_path, from_path=copy)
    marker = json.loads(prepared.marker_path.read_text())
    del marker["source"]
    prepared.marker_path.write_text(json.dumps(marker))

    with pytest.raises(TaskError) as raised:
        registry.resolve_task("rendered-sst2", tmp_path)
    message = str(raised.value)
    assert f"{prepared.marker_path} is not a valid marker: 'source' is None" in message
    assert "run mvlpt data prepare rendered-sst2" in message


def test_root_file_named(tmp_path, no_hub, capsys):
    root_file = tmp_path / "rootfile"
    root_file.write_text("")
    assert main(["data", "prepare", "cifar-10", "--root", str(root_file)]) == 2
    message = capsys.readouterr().err
    assert f"{root_file} is a file" in message
    assert "Errno" not in message
    with pytest.raises(TaskError, match="is a file"):
        registry.resolve_task("cifar-10", root_file)


# Hints and name handling -------------------------------------------------------------------------


def test_coop_hint_consistent(tmp_path, no_hub):
    with pytest.raises(TaskError) as raised:
        prepare.prepare_task("coop:dtd", root=tmp_path)
    message = str(raised.value)
    assert ".." not in message.replace(str(tmp_path), "")
    assert "put the files in place" in message
    assert f"put the files in {tmp_path}" not in message
    assert "--source coop --from DIR" in message


def test_no_matching_classname_fails():
    spec = lookup("elevater:mnist")
    data_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with pytest.raises(TaskError, match=r"none of the 10 class names is in the table of task 'elevater:mnist'.*'airplane'"):
        match_classnames(spec, data_names, "cifar copy")


def test_spaces_around_builtin_name(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "load_builtin", lambda name, root=None: f"builtin {name}")
    assert registry.resolve_task(" mnist ", tmp_path) == "builtin mnist"
    assert registry.task_identity(" mnist") == "mnist"
