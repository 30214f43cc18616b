"""``mvlpt study transfer``: plan the runs of a transfer study, run the unfinished ones, and analyse the results."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..rundir import write_json_atomic
from .analysis import collect_gain_matrices
from .config import TransferConfig
from .executors import make_executor, run_jobs
from .jobs import Job, JobOutcome, check_existing_runs, plan_transfer
from .report import ANALYSIS_DIR, AnalysisReport, write_report, write_text_atomic
from .similarity import compute_task_similarities

logger = logging.getLogger(__name__)

__all__ = ["FAILURES_FILE", "TransferResult", "format_plan", "run_transfer_study"]

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


def format_plan(jobs: Sequence[Job]) -> str:
    """List the jobs with their directory and whether each has finished, one per line, after a count."""
    finished = sum(job.is_finished() for job in jobs)
    lines = [f"{len(jobs)} runs, {finished} finished, {len(jobs) - finished} to run"]
    for number, job in enumerate(jobs, start=1):
        status = "finished" if job.is_finished() else "to do"
        lines.append(f"run {number}/{len(jobs)}: {job.describe()} -> {job.directory} ({status})")
    return "\n".join(lines)


def run_transfer_study(config: TransferConfig, analyse_only: bool = False) -> TransferResult:
    """Run every unfinished job of the study on the configured executor, then write the analysis.

    Finished runs (results.json present) are skipped, so a rerun retries only
    what failed or never ran. Run directories written with other settings raise
    RunError before anything runs. With ``analyse_only`` nothing is trained and
    the analysis covers the runs that have finished. The failures of this call
    are written to ``<output_dir>/failures.json`` (an empty list when there are none).
    """
    config.validate()
    jobs = plan_transfer(config)
    check_existing_runs(jobs)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)
    write_text_atomic(output / STUDY_FILE, text)

    finished = [job.id for job in jobs if job.is_finished()]
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
    report = write_report(config, matrices, similarities)
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
