"""Classification tasks: class names, prompt templates, splits and image loading.

A task is a labelled image set with fixed "train" and "test" splits, and
optional "val" and "pretrain" splits. Few-shot training draws from "train", and
evaluation uses "test". "pretrain" contains images for pretraining a backbone,
kept apart from the other splits. Two on-disk formats are supported: an image
folder tree (`load_image_folder`) and a CSV manifest (`load_csv_manifest`).
Built-in tasks live in `mvlpt.builtin`.
"""

from __future__ import annotations

import csv
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

# "accuracy" and "mean_per_class_accuracy" are computed from the argmax class.
# "map_11point" is the VOC 2007 11-point interpolated mean average precision
# over classes, for multi-label tasks. "roc_auc" is the area under the ROC curve
# of the softmax probability of class index 1, for two-class tasks. All are in
# percent; `mvlpt.evaluation.compute_metrics` computes them.
METRICS = ("accuracy", "mean_per_class_accuracy", "map_11point", "roc_auc")
SPLITS = ("train", "val", "test", "pretrain")
# Image folders read only these split folders, so a pretrain/ folder is ignored there.
FOLDER_SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a good photo of a {}.",
    "an image showing a {}.",
]


class TaskError(ValueError):
    """Invalid task definition, unknown class or missing split."""


class ImageLoadError(OSError):
    """Image file that is missing or cannot be decoded."""


@dataclass(frozen=True)
class Sample:
    """One labelled image of a task.

    `key` identifies the image within its task: a POSIX path relative to the
    task root for file tasks, or an identifier such as "d3/17" for tasks backed
    by in-memory arrays. `label` indexes `Task.classnames`. A sample of a
    multi-label task has `label` set to its smallest class index and
    `other_labels` set to its other class indices, sorted ascending. For a
    single-label task `other_labels` is empty.
    """

    key: str
    label: int
    other_labels: tuple[int, ...] = ()

    @property
    def labels(self) -> tuple[int, ...]:
        """All class indices of the sample, `label` first."""
        return (self.label, *self.other_labels)


@dataclass
class Task:
    """A classification task with its label space, prompt templates and splits."""

    name: str
    classnames: list[str]
    templates: list[str]
    metric: str
    splits: dict[str, list[Sample]]
    image_loader: Callable[[str], Image.Image] = field(repr=False)
    source: str = ""
    multilabel: bool = False

    def __post_init__(self) -> None:
        self._validate_classnames()
        self._validate_templates()
        self._validate_metric()
        self._validate_splits()

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def load_image(self, key: str) -> Image.Image:
        """Load the image stored under `key`; raises ImageLoadError if it cannot be read."""
        return self.image_loader(key)

    def _validate_classnames(self) -> None:
        if not self.classnames:
            raise TaskError(f"task '{self.name}' has no classes; give at least one class name")

        seen: set[str] = set()
        for classname in self.classnames:
            if not isinstance(classname, str) or not classname.strip():
                raise TaskError(
                    f"task '{self.name}' has an empty or non-string class name {classname!r}; "
                    "every class needs a non-empty name"
                )
            if classname in seen:
                raise TaskError(
                    f"task '{self.name}' lists class name '{classname}' more than once; "
                    "class names must be unique"
                )
            seen.add(classname)

    def _validate_templates(self) -> None:
        if not self.templates:
            raise TaskError(
                f"task '{self.name}' has no prompt templates; give at least one, "
                f"e.g. {DEFAULT_TEMPLATES[0]!r}"
            )

        for template in self.templates:
            # Templates are filled with str.format, so any brace other than the
            # single "{}" would raise or swallow text at prompt time.
            rest = template.replace("{}", "", 1) if isinstance(template, str) else ""
            if not isinstance(template, str) or template.count("{}") != 1 or "{" in rest or "}" in rest:
                raise TaskError(
                    f"task '{self.name}' has invalid prompt template {template!r}; a template "
                    "must contain '{}' exactly once, for the class name, and no other braces"
                )

    def _validate_metric(self) -> None:
        if self.metric not in METRICS:
            raise TaskError(
                f"task '{self.name}' has unknown metric '{self.metric}'; "
                f"use one of: {', '.join(METRICS)}"
            )

        if self.metric == "roc_auc" and self.num_classes != 2:
            raise TaskError(
                f"task '{self.name}' has metric 'roc_auc' but {self.num_classes} classes; ROC AUC "
                "scores the probability of class index 1 against class index 0, so it needs exactly "
                "2 classes; use 'accuracy' or 'mean_per_class_accuracy' instead"
            )
        if self.multilabel and self.metric != "map_11point":
            raise TaskError(
                f"task '{self.name}' is multi-label but has metric '{self.metric}', which needs one label per "
                "image; use 'map_11point'"
            )
        if self.metric == "map_11point" and not self.multilabel:
            raise TaskError(
                f"task '{self.name}' has metric 'map_11point' but is single-label; set "
                "multilabel=True for a multi-label task, or use 'accuracy' or 'mean_per_class_accuracy'"
            )

    def _validate_splits(self) -> None:
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise TaskError(
                f"task '{self.name}' has unknown split(s) {', '.join(unknown)}; "
                f"splits must be named {', '.join(SPLITS)}"
            )

        for split_name in REQUIRED_SPLITS:
            if not self.splits.get(split_name):
                raise TaskError(
                    f"task '{self.name}' has no '{split_name}' samples; "
                    "a task needs a non-empty 'train' split (the few-shot pool) and a non-empty 'test' split"
                )

        for split_name, samples in self.splits.items():
            seen_keys: set[str] = set()
            for sample in samples:
                self._validate_sample_labels(split_name, sample)
                if sample.key in seen_keys:
                    raise TaskError(
                        f"task '{self.name}', split '{split_name}': sample key '{sample.key}' occurs "
                        "more than once; list each image once per split"
                    )
                seen_keys.add(sample.key)

    def _validate_sample_labels(self, split_name: str, sample: Sample) -> None:
        where = f"task '{self.name}', split '{split_name}': sample '{sample.key}'"
        if not isinstance(sample.other_labels, tuple):
            raise TaskError(
                f"{where} has other_labels of type {type(sample.other_labels).__name__}; "
                "other_labels must be a tuple of class indices"
            )
        if sample.other_labels and not self.multilabel:
            raise TaskError(
                f"{where} has other_labels {sample.other_labels!r} but the task is single-label; "
                "give each sample one label, or set multilabel=True on the task"
            )

        for label in sample.labels:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise TaskError(f"{where} has non-integer label {label!r}; labels are class indices")
            if not 0 <= label < self.num_classes:
                raise TaskError(
                    f"{where} has label {label}, outside 0..{self.num_classes - 1} "
                    f"for {self.num_classes} classes"
                )

        # One canonical form per label set keeps split files and few-shot
        # selection independent of how a reader listed the labels.
        if sample.other_labels and (
            list(sample.other_labels) != sorted(set(sample.other_labels)) or sample.other_labels[0] <= sample.label
        ):
            raise TaskError(
                f"{where} has label {sample.label} and other_labels {sample.other_labels!r}; a multi-label "
                "sample needs label = its smallest class index and other_labels = the rest, sorted ascending "
                "without repeats"
            )


@dataclass(frozen=True)
class FileImageLoader:
    """Image loader for file tasks: resolves a key against `root` and opens it with PIL.

    A class rather than a closure so that tasks can be pickled into DataLoader
    worker processes.
    """

    root: Path

    def __call__(self, key: str) -> Image.Image:
        return open_image_file(self.root / key)


# PIL signals undecodable or truncated files with several exception types,
# depending on the format plugin.
_PIL_READ_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error, Image.DecompressionBombError)


def open_image_file(path: Path) -> Image.Image:
    """Decode the image at `path` fully and return it as an 8-bit RGB image.

    EXIF orientation is applied. Transparent images are composited onto white
    so that the transparent areas do not turn black. Any read or decode error
    becomes ImageLoadError naming the file.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            return _to_rgb(image)
    except _PIL_READ_ERRORS as error:
        raise ImageLoadError(
            f"cannot read image {path}: {error}; check the file or remove it from the task"
        ) from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()

    if image.mode.startswith("I;16"):
        # 16-bit greyscale: PIL's convert would clip at 255, so scale to 8 bits.
        pixels = np.asarray(image, dtype=np.uint16)
        return Image.fromarray((pixels >> 8).astype(np.uint8)).convert("RGB")

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")

    # NOTE: 32-bit "I" and "F" images are clipped to 0..255 by PIL's convert,
    # not rescaled.
    return image.convert("RGB")


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _list_class_folders(split_dir: Path) -> list[Path]:
    folders = sorted(
        (entry for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )

    loose_images = [entry.name for entry in split_dir.iterdir() if _is_image_file(entry)]
    if loose_images:
        logger.warning(
            "ignoring %d image file(s) directly inside %s (e.g. %s); images must sit in a class folder",
            len(loose_images),
            split_dir,
            sorted(loose_images)[0],
        )
    return folders


def load_image_folder(
    root: str | Path,
    name: str | None = None,
    templates: list[str] | None = None,
    metric: str = "accuracy",
) -> Task:
    """Load a task from an image folder tree.

    Layout: `root/train/<class>/<image>` and `root/test/<class>/<image>`, with
    an optional `root/val/` of the same shape. Class names are the folder
    names of train/ with "_" replaced by a space, in sorted folder-name order.
    Files with extensions in IMAGE_EXTENSIONS (any case) are images, and other
    files are ignored. Keys are POSIX paths relative to `root`.
    """
    root = Path(root).expanduser()
    layout = "root/train/<class>/<image>, root/test/<class>/<image> and optionally root/val/<class>/<image>"
    if not root.is_dir():
        raise TaskError(f"image folder {root} not found; expected the layout {layout}")

    for split_name in REQUIRED_SPLITS:
        if not (root / split_name).is_dir():
            raise TaskError(
                f"image folder {root} has no '{split_name}' folder; expected the layout {layout}"
            )

    class_folders = _list_class_folders(root / "train")
    if not class_folders:
        raise TaskError(f"{root / 'train'} contains no class folders; expected the layout {layout}")
    folder_to_label = {folder.name: label for label, folder in enumerate(class_folders)}

    splits: dict[str, list[Sample]] = {}
    for split_name in FOLDER_SPLITS:
        split_dir = root / split_name
        if not split_dir.is_dir():
            continue
        splits[split_name] = _collect_split(root, split_dir, folder_to_label)

    return Task(
        name=name or root.resolve().name,
        classnames=[folder.name.replace("_", " ") for folder in class_folders],
        templates=list(templates) if templates is not None else list(DEFAULT_TEMPLATES),
        metric=metric,
        splits=splits,
        image_loader=FileImageLoader(root),
        source=str(root),
    )


def _collect_split(root: Path, split_dir: Path, folder_to_label: dict[str, int]) -> list[Sample]:
    samples: list[Sample] = []
    for folder in _list_class_folders(split_dir):
        if folder.name not in folder_to_label:
            raise TaskError(
                f"class folder {folder} has no counterpart in {root / 'train'}; the classes are "
                f"defined by train/ ({', '.join(sorted(folder_to_label))}), so rename or remove it"
            )

        image_paths = sorted(path for path in folder.iterdir() if _is_image_file(path))
        if not image_paths:
            raise TaskError(
                f"class folder {folder} contains no image files "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )

        label = folder_to_label[folder.name]
        samples.extend(Sample(path.relative_to(root).as_posix(), label) for path in image_paths)
    return samples


@dataclass(frozen=True)
class _ManifestRow:
    line: int
    key: str
    label_name: str
    split: str


def load_csv_manifest(
    path: str | Path,
    name: str | None = None,
    templates: list[str] | None = None,
    metric: str = "accuracy",
) -> Task:
    """Load a task from a CSV manifest with the columns path, label and split.

    `path` is an image file relative to the CSV's folder (absolute paths are
    allowed), `label` a class name, and `split` one of train, val, test or pretrain.
    Class order is the sorted set of train labels, unless a sidecar file
    `<csv stem>.classes.txt` (one class name per line) sits next to the CSV.
    The sidecar then fixes both order and membership. Error messages give the
    line number in the CSV file, where the header is line 1.
    """
    csv_path = Path(path).expanduser()
    if not csv_path.is_file():
        raise TaskError(f"CSV manifest {csv_path} not found")
    csv_dir = csv_path.parent

    rows = _read_manifest_rows(csv_path)
    if not any(row.split == "train" for row in rows):
        raise TaskError(f"{csv_path} has no rows with split 'train'; the few-shot pool comes from them")

    sidecar = csv_dir / f"{csv_path.stem}.classes.txt"
    if sidecar.is_file():
        classnames = _read_class_list(sidecar)
    else:
        classnames = sorted({row.label_name for row in rows if row.split == "train"})
    label_of = {classname: index for index, classname in enumerate(classnames)}

    splits: dict[str, list[Sample]] = {}
    seen_keys: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.label_name not in label_of:
            origin = f"the class list {sidecar}" if sidecar.is_file() else "the train rows"
            raise TaskError(
                f"{csv_path}, line {row.line}: unknown label '{row.label_name}'; the known classes, "
                f"from {origin}, are: {', '.join(classnames)}"
            )

        image_path = csv_dir / row.key
        if not image_path.is_file():
            raise TaskError(f"{csv_path}, line {row.line}: image file {image_path} not found")

        first_line = seen_keys.get((row.split, row.key))
        if first_line is not None:
            raise TaskError(
                f"{csv_path}, line {row.line}: '{row.key}' is already listed in split "
                f"'{row.split}' on line {first_line}; list each image once per split"
            )
        seen_keys[(row.split, row.key)] = row.line

        splits.setdefault(row.split, []).append(Sample(row.key, label_of[row.label_name]))

    _warn_on_split_overlap(csv_path, splits)
    train_labels = {row.label_name for row in rows if row.split == "train"}
    for classname in classnames:
        if classname not in train_labels:
            logger.warning("%s: class '%s' has no train rows, so few-shot sampling will fail", csv_path, classname)

    return Task(
        name=name or csv_path.stem,
        classnames=classnames,
        templates=list(templates) if templates is not None else list(DEFAULT_TEMPLATES),
        metric=metric,
        splits=splits,
        image_loader=FileImageLoader(csv_dir),
        source=str(csv_path),
    )


def _read_manifest_rows(csv_path: Path) -> list[_ManifestRow]:
    rows: list[_ManifestRow] = []
    # utf-8-sig drops the byte-order mark that spreadsheet programs write.
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [column.strip().lower() for column in reader.fieldnames or []]
        missing = [column for column in ("path", "label", "split") if column not in header]
        if missing:
            raise TaskError(
                f"{csv_path}, line 1: header is missing column(s) {', '.join(missing)}; "
                "the header must name the columns path,label,split"
            )
        reader.fieldnames = header

        for record in reader:
            values = {column: (record.get(column) or "").strip() for column in ("path", "label", "split")}
            if not any(values.values()):
                continue
            rows.append(_parse_manifest_record(csv_path, reader.line_num, values))
    return rows


def _parse_manifest_record(csv_path: Path, line: int, values: dict[str, str]) -> _ManifestRow:
    for column in ("path", "label", "split"):
        if not values[column]:
            raise TaskError(f"{csv_path}, line {line}: column '{column}' is empty")

    split = values["split"].lower()
    if split not in SPLITS:
        raise TaskError(
            f"{csv_path}, line {line}: unknown split '{values['split']}'; use one of {', '.join(SPLITS)}"
        )

    # Keys stay relative to the CSV folder so that split files written with a
    # run remain valid when the data folder moves. An absolute path inside that
    # folder is made relative too, and one outside it is kept absolute.
    image_path = Path(values["path"])
    if image_path.is_absolute():
        try:
            key = image_path.relative_to(csv_path.parent.absolute()).as_posix()
        except ValueError:
            key = image_path.as_posix()
    else:
        key = image_path.as_posix()

    return _ManifestRow(line=line, key=key, label_name=values["label"], split=split)


def _read_class_list(sidecar: Path) -> list[str]:
    classnames: list[str] = []
    with sidecar.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            classname = line.strip()
            if not classname:
                continue
            if classname in classnames:
                raise TaskError(f"{sidecar}, line {line_number}: class '{classname}' is listed twice")
            classnames.append(classname)

    if not classnames:
        raise TaskError(f"class list {sidecar} is empty; write one class name per line or delete the file")
    return classnames


def _warn_on_split_overlap(csv_path: Path, splits: dict[str, list[Sample]]) -> None:
    keys = {split_name: {sample.key for sample in samples} for split_name, samples in splits.items()}
    test_keys = keys.get("test", set())
    for split_name in ("train", "val", "pretrain"):
        overlap = test_keys & keys.get(split_name, set())
        if overlap:
            logger.warning(
                "%s: %d image(s) appear in both '%s' and 'test' (e.g. %s), so test accuracy is optimistic",
                csv_path,
                len(overlap),
                split_name,
                sorted(overlap)[0],
            )

    pretrain_keys = keys.get("pretrain", set())
    for split_name in ("train", "val"):
        overlap = pretrain_keys & keys.get(split_name, set())
        if overlap:
            logger.warning(
                "%s: %d image(s) appear in both 'pretrain' and '%s' (e.g. %s), so the few-shot images "
                "are not new to a backbone pretrained on this task",
                csv_path,
                len(overlap),
                split_name,
                sorted(overlap)[0],
            )
