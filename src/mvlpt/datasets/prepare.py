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
    """Return the folder that holds the marker, and any downloaded data, of catalog task `spec`."""
    base = data_root() if root is None else Path(root).expanduser()
    return base / BENCHMARKS_DIR / spec.suite / spec.name


def prepare_command(spec: TaskSpec, root: Path | None = None) -> str:
    """Return the `mvlpt data prepare` command for `spec`, with --root when `root` is not the default data root."""
    command = f"mvlpt data prepare {spec.task_name}"
    if root is not None and Path(root).expanduser().resolve() != data_root().resolve():
        command += f" --root {root}"
    if spec.sources[0] not in ("wds", "manual"):
        command += " --from DIR"
    return command


def read_marker(spec: TaskSpec, root: Path | None = None) -> dict | None:
    """Return the marker of a prepared task, or None when `spec` is not prepared under `root`."""
    path = prepared_folder(spec, root) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TaskError(f"cannot read {path}: {error}; run {prepare_command(spec, root)} again") from error


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
    source = source or _default_source(spec, from_path)
    _check_source(spec, source)

    if from_path is not None:
        data_path = Path(from_path).expanduser().resolve()
        if not data_path.exists():
            raise TaskError(f"--from {from_path}: folder {data_path} not found; give the folder that contains the data")
    else:
        data_path = folder
        if source == "wds":
            download_wds(spec, folder)

    try:
        task = load_source(spec, source, data_path, _index_path(source, data_path, folder))
    except TaskError as error:
        if from_path is None and source != "wds":
            raise TaskError(
                f"{error}. mvlpt does not download {spec.title} from this source: put the files in {folder}, "
                f"or give their folder with: mvlpt data prepare {spec.task_name} --source {source} --from DIR"
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
        raise TaskError(
            f"the data of benchmark task '{spec.task_name}' at {data_path} is gone; "
            f"prepare it again with: {prepare_command(spec, root)}"
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

    Raises TaskError naming the repository and the `--from` alternative when
    the hub cannot be reached: HF_HUB_OFFLINE is set, or the connection fails.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES
    if offline:
        raise TaskError(_unreachable_message(spec, "HF_HUB_OFFLINE is set, so the hub client makes no requests"))

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
        raise TaskError(_unreachable_message(spec, f"{type(error).__name__}: {error}")) from error


def _unreachable_message(spec: TaskSpec, reason: str) -> str:
    return (
        f"cannot download dataset repository {spec.wds_repo} from the Hugging Face hub ({reason}). "
        f"Supply the files yourself: on a machine with internet, run "
        f"`hf download {spec.wds_repo} --repo-type dataset --local-dir DIR` (huggingface_hub's command line) "
        f"(or `git clone https://huggingface.co/datasets/{spec.wds_repo} DIR` with git-lfs), copy DIR here, "
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


def _default_source(spec: TaskSpec, from_path: Path | None) -> str:
    from mvlpt.datasets.wds import is_wds_folder

    if from_path is not None and spec.wds_repo and is_wds_folder(Path(from_path).expanduser()):
        return "wds"
    if from_path is not None and spec.sources[0] == "wds" and len(spec.sources) > 1:
        return spec.sources[1]
    return spec.sources[0]


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
