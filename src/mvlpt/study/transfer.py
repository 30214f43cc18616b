"""``mvlpt study transfer``: plan the runs of a transfer study, run the unfinished ones, and analyse the results."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..rundir import write_json_atomic
from ..runtime import RunError
from .analysis import collect_gain_matrices
from .config import TransferConfig
from .executors import make_executor, run_jobs
from .jobs import Job, JobOutcome, check_existing_runs, check_tasks_exist, find_mismatched_runs, plan_transfer
from .report import ANALYSIS_DIR, AnalysisReport, write_report, write_text_atomic
from .similarity import compute_task_similarities

logger = logging.getLogger(__name__)

__all__ = ["FAILURES_FILE", "TransferResult", "format_plan", "plan_study", "read_failures", "run_transfer_study"]

STUDY_FILE = "transfer.yaml"
FAILURES_FILE = "failures.json"
SIMILARITY_CACHE = "similarity.json"


@dataclass
class TransferResult:
    """Outcome of one ``run_transfer_study`` call.

    ``outcomes`` are those of the runs started by this call (none with
    ``analyse_only``); ``failures`` are the failed and blocked ones among them.
    """

    jobs: list[Job]
    outcomes: list[JobOutcome]
    already_finished: int
    failures: list[JobOutcome]
    failures_path: Path
    report: AnalysisReport


def plan_study(config: TransferConfig) -> list[Job]:
    """Check the configuration and that every task exists, then list the study's jobs.

    Missing tasks raise TaskError here, so that neither a dry run nor a real
    run starts with a task that every one of its runs would fail on.
    """
    config.validate()
    check_tasks_exist(config)
    return plan_transfer(config)


def read_failures(output_dir: str | Path) -> dict[str, str]:
    """Return the status (failed or blocked) by job id that ``<output_dir>/failures.json`` records, if it exists."""
    path = Path(output_dir) / FAILURES_FILE
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        return {record["job"]: record["status"] for record in records}
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring %s, which cannot be read: %s", path, error)
        return {}


def format_plan(jobs: Sequence[Job], failures: Mapping[str, str] | None = None) -> str:
    """List the jobs with their directory and state, one per line, after a count.

    The state is finished, other settings (the directory contains a run that
    the study would reject), the status that ``failures`` records for the job
    (failed or blocked, in the latest command), or to do.
    """
    failures = failures or {}
    mismatched = find_mismatched_runs(jobs)
    states = {}
    for job in jobs:
        if job.id in mismatched:
            states[job.id] = f"other settings: {mismatched[job.id]}"
        elif job.is_finished():
            states[job.id] = "finished"
        else:
            states[job.id] = failures.get(job.id, "to do")

    finished = sum(state == "finished" for state in states.values())
    header = f"{len(jobs)} runs, {finished} finished, {len(jobs) - finished} to run"
    failed = sum(state in ("failed", "blocked") for state in states.values())
    if failed:
        header += f" ({failed} of them failed or were blocked in the latest command, see {FAILURES_FILE})"
    if mismatched:
        header += f"; {len(mismatched)} run directories contain runs with other settings, so the study would stop"
    lines = [header]
    for number, job in enumerate(jobs, start=1):
        lines.append(f"run {number}/{len(jobs)}: {job.describe()} -> {job.directory} ({states[job.id]})")
    return "\n".join(lines)


def run_transfer_study(config: TransferConfig, analyse_only: bool = False) -> TransferResult:
    """Run every unfinished job of the study on the configured executor, then write the analysis.

    Finished runs (results.json present) are skipped, so a rerun retries only
    what failed or never ran. Run directories written with other settings raise
    RunError before anything runs, and tasks that cannot be found raise
    TaskError. With ``analyse_only`` nothing is trained and the analysis covers
    the runs that have finished. It raises RunError when none has, because
    output_dir is then most likely mistyped. The failures of this call are
    written to ``<output_dir>/failures.json`` (an empty list when there are none).
    """
    output = Path(config.output_dir)
    if analyse_only:
        config.validate()
        jobs = plan_transfer(config)
    else:
        jobs = plan_study(config)
    check_existing_runs(jobs)
    finished = [job.id for job in jobs if job.is_finished()]
    if analyse_only and not finished:
        raise RunError(
            f"nothing to analyse: none of the {len(jobs)} runs of this study has finished in {output.resolve()}. "
            "Check output_dir, or run the study without --analyse-only first"
        )

    output.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)
    write_text_atomic(output / STUDY_FILE, text)

    failures_path = output / FAILURES_FILE
    outcomes: list[JobOutcome] = []
    if not analyse_only:
        pending = [job for job in jobs if not job.is_finished()]
        logger.info(
            "transfer study %s: %d runs, %d finished, %d to run on the %s executor",
            output, len(jobs), len(finished), len(pending), config.executor,
        )
        if pending:
            with make_executor(config) as executor:
                outcomes = run_jobs(pending, executor, finished)
        _write_failures(failures_path, jobs, outcomes)

    matrices = collect_gain_matrices(config, jobs)
    similarities = compute_task_similarities(config, output / ANALYSIS_DIR / SIMILARITY_CACHE)
    finished_now = sum(job.is_finished() for job in jobs)
    report = write_report(config, matrices, similarities, run_counts=(finished_now, len(jobs)))
    failures = [outcome for outcome in outcomes if not outcome.ok]
    return TransferResult(jobs, outcomes, len(finished), failures, failures_path, report)


def _write_failures(path: Path, jobs: Sequence[Job], outcomes: Sequence[JobOutcome]) -> None:
    by_id = {job.id: job for job in jobs}
    records = []
    for outcome in outcomes:
        if outcome.ok:
            continue
        job = by_id[outcome.job_id]
        records.append(
            {
                "job": job.id,
                "status": outcome.status,
                "kind": job.kind,
                "method": job.method,
                "shots": job.shots,
                "seed": job.seed,
                "source": job.source,
                "target": job.target,
                "directory": job.directory,
                "error": outcome.error,
                "traceback": outcome.traceback,
                "log": outcome.log,
            }
        )
    write_json_atomic(path, records)
