from __future__ import annotations

import io
import json
import logging
import multiprocessing
import pickle
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlpt.datasets.catalog import TaskSpec, lookup
from mvlpt.datasets.vision_datasets import (
    ELEVATER_LAYOUTS,
    VisionDatasetsImageLoader,
    load_vision_datasets,
    split_archive_key,
)
from mvlpt.tasks import ImageLoadError, TaskError

COLORS = {0: (200, 10, 10), 1: (10, 200, 10), 2: (10, 10, 200)}


def make_spec(name: str, classnames: list[str], *, aliases: tuple[str, ...] = (), metric: str = "accuracy",
              multilabel: bool = False) -> TaskSpec:
    return TaskSpec(
        name=name,
        title=name.upper(),
        suite="elevater",
        aliases=aliases,
        classnames=classnames,
        templates=["a photo of a {}."],
        metric=metric,
        multilabel=multilabel,
        table_source="test table",
        wds_repo=None,
        coop_dir=None,
    )


CIFAR_SPEC = make_spec("cifar-10", ["airplane", "automobile", "bird"])


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color))


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def make_iris_files(folder: Path) -> Path:
    """CIFAR-10-style iris dataset of plain image files: 2 train images per class, 1 test image per class."""
    write_lines(folder / "labels.txt", ["airplane", "automobile", "bird"])
    train, test = [], []
    for label, color in COLORS.items():
        for index in range(2):
            write_png(folder / "train" / f"c{label} {index}.png", color)
            train.append(f"train/c{label} {index}.png {label}")
        write_png(folder / "test" / f"c{label}.png", color)
        test.append(f"test/c{label}.png {label}")
    write_lines(folder / "train.txt", train)
    write_lines(folder / "test.txt", test)
    return folder


def make_zipped_iris_files(folder: Path) -> Path:
    """The CIFAR-10-style dataset with its images inside train.zip and val.zip, as ELEVATER ships it."""
    folder.mkdir(parents=True)
    write_lines(folder / "labels.txt", ["airplane", "automobile", "bird"])
    train, test = [], []
    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        for label, color in COLORS.items():
            for index in range(2):
                archive.writestr(f"images/{label}_{index}.png", png_bytes(color))
                train.append(f"train.zip@images/{label}_{index}.png {label}")
    with zipfile.ZipFile(folder / "val.zip", "w") as archive:
        for label, color in COLORS.items():
            archive.writestr(f"{label}.png", png_bytes(color))
            test.append(f"val.zip@{label}.png {label}")
    write_lines(folder / "train.txt", train)
    write_lines(folder / "test.txt", test)
    return folder


def pixel(image: Image.Image) -> tuple[int, int, int]:
    return tuple(np.asarray(image)[0, 0].tolist())


# The registry table


def test_layouts_cover_twenty_datasets() -> None:
    assert len(ELEVATER_LAYOUTS) == 20
    for layout in ELEVATER_LAYOUTS.values():
        assert "train" in layout.index_files
        assert "test" in layout.index_files
        assert (layout.labelmap is None) == (layout.index_format == "coco")


def test_only_voc_is_multilabel() -> None:
    multilabel = [name for name, layout in ELEVATER_LAYOUTS.items() if layout.multilabel]
    assert multilabel == ["voc-2007-classification"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("train.zip@images/a.png", ("train.zip", "images/a.png")),
        ("sub/Train.ZIP@a@b.png", ("sub/Train.ZIP", "a@b.png")),
        ("images/user@host.png", None),
    ],
)
def test_split_archive_key(key: str, expected: tuple[str, str] | None) -> None:
    assert split_archive_key(key) == expected


# Iris format


def test_iris_plain_files_load(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar_10_20211007")
    task = load_vision_datasets(folder, CIFAR_SPEC)

    assert task.name == "cifar-10"
    assert task.classnames == ["airplane", "automobile", "bird"]
    assert task.templates == ["a photo of a {}."]
    assert len(task.splits["train"]) == 6
    assert len(task.splits["test"]) == 3
    assert "val" not in task.splits
    assert [sample.label for sample in task.splits["test"]] == [0, 1, 2]
    assert task.splits["train"][0].key == "train/c0 0.png"
    assert pixel(task.load_image("test/c2.png")) == COLORS[2]


def test_iris_zip_images_load(tmp_path: Path) -> None:
    folder = make_zipped_iris_files(tmp_path / "cifar")
    task = load_vision_datasets(folder, CIFAR_SPEC)

    assert len(task.splits["train"]) == 6
    assert task.splits["test"][1].key == "val.zip@1.png"
    for sample in task.splits["train"]:
        assert pixel(task.load_image(sample.key)) == COLORS[sample.label]


def test_download_folder_is_searched(tmp_path: Path) -> None:
    make_iris_files(tmp_path / "classification" / "cifar_10_20211007")
    task = load_vision_datasets(tmp_path, CIFAR_SPEC)
    assert task.source == str(tmp_path / "classification" / "cifar_10_20211007")


def test_alias_selects_layout(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "eurosat_clip_20210930")
    spec = make_spec("eurosat", ["airplane", "automobile", "bird"], aliases=("vtab/eurosat", "eurosat_clip"))
    assert load_vision_datasets(folder, spec).name == "eurosat"


def test_elevater_name_selects_layout(tmp_path: Path) -> None:
    make_iris_files(tmp_path / "classification" / "eurosat_clip_20210930")
    spec = replace(make_spec("eurosat", ["airplane", "automobile", "bird"]), elevater_name="eurosat_clip")
    assert load_vision_datasets(tmp_path, spec).num_classes == 3


def test_optional_val_split_read(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "dtd")
    write_lines(folder / "val.txt", ["train/c0 1.png 0"])
    spec = make_spec("dtd", ["airplane", "automobile", "bird"])

    task = load_vision_datasets(folder, spec)

    assert [sample.key for sample in task.splits["val"]] == ["train/c0 1.png"]


def test_missing_optional_val_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_iris_files(tmp_path / "dtd")
    spec = make_spec("dtd", ["airplane", "automobile", "bird"])

    with caplog.at_level(logging.WARNING):
        task = load_vision_datasets(folder, spec)

    assert "val" not in task.splits
    assert "val.txt not found" in caplog.text


def test_labelmap_order_kept_with_table_spelling(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    write_lines(folder / "labels.txt", ["Bird", "air_plane", "automobile"])
    spec = make_spec("cifar-10", ["air plane", "automobile", "bird"])

    task = load_vision_datasets(folder, spec)

    assert task.classnames == ["bird", "air plane", "automobile"]
    assert task.splits["test"][0].label == 0


def test_unknown_names_use_labelmap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    write_lines(folder / "labels.txt", ["plane_a", "car", "bird"])

    with caplog.at_level(logging.WARNING):
        task = load_vision_datasets(folder, CIFAR_SPEC)

    assert task.classnames == ["plane a", "car", "bird"]
    assert "2 of 3 class names are not in the table" in caplog.text


def test_class_count_mismatch_rejected(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    spec = make_spec("cifar-10", ["airplane", "automobile", "bird", "cat"])
    with pytest.raises(TaskError, match="defines 3 classes, but task 'cifar-10' has 4"):
        load_vision_datasets(folder, spec)


def test_label_outside_labelmap_rejected(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    write_lines(folder / "test.txt", ["test/c0.png 0", "test/c1.png 3"])
    with pytest.raises(TaskError, match=r"test.txt, line 2: label 3 is outside 0..2"):
        load_vision_datasets(folder, CIFAR_SPEC)


def test_invalid_label_text_rejected(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    write_lines(folder / "test.txt", ["test/c0.png airplane"])
    with pytest.raises(TaskError, match=r"line 1: invalid label indices 'airplane'"):
        load_vision_datasets(folder, CIFAR_SPEC)


def test_several_labels_rejected_when_single_label(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    write_lines(folder / "test.txt", ["test/c0.png 0,2"])
    with pytest.raises(TaskError, match="has labels \\[0, 2\\], but task 'cifar-10' is single-label"):
        load_vision_datasets(folder, CIFAR_SPEC)


# Multi-label


def test_multilabel_lines_load(tmp_path: Path) -> None:
    folder = tmp_path / "voc"
    write_lines(folder / "labels.txt", ["aeroplane", "bicycle", "bird"])
    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        for index in range(3):
            archive.writestr(f"JPEGImages/{index}.png", png_bytes(COLORS[index]))
    write_lines(folder / "train_ic.txt", ["train.zip@JPEGImages/0.png 2,0", "train.zip@JPEGImages/1.png 1"])
    write_lines(folder / "val_ic.txt", ["train.zip@JPEGImages/2.png 0,1,2"])
    with zipfile.ZipFile(folder / "test.zip", "w") as archive:
        archive.writestr("t.png", png_bytes(COLORS[0]))
    write_lines(folder / "test_ic.txt", ["test.zip@t.png 1,2,1"])
    spec = make_spec(
        "voc-2007", ["aeroplane", "bicycle", "bird"], aliases=("voc-2007-classification",),
        metric="map_11point", multilabel=True,
    )

    task = load_vision_datasets(folder, spec)

    assert task.multilabel
    first, second = task.splits["train"]
    assert (first.label, first.other_labels) == (0, (2,))
    assert (second.label, second.other_labels) == (1, ())
    assert task.splits["val"][0].labels == (0, 1, 2)
    assert task.splits["test"][0].labels == (1, 2)
    assert pixel(task.load_image("train.zip@JPEGImages/2.png")) == COLORS[2]


# Coco format


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


KITTI_CATEGORIES = [
    {"id": 3, "name": "a car far away"},
    {"id": 1, "name": "a car very close"},
    {"id": 2, "name": "a car nearby"},
]
KITTI_SPEC = make_spec(
    "kitti-distance", ["a car very close", "a car nearby", "a car far away"], aliases=("kitti-distance",)
)


def make_coco_files(folder: Path) -> Path:
    """KITTI-distance-style coco dataset: category ids from 1 and out of order, zip named in either field."""
    folder.mkdir(parents=True)
    for split_name, count in (("train", 3), ("validation", 1), ("test", 2)):
        archive_name = f"{split_name}_images.zip"
        with zipfile.ZipFile(folder / archive_name, "w") as archive:
            for index in range(count):
                archive.writestr(f"{index}.png", png_bytes(COLORS[index % 3]))

        images = []
        for index in range(count):
            if index % 2:
                images.append({"id": index + 1, "file_name": f"{archive_name}@{index}.png"})
            else:
                images.append({"id": index + 1, "file_name": f"{index}.png", "zip_file": archive_name})
        annotations = [{"id": index + 1, "image_id": index + 1, "category_id": index % 3 + 1} for index in range(count)]
        write_coco(folder / f"{split_name}_meta.json", images, annotations, KITTI_CATEGORIES)
    return folder


def test_coco_manifest_loads(tmp_path: Path) -> None:
    folder = make_coco_files(tmp_path / "kitti")
    task = load_vision_datasets(folder, KITTI_SPEC)

    assert task.classnames == ["a car very close", "a car nearby", "a car far away"]
    assert [sample.key for sample in task.splits["train"]] == [
        "train_images.zip@0.png",
        "train_images.zip@1.png",
        "train_images.zip@2.png",
    ]
    assert [sample.label for sample in task.splits["train"]] == [0, 1, 2]
    assert len(task.splits["val"]) == 1
    assert pixel(task.load_image("test_images.zip@1.png")) == COLORS[1]


def test_coco_unannotated_image_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_coco_files(tmp_path / "kitti")
    manifest = json.loads((folder / "test_meta.json").read_text())
    manifest["annotations"] = manifest["annotations"][:1]
    (folder / "test_meta.json").write_text(json.dumps(manifest))

    with caplog.at_level(logging.WARNING):
        task = load_vision_datasets(folder, KITTI_SPEC)

    assert len(task.splits["test"]) == 1
    assert "skipped 1 image(s) without annotations" in caplog.text


def test_coco_unknown_category_rejected(tmp_path: Path) -> None:
    folder = make_coco_files(tmp_path / "kitti")
    manifest = json.loads((folder / "train_meta.json").read_text())
    manifest["annotations"][0]["category_id"] = 9
    (folder / "train_meta.json").write_text(json.dumps(manifest))

    with pytest.raises(TaskError, match="unknown category id 9"):
        load_vision_datasets(folder, KITTI_SPEC)


def test_coco_differing_categories_rejected(tmp_path: Path) -> None:
    folder = make_coco_files(tmp_path / "kitti")
    manifest = json.loads((folder / "test_meta.json").read_text())
    manifest["categories"][0]["name"] = "a truck"
    (folder / "test_meta.json").write_text(json.dumps(manifest))

    with pytest.raises(TaskError, match="every split of a dataset needs the same categories"):
        load_vision_datasets(folder, KITTI_SPEC)


def test_coco_missing_field_rejected(tmp_path: Path) -> None:
    folder = make_coco_files(tmp_path / "kitti")
    (folder / "train_meta.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(TaskError, match="has no 'categories' list"):
        load_vision_datasets(folder, KITTI_SPEC)


# Missing files


def test_missing_dataset_folder_names_paths(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as raised:
        load_vision_datasets(tmp_path / "nowhere", CIFAR_SPEC)

    message = str(raised.value)
    assert str(tmp_path / "nowhere" / "classification" / "cifar_10_20211007" / "train.txt") in message
    assert "ELEVATER" in message
    assert "labels.txt" in message


def test_missing_test_index_rejected(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    (folder / "test.txt").unlink()
    with pytest.raises(TaskError, match=f"index file {folder / 'test.txt'} not found.*ELEVATER"):
        load_vision_datasets(folder, CIFAR_SPEC)


def test_missing_labelmap_rejected(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    (folder / "labels.txt").unlink()
    with pytest.raises(TaskError, match=f"labelmap {folder / 'labels.txt'} not found"):
        load_vision_datasets(folder, CIFAR_SPEC)


def test_missing_zip_archive_rejected(tmp_path: Path) -> None:
    folder = make_zipped_iris_files(tmp_path / "cifar")
    (folder / "val.zip").unlink()
    with pytest.raises(TaskError, match=f"zip archive {folder / 'val.zip'} not found.*ELEVATER"):
        load_vision_datasets(folder, CIFAR_SPEC)


def test_missing_zip_member_rejected(tmp_path: Path) -> None:
    folder = make_zipped_iris_files(tmp_path / "cifar")
    write_lines(folder / "test.txt", ["val.zip@0.png 0", "val.zip@7.png 1"])
    with pytest.raises(TaskError, match="1 image\\(s\\) .* not in zip archive .*val.zip, e.g. 7.png"):
        load_vision_datasets(folder, CIFAR_SPEC)


def test_missing_image_file_rejected(tmp_path: Path) -> None:
    folder = make_iris_files(tmp_path / "cifar")
    (folder / "test" / "c1.png").unlink()
    with pytest.raises(TaskError, match=f"1 image file\\(s\\) .* not found, e.g. {folder / 'test' / 'c1.png'}"):
        load_vision_datasets(folder, CIFAR_SPEC)


def test_unknown_dataset_rejected(tmp_path: Path) -> None:
    spec = make_spec("sun397", ["a", "b"])
    with pytest.raises(TaskError, match="'elevater:sun397' is not one of ELEVATER's vision-datasets datasets"):
        load_vision_datasets(tmp_path, spec)


def test_coop_task_rejected(tmp_path: Path) -> None:
    make_iris_files(tmp_path / "caltech_101_20211007")
    spec = replace(make_spec("caltech-101", ["a", "b", "c"]), suite="coop")
    with pytest.raises(TaskError, match="'coop:caltech-101' is a coop task, and only ELEVATER tasks"):
        load_vision_datasets(tmp_path / "caltech_101_20211007", spec)


def test_zip_member_removed_after_load(tmp_path: Path) -> None:
    folder = make_zipped_iris_files(tmp_path / "cifar")
    task = load_vision_datasets(folder, CIFAR_SPEC)
    with zipfile.ZipFile(folder / "val.zip", "w") as archive:
        archive.writestr("other.png", png_bytes(COLORS[0]))

    with pytest.raises(ImageLoadError, match="image 0.png not found in zip archive"):
        task.load_image("val.zip@0.png")


def test_zip_archive_removed_after_load(tmp_path: Path) -> None:
    folder = make_zipped_iris_files(tmp_path / "cifar")
    task = load_vision_datasets(folder, CIFAR_SPEC)
    (folder / "val.zip").unlink()

    with pytest.raises(ImageLoadError, match=f"^zip archive {folder / 'val.zip'} not found; it is part of ELEVATER"):
        task.load_image("val.zip@0.png")


def test_corrupt_zip_archive_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "train.zip").write_bytes(b"not a zip file")
    loader = VisionDatasetsImageLoader(folder)

    with pytest.raises(ImageLoadError, match="cannot read a.png from zip archive .*train.zip"):
        loader("train.zip@a.png")


def test_undecodable_zip_member_names_it(tmp_path: Path) -> None:
    folder = tmp_path / "cifar"
    folder.mkdir()
    with zipfile.ZipFile(folder / "train.zip", "w") as archive:
        archive.writestr("bad.png", b"not an image")
    loader = VisionDatasetsImageLoader(folder)

    with pytest.raises(ImageLoadError, match="cannot read image bad.png in zip archive .*train.zip"):
        loader("train.zip@bad.png")


# Pickling and worker processes


def test_task_pickles_after_zip_read(tmp_path: Path) -> None:
    folder = make_zipped_iris_files(tmp_path / "cifar")
    task = load_vision_datasets(folder, CIFAR_SPEC)
    task.load_image("val.zip@0.png")

    restored = pickle.loads(pickle.dumps(task))

    assert pixel(restored.load_image("val.zip@2.png")) == COLORS[2]


# Set before the pool forks, so the children inherit the loader with its open archive.
_INHERITED_LOADER: VisionDatasetsImageLoader | None = None


def _inherited_pixel(key: str) -> tuple[int, int, int]:
    assert _INHERITED_LOADER is not None
    return pixel(_INHERITED_LOADER(key))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_forked_worker_reopens_archive(tmp_path: Path) -> None:
    global _INHERITED_LOADER
    folder = make_zipped_iris_files(tmp_path / "cifar")
    _INHERITED_LOADER = VisionDatasetsImageLoader(folder)
    _INHERITED_LOADER("train.zip@images/0_0.png")
    keys = [f"train.zip@images/{label}_{index}.png" for label in COLORS for index in range(2)] * 4

    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_inherited_pixel, keys, chunksize=1)
    finally:
        _INHERITED_LOADER = None

    assert results == [COLORS[int(key.split("/")[1][0])] for key in keys]


# The catalog's own entries


def test_catalog_cifar100_labelmap_order_kept(tmp_path: Path) -> None:
    spec = lookup("cifar-100")
    folder = tmp_path / "classification" / "cifar100_20200721"
    folder.mkdir(parents=True)
    data_names = [name.replace(" ", "_") for name in reversed(spec.classnames)]
    write_lines(folder / "labels.txt", data_names)
    lines = []
    with zipfile.ZipFile(folder / "images.zip", "w") as archive:
        for label in range(len(data_names)):
            archive.writestr(f"{label}.png", png_bytes(COLORS[label % 3]))
            lines.append(f"images.zip@{label}.png {label}")
    write_lines(folder / "train_images.txt", lines)
    write_lines(folder / "test_images.txt", lines[:3])

    task = load_vision_datasets(tmp_path, spec)

    assert task.name == "cifar-100"
    assert task.classnames == list(reversed(spec.classnames))
    assert task.templates == spec.templates
    assert len(task.splits["train"]) == 100
