from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlpt.datasets.catalog import TaskSpec, lookup
from mvlpt.datasets.coop import COOP_LAYOUTS, load_coop
from mvlpt.tasks import TaskError

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def make_spec(name: str, coop_dir: str, classnames: list[str]) -> TaskSpec:
    return TaskSpec(
        name=name,
        title=name.title(),
        suite="coop",
        aliases=(),
        classnames=classnames,
        templates=["a photo of a {}."],
        metric="accuracy",
        multilabel=False,
        table_source="test table",
        wds_repo=None,
        coop_dir=coop_dir,
    )


def write_jpeg(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format="JPEG", quality=95)


def mean_color(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float).reshape(-1, 3).mean(axis=0)


def write_split_dataset(folder: Path, image_dir: str, split_file: str, classnames: list[str]) -> dict:
    """Write a CoOp dataset with a split file: per class 2 train, 1 val and 1 test image."""
    table: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, classname in enumerate(classnames):
        for split_name, count in (("train", 2), ("val", 1), ("test", 1)):
            for index in range(count):
                relative = f"{classname}/{split_name}_{index}.jpg"
                write_jpeg(folder / image_dir / relative, COLORS[label % 3])
                table[split_name].append([relative, label, classname])
    (folder / split_file).write_text(json.dumps(table))
    return table


CALTECH_NAMES = ["face", "leopard", "yin_yang"]
CALTECH_SPEC = make_spec("caltech-101", "caltech-101", ["face", "leopard", "yin yang"])


def make_caltech(data_root: Path) -> Path:
    folder = data_root / "caltech-101"
    write_split_dataset(folder, "101_ObjectCategories", "split_zhou_Caltech101.json", CALTECH_NAMES)
    return folder


# The layout table


def test_layouts_cover_eleven_datasets() -> None:
    assert sorted(COOP_LAYOUTS) == [
        "caltech-101",
        "dtd",
        "eurosat",
        "fgvc_aircraft",
        "food-101",
        "imagenet",
        "oxford_flowers",
        "oxford_pets",
        "stanford_cars",
        "sun397",
        "ucf101",
    ]


def test_only_imagenet_and_aircraft_lack_split_files() -> None:
    without = sorted(name for name, layout in COOP_LAYOUTS.items() if layout.split_file is None)
    assert without == ["fgvc_aircraft", "imagenet"]


# Split files


def test_split_file_dataset_loads(tmp_path: Path) -> None:
    folder = make_caltech(tmp_path)
    task = load_coop(folder, CALTECH_SPEC)

    assert task.name == "coop:caltech-101"
    assert task.classnames == ["face", "leopard", "yin yang"]
    assert task.metric == "accuracy"
    assert [len(task.splits[name]) for name in ("train", "val", "test")] == [6, 3, 3]
    assert task.splits["test"][2].key == "101_ObjectCategories/yin_yang/test_0.jpg"
    assert task.splits["test"][2].label == 2
    image = task.load_image(task.splits["test"][2].key)
    assert np.allclose(mean_color(image), COLORS[2], atol=3)


def test_data_folder_root_finds_dataset(tmp_path: Path) -> None:
    make_caltech(tmp_path)
    task = load_coop(tmp_path, CALTECH_SPEC)
    assert task.source == str(tmp_path / "caltech-101")


def test_second_dataset_loads(tmp_path: Path) -> None:
    names = ["Annual Crop Land", "Forest", "Sea or Lake"]
    write_split_dataset(tmp_path / "eurosat", "2750", "split_zhou_EuroSAT.json", names)
    spec = make_spec("eurosat", "eurosat", ["annual crop land", "forest", "sea or lake"])

    task = load_coop(tmp_path, spec)

    assert task.classnames == ["annual crop land", "forest", "sea or lake"]
    assert task.splits["train"][0].key == "2750/Annual Crop Land/train_0.jpg"


def test_image_dir_dot_keeps_paths(tmp_path: Path) -> None:
    folder = tmp_path / "stanford_cars"
    write_jpeg(folder / "cars_train" / "00001.jpg", COLORS[0])
    write_jpeg(folder / "cars_test" / "00002.jpg", COLORS[1])
    table = {
        "train": [["cars_train/00001.jpg", 0, "2012 Tesla Model S"]],
        "val": [],
        "test": [["cars_test/00002.jpg", 1, "2012 BMW M3 coupe"]],
    }
    (folder / "split_zhou_StanfordCars.json").write_text(json.dumps(table))
    spec = make_spec("stanford-cars", "stanford_cars", ["2012 Tesla Model S", "2012 BMW M3 coupe"])

    task = load_coop(folder, spec)

    assert task.splits["train"][0].key == "cars_train/00001.jpg"
    assert task.splits["val"] == []


def test_task_pickles(tmp_path: Path) -> None:
    task = load_coop(make_caltech(tmp_path), CALTECH_SPEC)
    restored = pickle.loads(pickle.dumps(task))
    key = restored.splits["train"][0].key
    assert np.allclose(mean_color(restored.load_image(key)), COLORS[0], atol=3)


def test_names_outside_table_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_caltech(tmp_path)
    spec = make_spec("caltech-101", "caltech-101", ["face", "leopard", "taijitu"])

    with caplog.at_level(logging.WARNING):
        task = load_coop(folder, spec)

    assert task.classnames == ["face", "leopard", "yin yang"]
    assert "1 of 3 class names are not in the table" in caplog.text


def test_class_count_mismatch_rejected(tmp_path: Path) -> None:
    folder = make_caltech(tmp_path)
    spec = make_spec("caltech-101", "caltech-101", ["face", "leopard"])
    with pytest.raises(TaskError, match="defines 3 classes, but task 'coop:caltech-101' has 2"):
        load_coop(folder, spec)


def test_missing_split_file_names_source(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as raised:
        load_coop(tmp_path, CALTECH_SPEC)

    message = str(raised.value)
    assert str(tmp_path / "caltech-101" / "split_zhou_Caltech101.json") in message
    assert "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md#caltech101" in message
    assert "101_ObjectCategories.tar.gz" in message
    assert str(tmp_path / "caltech-101" / "101_ObjectCategories") in message


def test_missing_image_rejected(tmp_path: Path) -> None:
    folder = make_caltech(tmp_path)
    missing = folder / "101_ObjectCategories" / "leopard" / "val_0.jpg"
    missing.unlink()
    with pytest.raises(TaskError, match=f"1 of 12 images listed for .* not found, e.g. {missing}"):
        load_coop(folder, CALTECH_SPEC)


def test_conflicting_class_names_rejected(tmp_path: Path) -> None:
    folder = make_caltech(tmp_path)
    table = json.loads((folder / "split_zhou_Caltech101.json").read_text())
    table["test"][0][2] = "faces"
    (folder / "split_zhou_Caltech101.json").write_text(json.dumps(table))

    with pytest.raises(TaskError, match="names label 0 'faces', but an earlier entry names it 'face'"):
        load_coop(folder, CALTECH_SPEC)


def test_label_gap_rejected(tmp_path: Path) -> None:
    folder = make_caltech(tmp_path)
    table = json.loads((folder / "split_zhou_Caltech101.json").read_text())
    for split_name in table:
        table[split_name] = [entry for entry in table[split_name] if entry[1] != 1]
    (folder / "split_zhou_Caltech101.json").write_text(json.dumps(table))

    with pytest.raises(TaskError, match="never label 1"):
        load_coop(folder, CALTECH_SPEC)


def test_malformed_entry_rejected(tmp_path: Path) -> None:
    folder = make_caltech(tmp_path)
    table = json.loads((folder / "split_zhou_Caltech101.json").read_text())
    table["val"][1] = ["leopard/val_0.jpg", "1", "leopard"]
    (folder / "split_zhou_Caltech101.json").write_text(json.dumps(table))

    with pytest.raises(TaskError, match="'val' entry 1 is .*must be \\[path, label, classname\\]"):
        load_coop(folder, CALTECH_SPEC)


def test_missing_split_list_rejected(tmp_path: Path) -> None:
    folder = make_caltech(tmp_path)
    table = json.loads((folder / "split_zhou_Caltech101.json").read_text())
    del table["val"]
    (folder / "split_zhou_Caltech101.json").write_text(json.dumps(table))

    with pytest.raises(TaskError, match="has no 'val' list"):
        load_coop(folder, CALTECH_SPEC)


def test_spec_without_coop_folder_rejected(tmp_path: Path) -> None:
    spec = make_spec("cifar-10", None, ["a"])  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="task 'coop:cifar-10' has no CoOp folder layout"):
        load_coop(tmp_path, spec)


# FGVC-Aircraft


AIRCRAFT_VARIANTS = ["707-320", "Cessna 172", "F-16A/B"]
AIRCRAFT_SPEC = make_spec("fgvc-aircraft", "fgvc_aircraft", AIRCRAFT_VARIANTS)


def make_aircraft(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "variants.txt").write_text("".join(f"{variant}\n" for variant in AIRCRAFT_VARIANTS))
    image_id = 1000000
    for split_name in ("train", "val", "test"):
        lines = []
        for label, variant in enumerate(AIRCRAFT_VARIANTS):
            image_id += 1
            write_jpeg(folder / "images" / f"{image_id}.jpg", COLORS[label])
            lines.append(f"{image_id} {variant}\n")
        (folder / f"images_variant_{split_name}.txt").write_text("".join(lines))
    return folder


def test_aircraft_variant_files_load(tmp_path: Path) -> None:
    folder = make_aircraft(tmp_path / "fgvc_aircraft")
    task = load_coop(tmp_path, AIRCRAFT_SPEC)

    assert task.classnames == AIRCRAFT_VARIANTS
    assert [len(task.splits[name]) for name in ("train", "val", "test")] == [3, 3, 3]
    assert task.splits["train"][1].key == "images/1000002.jpg"
    assert task.splits["train"][1].label == 1
    assert task.source == str(folder)


def test_aircraft_unknown_variant_rejected(tmp_path: Path) -> None:
    folder = make_aircraft(tmp_path / "fgvc_aircraft")
    with (folder / "images_variant_test.txt").open("a") as handle:
        handle.write("1000001 Boeing 747\n")
    with pytest.raises(TaskError, match="line 4: variant 'Boeing 747' is not listed in .*variants.txt"):
        load_coop(folder, AIRCRAFT_SPEC)


def test_aircraft_missing_split_file_rejected(tmp_path: Path) -> None:
    folder = make_aircraft(tmp_path / "fgvc_aircraft")
    (folder / "images_variant_val.txt").unlink()
    with pytest.raises(TaskError, match="images_variant_val.txt not found.*fgvc-aircraft-2013b.tar.gz"):
        load_coop(folder, AIRCRAFT_SPEC)


# ImageNet


IMAGENET_SPEC = make_spec("imagenet", "imagenet", ["tench", "goldfish"])


def make_imagenet(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "classnames.txt").write_text("n01443537 goldfish\nn01440764 tench\nn09999999 unused class\n")
    for label, wnid in enumerate(("n01440764", "n01443537")):
        for index in range(3):
            write_jpeg(folder / "images" / "train" / wnid / f"{wnid}_{index}.JPEG", COLORS[label])
        write_jpeg(folder / "images" / "val" / wnid / f"ILSVRC2012_val_{label}.JPEG", COLORS[label])
    (folder / "images" / "train" / "n01440764" / "notes.txt").write_text("not an image")
    return folder


def test_imagenet_folders_load(tmp_path: Path) -> None:
    make_imagenet(tmp_path / "imagenet")
    task = load_coop(tmp_path, IMAGENET_SPEC)

    assert task.classnames == ["tench", "goldfish"]
    assert sorted(task.splits) == ["test", "train"]
    assert len(task.splits["train"]) == 6
    assert [sample.label for sample in task.splits["test"]] == [0, 1]
    assert task.splits["test"][1].key == "images/val/n01443537/ILSVRC2012_val_1.JPEG"


def test_imagenet_flat_val_rejected(tmp_path: Path) -> None:
    folder = make_imagenet(tmp_path / "imagenet")
    val_dir = folder / "images" / "val"
    for path in sorted(val_dir.rglob("*.JPEG")):
        path.rename(val_dir / path.name)
        path.parent.rmdir()

    with pytest.raises(TaskError, match="contains no class folders; sort its images into one folder per wnid"):
        load_coop(folder, IMAGENET_SPEC)


def test_imagenet_unnamed_wnid_rejected(tmp_path: Path) -> None:
    folder = make_imagenet(tmp_path / "imagenet")
    (folder / "classnames.txt").write_text("n01440764 tench\n")
    with pytest.raises(TaskError, match="1 class folder\\(s\\) .* not listed in .*classnames.txt, e.g. n01443537"):
        load_coop(folder, IMAGENET_SPEC)


def test_imagenet_missing_train_folder_names_source(tmp_path: Path) -> None:
    folder = make_imagenet(tmp_path / "imagenet")
    (folder / "images").rename(folder / "elsewhere")
    with pytest.raises(TaskError, match="images/train not found.*image-net.org"):
        load_coop(folder, IMAGENET_SPEC)


# The catalog's own entries


def test_catalog_food101_matches_coop_names(tmp_path: Path) -> None:
    spec = lookup("coop:food-101")
    coop_names = [name.replace(" ", "_") for name in spec.classnames]
    write_split_dataset(tmp_path / "food-101", "images", "split_zhou_Food101.json", coop_names)

    task = load_coop(tmp_path, spec)

    assert task.name == "coop:food-101"
    assert task.classnames == spec.classnames
    assert [len(task.splits[name]) for name in ("train", "val", "test")] == [202, 101, 101]
