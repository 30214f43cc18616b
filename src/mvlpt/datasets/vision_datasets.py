"""Reader for ELEVATER's image-classification data in the vision-datasets layout.

ELEVATER distributes each dataset as a folder of index files and zip
archives, registered in the toolkit's `vision_datasets.json`
(Elevater_Toolkit_IC, `vision_benchmark/resources/datasets/`). Two index
formats occur, as defined by Microsoft's vision-datasets package:

- "iris": one line per image, `<image path> <label indices>`, where the label
  indices start at 0 and are separated by commas for a multi-label image. The
  class names are the lines of a labelmap file, in label order.
- "coco": a JSON file with `images` (`id`, `file_name`, optional `zip_file`),
  `annotations` (`image_id`, `category_id`) and `categories` (`id`, `name`).
  Label indices are the positions of the categories sorted by id.

An image path is a file relative to the dataset folder, or
`<archive>.zip@<member>` for a file inside a zip archive in that folder.
Sample keys are these paths exactly as the index lists them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from mvlpt.datasets.catalog import TaskSpec
from mvlpt.datasets.labelmap import match_classnames, task_from_spec
from mvlpt.tasks import ImageLoadError, Sample, Task, TaskError, open_image_file

logger = logging.getLogger(__name__)

ELEVATER_DOWNLOAD = "ELEVATER's download (https://github.com/Computer-Vision-in-the-Wild/DataDownload)"
ARCHIVE_SEPARATOR = ".zip@"


@dataclass(frozen=True)
class VisionDatasetsLayout:
    """Files of one dataset in ELEVATER's registry.

    `root_folder` is the dataset folder below the download folder, and
    `index_files` maps each split to its index file in that folder.
    `labelmap` is None for the coco format, whose files name the categories.
    """

    name: str
    root_folder: str
    index_files: dict[str, str]
    labelmap: str | None
    index_format: str = "iris"
    multilabel: bool = False


def _layout(
    name: str,
    root_folder: str,
    index_files: dict[str, str],
    labelmap: str | None = "labels.txt",
    index_format: str = "iris",
    multilabel: bool = False,
) -> VisionDatasetsLayout:
    return VisionDatasetsLayout(name, f"classification/{root_folder}", index_files, labelmap, index_format, multilabel)


_TRAIN_VAL_TEST = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
_TRAIN_VALID_TEST = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}
_TRAIN_TEST = {"train": "train.txt", "test": "test.txt"}

# File names of the 20 ELEVATER datasets, from the toolkit's vision_datasets.json
# (Elevater_Toolkit_IC commit 0467557), keyed by ELEVATER's dataset name.
ELEVATER_LAYOUTS: dict[str, VisionDatasetsLayout] = {
    layout.name: layout
    for layout in (
        _layout("caltech-101", "caltech_101_20211007", _TRAIN_TEST),
        _layout("cifar-10", "cifar_10_20211007", _TRAIN_TEST),
        _layout("cifar-100", "cifar100_20200721", {"train": "train_images.txt", "test": "test_images.txt"}),
        _layout("country211", "country211_20210924", _TRAIN_VALID_TEST),
        _layout("dtd", "dtd_20211007", _TRAIN_VAL_TEST),
        _layout("eurosat_clip", "eurosat_clip_20210930", _TRAIN_VAL_TEST),
        _layout("fer-2013", "fer_2013_20211008", _TRAIN_VAL_TEST),
        _layout("fgvc-aircraft-2013b-variants102", "fgvc_aircraft_2013b_variants102_20211007", _TRAIN_VAL_TEST),
        _layout("food-101", "food_101_20211007", _TRAIN_TEST),
        _layout("gtsrb", "gtsrb_20210923", _TRAIN_VAL_TEST, labelmap="labelmap.txt"),
        _layout(
            "hateful-memes",
            "hateful_memes_20211014",
            {"train": "train_meta.json", "test": "test_meta.json"},
            labelmap=None,
            index_format="coco",
        ),
        _layout(
            "kitti-distance",
            "kitti_distance_20210923",
            {"train": "train_meta.json", "val": "validation_meta.json", "test": "test_meta.json"},
            labelmap=None,
            index_format="coco",
        ),
        _layout("mnist", "mnist_20211008", _TRAIN_TEST),
        _layout("oxford-flower-102", "oxford_flower_102_20211007", _TRAIN_VAL_TEST),
        _layout("oxford-iiit-pets", "oxford_iiit_pets_20211007", _TRAIN_TEST),
        _layout("patch-camelyon", "patch_camelyon_20211007", _TRAIN_VAL_TEST),
        _layout("rendered-sst2", "rendered_sst2_20210924", _TRAIN_VALID_TEST),
        _layout(
            "resisc45_clip",
            "resisc45_clip_20210924",
            {"train": "train.json", "val": "val.json", "test": "test.json"},
            labelmap=None,
            index_format="coco",
        ),
        _layout("stanford-cars", "stanford_cars_20211007", _TRAIN_TEST),
        _layout(
            "voc-2007-classification",
            "voc2007_20211007",
            {"train": "train_ic.txt", "val": "val_ic.txt", "test": "test_ic.txt"},
            multilabel=True,
        ),
    )
}

REQUIRED_INDEX_SPLITS = ("train", "test")


def split_archive_key(key: str) -> tuple[str, str] | None:
    """Split `<archive>.zip@<member>` into the archive path and the member name. Return None for a plain path."""
    position = key.lower().find(ARCHIVE_SEPARATOR)
    if position < 0:
        return None
    cut = position + len(".zip")
    return key[:cut], key[cut + 1 :]


class VisionDatasetsImageLoader:
    """Image loader for vision-datasets keys: a file below `root`, or `<archive>.zip@<member>`.

    Each process opens a zip archive on first use and keeps it open. Pickling
    keeps only `root`, and a forked process notices the changed process id, so
    DataLoader workers never share a file position with their parent.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._archives: dict[str, zipfile.ZipFile] = {}
        self._process_id = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])

    def __repr__(self) -> str:
        return f"VisionDatasetsImageLoader(root={self.root!r})"

    def __call__(self, key: str) -> Image.Image:
        parts = split_archive_key(key)
        if parts is None:
            return open_image_file(self.root / key)

        archive_name, member = parts
        archive_path = self.root / archive_name
        try:
            data = self._archive(archive_name).read(member)
        except KeyError as error:
            raise ImageLoadError(
                f"image {member} not found in zip archive {archive_path}; the archive does not match its "
                "index file, so download it again"
            ) from error
        except ImageLoadError:
            raise
        except (OSError, zipfile.BadZipFile) as error:
            raise ImageLoadError(f"cannot read {member} from zip archive {archive_path}: {error}") from error

        try:
            return open_image_file(io.BytesIO(data))
        except ImageLoadError as error:
            raise ImageLoadError(
                f"cannot read image {member} in zip archive {archive_path}: {error.__cause__}"
            ) from error.__cause__

    def _archive(self, name: str) -> zipfile.ZipFile:
        with self._lock:
            if os.getpid() != self._process_id:
                # A forked child must not use its parent's handles.
                self._archives = {}
                self._process_id = os.getpid()

            archive = self._archives.get(name)
            if archive is None:
                path = self.root / name
                if not path.is_file():
                    raise ImageLoadError(f"zip archive {path} not found; it is part of {ELEVATER_DOWNLOAD}")
                archive = zipfile.ZipFile(path)
                self._archives[name] = archive
            return archive


def find_layout(spec: TaskSpec) -> VisionDatasetsLayout:
    """Return the ELEVATER layout of catalog task `spec`, found by its ELEVATER name, name or aliases."""
    if spec.suite != "elevater":
        raise TaskError(
            f"task '{spec.task_name}' is a {spec.suite} task, and only ELEVATER tasks have ELEVATER's "
            "vision-datasets files; read it from another source"
        )
    for name in (spec.elevater_name, spec.name, *spec.aliases):
        layout = ELEVATER_LAYOUTS.get((name or "").lower())
        if layout is not None:
            return layout
    raise TaskError(
        f"task '{spec.task_name}' is not one of ELEVATER's vision-datasets datasets "
        f"({', '.join(sorted(ELEVATER_LAYOUTS))}); read it from another source"
    )


def find_dataset_folder(root: Path, layout: VisionDatasetsLayout) -> Path:
    """Return the folder below `root` that contains the index files of `layout`.

    `root` may be the dataset folder itself, the download folder that contains
    `classification/<dataset folder>`, or a folder that contains the dataset
    folder directly.
    """
    root = Path(root).expanduser()
    train_index = layout.index_files["train"]
    candidates = (root, root / layout.root_folder, root / Path(layout.root_folder).name)
    for candidate in candidates:
        if (candidate / train_index).is_file():
            return candidate

    searched = ", ".join(str(candidate / train_index) for candidate in candidates)
    raise TaskError(
        f"ELEVATER dataset '{layout.name}' not found: none of {searched} exists. Download it with "
        f"{ELEVATER_DOWNLOAD}, in its classification/ folder: python download_datasets.py --ds {layout.name}. "
        f"Then pass the folder {layout.root_folder} or the folder above classification/; it contains the "
        f"index files ({', '.join(layout.index_files.values())}), {_labelmap_note(layout)}and zip archives"
    )


def _labelmap_note(layout: VisionDatasetsLayout) -> str:
    return f"labelmap {layout.labelmap} " if layout.labelmap else ""


def load_vision_datasets(root: Path, spec: TaskSpec) -> Task:
    """Load catalog task `spec` from ELEVATER's vision-datasets files under `root`.

    Raises TaskError when an index file, the labelmap, a zip archive or an
    image is missing, naming the path and the download it comes from.
    """
    layout = find_layout(spec)
    folder = find_dataset_folder(root, layout)

    if layout.index_format == "coco":
        data_names, splits = _read_coco_splits(folder, layout)
    else:
        data_names, splits = _read_iris_splits(folder, layout)

    for split_name, samples in splits.items():
        for sample in samples:
            if sample.other_labels and not spec.multilabel:
                raise TaskError(
                    f"{folder / layout.index_files[split_name]}: image {sample.key} has labels "
                    f"{list(sample.labels)}, but task '{spec.task_name}' is single-label"
                )

    _check_images_exist(folder, splits)
    _warn_on_overlap(folder, splits)
    source = str(folder / layout.labelmap) if layout.labelmap else f"the categories in {folder}"
    classnames = match_classnames(spec, data_names, source)
    return task_from_spec(spec, splits, VisionDatasetsImageLoader(folder), str(folder), classnames)


def _index_path(folder: Path, layout: VisionDatasetsLayout, split_name: str) -> Path | None:
    """Return the index file of `split_name`, or None for a missing optional split."""
    path = folder / layout.index_files[split_name]
    if path.is_file():
        return path
    if split_name in REQUIRED_INDEX_SPLITS:
        raise TaskError(f"index file {path} not found; it is part of dataset {layout.root_folder} in {ELEVATER_DOWNLOAD}")

    logger.warning("%s not found, so task '%s' has no '%s' split", path, layout.name, split_name)
    return None


def _make_sample(key: str, labels: list[int]) -> Sample:
    ordered = sorted(set(labels))
    return Sample(key, ordered[0], tuple(ordered[1:]))


def _read_iris_splits(folder: Path, layout: VisionDatasetsLayout) -> tuple[list[str], dict[str, list[Sample]]]:
    labelmap = folder / str(layout.labelmap)
    if not labelmap.is_file():
        raise TaskError(
            f"labelmap {labelmap} not found; it is part of dataset {layout.root_folder} in {ELEVATER_DOWNLOAD}"
        )
    with labelmap.open(encoding="utf-8-sig") as handle:
        data_names = [line.strip() for line in handle if line.strip()]
    if not data_names:
        raise TaskError(f"labelmap {labelmap} is empty; it should list one class name per line")

    splits: dict[str, list[Sample]] = {}
    for split_name in layout.index_files:
        path = _index_path(folder, layout, split_name)
        if path is not None:
            splits[split_name] = _read_iris_index(path, len(data_names))
    return data_names, splits


def _read_iris_index(path: Path, num_classes: int) -> list[Sample]:
    samples: list[Sample] = []
    unlabelled = 0
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue

            # Only the image path may contain spaces, so the labels follow the last one.
            image_path, _, label_text = line.rpartition(" ")
            if not image_path:
                unlabelled += 1
                continue
            try:
                labels = [int(text) for text in label_text.split(",")]
            except ValueError:
                raise TaskError(
                    f"{path}, line {line_number}: invalid label indices {label_text!r}; expected "
                    "'<image path> <index>[,<index>...]' with indices from 0"
                ) from None

            for label in labels:
                if not 0 <= label < num_classes:
                    raise TaskError(
                        f"{path}, line {line_number}: label {label} is outside 0..{num_classes - 1} "
                        f"for the {num_classes} classes of the labelmap"
                    )
            samples.append(_make_sample(image_path, labels))

    if unlabelled:
        logger.warning("%s: skipped %d line(s) without labels", path, unlabelled)
    return samples


def _read_coco_splits(folder: Path, layout: VisionDatasetsLayout) -> tuple[list[str], dict[str, list[Sample]]]:
    data_names: list[str] | None = None
    first_path: Path | None = None
    splits: dict[str, list[Sample]] = {}
    for split_name in layout.index_files:
        path = _index_path(folder, layout, split_name)
        if path is None:
            continue

        names, samples = _read_coco_index(path)
        if data_names is None:
            data_names, first_path = names, path
        elif names != data_names:
            raise TaskError(
                f"{path} lists the categories {names}, but {first_path} lists {data_names}; "
                "every split of a dataset needs the same categories"
            )
        splits[split_name] = samples
    return data_names or [], splits


def _read_coco_index(path: Path) -> tuple[list[str], list[Sample]]:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            manifest = json.load(handle)
    except json.JSONDecodeError as error:
        raise TaskError(f"{path} is not valid JSON ({error}); download the file again") from error

    for field in ("images", "annotations", "categories"):
        if not isinstance(manifest, dict) or not isinstance(manifest.get(field), list):
            raise TaskError(f"{path} has no '{field}' list; a coco manifest needs images, annotations and categories")

    try:
        categories = sorted(manifest["categories"], key=lambda category: category["id"])
        position_of = {category["id"]: position for position, category in enumerate(categories)}
        names = [str(category["name"]) for category in categories]
        keys = {}
        for image in manifest["images"]:
            zip_prefix = f"{image['zip_file']}@" if image.get("zip_file") else ""
            keys[image["id"]] = zip_prefix + image["file_name"]

        labels_of: dict[Any, list[int]] = defaultdict(list)
        for annotation in manifest["annotations"]:
            if annotation["image_id"] not in keys:
                raise TaskError(f"{path}: annotation {annotation.get('id')} refers to unknown image id {annotation['image_id']}")
            if annotation["category_id"] not in position_of:
                raise TaskError(
                    f"{path}: annotation {annotation.get('id')} refers to unknown category id {annotation['category_id']}"
                )
            labels_of[annotation["image_id"]].append(position_of[annotation["category_id"]])
    except KeyError as error:
        raise TaskError(f"{path}: an entry has no field {error}; the file is not a coco classification manifest") from None

    samples = [_make_sample(keys[image_id], labels) for image_id, labels in labels_of.items()]
    unlabelled = len(keys) - len(labels_of)
    if unlabelled:
        logger.warning("%s: skipped %d image(s) without annotations", path, unlabelled)
    return names, samples


def _check_images_exist(folder: Path, splits: dict[str, list[Sample]]) -> None:
    """Raise TaskError naming the first missing zip archive, archive member or image file."""
    members_by_archive: dict[str, set[str]] = defaultdict(set)
    plain_keys: list[str] = []
    for samples in splits.values():
        for sample in samples:
            parts = split_archive_key(sample.key)
            if parts is None:
                plain_keys.append(sample.key)
            else:
                members_by_archive[parts[0]].add(parts[1])

    for archive_name, members in sorted(members_by_archive.items()):
        archive_path = folder / archive_name
        if not archive_path.is_file():
            raise TaskError(f"zip archive {archive_path} not found; it is part of {ELEVATER_DOWNLOAD}")
        try:
            with zipfile.ZipFile(archive_path) as archive:
                missing = sorted(members - set(archive.namelist()))
        except (OSError, zipfile.BadZipFile) as error:
            raise TaskError(f"cannot read zip archive {archive_path}: {error}; download it again") from error
        if missing:
            raise TaskError(
                f"{len(missing)} image(s) listed in the index files are not in zip archive {archive_path}, "
                f"e.g. {missing[0]}; download the archive again"
            )

    missing_files = [
        key
        for key in tqdm(plain_keys, desc=f"checking images in {folder.name}", unit="img", leave=False, disable=None)
        if not (folder / key).is_file()
    ]
    if missing_files:
        raise TaskError(
            f"{len(missing_files)} image file(s) listed in the index files of {folder} not found, "
            f"e.g. {folder / missing_files[0]}"
        )


def _warn_on_overlap(folder: Path, splits: dict[str, list[Sample]]) -> None:
    test_keys = {sample.key for sample in splits.get("test", [])}
    for split_name in ("train", "val"):
        overlap = test_keys.intersection(sample.key for sample in splits.get(split_name, []))
        if overlap:
            logger.warning(
                "%s: %d image(s) appear in both '%s' and 'test' (e.g. %s), so test scores are optimistic",
                folder,
                len(overlap),
                split_name,
                sorted(overlap)[0],
            )
