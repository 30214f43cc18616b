"""Prepare benchmark tasks under the data root, and load prepared tasks by name.

`mvlpt data prepare NAME` ends with a marker file, MARKER_FILE, in
`<data root>/benchmarks/<suite>/<name>/`. The marker records which reader
to use and where the data lies: in that folder itself (a download, or files
put there by hand) or in the folder given with `--from`, which stays where
it is. The marker is written only after the task loaded with the expected
class count, so a task with a marker is known to load.

Only the clip-benchmark webdataset repositories are downloaded, with the
Hugging Face hub client. ELEVATER's vision-datasets files, CoOp's folders
and Hateful Memes come from the user, because their licences or sizes put
them behind a manual download.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mvlpt.builtin.common import data_root
from mvlpt.datasets.catalog import SOURCES, TaskSpec, lookup
from mvlpt.rundir import write_json_atomic
from mvlpt.tasks import Task, TaskError

logger = logging.getLogger(__name__)

BENCHMARKS_DIR = "benchmarks"
MARKER_FILE = "prepared.json"
# Marker value of "data" when the data lies in the prepared folder itself.
IN_FOLDER = "."

# Reader of each source: module and function, imported on first use.
READERS = {
    "wds": ("mvlpt.datasets.wds", "load_wds"),
    "vision-datasets": ("mvlpt.datasets.vision_datasets", "load_vision_datasets"),
    "coop": ("mvlpt.datasets.coop", "load_coop"),
    "manual": ("mvlpt.datasets.hateful_memes", "load_hateful_memes"),
}
# Files of a clip-benchmark repository that mvlpt reads; the hub client downloads only these.
WDS_DOWNLOAD_PATTERNS = ["train/*", "test/*", "*.txt"]
_TRUE_VALUES = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class PreparedTask:
    """Outcome of `prepare_task`: the loaded task and where its data and marker are."""

    spec: TaskSpec
    task: Task
    source: str
    data_path: Path
    marker_path: Path

    def summary(self) -> str:
        sizes = ", ".join(f"{split} {len(samples)}" for split, samples in self.task.splits.items())
        return (
            f"{self.spec.task_name}: {self.task.num_classes} classes; {sizes} images; "
            f"read from {self.data_path} ({self.source})"
        )


def prepared_folder(spec: TaskSpec, root: Path | None = None) -> Path:
    """Return the folder that contains the marker, and any downloaded data, of catalog task `spec`."""
    base = data_root() if root is None else Path(root).expanduser()
    return base / BENCHMARKS_DIR / spec.suite / spec.name


def prepare_command(spec: TaskSpec, root: Path | None = None, from_path: str | None = None) -> str:
    """Return the `mvlpt data prepare` command for `spec`, with --root when `root` is not the default data root.

    `from_path` is the `--from` value to show; without it, `--from DIR` is shown
    for tasks whose default source is never downloaded.
    """
    command = f"mvlpt data prepare {spec.task_name}"
    if root is not None and Path(root).expanduser().resolve() != data_root().resolve():
        command += f" --root {root}"
    if from_path is not None:
        command += f" --from {from_path}"
    elif spec.sources[0] not in ("wds", "manual"):
        command += " --from DIR"
    return command


def check_prepared_folder_path(spec: TaskSpec, root: Path | None = None) -> None:
    """Raise TaskError when the data root, or a folder below it that the prepared task needs, is a file."""
    base = data_root() if root is None else Path(root).expanduser()
    folder = prepared_folder(spec, root)
    for candidate in (base, base / BENCHMARKS_DIR, base / BENCHMARKS_DIR / spec.suite, folder):
        if candidate.exists() and not candidate.is_dir():
            raise TaskError(
                f"{candidate} is a file, but mvlpt keeps prepared tasks in the folder {folder}; "
                "give a data root folder with --root (or $MVLPT_DATA_ROOT), or move the file away"
            )


def read_marker(spec: TaskSpec, root: Path | None = None) -> dict | None:
    """Return the marker of a prepared task, or None when `spec` is not prepared under `root`."""
    path = prepared_folder(spec, root) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TaskError(f"cannot read {path}: {error}; run {prepare_command(spec, root)} again") from error

    problem = _marker_problem(marker)
    if problem:
        raise TaskError(f"{path} is not a valid marker: {problem}; run {prepare_command(spec, root)} again")
    return marker


def _marker_problem(marker: object) -> str | None:
    """Describe what is wrong with a decoded marker, or return None when it has every field that loading reads."""
    if not isinstance(marker, dict):
        return f"it contains {type(marker).__name__}, not a JSON object"
    if marker.get("source") not in SOURCES:
        return f"'source' is {marker.get('source')!r}, not one of {', '.join(SOURCES)}"
    if not isinstance(marker.get("data"), str) or not marker["data"]:
        return f"'data' is {marker.get('data')!r}, not a folder path"
    if not isinstance(marker.get("images"), dict):
        return f"'images' is {marker.get('images')!r}, not a split-to-count mapping"
    return None


def prepare_task(
    name: str,
    root: Path | None = None,
    source: str | None = None,
    from_path: Path | None = None,
) -> PreparedTask:
    """Fetch or locate the data of catalog task `name`, load it to check it, and write its marker.

    Without `from_path`, webdataset repositories are downloaded into the
    prepared folder, and the other sources are read from files already put
    there. With `from_path`, the data is read where it is.
    """
    spec = lookup(name)
    folder = prepared_folder(spec, root)
    check_prepared_folder_path(spec, root)
    if source is not None:
        _check_source(spec, source)

    if from_path is not None:
        data_path = Path(from_path).expanduser().resolve()
        if not data_path.exists():
            raise TaskError(f"--from {from_path}: folder {data_path} not found; give the folder that contains the data")
        if not data_path.is_dir():
            raise TaskError(
                f"--from {from_path}: {data_path} is not a folder; give the folder that contains the data, "
                "not a file in it or an archive (unpack archives first)"
            )
        source = source or detect_source(spec, data_path)
    else:
        source = source or spec.sources[0]
        data_path = folder
        if source == "wds":
            download_wds(spec, folder)

    try:
        task = load_source(spec, source, data_path, _index_path(source, data_path, folder))
    except TaskError as error:
        if from_path is None and source != "wds":
            raise TaskError(
                f"{str(error).rstrip('.')}. mvlpt does not download {spec.title} from source '{source}': put the "
                f"files where this message says, or give the folder that contains them with: "
                f"mvlpt data prepare {spec.task_name} --source {source} --from DIR"
            ) from error
        raise

    marker = {
        "task": spec.qualified_name,
        "source": source,
        "data": IN_FOLDER if data_path.resolve() == folder.resolve() else str(data_path),
        "num_classes": task.num_classes,
        "images": {split: len(samples) for split, samples in task.splits.items()},
        "prepared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    marker_path = folder / MARKER_FILE
    write_json_atomic(marker_path, marker)
    logger.info("prepared %s; marker written to %s", spec.qualified_name, marker_path)
    return PreparedTask(spec=spec, task=task, source=source, data_path=data_path, marker_path=marker_path)


def load_prepared(spec: TaskSpec, root: Path | None = None) -> Task:
    """Load catalog task `spec` as `mvlpt data prepare` left it under `root` (default: data_root())."""
    check_prepared_folder_path(spec, root)
    marker = read_marker(spec, root)
    folder = prepared_folder(spec, root)
    if marker is None:
        raise TaskError(
            f"benchmark task '{spec.task_name}' ({spec.title}) is not prepared: {folder / MARKER_FILE} not found; "
            f"prepare it with: {prepare_command(spec, root)}"
        )

    source = marker["source"]
    data_path = folder if marker["data"] == IN_FOLDER else Path(marker["data"])
    if not data_path.exists():
        if marker["data"] == IN_FOLDER:
            again = prepare_command(spec, root)
        else:
            again = f"{prepare_command(spec, root, from_path='NEW_LOCATION')} --source {source}"
        raise TaskError(
            f"the data of benchmark task '{spec.task_name}' at {data_path} is gone; if it moved, prepare it "
            f"again with: {again}"
        )

    task = load_source(spec, source, data_path, _index_path(source, data_path, folder))
    task.name = spec.task_name

    images = {split: len(samples) for split, samples in task.splits.items()}
    if images != marker.get("images"):
        logger.warning(
            "%s: the data at %s now has %s images, but %s recorded %s when it was prepared",
            spec.task_name,
            data_path,
            images,
            folder / MARKER_FILE,
            marker.get("images"),
        )
    return task


def load_source(spec: TaskSpec, source: str, data_path: Path, index_path: Path | None = None) -> Task:
    """Read `spec` from `data_path` with the reader of `source`, and check its class count."""
    module_name, function_name = READERS[source]
    reader = getattr(importlib.import_module(module_name), function_name)
    if source == "wds":
        task = reader(data_path, spec, index_path=index_path)
    else:
        task = reader(data_path, spec)

    if task.num_classes != spec.num_classes:
        raise TaskError(
            f"{data_path} defines {task.num_classes} classes, but {spec.title} has {spec.num_classes}; "
            "check that the data belongs to this task"
        )
    return task


def download_wds(spec: TaskSpec, folder: Path) -> None:
    """Download the clip-benchmark repository of `spec` into `folder` with the Hugging Face hub client.

    When the hub cannot be reached (HF_HUB_OFFLINE is set, or the connection
    fails), a complete copy already in `folder` is used as it is. Without
    one, raises TaskError naming the repository and the `--from` alternative.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES
    if offline:
        _use_local_copy(spec, folder, "HF_HUB_OFFLINE is set, so the hub client makes no requests")
        return

    from huggingface_hub import snapshot_download

    logger.info("downloading dataset repository %s into %s", spec.wds_repo, folder)
    try:
        snapshot_download(
            repo_id=spec.wds_repo,
            repo_type="dataset",
            local_dir=folder,
            allow_patterns=WDS_DOWNLOAD_PATTERNS,
        )
    except _hub_connection_errors() as error:
        _use_local_copy(spec, folder, f"{type(error).__name__}: {error}")


def _use_local_copy(spec: TaskSpec, folder: Path, reason: str) -> None:
    """Log that the complete copy in `folder` replaces the download, or raise TaskError when there is none."""
    from mvlpt.datasets.wds import is_complete_wds_copy

    if not is_complete_wds_copy(folder):
        raise TaskError(_unreachable_message(spec, reason))
    logger.info(
        "cannot reach the Hugging Face hub (%s); using the complete copy of %s already in %s",
        reason,
        spec.wds_repo,
        folder,
    )


def _unreachable_message(spec: TaskSpec, reason: str) -> str:
    return (
        f"cannot download dataset repository {spec.wds_repo} from the Hugging Face hub ({reason}). "
        f"Supply the files yourself: on a machine with internet, run "
        f"`hf download {spec.wds_repo} --repo-type dataset --local-dir DIR` (huggingface_hub 0.34 or later; "
        f"with older versions `huggingface-cli download {spec.wds_repo} --repo-type dataset --local-dir DIR`, "
        f"or `git clone https://huggingface.co/datasets/{spec.wds_repo} DIR` with git-lfs), copy DIR here, "
        f"then run: mvlpt data prepare {spec.task_name} --from DIR"
    )


def _hub_connection_errors() -> tuple[type[BaseException], ...]:
    # The hub client wraps most network failures in OSError subclasses; a
    # transport error of its HTTP library can still escape from a file download.
    errors: list[type[BaseException]] = [OSError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


def detect_source(spec: TaskSpec, data_path: Path) -> str:
    """Return the source whose layout the folder `data_path` has, among the sources of `spec`.

    A task with one source gets it without a check, so that its reader names
    any missing file. Raises TaskError naming the missing classnames.txt when
    the folder has webdataset shards without it, and otherwise, when no
    layout matches, listing what each source expects.
    """
    if len(spec.sources) == 1:
        return spec.sources[0]

    for source in spec.sources:
        if _has_layout(spec, source, data_path):
            return source

    from mvlpt.datasets.wds import CLASSNAMES_FILE, WDS_SPLITS

    shards = [path for split in WDS_SPLITS for path in (data_path / split).glob("*.tar")]
    if "wds" in spec.sources and shards:
        raise TaskError(
            f"{data_path} has webdataset shards ({shards[0].relative_to(data_path)}) but no {CLASSNAMES_FILE}; "
            f"copy {CLASSNAMES_FILE} from the dataset repository {spec.wds_repo} into {data_path}, or run "
            f"mvlpt data prepare {spec.task_name} --source wds --from {data_path} to list every missing file"
        )

    expected = "; ".join(f"--source {source}: {_expected_layout(spec, source, data_path)}" for source in spec.sources)
    raise TaskError(
        f"{data_path} has none of the layouts {spec.title} can be read from. {expected}. "
        f"Fix the folder, or pass --source to see what one reader misses"
    )


def _has_layout(spec: TaskSpec, source: str, data_path: Path) -> bool:
    """Report whether `data_path` has the files that the reader of `source` looks for first."""
    if source == "wds":
        from mvlpt.datasets.wds import is_wds_folder

        return is_wds_folder(data_path)

    # Only ELEVATER tasks have more than one source, so CoOp's layout is never detected.
    finders = {
        "vision-datasets": lambda: _find_vision_datasets(spec, data_path),
        "manual": lambda: importlib.import_module(READERS["manual"][0]).find_hateful_memes_folder(data_path),
    }
    try:
        finders[source]()
    except TaskError:
        return False
    return True


def _find_vision_datasets(spec: TaskSpec, data_path: Path) -> Path:
    from mvlpt.datasets.vision_datasets import find_dataset_folder, find_layout

    return find_dataset_folder(data_path, find_layout(spec))


def _expected_layout(spec: TaskSpec, source: str, data_path: Path) -> str:
    """Describe the files that `source` expects in `data_path`."""
    if source == "wds":
        from mvlpt.datasets.wds import CLASSNAMES_FILE

        return f"a copy of {spec.wds_repo} with {CLASSNAMES_FILE}, train/*.tar and test/*.tar"
    if source == "vision-datasets":
        from mvlpt.datasets.vision_datasets import find_layout

        layout = find_layout(spec)
        return (
            f"ELEVATER's download with {layout.root_folder}/{layout.index_files['train']}, or that dataset "
            f"folder itself"
        )

    from mvlpt.datasets.hateful_memes import FOLDER_NAME, IMAGE_DIR, TEST_FILES, TRAIN_FILE

    return f"the Hateful Memes release with {TRAIN_FILE}, {TEST_FILES[0]} and {IMAGE_DIR}/, here or in {FOLDER_NAME}/"


def _check_source(spec: TaskSpec, source: str) -> None:
    if source not in SOURCES:
        raise TaskError(f"unknown source '{source}'; use one of: {', '.join(SOURCES)}")
    if source not in spec.sources:
        raise TaskError(
            f"{spec.title} ({spec.qualified_name}) cannot be read from source '{source}'; "
            f"its sources are: {', '.join(spec.sources)}"
        )


def _index_path(source: str, data_path: Path, folder: Path) -> Path | None:
    """Return where the webdataset index goes: next to the data, or in the prepared folder when that is read-only."""
    from mvlpt.datasets.wds import INDEX_FILE

    if source != "wds":
        return None
    if os.access(data_path, os.W_OK):
        return data_path / INDEX_FILE
    folder.mkdir(parents=True, exist_ok=True)
    return folder / INDEX_FILE
