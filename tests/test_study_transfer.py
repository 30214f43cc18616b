"""The transfer study end to end: planning, the local and Ray executors, resuming, failures, the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mvlpt.cli import main
from mvlpt.config import ConfigError, format_fields_table
from mvlpt.runtime import RunError
from mvlpt.study.analysis import collect_gain_matrices
from mvlpt.study.config import TransferConfig, load_transfer_config, transfer_config_from_dict
from mvlpt.study.executors import ProcessPoolJobExecutor, SequentialExecutor, make_executor
from mvlpt.study.jobs import plan_transfer, train_job
from mvlpt.study.similarity import TaskSimilarities
from mvlpt.study.transfer import run_transfer_study
from conftest import write_image_task

REPOSITORY = Path(__file__).resolve().parents[1]
TASK_NAMES = ["sky", "grass", "fruit"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return [
        write_image_task(root / "sky", {"blue": (30, 30, 200), "white": (230, 230, 230)}, 0, train=4, test=2),
        write_image_task(root / "grass", {"green": (30, 200, 30), "brown": (120, 80, 30)}, 1, train=4, test=2),
        write_image_task(root / "fruit", {"apple": (200, 30, 30), "lemon": (220, 220, 40)}, 2, train=4, test=2),
    ]


def study_dict(tasks, out, **changes):
    data = {
        "output_dir": str(out),
        "tasks": [str(task) for task in tasks],
        "methods": ["coop"],
        "shots": [2],
        "seeds": [1],
        "similarity_images": 4,
        "base": {
            "backbone": {"model": "mvlpt:tiny-vit", "pretrained": None},
            "prompt": {"coop": {"n_ctx": 4}},
            "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "precision": "fp32"},
        },
    }
    data.update(changes)
    return data


def study_config(tasks, out, **changes) -> TransferConfig:
    return transfer_config_from_dict(study_dict(tasks, out, **changes))


def count_runs(monkeypatch, fail=lambda job: False, interrupt_after=None):
    """Wrap the training of each job: record its id, raise for the jobs where ``fail(job)`` is true, and
    raise KeyboardInterrupt when a job starts after ``interrupt_after`` others, as Ctrl-C would."""
    import mvlpt.study.jobs as jobs_module

    started = []

    def wrapped(job):
        if interrupt_after is not None and len(started) == interrupt_after:
            raise KeyboardInterrupt
        started.append(job.id)
        if fail(job):
            raise RuntimeError(f"injected failure in {job.id}")
        train_job(job)

    monkeypatch.setattr(jobs_module, "train_job", wrapped)
    return started


@pytest.fixture()
def no_similarity(monkeypatch):
    """Replace the similarity computation by zeros, for tests about running jobs that need no similarity."""

    def zeros(config, cache_path):
        count = len(config.tasks)
        labels = [Path(task).name for task in config.tasks]
        return TaskSimilarities(labels, np.zeros((count, count)), np.zeros((count, count)))

    monkeypatch.setattr("mvlpt.study.transfer.compute_task_similarities", zeros)


@pytest.fixture(scope="module")
def finished(tasks, tmp_path_factory):
    """A study run once for the module: three tasks, coop, 2 shots, seed 1, one run at a time."""
    config = study_config(tasks, tmp_path_factory.mktemp("study") / "out")
    result = run_transfer_study(config)
    return config, result


def gains(config):
    (matrix,) = collect_gain_matrices(config, plan_transfer(config))
    return matrix.gain


# Planning ---------------------------------------------------------------------------------


def test_plan_lists_singles_then_pairs(tasks, tmp_path):
    config = study_config(tasks, tmp_path / "out", methods=["coop", "vpt"], seeds=[1, 2])
    jobs = plan_transfer(config)
    # Per method: 3 tasks x 2 seeds single runs, then 3 x 2 ordered pairs x 2 seeds.
    assert len(jobs) == 2 * (6 + 12)
    assert [job.kind for job in jobs[:6]] == ["single"] * 6
    assert len({job.id for job in jobs}) == len(jobs)

    pair = next(job for job in jobs if job.kind == "pair" and job.seed == 2)
    source = next(job for job in jobs if job.id == pair.depends_on)
    assert source.kind == "single"
    assert (source.target, source.seed, source.method) == (pair.source, 2, pair.method)
    assert pair.run_config["init"] == str(Path(source.directory) / "prompt")
    assert pair.run_config["data"]["tasks"] == [str(Path(pair.target).resolve())]
    assert Path(pair.directory).is_absolute()
    assert pair.id == f"coop/2shot/pair/{Path(pair.source).name}/{Path(pair.target).name}/seed2"
    assert not any(job.kind == "pair" and job.source == job.target for job in jobs)


def test_jobs_pickle(tasks, tmp_path):
    import pickle

    job = plan_transfer(study_config(tasks, tmp_path / "out"))[-1]
    assert pickle.loads(pickle.dumps(job)) == job


# End to end, local executor ----------------------------------------------------------------


def test_study_runs_every_job(finished):
    config, result = finished
    assert len(result.jobs) == 9
    assert [outcome.status for outcome in result.outcomes] == ["finished"] * 9
    assert result.failures == []
    assert json.loads(result.failures_path.read_text()) == []
    for job in result.jobs:
        results = json.loads((Path(job.directory) / "results.json").read_text())
        expected_init = None if job.kind == "single" else job.run_config["init"]
        assert results["init"] == expected_init
        assert (Path(job.directory) / "job.log").read_text().count("started") == 1
    assert np.isfinite(gains(config)[~np.eye(3, dtype=bool)]).all()


def test_study_writes_analysis(finished):
    config, result = finished
    analysis = Path(config.output_dir) / "analysis"
    names = {
        "gain_matrix-coop-2shot.csv", "gain_matrix-coop-2shot.png", "gain_matrix-coop-2shot.svg",
        "visual_similarity.csv", "visual_similarity.png", "visual_similarity.svg",
        "label_similarity.csv", "label_similarity.png", "label_similarity.svg",
        "pairs.csv", "correlations.csv", "best_sources.csv", "groups.csv", "summary.md", "similarity.json",
    }
    assert names <= {path.name for path in analysis.iterdir()}
    assert (analysis / "gain_matrix-coop-2shot.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (analysis / "gain_matrix-coop-2shot.svg").read_text()
    assert result.report.summary.startswith("# Task transfer study")
    assert "Runs finished: 9 of 9 planned." in result.report.summary
    assert yaml.safe_load((Path(config.output_dir) / "transfer.yaml").read_text())["tasks"] == config.tasks


def test_rerun_trains_nothing(finished, monkeypatch):
    config, _ = finished
    started = count_runs(monkeypatch)
    result = run_transfer_study(config)
    assert started == []
    assert result.outcomes == []
    assert result.already_finished == 9


def test_resume_runs_only_missing(tasks, tmp_path, monkeypatch, no_similarity):
    config = study_config(tasks[:2], tmp_path / "out")
    first = count_runs(monkeypatch, interrupt_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_transfer_study(config)
    finished_before = {job.id for job in plan_transfer(config) if job.is_finished()}
    assert finished_before == set(first)
    assert len(finished_before) == 3

    rerun = count_runs(monkeypatch)
    result = run_transfer_study(config)
    all_jobs = {job.id for job in plan_transfer(config)}
    assert rerun == sorted(all_jobs - finished_before)
    assert len(rerun) == 1
    assert result.already_finished == 3
    assert [outcome.status for outcome in result.outcomes] == ["finished"]


def test_failed_pair_reported_and_retried(tasks, tmp_path, monkeypatch, no_similarity):
    config = study_config(tasks[:2], tmp_path / "out")
    failing = "coop/2shot/pair/sky/grass/seed1"
    started = count_runs(monkeypatch, fail=lambda job: job.id == failing)
    result = run_transfer_study(config)

    assert len(started) == 4
    assert [outcome.job_id for outcome in result.failures] == [failing]
    assert sum(outcome.ok for outcome in result.outcomes) == 3
    (record,) = json.loads(result.failures_path.read_text())
    assert record["job"] == failing
    assert record["status"] == "failed"
    assert record["error"] == f"RuntimeError: injected failure in {failing}"
    assert "RuntimeError" in record["traceback"]
    assert "Traceback" in Path(record["log"]).read_text()

    matrix = gains(config)
    assert np.isnan(matrix[0, 1])
    assert np.isfinite(matrix[1, 0])
    assert "Pairs with a gain: 1 of 2." in result.report.summary

    retried = count_runs(monkeypatch)
    result = run_transfer_study(config)
    assert retried == [failing]
    assert result.failures == []
    assert json.loads(result.failures_path.read_text()) == []
    assert np.isfinite(gains(config)[0, 1])


def test_failed_source_blocks_its_pairs(tasks, tmp_path, monkeypatch, no_similarity):
    config = study_config(tasks[:2], tmp_path / "out")
    failing = "coop/2shot/single/grass/seed1"
    started = count_runs(monkeypatch, fail=lambda job: job.id == failing)
    result = run_transfer_study(config)

    statuses = {outcome.job_id: outcome.status for outcome in result.outcomes}
    assert statuses == {
        "coop/2shot/single/sky/seed1": "finished",
        failing: "failed",
        "coop/2shot/pair/sky/grass/seed1": "finished",
        "coop/2shot/pair/grass/sky/seed1": "blocked",
    }
    assert len(started) == 3
    assert "did not finish" in result.failures[-1].error

    retried = count_runs(monkeypatch)
    run_transfer_study(config)
    assert retried == [failing, "coop/2shot/pair/grass/sky/seed1"]


def test_unreadable_task_reported(tasks, tmp_path, no_similarity):
    broken = write_image_task(tmp_path / "broken", {"red": (200, 0, 0), "green": (0, 200, 0)}, 5, train=4, test=2)
    for image in broken.rglob("*.png"):
        image.write_bytes(b"not an image")
    config = study_config([tasks[0], broken], tmp_path / "out")
    result = run_transfer_study(config)

    statuses = {outcome.job_id: outcome.status for outcome in result.outcomes}
    assert statuses == {
        "coop/2shot/single/sky/seed1": "finished",
        "coop/2shot/single/broken/seed1": "failed",
        "coop/2shot/pair/sky/broken/seed1": "failed",
        "coop/2shot/pair/broken/sky/seed1": "blocked",
    }
    failure = next(outcome for outcome in result.failures if outcome.job_id == "coop/2shot/single/broken/seed1")
    assert "ImageLoadError: cannot read image" in failure.error
    assert "cannot read image" in Path(failure.log).read_text()


def test_cli_reports_failures(tasks, tmp_path, monkeypatch, capsys, no_similarity):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(tasks[:2], tmp_path / "out")))
    failing = "coop/2shot/pair/grass/sky/seed1"
    count_runs(monkeypatch, fail=lambda job: job.id == failing)

    assert main(["study", "transfer", str(path)]) == 1
    captured = capsys.readouterr()
    assert "# Task transfer study" in captured.out
    assert f"{failing}: RuntimeError: injected failure" in captured.err
    assert "rerun the same command to retry only these runs" in captured.err

    count_runs(monkeypatch)
    assert main(["study", "transfer", str(path)]) == 0


def test_cli_dry_run_and_analyse_only(finished, monkeypatch, capsys, tmp_path):
    config, _ = finished
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    started = count_runs(monkeypatch)

    assert main(["study", "transfer", str(path), "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("9 runs, 9 finished, 0 to run")
    assert "coop, 2 shots, seed 1: " in output

    summary = Path(config.output_dir) / "analysis" / "summary.md"
    summary.unlink()
    assert main(["study", "transfer", str(path), "--analyse-only", "top_k=1"]) == 0
    assert summary.is_file()
    assert "Best sources per target (up to 1)" in summary.read_text()
    assert started == []


def test_dry_run_reports_other_settings(finished, tmp_path, capsys):
    config, _ = finished
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))

    assert main(["study", "transfer", str(path), "--dry-run", "base.train.epochs=10"]) == 2
    captured = capsys.readouterr()
    assert "9 run directories contain runs with other settings" in captured.out
    assert "(other settings: train.epochs differ)" in captured.out
    assert "(finished)" not in captured.out
    assert "contain runs with other settings (9 found)" in captured.err


def test_missing_tasks_rejected_before_runs(tasks, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MVLPT_DATA_ROOT", str(tmp_path / "data"))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict([tasks[0], "nosuchtask", "cifar-100"], tmp_path / "out")))
    started = count_runs(monkeypatch)

    for options in (["--dry-run"], []):
        assert main(["study", "transfer", str(path), *options]) == 2
        error = capsys.readouterr().err
        assert "2 of the study's tasks cannot be used" in error
        assert "task 'nosuchtask' is neither a built-in task" in error
        assert "prepare it with: mvlpt data prepare cifar-100" in error
    assert started == []
    assert not (tmp_path / "out").exists()


def test_dry_run_marks_failed_runs(tasks, tmp_path, monkeypatch, capsys, no_similarity):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(tasks[:2], tmp_path / "out")))
    count_runs(monkeypatch, fail=lambda job: job.id == "coop/2shot/single/grass/seed1")
    assert main(["study", "transfer", str(path)]) == 1
    capsys.readouterr()

    assert main(["study", "transfer", str(path), "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("4 runs, 2 finished, 2 to run (2 of them failed or were blocked in the latest command")
    assert "single/grass/seed1 (failed)" in output
    assert "pair/grass/sky/seed1 (blocked)" in output


def test_analyse_only_without_runs_rejected(tasks, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(tasks, tmp_path / "typo")))
    assert main(["study", "transfer", str(path), "--analyse-only"]) == 2
    error = capsys.readouterr().err
    assert f"none of the 9 runs of this study has finished in {tmp_path / 'typo'}" in error
    assert not (tmp_path / "typo").exists()


def test_changed_settings_rejected(finished):
    config, _ = finished
    changed = transfer_config_from_dict({**config.to_dict(), "base": {**config.base, "train": {**config.base["train"], "lr": 0.01}}})
    with pytest.raises(RunError, match=r"contain runs with other settings \(9 found\): .*train.lr differ"):
        run_transfer_study(changed)


# Other executors ----------------------------------------------------------------------------


def test_two_workers_match_one(finished, tasks, tmp_path):
    config, _ = finished
    parallel = study_config(tasks, tmp_path / "out", workers=2)
    executor = make_executor(parallel)
    assert isinstance(executor, ProcessPoolJobExecutor)
    executor.close()

    result = run_transfer_study(parallel)
    assert [outcome.status for outcome in result.outcomes] == ["finished"] * 9
    np.testing.assert_allclose(gains(parallel), gains(config), atol=1e-6)


def test_ray_executor_runs_study(finished, tasks, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    config, _ = finished
    distributed = study_config(tasks, tmp_path / "out", executor="ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_transfer_study(distributed)
    finally:
        ray.shutdown()
    assert [outcome.status for outcome in result.outcomes] == ["finished"] * 9
    np.testing.assert_allclose(gains(distributed), gains(config), atol=1e-6)


def test_ray_missing_names_extra(tasks, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    config = study_config(tasks, tmp_path / "out", executor="ray")
    with pytest.raises(RunError, match=r'pip install "mvlpt\[ray\]"'):
        run_transfer_study(config)
    assert not any(job.is_finished() for job in plan_transfer(config))


def test_one_worker_runs_in_process(tasks, tmp_path):
    assert isinstance(make_executor(study_config(tasks, tmp_path / "out")), SequentialExecutor)


def test_threads_set_and_restored(tasks, tmp_path):
    import torch

    before = torch.get_num_threads()
    executor = make_executor(study_config(tasks, tmp_path / "out", threads=1))
    assert torch.get_num_threads() == 1
    executor.close()
    assert torch.get_num_threads() == before

    parallel = ProcessPoolJobExecutor(workers=2, threads=3)
    assert parallel.threads == 3
    parallel.close()
    assert ProcessPoolJobExecutor(workers=64).threads == 1


def test_dead_worker_unstarted_job_resubmitted(tasks, tmp_path):
    sky, grass = [job for job in plan_transfer(study_config(tasks[:2], tmp_path / "out")) if job.kind == "single"]
    executor = ProcessPoolJobExecutor(workers=1, threads=1)
    try:
        executor.submit(sky)
        # The pool starts its worker on submit; killing it before the job starts breaks the pool.
        for process in list(executor._pool._processes.values()):
            process.kill()
        job, outcome = executor.wait_one()
        assert job == sky
        assert outcome.status == "finished"

        executor.submit(grass)
        job, outcome = executor.wait_one()
        assert job == grass
        assert outcome.status == "finished"
    finally:
        executor.close()


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the study's runs to start"
        time.sleep(0.1)


def test_dead_worker_fails_only_its_job(tasks, tmp_path):
    config = study_config(tasks, tmp_path / "out", base={**study_dict(tasks, tmp_path)["base"], "train": {
        "epochs": 30, "warmup_epochs": 0, "batch_size": 8, "precision": "fp32"}})
    sky, grass, fruit = [job for job in plan_transfer(config) if job.kind == "single"]
    executor = ProcessPoolJobExecutor(workers=2, threads=1)
    try:
        for job in (sky, grass, fruit):
            executor.submit(job)
        # Each run writes its worker's pid to run.lock while it trains. On a loaded machine one run
        # may end before the other starts, so kill the worker of whichever run is seen first.
        locks = {job.id: Path(job.directory) / "run.lock" for job in (sky, grass, fruit)}

        def running() -> list[str]:
            return [job_id for job_id, lock in locks.items() if lock.is_file() and lock.read_text()]

        wait_for(running)
        victim = running()[0]
        os.kill(int(locks[victim].read_text()), signal.SIGKILL)

        outcomes = {}
        for _ in range(3):
            job, outcome = executor.wait_one()
            outcomes[job.id] = outcome
    finally:
        executor.close()

    assert outcomes[victim].status == "failed"
    assert "killed by SIGKILL" in outcomes[victim].error
    survivors = [job_id for job_id in locks if job_id != victim]
    assert [outcomes[job_id].status for job_id in survivors] == ["finished", "finished"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes through /proc")
def test_ctrl_c_stops_workers_and_queue(tasks, tmp_path):
    data = study_dict(tasks, tmp_path / "out", workers=2, threads=1)
    data["base"]["train"]["epochs"] = 500
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    study = subprocess.Popen(
        [sys.executable, "-m", "mvlpt", "study", "transfer", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # An asynchronous shell command may have SIGINT ignored, and a child keeps that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # Two single runs train; the third waits in the pool's queue.
        output = Path(data["output_dir"])
        wait_for(lambda: len(list(output.rglob("metrics.jsonl"))) == 2)
        started = sorted(log.parent for log in output.rglob("job.log"))
        workers = [pid for pid in children(study.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2

        # Ctrl-C sends SIGINT to the terminal's whole process group.
        interrupted = time.monotonic()
        os.killpg(study.pid, signal.SIGINT)
        _, errors = study.communicate(timeout=30)
        assert time.monotonic() - interrupted < 15
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
            study.wait()

    assert study.returncode == 130
    assert b"interrupted; rerun the same command to resume" in errors
    assert b"leaked semaphore" not in errors
    assert sorted(log.parent for log in output.rglob("job.log")) == started
    assert not any(Path(f"/proc/{pid}").exists() and not zombie(pid) for pid in workers)


def children(pid):
    """Return the ids of the processes whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# Configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": ["mnist"]}, "tasks=['mnist'] is invalid: a transfer study needs at least two tasks"),
        ({"tasks": ["a/pets", "b/pets"]}, "have the same last path component 'pets'"),
        ({"tasks": ["mnist", "mnist"]}, "it repeats mnist"),
        ({"tasks": ["mnist", "MNIST"]}, "it repeats MNIST"),
        ({"methods": ["lora"]}, "methods[0]='lora' is invalid"),
        ({"executor": "slurm"}, "executor='slurm' is invalid: it must be one of local, ray"),
        ({"workers": 0}, "workers=0 is invalid: it must be at least 1"),
        ({"ray_num_cpus": 0}, "ray_num_cpus=0.0 is invalid: it must be positive"),
        ({"top_k": 0}, "top_k=0 is invalid"),
        ({"base": {"seed": 3}}, "base.seed cannot be set in a transfer study: the transfer study sets it for each run from seeds"),
        ({"base": {"train": {"epochs": 0}}}, "base.train.epochs=0 is invalid"),
        ({"base": {"prompt": {"coop": {"class_specific": True}}}}, "base.prompt.coop.class_specific=True is invalid with coop"),
    ],
)
def test_config_rejects(tasks, tmp_path, changes, message):
    with pytest.raises(ConfigError) as error:
        transfer_config_from_dict({**study_dict(tasks, tmp_path / "out"), **changes})
    assert message in str(error.value)


def test_config_unknown_key_hint(tasks, tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'epochs'. Run settings go under base: did you mean 'base.train.epochs'"):
        transfer_config_from_dict({**study_dict(tasks, tmp_path), "epochs": 3})
    with pytest.raises(ConfigError, match="Did you mean 'seeds'"):
        transfer_config_from_dict({**study_dict(tasks, tmp_path), "seed": 3})


def test_config_overrides(tasks, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(tasks, tmp_path / "out")))
    config = load_transfer_config(path, ["executor=ray", "workers=2", "seeds=3", "base.train.epochs=4", "output_dir=2024"])
    assert config.executor == "ray"
    assert config.workers == 2
    assert config.seeds == [3]
    assert config.base["train"]["epochs"] == 4
    assert config.output_dir == "2024"


def test_shipped_config_loads():
    config = load_transfer_config(REPOSITORY / "configs" / "transfer-offline.yaml")
    assert len(config.tasks) == 9
    assert config.methods == ["coop", "vpt", "upt"]
    assert len(plan_transfer(config)) == 3 * (9 + 9 * 8)


def test_docs_list_every_key():
    text = (REPOSITORY / "docs" / "transfer.md").read_text()
    assert format_fields_table(TransferConfig) in text
