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
import threading
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

# Seconds close(wait=False) waits for terminated workers to end before killing them.
TERMINATE_GRACE_SECONDS = 5.0

# Set in each worker process by _init_worker: where the worker reports the jobs it starts, and the
# flag that close(wait=False) sets so that no worker starts another job.
_started_jobs = None
_stop_requested = None


def _init_worker(threads: int, started_jobs, stop_requested) -> None:
    """Prepare a worker process: torch threads, signals, and the channels shared with the study process.

    The worker ignores SIGINT, because Ctrl-C reaches every process of the
    terminal's process group: the study process alone reacts to it, and ends
    the workers. On Linux the worker is also terminated when the study process
    ends. Without this, killing the study (e.g. ``kill PID`` of a background
    run) would leave each worker training until its current run is done,
    holding that run's lock while a restarted study wants it.
    """
    global _started_jobs, _stop_requested

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            logger.warning("worker %d will outlive the study process: prctl failed (errno %d)", os.getpid(), ctypes.get_errno())
    _started_jobs = started_jobs
    _stop_requested = stop_requested
    _set_torch_threads(threads)

    # tqdm's default lock is a multiprocessing semaphore, which a terminated worker cannot release, so the
    # resource tracker would warn about it at exit. Progress bars of different workers may then interleave.
    from tqdm.auto import tqdm

    tqdm.set_lock(threading.RLock())


def _run_in_worker(job: Job) -> JobOutcome:
    """Run ``job`` in a worker process, after reporting its start, unless the study is stopping."""
    if _stop_requested.is_set():
        # The study process is closing the pool and never reads this outcome.
        return _lost_job(job, "not started, because the study was stopping")
    _started_jobs.put((job.id, os.getpid()))
    return run_job(job)


class ProcessPoolJobExecutor(Executor):
    """Runs jobs in ``workers`` processes started with the spawn method, each with ``threads`` torch threads.

    ``threads`` None gives each worker the available cores divided by ``workers``, at least 1.

    Spawned workers start from a fresh interpreter, so they share no torch or
    CUDA state with this process. A worker that dies (for example killed for
    lack of memory) breaks the whole pool, and the pool then terminates its
    other workers. The job that ran in the dead worker is reported failed. The
    other jobs of that pool, started or not, go to a new pool, each at most
    once, and a started one resumes from its last saved epoch. close(wait=False)
    terminates the workers at once, so that Ctrl-C loses at most the current
    epoch of each running job and starts no other job.
    """

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.workers = workers
        self.threads = threads if threads is not None else max(1, available_cores() // workers)
        self._context = multiprocessing.get_context("spawn")
        # Workers send (job id, worker pid) here as each job starts.
        self._started_jobs = self._context.SimpleQueue()
        self._stop_requested = self._context.Event()
        self._job_workers: dict[str, int] = {}
        self._resubmitted: set[str] = set()
        self._ready: list[tuple[Job, JobOutcome]] = []
        self._futures: dict[concurrent.futures.Future, tuple[Job, concurrent.futures.ProcessPoolExecutor]] = {}
        self._pool = self._start_pool()
        logger.info("started %d worker processes with %d torch threads each", workers, self.threads)

    def _start_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(self.threads, self._started_jobs, self._stop_requested),
        )

    def submit(self, job: Job) -> None:
        self._futures[self._pool.submit(_run_in_worker, job)] = (job, self._pool)

    def wait_one(self) -> tuple[Job, JobOutcome]:
        while not self._ready:
            done, _ = concurrent.futures.wait(self._futures, return_when=concurrent.futures.FIRST_COMPLETED)
            self._read_started_jobs()
            future = next(iter(done))
            job, pool = self._futures[future]
            if isinstance(future.exception(), BrokenProcessPool):
                self._recover_from_broken(pool)
                continue
            del self._futures[future]
            self._job_workers.pop(job.id, None)
            try:
                self._ready.append((job, future.result()))
            except Exception as error:
                self._ready.append((job, _lost_job(job, f"{type(error).__name__}: {error}")))
        return self._ready.pop(0)

    def _read_started_jobs(self) -> None:
        # Read often: a worker blocks on a full pipe, and every job start writes to it.
        while not self._started_jobs.empty():
            job_id, pid = self._started_jobs.get()
            self._job_workers[job_id] = pid

    def _recover_from_broken(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        """Sort the jobs of a pool that lost a worker: report the dead worker's job failed, resubmit the others.

        When it cannot be determined which worker died on its own (each was
        terminated with SIGTERM, as the pool terminates the others), every job
        that had started is reported failed.
        """
        processes = _pool_processes(pool)
        # The pool marks every one of its futures before it terminates the other workers.
        lost = {future: job for future, (job, owner) in self._futures.items() if owner is pool}
        concurrent.futures.wait(lost)
        pool.shutdown(wait=True)
        if pool is self._pool:
            self._pool = self._start_pool()

        self._read_started_jobs()
        dead = {process.pid: process.exitcode for process in processes if process.exitcode not in (0, -signal.SIGTERM)}

        for future, job in lost.items():
            del self._futures[future]
            if not isinstance(future.exception(), BrokenProcessPool):
                self._ready.append((job, future.result()))
                continue
            worker = self._job_workers.get(job.id)
            started = worker is not None
            if started and (worker in dead or not dead):
                error = f"its worker process (pid {worker}) ended abruptly{_exit_text(dead.get(worker))}"
                self._ready.append((job, _lost_job(job, error)))
            elif job.id in self._resubmitted:
                error = "a worker process ended abruptly in each of two process pools that held this job"
                self._ready.append((job, _lost_job(job, error)))
            else:
                self._job_workers.pop(job.id, None)
                self._resubmitted.add(job.id)
                logger.warning("%s goes to a new process pool, because a worker of its pool ended abruptly", job.id)
                self.submit(job)

    def close(self, wait: bool = True) -> None:
        if wait:
            self._pool.shutdown(wait=True)
            return

        # Stop the running jobs now: each saved its state after its last epoch, and a rerun resumes from there.
        self._stop_requested.set()
        processes = _pool_processes(self._pool)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(TERMINATE_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()


def _exit_text(exit_code: int | None) -> str:
    if exit_code is None:
        return ", for example killed for lack of memory"
    if exit_code < 0:
        return f", killed by {signal.Signals(-exit_code).name} (for example for lack of memory)"
    return f" with exit code {exit_code}"


def _pool_processes(pool: concurrent.futures.ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """Return the worker processes of ``pool``.

    NOTE: ProcessPoolExecutor has no public way to reach its workers before
    Python 3.14 (terminate_workers), so this reads its private ``_processes``.
    """
    return list((getattr(pool, "_processes", None) or {}).values())


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
                logger.info("finished %s in %.1f s (%d of %d runs done)", job.id, outcome.seconds, len(outcomes), len(jobs))
            else:
                failed.add(job.id)
                logger.error("%s failed: %s (log: %s)", job.id, outcome.error, outcome.log)
            progress.update(1)
            progress.set_postfix(failed=len(failed))

    if waiting:
        raise ValueError(f"jobs depend on jobs that are neither planned nor finished: {[job.id for job in waiting[:3]]}")
    return outcomes
