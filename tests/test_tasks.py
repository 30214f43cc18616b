from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from PIL import Image

from mvlpt.tasks import (
    DEFAULT_TEMPLATES,
    ImageLoadError,
    Sample,
    Task,
    TaskError,
    load_csv_manifest,
    load_image_folder,
)


def write_png(path: Path, color: tuple[int, int, int] = (10, 20, 30), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), color).save(path)


def make_folder_task(root: Path) -> Path:
    """Create train/ (3 classes), val/ and test/ folders with tiny PNGs."""
    for name, count in (("golden_retriever", 3), ("cat", 2), ("zebra", 1)):
        for index in range(count):
            write_png(root / "train" / name / f"img{index}.png")
    write_png(root / "val" / "cat" / "v0.png")
    write_png(root / "test" / "cat" / "t0.PNG")
    write_png(root / "test" / "zebra" / "t1.jpg")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def minimal_task(**overrides: object) -> Task:
    fields: dict[str, object] = {
        "name": "toy",
        "classnames": ["a", "b"],
        "templates": ["a photo of a {}."],
        "metric": "accuracy",
        "splits": {"train": [Sample("x", 0), Sample("y", 1)], "test": [Sample("z", 1)]},
        "image_loader": lambda key: Image.new("RGB", (2, 2)),
    }
    fields.update(overrides)
    return Task(**fields)  # type: ignore[arg-type]


# Task validation


def test_task_num_classes() -> None:
    assert minimal_task().num_classes == 2


def test_task_duplicate_classnames_rejected() -> None:
    with pytest.raises(TaskError, match="'a' more than once"):
        minimal_task(classnames=["a", "a"])


def test_task_empty_classnames_rejected() -> None:
    with pytest.raises(TaskError, match="no classes"):
        minimal_task(classnames=[])


@pytest.mark.parametrize("template", ["a photo", "{} and {}", "a {0} photo {}", "a {}} photo"])
def test_task_bad_template_rejected(template: str) -> None:
    with pytest.raises(TaskError, match="exactly once"):
        minimal_task(templates=[template])


def test_task_unknown_metric_rejected() -> None:
    with pytest.raises(TaskError, match="unknown metric 'top5'"):
        minimal_task(metric="top5")


def test_task_label_out_of_range_rejected() -> None:
    splits = {"train": [Sample("x", 2)], "test": [Sample("z", 1)]}
    with pytest.raises(TaskError, match="label 2, outside 0..1"):
        minimal_task(splits=splits)


def test_task_missing_test_split_rejected() -> None:
    with pytest.raises(TaskError, match="no 'test' samples"):
        minimal_task(splits={"train": [Sample("x", 0)]})


def test_task_unknown_split_rejected() -> None:
    splits = {"train": [Sample("x", 0)], "test": [Sample("z", 1)], "holdout": []}
    with pytest.raises(TaskError, match="holdout"):
        minimal_task(splits=splits)


def test_task_duplicate_key_rejected() -> None:
    splits = {"train": [Sample("x", 0), Sample("x", 1)], "test": [Sample("z", 1)]}
    with pytest.raises(TaskError, match="'x' occurs more than once"):
        minimal_task(splits=splits)


def test_default_templates_valid() -> None:
    assert 4 <= len(DEFAULT_TEMPLATES) <= 8
    for template in DEFAULT_TEMPLATES:
        assert template.count("{}") == 1


# Image folder


def test_image_folder_classes(tmp_path: Path) -> None:
    task = load_image_folder(make_folder_task(tmp_path / "pets"))

    assert task.name == "pets"
    assert task.classnames == ["cat", "golden retriever", "zebra"]
    assert task.templates == DEFAULT_TEMPLATES
    assert task.metric == "accuracy"


def test_image_folder_splits(tmp_path: Path) -> None:
    task = load_image_folder(make_folder_task(tmp_path / "pets"))

    assert sorted(task.splits) == ["test", "train", "val"]
    assert task.splits["train"] == [
        Sample("train/cat/img0.png", 0),
        Sample("train/cat/img1.png", 0),
        Sample("train/golden_retriever/img0.png", 1),
        Sample("train/golden_retriever/img1.png", 1),
        Sample("train/golden_retriever/img2.png", 1),
        Sample("train/zebra/img0.png", 2),
    ]
    assert task.splits["val"] == [Sample("val/cat/v0.png", 0)]
    assert task.splits["test"] == [Sample("test/cat/t0.PNG", 0), Sample("test/zebra/t1.jpg", 2)]


def test_image_folder_load_image(tmp_path: Path) -> None:
    task = load_image_folder(make_folder_task(tmp_path / "pets"))

    image = task.load_image("train/cat/img0.png")

    assert image.mode == "RGB"
    assert image.size == (8, 6)
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_image_folder_alpha_on_white(tmp_path: Path) -> None:
    root = make_folder_task(tmp_path / "pets")
    write_png(root / "train" / "cat" / "clear.png", color=(0, 0, 0, 0), mode="RGBA")  # type: ignore[arg-type]
    task = load_image_folder(root)

    image = task.load_image("train/cat/clear.png")

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_image_folder_options(tmp_path: Path) -> None:
    task = load_image_folder(
        make_folder_task(tmp_path / "pets"), name="my pets", templates=["art of {}."], metric="mean_per_class_accuracy"
    )

    assert task.name == "my pets"
    assert task.templates == ["art of {}."]
    assert task.metric == "mean_per_class_accuracy"


def test_image_folder_task_pickles(tmp_path: Path) -> None:
    task = load_image_folder(make_folder_task(tmp_path / "pets"))

    restored = pickle.loads(pickle.dumps(task))

    assert restored.load_image("train/zebra/img0.png").size == (8, 6)


def test_image_folder_unknown_test_class(tmp_path: Path) -> None:
    root = make_folder_task(tmp_path / "pets")
    write_png(root / "test" / "hamster" / "h.png")

    with pytest.raises(TaskError, match="hamster"):
        load_image_folder(root)


def test_image_folder_missing_test(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_png(root / "train" / "cat" / "a.png")

    with pytest.raises(TaskError, match="no 'test' folder") as raised:
        load_image_folder(root)

    assert "root/test/<class>/<image>" in str(raised.value)


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        load_image_folder(tmp_path / "absent")


def test_image_folder_empty_class(tmp_path: Path) -> None:
    root = make_folder_task(tmp_path / "pets")
    (root / "train" / "empty_class").mkdir()

    with pytest.raises(TaskError, match="empty_class contains no image files"):
        load_image_folder(root)


def test_image_folder_unreadable_image(tmp_path: Path) -> None:
    root = make_folder_task(tmp_path / "pets")
    (root / "train" / "cat" / "broken.png").write_bytes(b"this is not a png file")
    task = load_image_folder(root)

    with pytest.raises(ImageLoadError) as raised:
        task.load_image("train/cat/broken.png")

    assert "broken.png" in str(raised.value)
    assert "check the file or remove it" in str(raised.value)


def test_image_folder_truncated_image(tmp_path: Path) -> None:
    root = make_folder_task(tmp_path / "pets")
    good = root / "train" / "cat" / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    task = load_image_folder(root)

    with pytest.raises(ImageLoadError, match="big.png"):
        task.load_image("train/cat/big.png")


def test_image_folder_missing_image(tmp_path: Path) -> None:
    task = load_image_folder(make_folder_task(tmp_path / "pets"))

    with pytest.raises(ImageLoadError, match="gone.png"):
        task.load_image("train/cat/gone.png")


# CSV manifest


def make_csv_task(root: Path, rows: list[str]) -> Path:
    for name in ("img/a1.png", "img/a2.png", "img/b1.png", "img/b2.png", "img/c1.png"):
        write_png(root / name)
    csv_path = root / "manifest.csv"
    csv_path.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return csv_path


BASE_ROWS = [
    "img/b1.png,bee,train",
    "img/a1.png,ant,train",
    "img/a2.png,ant,val",
    "img/b2.png,bee,test",
]


def test_csv_loads(tmp_path: Path) -> None:
    task = load_csv_manifest(make_csv_task(tmp_path, BASE_ROWS))

    assert task.name == "manifest"
    assert task.classnames == ["ant", "bee"]
    assert task.splits["train"] == [Sample("img/b1.png", 1), Sample("img/a1.png", 0)]
    assert task.splits["val"] == [Sample("img/a2.png", 0)]
    assert task.splits["test"] == [Sample("img/b2.png", 1)]


def test_csv_load_image(tmp_path: Path) -> None:
    task = load_csv_manifest(make_csv_task(tmp_path, BASE_ROWS))

    assert task.load_image("img/a1.png").size == (8, 6)


def test_csv_absolute_path_inside_root(tmp_path: Path) -> None:
    rows = BASE_ROWS + [f"{tmp_path / 'img' / 'c1.png'},bee,test"]
    task = load_csv_manifest(make_csv_task(tmp_path, rows))

    assert Sample("img/c1.png", 1) in task.splits["test"]


def test_csv_absolute_path_outside_root(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "x.png"
    write_png(outside)
    rows = BASE_ROWS + [f"{outside},ant,test"]
    task = load_csv_manifest(make_csv_task(tmp_path / "data", rows))

    assert Sample(outside.as_posix(), 0) in task.splits["test"]
    assert task.load_image(outside.as_posix()).size == (8, 6)


def test_csv_sidecar_fixes_order(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, BASE_ROWS)
    (tmp_path / "manifest.classes.txt").write_text("bee\nant\n\nwasp\n")

    task = load_csv_manifest(csv_path)

    assert task.classnames == ["bee", "ant", "wasp"]
    assert task.splits["train"] == [Sample("img/b1.png", 0), Sample("img/a1.png", 1)]


def test_csv_sidecar_unknown_label(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, BASE_ROWS)
    (tmp_path / "manifest.classes.txt").write_text("bee\n")

    with pytest.raises(TaskError, match="line 3: unknown label 'ant'") as raised:
        load_csv_manifest(csv_path)

    assert "bee" in str(raised.value)


def test_csv_unknown_test_label(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, BASE_ROWS + ["img/c1.png,cricket,test"])

    with pytest.raises(TaskError, match="line 6: unknown label 'cricket'") as raised:
        load_csv_manifest(csv_path)

    assert "ant, bee" in str(raised.value)


def test_csv_missing_file(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, BASE_ROWS + ["img/missing.png,ant,test"])

    with pytest.raises(TaskError, match="line 6: image file .*missing.png not found"):
        load_csv_manifest(csv_path)


def test_csv_unknown_split(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, BASE_ROWS + ["img/c1.png,ant,holdout"])

    with pytest.raises(TaskError, match="line 6: unknown split 'holdout'"):
        load_csv_manifest(csv_path)


def test_csv_missing_column(tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,label\nimg/a1.png,ant\n")

    with pytest.raises(TaskError, match="line 1: header is missing column.*split"):
        load_csv_manifest(csv_path)


def test_csv_duplicate_row(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, BASE_ROWS + ["img/a1.png,ant,train"])

    with pytest.raises(TaskError, match="line 6: 'img/a1.png' is already listed in split 'train' on line 3"):
        load_csv_manifest(csv_path)


def test_csv_no_train_rows(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, ["img/a1.png,ant,test"])

    with pytest.raises(TaskError, match="no rows with split 'train'"):
        load_csv_manifest(csv_path)


def test_csv_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        load_csv_manifest(tmp_path / "absent.csv")


def test_csv_header_bom_and_spaces(tmp_path: Path) -> None:
    csv_path = make_csv_task(tmp_path, BASE_ROWS)
    csv_path.write_text("\ufeffPath, Label ,SPLIT\n" + "\n".join(BASE_ROWS) + "\n\n", encoding="utf-8")

    task = load_csv_manifest(csv_path)

    assert task.classnames == ["ant", "bee"]
