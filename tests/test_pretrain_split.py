"""Tests of the optional "pretrain" split of a Task, in memory, in CSV manifests and in training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlpt.cli import main
from mvlpt.tasks import Sample, Task, TaskError, load_csv_manifest, load_image_folder


def blank_image(key: str) -> Image.Image:
    return Image.new("RGB", (2, 2))


def task_with_splits(splits: dict[str, list[Sample]]) -> Task:
    return Task(
        name="toy",
        classnames=["a", "b"],
        templates=["a photo of a {}."],
        metric="accuracy",
        splits=splits,
        image_loader=blank_image,
    )


def write_png(path: Path, rgb: tuple[int, int, int] = (10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), rgb).save(path)


def test_task_accepts_pretrain() -> None:
    pretrain = [Sample("p", 0), Sample("q", 1)]

    task = task_with_splits({"train": [Sample("x", 0)], "test": [Sample("y", 1)], "pretrain": pretrain})

    assert task.splits["pretrain"] == pretrain


def test_task_pretrain_labels_checked() -> None:
    with pytest.raises(TaskError, match="split 'pretrain': sample 'p' has label 5"):
        task_with_splits({"train": [Sample("x", 0)], "test": [Sample("y", 1)], "pretrain": [Sample("p", 5)]})


def test_task_unknown_split_lists_pretrain() -> None:
    with pytest.raises(TaskError, match="splits must be named train, val, test, pretrain"):
        task_with_splits({"train": [Sample("x", 0)], "test": [Sample("y", 1)], "holdout": [Sample("h", 0)]})


def test_task_needs_train_beside_pretrain() -> None:
    with pytest.raises(TaskError, match="no 'train' samples"):
        task_with_splits({"test": [Sample("y", 1)], "pretrain": [Sample("p", 0)]})


def test_csv_reads_pretrain_rows(tmp_path: Path) -> None:
    for name in ("a1", "a2", "b1", "b2"):
        write_png(tmp_path / f"{name}.png")
    rows = ["a1.png,ant,train", "b1.png,bee,train", "b2.png,bee,test", "a2.png,ant,pretrain"]
    (tmp_path / "bugs.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")

    task = load_csv_manifest(tmp_path / "bugs.csv")

    assert task.splits["pretrain"] == [Sample("a2.png", 0)]


def test_csv_warns_pretrain_overlap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a1", "b1"):
        write_png(tmp_path / f"{name}.png")
    rows = ["a1.png,ant,train", "b1.png,bee,train", "b1.png,bee,test", "b1.png,bee,pretrain", "a1.png,ant,pretrain"]
    (tmp_path / "bugs.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")

    with caplog.at_level(logging.WARNING, logger="mvlpt.tasks"):
        load_csv_manifest(tmp_path / "bugs.csv")

    assert "in both 'pretrain' and 'test'" in caplog.text
    assert "in both 'pretrain' and 'train'" in caplog.text


def test_folder_ignores_pretrain_folder(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "cat" / "a.png")
    write_png(tmp_path / "test" / "cat" / "b.png")
    write_png(tmp_path / "pretrain" / "dog" / "c.png")

    task = load_image_folder(tmp_path)

    assert sorted(task.splits) == ["test", "train"]


def test_training_ignores_pretrain(tmp_path: Path, tiny_config_path: str) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 5), ("test", 2), ("pretrain", 3)):
        for name, rgb in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            for index in range(count):
                pixels = np.clip(np.array(rgb) + rng.integers(-20, 20, size=(16, 16, 3)), 0, 255)
                path = tmp_path / "images" / f"{split}-{name}-{index}.png"
                path.parent.mkdir(exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
                rows.append(f"images/{path.name},{name},{split}")
    (tmp_path / "colours.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = [
        "train", "--task", str(tmp_path / "colours.csv"), "--method", "coop",
        "--model", tiny_config_path, "--pretrained", "null", "--shots", "2", "--epochs", "2",
        "--output-dir", str(out), "train.batch_size=4", "train.precision=fp32", "prompt.coop.n_ctx=2",
    ]

    assert main(args) == 0

    fewshot = json.loads((out / "fewshot" / "colours.json").read_text())
    chosen = [sample["key"] for sample in fewshot["train"] + fewshot["val"]]
    assert all(key.startswith("images/train-") for key in chosen)
