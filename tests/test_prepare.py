"""`mvlpt data prepare`, prepared tasks in resolve_task, and the catalog in `mvlpt data list`.

Nothing here reaches the network: HF_HUB_OFFLINE stops the download before
the hub client runs, and elsewhere snapshot_download is replaced by a mock.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest

from mvlpt.builtin import resolve_task
from mvlpt.cli import main
from mvlpt.datasets import prepare
from mvlpt.datasets.catalog import lookup
from mvlpt.tasks import TaskError
from wds_fixture import write_wds_repository

SST2_LABELS = {"train": [0, 1, 0, 1, 0, 1, 0, 1], "test": [1, 0, 1, 0]}


@pytest.fixture()
def sst2_repo(tmp_path):
    """A local copy of clip-benchmark/wds_renderedsst2 in miniature: 8 training and 4 test images."""
    return write_wds_repository(tmp_path / "wds_renderedsst2", ["negative", "positive"], SST2_LABELS)


@pytest.fixture()
def no_hub(monkeypatch):
    """Fail the test if the hub client is asked to download."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fail_download(*args, **kwargs):
        raise AssertionError("snapshot_download was called")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail_download)


def test_offline_prepare_names_repo_and_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: pytest.fail("download attempted"))

    assert main(["data", "prepare", "cifar-10", "--root", str(tmp_path)]) == 2

    message = capsys.readouterr().err
    assert "clip-benchmark/wds_cifar10" in message
    assert "HF_HUB_OFFLINE" in message
    assert "mvlpt data prepare cifar-10 --from DIR" in message
    assert "hf download clip-benchmark/wds_cifar10 --repo-type dataset" in message
    assert not (tmp_path / "benchmarks" / "elevater" / "cifar-10" / prepare.MARKER_FILE).exists()


def test_connection_error_names_repo_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def unreachable(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)

    with pytest.raises(TaskError) as raised:
        prepare.prepare_task("cifar-100", root=tmp_path)

    message = str(raised.value)
    assert "cannot download dataset repository clip-benchmark/wds_vtab-cifar100" in message
    assert "Failed to resolve 'huggingface.co'" in message
    assert "mvlpt data prepare cifar-100 --from DIR" in message
    assert calls[0]["repo_id"] == "clip-benchmark/wds_vtab-cifar100"
    assert calls[0]["repo_type"] == "dataset"
    assert calls[0]["local_dir"] == tmp_path / "benchmarks" / "elevater" / "cifar-100"


def test_download_into_prepared_folder(tmp_path, monkeypatch, sst2_repo):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fake_download(repo_id, repo_type, local_dir, allow_patterns):
        write_wds_repository(local_dir, ["negative", "positive"], SST2_LABELS)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    prepared = prepare.prepare_task("rendered-sst2", root=tmp_path)

    folder = tmp_path / "benchmarks" / "elevater" / "rendered-sst2"
    marker = json.loads((folder / prepare.MARKER_FILE).read_text())
    assert marker["data"] == prepare.IN_FOLDER
    assert marker["source"] == "wds"
    assert prepared.data_path == folder.resolve()

    task = resolve_task("rendered-sst2", tmp_path)
    assert {split: len(samples) for split, samples in task.splits.items()} == {"train": 8, "test": 4}


def test_prepare_from_local_copy_then_resolve(tmp_path, sst2_repo, no_hub, capsys):
    root = tmp_path / "data"
    assert main(["data", "prepare", "rendered-sst2", "--root", str(root), "--from", str(sst2_repo)]) == 0
    printed = capsys.readouterr().out
    assert "2 classes; train 8, test 4 images" in printed

    marker_path = root / "benchmarks" / "elevater" / "rendered-sst2" / prepare.MARKER_FILE
    marker = json.loads(marker_path.read_text())
    assert marker["source"] == "wds"
    assert marker["data"] == str(sst2_repo.resolve())
    assert marker["num_classes"] == 2
    assert marker["images"] == {"train": 8, "test": 4}

    task = resolve_task("rendered-sst2", root)
    spec = lookup("rendered-sst2")
    assert task.name == "rendered-sst2"
    assert task.classnames == ["negative", "positive"]
    assert task.templates == spec.templates
    assert [sample.label for sample in task.splits["test"]] == SST2_LABELS["test"]
    assert task.load_image(task.splits["train"][0].key).size == (8, 8)
    assert resolve_task("elevater:renderedsst2", root).name == "rendered-sst2"


def test_prepared_task_trains_one_epoch(tmp_path, sst2_repo, tiny_config_path, no_hub):
    root = tmp_path / "data"
    assert main(["data", "prepare", "renderedsst2", "--root", str(root), "--from", str(sst2_repo)]) == 0

    out = tmp_path / "run"
    args = [
        "train",
        "--task", "rendered-sst2",
        "--data-root", str(root),
        "--method", "coop",
        "--model", tiny_config_path,
        "--pretrained", "null",
        "--shots", "2",
        "--epochs", "1",
        "--output-dir", str(out),
        "train.batch_size=4",
        "train.precision=fp32",
        "train.warmup_epochs=0",
        "prompt.coop.n_ctx=4",
    ]
    assert main(args) == 0

    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["per_task"]["rendered-sst2"]["test"]["accuracy"] <= 100.0
    assert (out / "fewshot" / "rendered-sst2.json").is_file()


def test_unprepared_task_names_prepare_command(tmp_path):
    with pytest.raises(TaskError, match=rf"mvlpt data prepare coop:dtd --root {tmp_path} --from DIR"):
        resolve_task("coop:dtd", tmp_path)
    with pytest.raises(TaskError, match=rf"mvlpt data prepare cifar-10 --root {tmp_path}$"):
        resolve_task("cifar10", tmp_path)


def test_bare_mnist_stays_builtin(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(prepare, "load_prepared", lambda *args: called.append(args))
    with pytest.raises(TaskError):
        resolve_task("mnist", tmp_path)
    assert not called

    monkeypatch.undo()
    with pytest.raises(TaskError, match="mvlpt data prepare elevater:mnist"):
        resolve_task("elevater:mnist", tmp_path)


def test_moved_data_named(tmp_path, sst2_repo, no_hub):
    root = tmp_path / "data"
    prepare.prepare_task("rendered-sst2", root=root, from_path=sst2_repo)
    sst2_repo.rename(tmp_path / "moved")
    with pytest.raises(TaskError, match="is gone; if it moved, prepare it again with: mvlpt data prepare rendered-sst2") as raised:
        resolve_task("rendered-sst2", root)
    assert "--from NEW_LOCATION --source wds" in str(raised.value)


def test_failed_check_writes_no_marker(tmp_path, no_hub):
    wrong = write_wds_repository(tmp_path / "wrong", ["a", "b", "c"], {"train": [0], "test": [1]})
    with pytest.raises(TaskError, match="3 classes"):
        prepare.prepare_task("rendered-sst2", root=tmp_path, from_path=wrong)
    assert prepare.read_marker(lookup("rendered-sst2"), tmp_path) is None


def test_source_checks(tmp_path, sst2_repo, no_hub):
    with pytest.raises(TaskError, match="cannot be read from source 'coop'"):
        prepare.prepare_task("rendered-sst2", root=tmp_path, source="coop", from_path=sst2_repo)
    with pytest.raises(TaskError, match=r"--from .*not found"):
        prepare.prepare_task("rendered-sst2", root=tmp_path, from_path=tmp_path / "absent")


def test_manual_source_without_files_says_where(tmp_path, no_hub):
    with pytest.raises(TaskError) as raised:
        prepare.prepare_task("hateful-memes", root=tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "benchmarks" / "elevater" / "hateful-memes") in message
    assert "--source manual --from DIR" in message


def test_read_only_copy_keeps_index_in_prepared_folder(tmp_path, sst2_repo, no_hub, monkeypatch):
    root = tmp_path / "data"
    real_access = prepare.os.access
    monkeypatch.setattr(prepare.os, "access", lambda path, mode: False if path == sst2_repo.resolve() else real_access(path, mode))
    prepare.prepare_task("rendered-sst2", root=root, from_path=sst2_repo)
    assert (root / "benchmarks" / "elevater" / "rendered-sst2" / "mvlpt-wds-index.json").is_file()
    assert not (sst2_repo / "mvlpt-wds-index.json").exists()


def test_data_list_shows_catalog(tmp_path, sst2_repo, no_hub, capsys):
    prepare.prepare_task("rendered-sst2", root=tmp_path, from_path=sst2_repo)
    capsys.readouterr()

    assert main(["data", "list", "--data-root", str(tmp_path)]) == 0

    printed = capsys.readouterr().out
    assert "rendered-sst2: Rendered SST-2, elevater, 2 classes, metric accuracy, sources wds, vision-datasets" in printed
    assert "prepared from wds" in printed
    assert "train 8, test 4 images" in printed
    assert "voc-2007: VOC 2007 classification, elevater, 20 classes, metric map_11point" in printed
    assert f"not prepared; prepare with: mvlpt data prepare coop:caltech-101 --root {tmp_path} --from DIR" in printed
    assert "elevater:mnist: MNIST" in printed


def test_prepare_coop_folder_then_resolve(tmp_path, no_hub):
    """`--source coop` reaches CoOp's reader: a miniature EuroSAT folder with its split file."""
    from PIL import Image

    spec = lookup("coop:eurosat")
    dataset = tmp_path / "coop_data" / "eurosat"
    split = {"train": [], "val": [], "test": []}
    for label, classname in enumerate(spec.classnames):
        folder = dataset / "2750" / f"Class{label}"
        folder.mkdir(parents=True)
        for index, split_name in enumerate(("train", "train", "val", "test")):
            Image.new("RGB", (8, 8), (label * 20, index * 40, 0)).save(folder / f"{index}.jpg")
            split[split_name].append([f"Class{label}/{index}.jpg", label, classname])
    (dataset / "split_zhou_EuroSAT.json").write_text(json.dumps(split))

    root = tmp_path / "data"
    prepared = prepare.prepare_task("coop:eurosat", root=root, from_path=tmp_path / "coop_data")
    assert prepared.source == "coop"

    task = resolve_task("coop:eurosat", root)
    assert task.name == "coop:eurosat"
    assert task.metric == "accuracy"
    assert {name: len(samples) for name, samples in task.splits.items()} == {"train": 20, "val": 10, "test": 10}
    assert task.classnames == spec.classnames


def test_relative_root_marks_data_in_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fake_download(repo_id, repo_type, local_dir, allow_patterns):
        write_wds_repository(local_dir, ["negative", "positive"], SST2_LABELS)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    prepare.prepare_task("rendered-sst2", root=Path("data"))

    marker = prepare.read_marker(lookup("rendered-sst2"), tmp_path / "data")
    assert marker["data"] == prepare.IN_FOLDER
