from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlpt.datasets.catalog import TaskSpec, lookup
from mvlpt.datasets.hateful_memes import LICENCE_PAGE, load_hateful_memes
from mvlpt.tasks import TaskError


def make_spec(classnames: list[str] | None = None) -> TaskSpec:
    return TaskSpec(
        name="hateful-memes",
        title="Hateful Memes",
        suite="elevater",
        aliases=("hateful-memes",),
        classnames=classnames or ["meme", "hatespeech meme"],
        templates=["a {}."],
        metric="roc_auc",
        multilabel=False,
        table_source="test table",
        wds_repo=None,
        coop_dir=None,
    )


SPEC = make_spec()


def write_memes(folder: Path, file_name: str, first_id: int, labels: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for offset, label in enumerate(labels):
        meme_id = first_id + offset
        path = folder / "img" / f"{meme_id:05d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (6, 4), (label * 200, 50, 50)).save(path)
        lines.append(json.dumps({"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": label, "text": "words"}))
    (folder / file_name).write_text("\n".join(lines) + "\n")


def make_release(folder: Path, test_file: str = "dev_seen.jsonl") -> Path:
    write_memes(folder, "train.jsonl", 10000, [0, 1, 0, 1, 1])
    write_memes(folder, test_file, 20000, [1, 0, 0])
    return folder


def test_release_loads(tmp_path: Path) -> None:
    folder = make_release(tmp_path / "hm")
    task = load_hateful_memes(folder, SPEC)

    assert task.name == "hateful-memes"
    assert task.classnames == ["meme", "hatespeech meme"]
    assert task.metric == "roc_auc"
    assert sorted(task.splits) == ["test", "train"]
    assert [sample.label for sample in task.splits["train"]] == [0, 1, 0, 1, 1]
    assert task.splits["test"][0].key == "img/20000.png"
    pixels = np.asarray(task.load_image("img/20000.png"))
    assert tuple(pixels[0, 0]) == (200, 50, 50)


def test_first_release_dev_file_used(tmp_path: Path) -> None:
    folder = make_release(tmp_path / "hm", test_file="dev.jsonl")
    task = load_hateful_memes(folder, SPEC)
    assert len(task.splits["test"]) == 3


def test_parent_folder_searched(tmp_path: Path) -> None:
    make_release(tmp_path / "hateful_memes")
    task = load_hateful_memes(tmp_path, SPEC)
    assert task.source == str(tmp_path / "hateful_memes")


def test_task_pickles(tmp_path: Path) -> None:
    task = load_hateful_memes(make_release(tmp_path / "hm"), SPEC)
    restored = pickle.loads(pickle.dumps(task))
    assert restored.load_image("img/10001.png").size == (6, 4)


def test_missing_download_names_licence_and_files(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as raised:
        load_hateful_memes(tmp_path, SPEC)

    message = str(raised.value)
    assert LICENCE_PAGE in message
    assert f"not found in {tmp_path}: train.jsonl" in message
    assert "img/" in message
    assert "dev_seen.jsonl" in message
    assert f"directly in {tmp_path}" in message


def test_missing_dev_file_and_images_named(tmp_path: Path) -> None:
    folder = tmp_path / "hm"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"id": 1, "img": "img/00001.png", "label": 0}) + "\n")

    with pytest.raises(TaskError, match=f"not found in {folder}: dev_seen.jsonl, img/"):
        load_hateful_memes(folder, SPEC)


def test_missing_image_rejected(tmp_path: Path) -> None:
    folder = make_release(tmp_path / "hm")
    (folder / "img" / "10003.png").unlink()
    with pytest.raises(TaskError, match=f"1 of 8 memes .* have no image, e.g. {folder / 'img' / '10003.png'}"):
        load_hateful_memes(folder, SPEC)


@pytest.mark.parametrize("label", [None, 2, True, 1.0])
def test_invalid_label_rejected(tmp_path: Path, label: object) -> None:
    folder = make_release(tmp_path / "hm")
    with (folder / "dev_seen.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": 5, "img": "img/20000.png", "label": label}) + "\n")

    with pytest.raises(TaskError, match="dev_seen.jsonl, line 4: label .* is not 0 \\(not hateful\\) or 1"):
        load_hateful_memes(folder, SPEC)


def test_invalid_json_rejected(tmp_path: Path) -> None:
    folder = make_release(tmp_path / "hm")
    with (folder / "train.jsonl").open("a") as handle:
        handle.write("{broken\n")
    with pytest.raises(TaskError, match="train.jsonl, line 6: invalid JSON"):
        load_hateful_memes(folder, SPEC)


def test_three_class_spec_rejected(tmp_path: Path) -> None:
    spec = make_spec(["a", "b", "c"])
    with pytest.raises(TaskError, match="has 3 classes, but Hateful Memes has 2"):
        load_hateful_memes(make_release(tmp_path / "hm"), spec)


def test_catalog_entry_loads(tmp_path: Path) -> None:
    spec = lookup("hateful-memes")
    task = load_hateful_memes(make_release(tmp_path / "hm"), spec)

    assert task.name == "hateful-memes"
    assert task.metric == "roc_auc"
    assert task.classnames == spec.classnames
