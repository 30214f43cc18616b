"""Reader for clip-benchmark's webdataset repositories (clip-benchmark/wds_<name> on the Hugging Face hub).

Layout of a local copy:

    classnames.txt                          one class name per line, in label order
    zeroshot_classification_templates.txt   optional, unused: mvlpt uses the catalog's templates
    dataset_type.txt                        optional: "multilabel" for multi-hot labels
    train/*.tar, test/*.tar                 shards; an optional nshards.txt in each split gives their count

Each shard is a plain tar file whose members are grouped by key, the member
name up to the first dot of its base name: "s0000001.webp" and
"s0000001.cls" form one sample. ".cls" contains the class index as text,
and ".npy" a multi-hot vector for multi-label tasks.

Images are read one at a time. The first load indexes every tar member
(shard, byte offset, size) and stores the index in INDEX_FILE next to the
data. The image loader then seeks to one member and reads only its bytes.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mvlpt.datasets.catalog import TaskSpec
from mvlpt.datasets.labelmap import match_classnames, task_from_spec
from mvlpt.rundir import write_json_atomic
from mvlpt.tasks import IMAGE_EXTENSIONS, ImageLoadError, Sample, Task, TaskError, open_image_file

logger = logging.getLogger(__name__)

INDEX_FILE = "mvlpt-wds-index.json"
# Bump when the index layout changes, so that old index files are rebuilt.
INDEX_FORMAT = 1
WDS_SPLITS = ("train", "test")
CLASSNAMES_FILE = "classnames.txt"
DATASET_TYPE_FILE = "dataset_type.txt"
SHARD_COUNT_FILE = "nshards.txt"
IMAGE_SUFFIXES = frozenset(extension.lstrip(".") for extension in IMAGE_EXTENSIONS) | {"ppm"}
# webdataset's rule: the key is everything before the first dot of the base name.
_MEMBER_NAME = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")


@dataclass(frozen=True)
class MemberLocation:
    """Location of one tar member's bytes: a shard path relative to the data folder, a byte offset and a size."""

    shard: str
    offset: int
    size: int


class WdsImageLoader:
    """Image loader for webdataset samples: seeks to one member of one shard and decodes only those bytes.

    A plain object with paths and offsets, so that it pickles into
    DataLoader worker processes. It opens the shard for each read and keeps
    no file handle.
    """

    def __init__(self, root: Path, locations: dict[str, MemberLocation]) -> None:
        self.root = Path(root)
        self.locations = locations

    def __repr__(self) -> str:
        return f"WdsImageLoader(root={self.root!r}, {len(self.locations)} images)"

    def __call__(self, key: str) -> Image.Image:
        location = self.locations.get(key)
        if location is None:
            raise ImageLoadError(f"no image with key '{key}' in the webdataset shards under {self.root}")

        path = self.root / location.shard
        data = read_member_bytes(path, location)
        try:
            return open_image_file(io.BytesIO(data))
        except ImageLoadError as error:
            # The cause's text names the in-memory buffer, not the file, so only its type is shown.
            cause = error.__cause__
            raise ImageLoadError(
                f"cannot decode image '{key}' (member key '{key.rpartition('/')[2]}') in shard {path}: "
                f"{type(cause).__name__}; the shard may be damaged, so download it again"
            ) from cause


def read_member_bytes(path: Path, location: MemberLocation) -> bytes:
    """Read the `location.size` bytes at `location.offset` of shard `path`, and nothing else."""
    try:
        with open(path, "rb") as handle:
            handle.seek(location.offset)
            data = handle.read(location.size)
    except OSError as error:
        raise ImageLoadError(f"cannot read shard {path}: {error}") from error

    if len(data) != location.size:
        raise ImageLoadError(
            f"shard {path} ends after {len(data)} of the {location.size} bytes expected at offset "
            f"{location.offset}; it changed or is truncated, so download it again"
        )
    return data


def load_wds(root: Path, spec: TaskSpec, index_path: Path | None = None) -> Task:
    """Load catalog task `spec` from a local copy of its clip-benchmark webdataset repository at `root`.

    `index_path` is where the member index is kept (default: INDEX_FILE in
    `root`). It is built on the first load and rebuilt when a shard's size or
    modification time changes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise TaskError(f"webdataset folder {root} not found; {_layout_hint(spec)}")

    classnames_path = root / CLASSNAMES_FILE
    if not classnames_path.is_file():
        raise TaskError(f"{classnames_path} not found; {_layout_hint(spec)}")
    data_names = [line.strip() for line in _read_text(classnames_path, spec).splitlines() if line.strip()]
    classnames = match_classnames(spec, data_names, str(classnames_path))
    _check_dataset_type(root, spec)

    shards = {split_name: _find_shards(root, split_name, spec) for split_name in WDS_SPLITS}
    index = _load_or_build_index(root, shards, spec, index_path or root / INDEX_FILE)

    splits: dict[str, list[Sample]] = {}
    locations: dict[str, MemberLocation] = {}
    for split_name in WDS_SPLITS:
        samples = []
        for shard_number, member_key, offset, size, labels in index["samples"][split_name]:
            shard = index["shards"][shard_number]["path"]
            key = f"{shard.removesuffix('.tar')}/{member_key}"
            locations[key] = MemberLocation(shard, offset, size)
            samples.append(Sample(key, labels[0], tuple(labels[1:])))
        splits[split_name] = samples

    return task_from_spec(spec, splits, WdsImageLoader(root, locations), str(root), classnames)


def _read_text(path: Path, spec: TaskSpec) -> str:
    """Read the UTF-8 text file `path` of a repository copy, or raise TaskError naming it and the fix."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TaskError(
            f"{path} is not UTF-8 text ({error}); download it again from the dataset repository "
            f"{spec.wds_repo or 'clip-benchmark/wds_<name>'}"
        ) from error


def _layout_hint(spec: TaskSpec) -> str:
    repository = spec.wds_repo or "a clip-benchmark/wds_<name> repository"
    return (
        f"expected a copy of the dataset repository {repository} from the Hugging Face hub, with "
        f"{CLASSNAMES_FILE} and the shards train/*.tar and test/*.tar"
    )


def _check_dataset_type(root: Path, spec: TaskSpec) -> None:
    type_path = root / DATASET_TYPE_FILE
    dataset_type = _read_text(type_path, spec).strip().lower() if type_path.is_file() else "classification"
    if (dataset_type == "multilabel") != spec.multilabel:
        expected = "multi-label" if spec.multilabel else "single-label"
        raise TaskError(
            f"{root} has dataset type '{dataset_type}' ({type_path}), but {spec.title} is {expected}; "
            f"use the repository {spec.wds_repo} for this task"
        )


def _shard_order(path: Path) -> tuple[int, int | str]:
    # Numeric shard names sort by number, so 10.tar follows 9.tar.
    stem = path.stem
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def _find_shards(root: Path, split_name: str, spec: TaskSpec) -> list[str]:
    split_dir = root / split_name
    shards = sorted(split_dir.glob("*.tar"), key=_shard_order) if split_dir.is_dir() else []
    if not shards:
        raise TaskError(f"no shards {split_dir}/*.tar found; {_layout_hint(spec)}")

    count_path = split_dir / SHARD_COUNT_FILE
    if count_path.is_file():
        text = _read_text(count_path, spec).strip()
        if not (text.isascii() and text.isdigit()):
            raise TaskError(
                f"{count_path} contains {text!r}, not a shard count; it should hold the number of .tar files "
                f"in {split_dir}, so download it again or delete it"
            )
        expected = int(text)
        if expected != len(shards):
            raise TaskError(
                f"{count_path} lists {expected} shards, but {split_dir} contains {len(shards)} .tar files; "
                "the copy is incomplete, so download the missing shards"
            )
    return [shard.relative_to(root).as_posix() for shard in shards]


def _shard_stats(root: Path, shards: dict[str, list[str]]) -> list[dict]:
    stats = []
    for split_name in WDS_SPLITS:
        for shard in shards[split_name]:
            status = (root / shard).stat()
            stats.append({"path": shard, "split": split_name, "size": status.st_size, "mtime_ns": status.st_mtime_ns})
    return stats


def _load_or_build_index(root: Path, shards: dict[str, list[str]], spec: TaskSpec, index_path: Path) -> dict:
    stats = _shard_stats(root, shards)
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("cannot read the shard index %s (%s); rebuilding it", index_path, error)
        else:
            if index.get("format") == INDEX_FORMAT and index.get("shards") == stats:
                return index
            logger.info("the shards under %s changed since %s was written; rebuilding it", root, index_path)

    samples: dict[str, list] = {split_name: [] for split_name in WDS_SPLITS}
    for shard_number, shard in enumerate(tqdm(stats, desc=f"indexing {spec.name} shards", unit="shard", disable=None)):
        samples[shard["split"]].extend(_index_shard(root / shard["path"], shard_number, spec))

    index = {"format": INDEX_FORMAT, "shards": stats, "samples": samples}
    write_json_atomic(index_path, index)
    logger.info(
        "indexed %s: %s; index written to %s",
        root,
        ", ".join(f"{split_name} {len(rows)} images" for split_name, rows in samples.items()),
        index_path,
    )
    return index


def _index_shard(path: Path, shard_number: int, spec: TaskSpec) -> list[list]:
    """Return one row [shard number, member key, image offset, image size, labels] per sample of shard `path`.

    Only tar headers and the small label members are read; image bytes are skipped.
    """
    label_suffix = "npy" if spec.multilabel else "cls"
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, list[int]] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                match = _MEMBER_NAME.match(member.name)
                if not member.isfile() or match is None:
                    continue
                key, suffix = match.group(1), match.group(2).lower()
                if suffix in IMAGE_SUFFIXES:
                    images[key] = (member.offset_data, member.size)
                elif suffix == label_suffix:
                    raw = archive.extractfile(member).read()
                    labels[key] = _parse_labels(raw, suffix, path, key, spec)
    except (OSError, tarfile.TarError) as error:
        raise TaskError(f"cannot read shard {path}: {error}; download it again") from error

    missing_labels = sorted(set(images) - set(labels))
    if missing_labels:
        raise TaskError(
            f"shard {path}: image '{missing_labels[0]}' and {len(missing_labels) - 1} more have no .{label_suffix} "
            f"label member; {spec.title} needs one per image"
        )
    return [[shard_number, key, *images[key], labels[key]] for key in images]


def _parse_labels(raw: bytes, suffix: str, path: Path, key: str, spec: TaskSpec) -> list[int]:
    if suffix == "cls":
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise TaskError(
                f"shard {path}: label member '{key}.cls' is not UTF-8 text ({error}); the shard is damaged, "
                "so download it again"
            ) from error
        if not re.fullmatch(r"\d+", text):
            raise TaskError(f"shard {path}: label of '{key}' is {text!r}, not a class index")
        indices = [int(text)]
    else:
        # A multi-hot vector saved with numpy.save; a class is present where the value is positive.
        vector = np.load(io.BytesIO(raw), allow_pickle=False).reshape(-1)
        if vector.size != spec.num_classes:
            raise TaskError(
                f"shard {path}: label vector of '{key}' has {vector.size} entries for {spec.num_classes} classes"
            )
        indices = np.flatnonzero(vector > 0).tolist()
        if not indices:
            raise TaskError(f"shard {path}: sample '{key}' has no class in its label vector")

    for index in indices:
        if not 0 <= index < spec.num_classes:
            raise TaskError(
                f"shard {path}: '{key}' has label {index}, outside 0..{spec.num_classes - 1} for {spec.title}"
            )
    return indices


def is_complete_wds_copy(root: Path) -> bool:
    """Report whether `root` has classnames.txt and, for each split, the number of shards its nshards.txt lists.

    A split without nshards.txt counts as complete when it has at least one shard.
    """
    root = Path(root)
    if not (root / CLASSNAMES_FILE).is_file():
        return False

    for split_name in WDS_SPLITS:
        split_dir = root / split_name
        shard_count = len(list(split_dir.glob("*.tar"))) if split_dir.is_dir() else 0
        if shard_count == 0:
            return False
        count_path = split_dir / SHARD_COUNT_FILE
        if count_path.is_file():
            text = count_path.read_bytes().decode("utf-8", errors="replace").strip()
            if not (text.isascii() and text.isdigit()) or int(text) != shard_count:
                return False
    return True


def is_wds_folder(root: Path) -> bool:
    """Report whether `root` looks like a local copy of a clip-benchmark webdataset repository."""
    root = Path(root)
    return (root / CLASSNAMES_FILE).is_file() and any(
        next((root / split_name).glob("*.tar"), None) is not None
        for split_name in WDS_SPLITS
        if (root / split_name).is_dir()
    )

