"""Reader for the Hateful Memes release of Kiela et al. (2020), as its licence lets users download it.

The release is a folder with `img/` (the PNG memes) and JSON-lines files with
one meme per line: `{"id": ..., "img": "img/<id>.png", "label": 0 or 1, "text": ...}`,
where label 1 means hateful. The task uses `train.jsonl` (8,500 memes) as the
train split and the seen development set `dev_seen.jsonl` (500 memes) as the
test split, as ELEVATER does. The first release calls that file `dev.jsonl`.
No val split is read: `dev_unseen.jsonl` and the test files are not used.
Only the images are used, not the meme text. Class index 1 (hateful) is the
positive class of the ROC AUC metric.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from mvlpt.datasets.catalog import TaskSpec
from mvlpt.datasets.labelmap import task_from_spec
from mvlpt.tasks import FileImageLoader, Sample, Task, TaskError

logger = logging.getLogger(__name__)

LICENCE_PAGE = "https://ai.meta.com/tools/hatefulmemes/"
TRAIN_FILE = "train.jsonl"
TEST_FILES = ("dev_seen.jsonl", "dev.jsonl")
IMAGE_DIR = "img"
FOLDER_NAME = "hateful_memes"


def find_hateful_memes_folder(root: Path) -> Path:
    """Return `root` or `root/hateful_memes`, whichever contains train.jsonl."""
    root = Path(root).expanduser()
    for candidate in (root, root / FOLDER_NAME):
        if (candidate / TRAIN_FILE).is_file():
            return candidate
    raise TaskError(_missing_message(root, [TRAIN_FILE]))


def _missing_message(folder: Path, missing: list[str]) -> str:
    return (
        f"Hateful Memes files not found in {folder}: {', '.join(missing)}. The dataset is handed out only "
        f"to users who accept its licence, so download it yourself from {LICENCE_PAGE}, "
        f"then put the folder {IMAGE_DIR}/ (the PNG memes), {TRAIN_FILE} and {TEST_FILES[0]} "
        f"(named {TEST_FILES[1]} in the first release) directly in {folder}"
    )


def load_hateful_memes(root: Path, spec: TaskSpec) -> Task:
    """Load catalog task `spec` (Hateful Memes, two classes) from the official files under `root`.

    Raises TaskError naming the missing files, the licence page to download
    them from and the folder they go in.
    """
    if len(spec.classnames) != 2:
        raise TaskError(
            f"task '{spec.task_name}' has {len(spec.classnames)} classes, but Hateful Memes has 2 "
            "(0 not hateful, 1 hateful); fix the catalog entry"
        )

    folder = find_hateful_memes_folder(root)
    test_path = next((folder / name for name in TEST_FILES if (folder / name).is_file()), None)
    missing = [] if test_path is not None else [TEST_FILES[0]]
    if not (folder / IMAGE_DIR).is_dir():
        missing.append(f"{IMAGE_DIR}/")
    if missing:
        raise TaskError(_missing_message(folder, missing))

    splits = {"train": _read_jsonl(folder / TRAIN_FILE), "test": _read_jsonl(test_path)}
    _check_images_exist(folder, splits)

    return task_from_spec(spec, splits, FileImageLoader(folder), str(folder))


def _read_jsonl(path: Path) -> list[Sample]:
    samples: list[Sample] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskError(f"{path}, line {line_number}: invalid JSON ({error})") from error

            if not isinstance(record, dict) or not isinstance(record.get("img"), str):
                raise TaskError(f"{path}, line {line_number}: no 'img' path; each line needs img and label")
            label = record.get("label")
            if isinstance(label, bool) or not isinstance(label, int) or label not in (0, 1):
                raise TaskError(
                    f"{path}, line {line_number}: label {label!r} is not 0 (not hateful) or 1 (hateful); "
                    "only the train and development files have labels"
                )
            samples.append(Sample(record["img"], label))

    if not samples:
        raise TaskError(f"{path} lists no memes; download it again from {LICENCE_PAGE}")
    return samples


def _check_images_exist(folder: Path, splits: dict[str, list[Sample]]) -> None:
    keys = [sample.key for samples in splits.values() for sample in samples]
    missing = [
        key
        for key in tqdm(keys, desc="checking Hateful Memes images", unit="img", leave=False, disable=None)
        if not (folder / key).is_file()
    ]
    if missing:
        raise TaskError(
            f"{len(missing)} of {len(keys)} memes listed in {folder} have no image, e.g. {folder / missing[0]}; "
            f"copy the complete {IMAGE_DIR}/ folder of the download from {LICENCE_PAGE}"
        )
