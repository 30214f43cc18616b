"""The jobs of a transfer study: what each training run is, where it writes, and how one is run.

A job is a picklable description of one ``mvlpt.training.train`` run, so any
executor (this process, a worker process, a Ray task) can run it with
``run_job``. There are two kinds:

- ``single``: one task trained alone from the method's own initialisation. Its
  prompt is the source prompt of that task's pairs, and its score is that
  task's baseline, because both are the same run (same task, shots and seed).
- ``pair``: the target task trained alone, starting from the prompt of the
  source task's single run with the same method, shots and seed.

Pair jobs depend on their source's single job; ``depends_on`` names it.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pipeline import task_directory_name
from .config import TransferConfig

logger = logging.getLogger(__name__)

__all__ = [
    "JOB_LOG",
    "Job",
    "JobOutcome",
    "check_existing_runs",
    "check_tasks_exist",
    "find_mismatched_runs",
    "pair_directory",
    "plan_transfer",
    "run_job",
    "single_directory",
]

SINGLE = "single"
PAIR = "pair"

# Log file of a job in its run directory; each attempt appends to it.
JOB_LOG = "job.log"

# Lines of the traceback kept in a failure record; the job's log has all of it.
TRACEBACK_LINES = 15


@dataclass(frozen=True)
class Job:
    """One training run of a transfer study, with everything needed to run it in any process.

    ``target`` is the task the run trains on, as written in the study's tasks, and
    ``source`` the task whose prompt initialises a pair run (None for a single run).
    ``run_config`` is the run's RunConfig as a dict, with absolute paths, and
    ``directory`` its output directory. ``depends_on`` is the id of the job that
    must finish first.
    """

    kind: str
    method: str
    shots: int
    seed: int
    target: str
    source: str | None
    directory: str
    run_config: dict[str, Any] = field(repr=False)
    depends_on: str | None = None
    id: str = ""

    def describe(self) -> str:
        """Describe the run in a few words for logs and the dry-run listing."""
        start = "from scratch" if self.source is None else f"from the prompt of {self.source}"
        return f"{self.method}, {self.shots} shots, seed {self.seed}: {self.target} {start}"

    def is_finished(self) -> bool:
        """Check whether the run's results.json exists."""
        return (Path(self.directory) / "results.json").is_file()


@dataclass
class JobOutcome:
    """Outcome of one job: finished, failed (with the error) or blocked (its source job failed)."""

    job_id: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "finished"


def single_directory(output_dir: Path, method: str, shots: int, seed: int, task: str) -> Path:
    """Return ``<output_dir>/<method>/<k>shot/single/<task>/seed<s>``, the run of ``task`` alone."""
    return output_dir / method / f"{shots}shot" / SINGLE / task_directory_name(task) / f"seed{seed}"


def pair_directory(output_dir: Path, method: str, shots: int, seed: int, source: str, target: str) -> Path:
    """Return ``<output_dir>/<method>/<k>shot/pair/<source>/<target>/seed<s>``, the run of ``target`` from ``source``."""
    return (
        output_dir / method / f"{shots}shot" / PAIR / task_directory_name(source) / task_directory_name(target) / f"seed{seed}"
    )


def plan_transfer(config: TransferConfig) -> list[Job]:
    """List every job of the study: for each method and shots, the single runs, then the pairs.

    The diagonal (a task as its own source) is left out: it would measure
    longer training on the same images, not transfer. Run configurations
    carry absolute paths (the output directory and the task folders), so a job
    runs the same in any working directory, as Ray workers need.
    """
    from ..training import absolute_task_paths

    output = Path(config.output_dir).resolve()
    jobs = []
    for method in config.methods:
        for shots in config.shots:
            singles = {}
            for task in config.tasks:
                for seed in config.seeds:
                    directory = single_directory(output, method, shots, seed, task)
                    run = config.run_config(method, task, shots, seed, directory)
                    absolute_task_paths(run)
                    job = _job(output, SINGLE, method, shots, seed, task, None, directory, run.to_dict(), None)
                    singles[(task, seed)] = job
                    jobs.append(job)
            for source in config.tasks:
                for target in config.tasks:
                    if source == target:
                        continue
                    for seed in config.seeds:
                        source_job = singles[(source, seed)]
                        init = Path(source_job.directory) / "prompt"
                        directory = pair_directory(output, method, shots, seed, source, target)
                        run = config.run_config(method, target, shots, seed, directory, init)
                        absolute_task_paths(run)
                        jobs.append(_job(output, PAIR, method, shots, seed, target, source, directory, run.to_dict(), source_job.id))
    return jobs


def _job(
    output: Path,
    kind: str,
    method: str,
    shots: int,
    seed: int,
    target: str,
    source: str | None,
    directory: Path,
    run_config: dict[str, Any],
    depends_on: str | None,
) -> Job:
    # The id is the run directory below the output directory, which is unique and readable.
    job_id = directory.relative_to(output).as_posix()
    return Job(kind, method, shots, seed, target, source, str(directory), run_config, depends_on, job_id)


def find_mismatched_runs(jobs: Sequence[Job]) -> dict[str, str]:
    """Return, by job id, the run directories of the plan that contain a run of other settings, with the keys that differ.

    Keys that do not change what a run computes (mvlpt.rundir.IGNORED_KEYS) may differ.
    """
    from ..config import load_config
    from ..rundir import IGNORED_KEYS, differing_keys

    mismatched = {}
    for job in jobs:
        path = Path(job.directory) / "config.yaml"
        if not path.exists():
            continue
        differing = [key for key in differing_keys(load_config(path).to_dict(), job.run_config) if key not in IGNORED_KEYS]
        if differing:
            mismatched[job.id] = f"{', '.join(differing[:5])} differ"
    return mismatched


def check_existing_runs(jobs: Sequence[Job]) -> None:
    """Raise RunError when run directories of the plan contain runs of other settings.

    Checking every directory before any job starts gives one error for a changed
    study, instead of one failed job per run.
    """
    from ..runtime import RunError

    mismatched = find_mismatched_runs(jobs)
    if not mismatched:
        return
    directories = {job.id: job.directory for job in jobs}
    listed = [f"{directories[job_id]} ({keys})" for job_id, keys in mismatched.items()]
    text = "; ".join(listed[:3]) + (f"; and {len(listed) - 3} more" if len(listed) > 3 else "")
    raise RunError(
        f"run directories of this study contain runs with other settings ({len(listed)} found): {text}. "
        "Use another output_dir for the changed settings, or delete those run directories"
    )


def check_tasks_exist(config: TransferConfig) -> None:
    """Raise TaskError naming every task of the study that cannot be found, before any run starts.

    Built-in names, prepared benchmark tasks (their marker file exists), image
    folders and existing .csv files pass without reading any image. Any other
    spec goes to mvlpt.builtin.resolve_task, whose error names the fix, such as
    the prepare command of an unprepared benchmark task. It returns without
    reading images for such specs, because it fails before loading anything.
    """
    from ..builtin import BUILTIN_TASKS, resolve_task
    from ..datasets.catalog import is_catalog_name, lookup
    from ..datasets.prepare import read_marker
    from ..tasks import TaskError

    root_setting = (config.base.get("data") or {}).get("root")
    root = Path(root_setting) if root_setting else None
    problems = []
    for spec in config.tasks:
        path = Path(spec).expanduser()
        try:
            if spec.lower() in BUILTIN_TASKS:
                continue
            if is_catalog_name(spec):
                if read_marker(lookup(spec), root) is not None:
                    continue
            elif path.is_dir() or (path.suffix.lower() == ".csv" and path.is_file()):
                continue
            resolve_task(spec, root)
        except TaskError as error:
            problems.append(str(error))
    if problems:
        raise TaskError(f"{len(problems)} of the study's tasks cannot be used: " + "; ".join(problems))


def train_job(job: Job) -> None:
    """Train the job's run with mvlpt.training.train, which skips a run whose results.json exists."""
    from ..config import config_from_dict
    from ..training import train

    train(config_from_dict(job.run_config))


def run_job(job: Job) -> JobOutcome:
    """Run one job and report its outcome; an exception in the run is caught and returned as a failure.

    The mvlpt log records of the run, and the traceback of a failure, are
    appended to ``job.log`` in the run directory. KeyboardInterrupt is not
    caught, so an interrupted study stops.
    """
    started = time.perf_counter()
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / JOB_LOG

    package_logger = logging.getLogger("mvlpt")
    previous_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        # Worker processes have no logging set up; the job log still gets the INFO records.
        package_logger.setLevel(logging.INFO)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    package_logger.addHandler(handler)
    try:
        logger.info("job %s started: %s", job.id, job.describe())
        train_job(job)
    except Exception as error:
        logger.error("job %s failed", job.id, exc_info=True)
        lines = "".join(traceback.format_exception(error)).splitlines()
        return JobOutcome(
            job.id,
            "failed",
            seconds=time.perf_counter() - started,
            error=f"{type(error).__name__}: {error}",
            traceback="\n".join(lines[-TRACEBACK_LINES:]),
            log=str(log_path),
        )
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        handler.close()
    return JobOutcome(job.id, "finished", seconds=time.perf_counter() - started, log=str(log_path))
