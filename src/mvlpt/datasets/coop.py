"""Reader for the folder layouts of CoOp's 11 datasets (Zhou et al., "Learning to Prompt for Vision-Language Models").

CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp) puts each dataset in its
own folder below one data folder and fixes its train/val/test split:

- Nine datasets have a split file `split_zhou_<Name>.json` of the form
  `{"train": [[path, label, classname], ...], "val": [...], "test": [...]}`,
  where `path` is relative to the dataset's image folder.
- FGVC-Aircraft keeps the files of its own release: `variants.txt` lists the
  100 classes in label order, and `images_variant_{train,val,test}.txt` list
  `<image id> <variant>` per line, for the image `images/<image id>.jpg`.
- ImageNet has `classnames.txt` (`<wnid> <class name>` per line) and the
  folders `images/train/<wnid>/` and `images/val/<wnid>/`. The labels follow
  the sorted wnids, and the validation images are the test split, as in CoOp.

Sample keys are image paths relative to the dataset folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mvlpt.datasets.catalog import TaskSpec
from mvlpt.datasets.labelmap import match_classnames, task_from_spec
from mvlpt.tasks import IMAGE_EXTENSIONS, FileImageLoader, Sample, Task, TaskError

logger = logging.getLogger(__name__)

COOP_DATASETS_DOC = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
SPLIT_FILE_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CoopLayout:
    """Files of one CoOp dataset below its folder `folder` (CoOp's folder name).

    `image_dir` is the folder that the split file's paths are relative to,
    and `split_file` is None for FGVC-Aircraft and ImageNet, which CoOp reads
    from other files. `images_from` describes where the images come from and
    `doc_anchor` is the section of CoOp's DATASETS.md that links the split file.
    """

    folder: str
    image_dir: str
    split_file: str | None
    images_from: str
    doc_anchor: str

    @property
    def doc_url(self) -> str:
        return f"{COOP_DATASETS_DOC}#{self.doc_anchor}"


# Folder names, image folders and split files as CoOp's DATASETS.md and its dataset classes define them.
COOP_LAYOUTS: dict[str, CoopLayout] = {
    layout.folder: layout
    for layout in (
        CoopLayout(
            "imagenet",
            "images",
            None,
            "the ILSVRC-2012 train and validation images from https://image-net.org, each set sorted into "
            "one folder per wnid",
            "imagenet",
        ),
        CoopLayout(
            "caltech-101",
            "101_ObjectCategories",
            "split_zhou_Caltech101.json",
            "101_ObjectCategories.tar.gz from https://data.caltech.edu/records/mzrjq-6wc02",
            "caltech101",
        ),
        CoopLayout(
            "oxford_pets",
            "images",
            "split_zhou_OxfordPets.json",
            "images.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/",
            "oxfordpets",
        ),
        CoopLayout(
            "stanford_cars",
            ".",
            "split_zhou_StanfordCars.json",
            "cars_train.tgz and cars_test.tgz from http://ai.stanford.edu/~jkrause/car196/",
            "stanfordcars",
        ),
        CoopLayout(
            "oxford_flowers",
            "jpg",
            "split_zhou_OxfordFlowers.json",
            "102flowers.tgz from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
            "flowers102",
        ),
        CoopLayout(
            "food-101",
            "images",
            "split_zhou_Food101.json",
            "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
            "food101",
        ),
        CoopLayout(
            "fgvc_aircraft",
            "images",
            None,
            "the data/ folder of fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
            "fgvcaircraft",
        ),
        CoopLayout(
            "sun397",
            "SUN397",
            "split_zhou_SUN397.json",
            "SUN397.tar.gz from https://vision.princeton.edu/projects/2010/SUN/",
            "sun397",
        ),
        CoopLayout(
            "dtd",
            "images",
            "split_zhou_DescribableTextures.json",
            "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/",
            "dtd",
        ),
        CoopLayout(
            "eurosat",
            "2750",
            "split_zhou_EuroSAT.json",
            "EuroSAT.zip from http://madm.dfki.de/files/sentinel/EuroSAT.zip",
            "eurosat",
        ),
        CoopLayout(
            "ucf101",
            "UCF-101-midframes",
            "split_zhou_UCF101.json",
            "UCF-101-midframes.zip (the middle frame of each video), linked from CoOp's DATASETS.md",
            "ucf101",
        ),
    )
}

FGVC_CLASS_FILE = "variants.txt"
FGVC_SPLIT_FILES = {"train": "images_variant_train.txt", "val": "images_variant_val.txt", "test": "images_variant_test.txt"}
IMAGENET_CLASS_FILE = "classnames.txt"
# CoOp evaluates ImageNet on the validation images.
IMAGENET_SPLIT_FOLDERS = {"train": "train", "test": "val"}


def find_coop_layout(spec: TaskSpec) -> CoopLayout:
    """Return the CoOp layout of catalog task `spec`, found by its `coop_dir`."""
    layout = COOP_LAYOUTS.get(spec.coop_dir or "")
    if layout is None:
        raise TaskError(
            f"task '{spec.task_name}' has no CoOp folder layout (coop_dir={spec.coop_dir!r}); CoOp's datasets are "
            f"{', '.join(sorted(COOP_LAYOUTS))}"
        )
    return layout


def _marker_file(layout: CoopLayout) -> str:
    """Return the file whose presence identifies the dataset folder."""
    if layout.split_file is not None:
        return layout.split_file
    return FGVC_CLASS_FILE if layout.folder == "fgvc_aircraft" else IMAGENET_CLASS_FILE


def find_coop_folder(root: Path, layout: CoopLayout) -> Path:
    """Return the dataset folder: `root` itself, or `root/<CoOp folder name>` when `root` is CoOp's data folder."""
    root = Path(root).expanduser()
    marker = _marker_file(layout)
    for candidate in (root, root / layout.folder):
        if (candidate / marker).is_file():
            return candidate

    raise TaskError(
        f"CoOp dataset '{layout.folder}' not found: neither {root / marker} nor {root / layout.folder / marker} "
        f"exists. {_where_to_get(layout, root / layout.folder)}"
    )


def _where_to_get(layout: CoopLayout, folder: Path) -> str:
    """Describe which files go where, as CoOp's DATASETS.md lays them out."""
    if layout.folder == "imagenet":
        files = (
            f"{folder / 'images' / 'train'}/ and {folder / 'images' / 'val'}/ need {layout.images_from}, and "
            f"{folder / IMAGENET_CLASS_FILE} is the class-name file linked from {layout.doc_url}"
        )
    elif layout.folder == "fgvc_aircraft":
        files = (
            f"{folder}/ needs {layout.images_from}: images/, {FGVC_CLASS_FILE} and "
            f"{', '.join(FGVC_SPLIT_FILES.values())} (see {layout.doc_url})"
        )
    else:
        image_folder = folder / layout.image_dir if layout.image_dir != "." else folder
        files = (
            f"{image_folder}/ needs the images of {layout.images_from}, and {folder / str(layout.split_file)} "
            f"is the split file linked from {layout.doc_url}"
        )
    return f"To supply the dataset, put the files in place: {files}."


def load_coop(root: Path, spec: TaskSpec) -> Task:
    """Load catalog task `spec` from CoOp's folder layout under `root`.

    `root` is the dataset folder or CoOp's data folder that contains it.
    Raises TaskError when a split file, class file or image is missing,
    naming the path and where the file comes from.
    """
    layout = find_coop_layout(spec)
    folder = find_coop_folder(root, layout)

    if layout.folder == "imagenet":
        data_names, splits = _read_imagenet(folder, layout)
    elif layout.folder == "fgvc_aircraft":
        data_names, splits = _read_fgvc_aircraft(folder, layout)
    else:
        data_names, splits = _read_split_file(folder, layout)

    classnames = match_classnames(spec, data_names, str(folder))
    return task_from_spec(spec, splits, FileImageLoader(folder), str(folder), classnames)


def _read_split_file(folder: Path, layout: CoopLayout) -> tuple[list[str], dict[str, list[Sample]]]:
    path = folder / str(layout.split_file)
    try:
        with path.open(encoding="utf-8") as handle:
            split_table = json.load(handle)
    except json.JSONDecodeError as error:
        raise TaskError(f"{path} is not valid JSON ({error}); download it again from {layout.doc_url}") from error

    prefix = "" if layout.image_dir == "." else f"{layout.image_dir}/"
    names_by_label: dict[int, str] = {}
    splits: dict[str, list[Sample]] = {}
    for split_name in SPLIT_FILE_SPLITS:
        entries = split_table.get(split_name) if isinstance(split_table, dict) else None
        if not isinstance(entries, list):
            raise TaskError(
                f"{path} has no '{split_name}' list; a CoOp split file maps train, val and test to "
                "lists of [path, label, classname]"
            )

        samples = []
        for position, entry in enumerate(entries):
            relative_path, label, classname = _parse_split_entry(path, split_name, position, entry)
            known = names_by_label.setdefault(label, classname)
            if known != classname:
                raise TaskError(
                    f"{path}: '{split_name}' entry {position} names label {label} '{classname}', but an earlier "
                    f"entry names it '{known}'; each label needs one class name"
                )
            samples.append(Sample(prefix + relative_path, label))
        splits[split_name] = samples

    data_names = _names_in_label_order(path, names_by_label)
    _check_files_exist(folder, splits, layout)
    return data_names, splits


def _parse_split_entry(path: Path, split_name: str, position: int, entry: object) -> tuple[str, int, str]:
    valid = (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], int)
        and not isinstance(entry[1], bool)
        and isinstance(entry[2], str)
    )
    if not valid:
        raise TaskError(
            f"{path}: '{split_name}' entry {position} is {entry!r}; each entry must be [path, label, classname]"
        )

    relative_path, label, classname = entry
    return relative_path, label, classname


def _names_in_label_order(path: Path, names_by_label: dict[int, str]) -> list[str]:
    missing = sorted(set(range(len(names_by_label))) - set(names_by_label))
    if missing:
        raise TaskError(
            f"{path} uses labels {min(names_by_label)}..{max(names_by_label)} but never label {missing[0]}; "
            "labels must run from 0 without gaps"
        )
    return [names_by_label[label] for label in range(len(names_by_label))]


def _read_fgvc_aircraft(folder: Path, layout: CoopLayout) -> tuple[list[str], dict[str, list[Sample]]]:
    class_file = folder / FGVC_CLASS_FILE
    with class_file.open(encoding="utf-8") as handle:
        variants = [line.strip() for line in handle if line.strip()]
    label_of = {variant: label for label, variant in enumerate(variants)}

    splits: dict[str, list[Sample]] = {}
    for split_name, file_name in FGVC_SPLIT_FILES.items():
        path = folder / file_name
        if not path.is_file():
            raise TaskError(f"{path} not found. {_where_to_get(layout, folder)}")

        samples = []
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                # Variant names contain spaces ("Cessna 172"), so only the first field is the image id.
                image_id, _, variant = line.strip().partition(" ")
                if variant not in label_of:
                    raise TaskError(
                        f"{path}, line {line_number}: variant {variant!r} is not listed in {class_file}"
                    )
                samples.append(Sample(f"{layout.image_dir}/{image_id}.jpg", label_of[variant]))
        splits[split_name] = samples

    _check_files_exist(folder, splits, layout)
    return variants, splits


def _read_imagenet(folder: Path, layout: CoopLayout) -> tuple[list[str], dict[str, list[Sample]]]:
    class_file = folder / IMAGENET_CLASS_FILE
    names_by_wnid: dict[str, str] = {}
    with class_file.open(encoding="utf-8") as handle:
        for line in handle:
            wnid, _, name = line.strip().partition(" ")
            if wnid:
                names_by_wnid[wnid] = name.strip()

    train_dir = folder / layout.image_dir / IMAGENET_SPLIT_FOLDERS["train"]
    wnids = _list_class_folders(train_dir, layout, folder)
    unnamed = [wnid for wnid in wnids if wnid not in names_by_wnid]
    if unnamed:
        raise TaskError(
            f"{len(unnamed)} class folder(s) in {train_dir} are not listed in {class_file}, e.g. {unnamed[0]}; "
            f"use the classnames.txt linked from {layout.doc_url}"
        )
    label_of = {wnid: label for label, wnid in enumerate(wnids)}

    splits: dict[str, list[Sample]] = {}
    for split_name, subfolder in IMAGENET_SPLIT_FOLDERS.items():
        split_dir = folder / layout.image_dir / subfolder
        samples = []
        for wnid in tqdm(
            _list_class_folders(split_dir, layout, folder),
            desc=f"listing ImageNet {subfolder} images",
            unit="class",
            leave=False,
            disable=None,
        ):
            if wnid not in label_of:
                raise TaskError(
                    f"class folder {split_dir / wnid} has no counterpart in {train_dir}; the train folders "
                    "define the classes, so remove or rename it"
                )
            for entry in sorted(os.scandir(split_dir / wnid), key=lambda entry: entry.name):
                if entry.is_file() and not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    samples.append(Sample(f"{layout.image_dir}/{subfolder}/{wnid}/{entry.name}", label_of[wnid]))
        splits[split_name] = samples

    return [names_by_wnid[wnid] for wnid in wnids], splits


def _list_class_folders(split_dir: Path, layout: CoopLayout, folder: Path) -> list[str]:
    if not split_dir.is_dir():
        raise TaskError(f"{split_dir} not found. {_where_to_get(layout, folder)}")

    wnids = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not wnids:
        # The official validation archive is flat, but CoOp expects it sorted into class folders.
        raise TaskError(
            f"{split_dir} contains no class folders; sort its images into one folder per wnid, as in "
            f"{split_dir.parent / 'train'}"
        )
    return wnids


def _check_files_exist(folder: Path, splits: dict[str, list[Sample]], layout: CoopLayout) -> None:
    keys = [sample.key for samples in splits.values() for sample in samples]
    missing = [
        key
        for key in tqdm(keys, desc=f"checking {layout.folder} images", unit="img", leave=False, disable=None)
        if not (folder / key).is_file()
    ]
    if missing:
        raise TaskError(
            f"{len(missing)} of {len(keys)} images listed for {folder} not found, e.g. {folder / missing[0]}. "
            f"{_where_to_get(layout, folder)}"
        )
