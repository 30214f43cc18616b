"""Executors that run study jobs: in this process, in local worker processes, or as Ray tasks.

Every executor takes the same ``Job`` objects and runs each with
``mvlpt.study.jobs.run_job``; ``run_jobs`` hands them over in dependency order
and collects the outcomes. A job that fails is reported and the others go on.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool

from ..runtime import RunError
from .config import TransferConfig
from .jobs import Job, JobOutcome, run_job

logger = logging.getLogger(__name__)

__all__ = [
    "Executor",
    "ProcessPoolJobExecutor",
    "RayExecutor",
    "SequentialExecutor",
    "available_cores",
    "make_executor",
    "run_jobs",
]

RAY_INSTALL = 'pip install "mvlpt[ray]"'


class Executor(ABC):
    """Runs submitted jobs and returns their outcomes one at a time, in the order they finish."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, exc_value, exc_traceback) -> None:
        self.close(wait=exc_type is None)

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Queue ``job`` to run."""

    @abstractmethod
    def wait_one(self) -> tuple[Job, JobOutcome]:
        """Block until one submitted job has finished or failed, and return it with its outcome."""

    def close(self, wait: bool = True) -> None:
        """Release the executor's processes or cluster connection; ``wait`` waits for running jobs to end."""


class SequentialExecutor(Executor):
    """Runs each job in this process, one after another, in the order submitted.

    With ``threads`` set, torch uses that many threads until close(), which
    restores the previous number.
    """

    def __init__(self, threads: int | None = None) -> None:
        self._queue: list[Job] = []
        self._previous_threads: int | None = None
        if threads is not None:
            import torch

            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def wait_one(self) -> tuple[Job, JobOutcome]:
        job = self._queue.pop(0)
        return job, run_job(job)

    def close(self, wait: bool = True) -> None:
        if self._previous_threads is not None:
            _set_torch_threads(self._previous_threads)


def available_cores() -> int:
    """Return the CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# prctl option that makes the kernel signal a process when its parent ends (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def _init_worker(threads: int) -> None:
    """Set a worker's torch threads and, on Linux, have the worker terminated when the study process ends.

    Without this, killing the study (e.g. ``kill PID`` of a background run)
    would leave each worker training until its current run is done, holding
    that run's lock while a restarted study wants it.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            logger.warning("worker %d will outlive the study process: prctl failed (errno %d)", os.getpid(), ctypes.get_errno())
    _set_torch_threads(threads)


class ProcessPoolJobExecutor(Executor):
    """Runs jobs in ``workers`` processes started with the spawn method, each with ``threads`` torch threads.

    ``threads`` None gives each worker the available cores divided by ``workers``, at least 1.

    Spawned workers start from a fresh interpreter, so they share no torch or
    CUDA state with this process. A worker that dies (for example killed for
    lack of memory) breaks the whole pool: every job still in it is reported
    failed, and later jobs start in a new pool.
    """

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.workers = workers
        self.threads = threads if threads is not None else max(1, available_cores() // workers)
        self._pool = self._start_pool()
        self._broken = False
        self._futures: dict[concurrent.futures.Future, tuple[Job, concurrent.futures.ProcessPoolExecutor]] = {}
        logger.info("started %d worker processes with %d torch threads each", workers, self.threads)

    def _start_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads,),
        )

    def submit(self, job: Job) -> None:
        if self._broken:
            self._pool = self._start_pool()
            self._broken = False
        self._futures[self._pool.submit(run_job, job)] = (job, self._pool)

    def wait_one(self) -> tuple[Job, JobOutcome]:
        done, _ = concurrent.futures.wait(self._futures, return_when=concurrent.futures.FIRST_COMPLETED)
        future = next(iter(done))
        job, pool = self._futures.pop(future)
        try:
            return job, future.result()
        except BrokenProcessPool as error:
            if pool is self._pool:
                # The pool cannot take new jobs after a worker died; the next submission starts a new one.
                self._broken = True
                pool.shutdown(wait=False, cancel_futures=True)
            return job, _lost_job(job, f"a worker process ended abruptly (for example killed for lack of memory): {error}")
        except Exception as error:
            return job, _lost_job(job, f"{type(error).__name__}: {error}")

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _run_on_ray(job: Job, threads: int) -> JobOutcome:
    _set_torch_threads(threads)
    return run_job(job)


class RayExecutor(Executor):
    """Runs each job as a Ray task that reserves ``num_cpus`` CPUs.

    ``address`` None starts a local Ray instance, and "auto" or a cluster address
    joins that cluster. close() stops the local instance or disconnects from the
    cluster. When Ray is already initialised in this process, that instance is
    used and left running. Every node needs mvlpt installed, and the study's
    output directory and task folders at the same paths.
    """

    def __init__(self, address: str | None, num_cpus: float) -> None:
        try:
            import ray
        except ImportError:
            raise RunError(
                f"executor=ray needs Ray, which is not installed. Install it with: {RAY_INSTALL}, "
                "or set executor=local"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address is None:
                # A local instance for this study only; it needs no dashboard.
                ray.init(include_dashboard=False)
                logger.info("started a local Ray instance: %s", ray.cluster_resources())
            else:
                ray.init(address=address)
                logger.info("joined the Ray cluster at %s: %s", address, ray.cluster_resources())
            self._started = True
        self._remote = ray.remote(num_cpus=num_cpus)(_run_on_ray)
        self._threads = max(1, int(num_cpus))
        self._pending: dict[object, Job] = {}

    def submit(self, job: Job) -> None:
        self._pending[self._remote.remote(job, self._threads)] = job

    def wait_one(self) -> tuple[Job, JobOutcome]:
        ready, _ = self._ray.wait(list(self._pending), num_returns=1)
        reference = ready[0]
        job = self._pending.pop(reference)
        try:
            return job, self._ray.get(reference)
        except Exception as error:
            # run_job catches the run's own errors, so this is a lost worker or node.
            return job, _lost_job(job, f"the Ray task failed: {type(error).__name__}: {error}")

    def close(self, wait: bool = True) -> None:
        for reference in self._pending:
            self._ray.cancel(reference)
        self._pending.clear()
        if self._started:
            self._ray.shutdown()


def _lost_job(job: Job, error: str) -> JobOutcome:
    return JobOutcome(job.id, "failed", error=error, log=None)


def make_executor(config: TransferConfig) -> Executor:
    """Create the executor that ``config.executor`` and its settings name."""
    if config.executor == "ray":
        return RayExecutor(config.ray_address, config.ray_num_cpus)
    if config.workers == 1:
        return SequentialExecutor(config.threads)
    return ProcessPoolJobExecutor(config.workers, config.threads)


def run_jobs(jobs: Sequence[Job], executor: Executor, finished: Iterable[str] = ()) -> list[JobOutcome]:
    """Run ``jobs`` on ``executor``, each once the job it depends on has finished, and return their outcomes.

    ``finished`` lists the ids of jobs already finished, whose dependants may start
    at once. A job whose dependency failed is not run; its outcome is "blocked".
    A failed job does not stop the others.
    """
    from tqdm.auto import tqdm

    done = set(finished)
    failed: set[str] = set()
    waiting = list(jobs)
    outcomes: list[JobOutcome] = []
    in_flight = 0
    with tqdm(total=len(waiting), desc="transfer study", unit="run", disable=None) as progress:
        while True:
            still_waiting = []
            for job in waiting:
                if job.depends_on is None or job.depends_on in done:
                    executor.submit(job)
                    in_flight += 1
                elif job.depends_on in failed:
                    error = f"not run, because {job.depends_on}, whose prompt it starts from, did not finish"
                    logger.error("%s blocked: %s", job.id, error)
                    failed.add(job.id)
                    outcomes.append(JobOutcome(job.id, "blocked", error=error))
                    progress.update(1)
                else:
                    still_waiting.append(job)
            waiting = still_waiting
            if in_flight == 0:
                break

            job, outcome = executor.wait_one()
            in_flight -= 1
            outcomes.append(outcome)
            if outcome.ok:
                done.add(job.id)
                logger.info("finished %s in %.1f s (%d of %d to run)", job.id, outcome.seconds, len(outcomes), len(jobs))
            else:
                failed.add(job.id)
                logger.error("%s failed: %s (log: %s)", job.id, outcome.error, outcome.log)
            progress.update(1)
            progress.set_postfix(failed=len(failed))

    if waiting:
        raise ValueError(f"jobs depend on jobs that are neither planned nor finished: {[job.id for job in waiting[:3]]}")
    return outcomes
