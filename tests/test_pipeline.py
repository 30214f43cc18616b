from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from mvlpt.checkpoints import load_prompt_checkpoint
from mvlpt.cli import main
from mvlpt.config import ConfigError
from mvlpt.pipeline import load_pipeline_config, pipeline_config_from_dict, plan_pipeline, run_pipeline
from mvlpt.runtime import RunError
from conftest import write_image_task

REPOSITORY = Path(__file__).resolve().parents[1]


def write_task(root, classes, seed):
    """Write an image-folder task: 4 training and 2 test images per class."""
    return write_image_task(root, classes, seed, train=4, test=2)


def pipeline_dict(tasks, out, **changes):
    sky, grass, fruit, stone = (str(task) for task in tasks)
    data = {
        "output_dir": str(out),
        "methods": ["coop"],
        "shots": [2],
        "seeds": [1, 2],
        "source_tasks": [sky, grass],
        "target_tasks": [fruit, stone],
        "groups": [[fruit, stone]],
        "zero_shot": True,
        "base": {
            "backbone": {"model": "mvlpt:tiny-vit", "pretrained": None},
            "prompt": {"coop": {"n_ctx": 4}},
            "train": {"epochs": 2, "batch_size": 8, "precision": "fp32"},
        },
    }
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return (
        write_task(root / "sky", {"blue": (30, 30, 200), "white": (230, 230, 230)}, 0),
        write_task(root / "grass", {"green": (30, 200, 30), "brown": (120, 80, 30)}, 1),
        write_task(root / "fruit", {"apple": (200, 30, 30), "lemon": (220, 220, 40)}, 2),
        write_task(root / "stone", {"dark": (20, 20, 20), "grey": (128, 128, 128), "red": (150, 0, 0)}, 3),
    )


@pytest.fixture(scope="module")
def finished(tasks, tmp_path_factory):
    """A pipeline run once for the module: coop, 2 shots, seeds 1 and 2, two sources, two targets in one group."""
    out = tmp_path_factory.mktemp("pipeline") / "out"
    config = pipeline_config_from_dict(pipeline_dict(tasks, out))
    result = run_pipeline(config)
    return config, result, out


def read_results(path):
    results = json.loads((path / "results.json").read_text())
    return results


def task_score(path, name):
    entry = read_results(path)["per_task"][name]
    return entry["test"][entry["metric"]]


def expected_cells(out):
    """Scores of every setting and target task, read straight from the runs' results.json files."""
    study = out / "coop" / "2shot"
    cells = {}
    for task in ("fruit", "stone"):
        cells[("zero-shot", task)] = [task_score(out / "zero-shot", task)]
        cells[("single", task)] = [task_score(study / "single" / task / f"seed{seed}", task) for seed in (1, 2)]
        cells[("mvlpt", task)] = [task_score(study / "mvlpt" / task / f"seed{seed}", task) for seed in (1, 2)]
        cells[("group", task)] = [task_score(study / "group-1" / f"seed{seed}", task) for seed in (1, 2)]
    for setting in ("zero-shot", "single", "mvlpt", "group"):
        fruit, stone = cells[(setting, "fruit")], cells[(setting, "stone")]
        cells[(setting, "average")] = [(a + b) / 2 for a, b in zip(fruit, stone)]
    return cells


def format_cell(values):
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown_table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


# End to end ---------------------------------------------------------------------------------


def test_pipeline_writes_layout(finished):
    _, _, out = finished
    study = out / "coop" / "2shot"
    for seed in (1, 2):
        assert (study / "source" / f"seed{seed}" / "results.json").is_file()
        assert read_results(study / "source" / f"seed{seed}")["tasks"] == ["sky", "grass"]
        assert (study / "group-1" / f"seed{seed}" / "results.json").is_file()
        for task in ("fruit", "stone"):
            assert (study / "single" / task / f"seed{seed}" / "results.json").is_file()
            assert read_results(study / "single" / task / f"seed{seed}")["init"] is None
            assert read_results(study / "mvlpt" / task / f"seed{seed}")["init"] == str(study / "source" / "average")
    assert (out / "zero-shot" / "results.json").is_file()
    assert (out / "pipeline.yaml").is_file()


def test_pipeline_averages_sources(finished):
    _, _, out = finished
    source = out / "coop" / "2shot" / "source"
    averaged = load_prompt_checkpoint(source / "average")
    seeds = [load_prompt_checkpoint(source / f"seed{seed}" / "prompt") for seed in (1, 2)]
    assert averaged.metadata["extra"]["averaged_from"] == [str(source / f"seed{seed}" / "prompt") for seed in (1, 2)]
    expected = (seeds[0].state_dict["ctx"].double() + seeds[1].state_dict["ctx"].double()) / 2
    assert np.allclose(averaged.state_dict["ctx"].double().numpy(), expected.numpy(), atol=1e-7)


def test_pipeline_table_layout(finished):
    _, result, _ = finished
    table = markdown_table(result.markdown)
    assert "## coop, 2 shots" in result.markdown
    assert table[0] == ["task", "metric", "zero-shot", "single", "mvlpt", "group"]
    assert [row[0] for row in table[2:]] == ["fruit", "stone", "average"]
    assert [row[1] for row in table[2:]] == ["accuracy", "accuracy", "accuracy"]


def test_pipeline_table_matches_runs(finished):
    _, result, out = finished
    cells = expected_cells(out)
    table = markdown_table(result.markdown)
    settings = table[0][2:]
    for row in table[2:]:
        for setting, cell in zip(settings, row[2:]):
            assert cell == format_cell(cells[(setting, row[0])]), (setting, row[0])


def test_pipeline_csv_matches_runs(finished):
    _, result, out = finished
    cells = expected_cells(out)
    rows = list(csv.DictReader(io.StringIO(result.csv_path.read_text())))
    assert len(rows) == len(cells)
    for row in rows:
        values = cells[(row["setting"], row["task"])]
        assert row["method"] == "coop"
        assert row["shots"] == "2"
        assert row["metric"] == "accuracy"
        assert float(row["mean"]) == pytest.approx(statistics.mean(values))
        assert int(row["n_seeds"]) == len(values)
        assert [float(value) for value in row["values"].split(";")] == pytest.approx(values)
        if len(values) > 1:
            assert float(row["std"]) == pytest.approx(statistics.stdev(values))
        else:
            assert row["std"] == ""


def test_pipeline_files_equal_result(finished):
    _, result, _ = finished
    assert result.markdown_path.read_text() == result.markdown


def test_pipeline_rerun_trains_nothing(finished, monkeypatch, capsys):
    config, result, out = finished
    before = result.markdown_path.read_text()

    def fail(*args, **kwargs):
        raise AssertionError("a finished pipeline step ran again")

    monkeypatch.setattr("mvlpt.training._train_epoch", fail)
    monkeypatch.setattr("mvlpt.training.zero_shot", fail)
    monkeypatch.setattr("mvlpt.averaging.average_checkpoints", fail)
    path = out.parent / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))

    assert main(["pipeline", str(path)]) == 0
    printed = capsys.readouterr().out
    assert result.markdown_path.read_text() == before
    assert before in printed


def test_pipeline_dry_run_lists_runs(finished, capsys):
    config, _, out = finished
    path = out.parent / "dry-run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["pipeline", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # zero-shot 1, source 2, mvlpt 4, single 4, group 2; the average is not a run.
    assert lines[0] == "13 runs"
    assert len(lines) == 15
    assert all(line.endswith("(finished)") for line in lines[1:])
    assert lines[1].startswith("run 1/13: zero-shot CLIP")
    assert lines[4].startswith("average: coop 2-shot source prompts")


def test_pipeline_dry_run_trains_nothing(tasks, tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_dict(tasks, tmp_path / "out")))
    assert main(["pipeline", str(path), "--dry-run", "seeds=[1]", "groups=[]", "zero_shot=false"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "5 runs"
    assert all(line.endswith("(to do)") for line in lines[1:])
    assert "average" not in "".join(lines)
    assert not (tmp_path / "out").exists()


def test_pipeline_rejects_changed_seeds(finished, tasks):
    _, _, out = finished
    config = pipeline_config_from_dict(pipeline_dict(tasks, out, seeds=[2, 1]))
    with pytest.raises(RunError, match="averaged from"):
        run_pipeline(config)


def test_pipeline_rejects_changed_run_settings(finished, tasks):
    _, _, out = finished
    data = pipeline_dict(tasks, out)
    data["base"]["train"]["epochs"] = 3
    with pytest.raises(RunError, match="train.epochs differ") as error:
        run_pipeline(pipeline_config_from_dict(data))
    assert "source/seed1 contains a run of another configuration" in str(error.value)


def test_zero_shot_reruns_for_new_targets(tasks, tmp_path):
    from mvlpt.pipeline import _run_zero_shot

    config = pipeline_config_from_dict(pipeline_dict(tasks, tmp_path / "out", groups=[]))
    step = plan_pipeline(config)[0]
    step.directory.mkdir(parents=True)
    (step.directory / "results.json").write_text(json.dumps({"task_specs": ["elsewhere"], "backbone": {}}))

    _run_zero_shot(config, step)
    results = read_results(step.directory)
    assert results["task_specs"] == config.target_tasks
    assert results["tasks"] == ["fruit", "stone"]
    assert results["backbone"] == {"model": "mvlpt:tiny-vit", "pretrained": None}


def test_summarize_reads_pipeline(finished, capsys):
    _, _, out = finished
    assert main(["summarize", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| fruit | coop | single | 2 |" in printed
    assert "| fruit | coop | init | 2 |" in printed
    assert "| fruit | coop | joint | 2 |" in printed
    assert "| fruit | zero-shot | zero-shot | - |" in printed


# The plan -----------------------------------------------------------------------------------


def test_plan_order_and_directories(tasks, tmp_path):
    config = pipeline_config_from_dict(pipeline_dict(tasks, tmp_path, methods=["coop", "vpt"], zero_shot=False))
    steps = plan_pipeline(config)
    kinds = [step.kind for step in steps[:13]]
    assert kinds == ["source"] * 2 + ["average"] + ["mvlpt"] * 4 + ["single"] * 4 + ["group"] * 2
    assert steps[13].method == "vpt"
    assert steps[3].directory == tmp_path / "coop" / "2shot" / "mvlpt" / "fruit" / "seed1"
    assert steps[3].init == tmp_path / "coop" / "2shot" / "source" / "average"
    assert steps[11].directory == tmp_path / "coop" / "2shot" / "group-1" / "seed1"


def test_plan_shares_fixed_source_shots(tasks, tmp_path):
    config = pipeline_config_from_dict(pipeline_dict(tasks, tmp_path, shots=[1, 2], source_shots=4, zero_shot=False))
    steps = plan_pipeline(config)
    sources = [step for step in steps if step.kind == "source"]
    assert [step.directory for step in sources] == [tmp_path / "coop" / "4shot" / "source" / f"seed{seed}" for seed in (1, 2)]
    assert all(step.shots == 4 for step in sources)
    mvlpt = [step for step in steps if step.kind == "mvlpt"]
    assert {step.init for step in mvlpt} == {tmp_path / "coop" / "4shot" / "source" / "average"}
    assert {step.shots for step in mvlpt} == {1, 2}


def test_plan_one_seed_skips_average(tasks, tmp_path):
    config = pipeline_config_from_dict(pipeline_dict(tasks, tmp_path, seeds=[7]))
    steps = plan_pipeline(config)
    assert "average" not in [step.kind for step in steps]
    mvlpt = [step for step in steps if step.kind == "mvlpt"]
    assert mvlpt[0].init == tmp_path / "coop" / "2shot" / "source" / "seed7" / "prompt"


# The configuration --------------------------------------------------------------------------


def test_example_config_loads():
    config = load_pipeline_config(REPOSITORY / "configs" / "pipeline-example.yaml")
    assert config.source_tasks
    assert config.target_tasks
    assert plan_pipeline(config)


def test_docs_list_every_key():
    from mvlpt.config import format_fields_table
    from mvlpt.pipeline import PipelineConfig

    assert format_fields_table(PipelineConfig) in (REPOSITORY / "docs" / "pipeline.md").read_text()


def test_config_overrides(tasks, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_dict(tasks, tmp_path / "out")))
    config = load_pipeline_config(
        path, ["seeds=3", "base.train.epochs=5", "base.prompt.coop.ctx_init=yes", "output_dir=2024", "methods=vpt"]
    )
    assert config.seeds == [3]
    assert config.base["train"]["epochs"] == 5
    assert config.base["train"]["batch_size"] == 8
    assert config.base["prompt"]["coop"]["ctx_init"] == "yes"
    assert config.output_dir == "2024"
    assert config.methods == ["vpt"]


def test_run_config_sets_pipeline_keys(tasks, tmp_path):
    config = pipeline_config_from_dict(pipeline_dict(tasks, tmp_path))
    run = config.run_config("vpt", [str(tasks[2])], 2, 5, tmp_path / "run", tmp_path / "init")
    assert run.prompt.method == "vpt"
    assert run.data.tasks == [str(tasks[2])]
    assert run.data.shots == 2
    assert run.seed == 5
    assert run.output_dir == str(tmp_path / "run")
    assert run.init == str(tmp_path / "init")
    assert run.train.epochs == 2
    assert run.prompt.coop.n_ctx == 4


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seed": [1]}, "unknown key 'seed'. Did you mean 'seeds'?"),
        ({"epochs": 2}, "did you mean 'base.train.epochs'?"),
        ({"methods": ["coop", "cop"]}, "methods[1]='cop' is invalid"),
        ({"methods": []}, "methods=[] is invalid: the list is empty"),
        ({"shots": [0]}, "shots[0]=0 is invalid: it must be at least 1"),
        ({"shots": "5"}, "shots='5' has the wrong type"),
        ({"groups": "fruit"}, "groups='fruit' has the wrong type: expected a list of lists"),
        ({"seeds": [1, 1]}, "seeds=[1, 1] is invalid: it repeats 1"),
        ({"seeds": [-1]}, "seeds[0]=-1 is invalid"),
        ({"source_shots": 0}, "source_shots=0 is invalid"),
        ({"zero_shot": "yes"}, "zero_shot='yes' has the wrong type"),
        ({"target_tasks": []}, "target_tasks=[] is invalid: the list is empty"),
        ({"groups": [["nowhere", "elsewhere"]]}, "'nowhere' is not in target_tasks"),
        ({"base": [1]}, "base=[1] has the wrong type"),
        ({"base": {"train": {"epcohs": 2}}}, "unknown key 'base.train.epcohs'. Did you mean 'base.train.epochs'?"),
        ({"base": {"train": {"epochs": 0}}}, "base.train.epochs=0 is invalid: it must be at least 1. Set base.train.epochs"),
        ({"base": {"train": {"lr": "fast"}}}, "base.train.lr='fast' has the wrong type"),
        ({"base": {"prompt": {"vpt": {"templates": ["no field"]}}}}, "base.prompt.vpt.templates contains"),
        ({"base": {"seed": 3}}, "base.seed cannot be set in a pipeline"),
        ({"base": {"data": {"shots": 3}}}, "base.data.shots cannot be set"),
        ({"base": {"data": {"task": ["x"]}}}, "The pipeline sets data.tasks itself"),
        ({"base": {"prompt": {"method": "vpt"}}}, "base.prompt.method cannot be set"),
        ({"base": {"train": 5}}, "base.train=5 has the wrong type"),
        ({"base": {"prompt": {"coop": {"class_specific": True}}}}, "class-specific contexts belong"),
    ],
)
def test_config_rejects(tasks, tmp_path, changes, message):
    with pytest.raises(ConfigError) as error:
        pipeline_config_from_dict(pipeline_dict(tasks, tmp_path, **changes))
    assert message in str(error.value)


def test_config_rejects_source_as_target(tasks, tmp_path):
    data = pipeline_dict(tasks, tmp_path)
    data["target_tasks"] = [*data["target_tasks"], data["source_tasks"][0]]
    with pytest.raises(ConfigError, match="is also in source_tasks"):
        pipeline_config_from_dict(data)


def test_config_rejects_flat_group(tasks, tmp_path):
    data = pipeline_dict(tasks, tmp_path)
    data["groups"] = data["target_tasks"]
    with pytest.raises(ConfigError, match="list of lists"):
        pipeline_config_from_dict(data)


def test_config_rejects_task_in_two_groups(tasks, tmp_path):
    fruit, stone = str(tasks[2]), str(tasks[3])
    extra = str(tasks[0].parent / "other")
    data = pipeline_dict(tasks, tmp_path, target_tasks=[fruit, stone, extra], groups=[[fruit, stone], [stone, extra]])
    with pytest.raises(ConfigError, match="also in groups\\[0\\]"):
        pipeline_config_from_dict(data)


def test_config_rejects_same_directory_name(tasks, tmp_path):
    data = pipeline_dict(tasks, tmp_path, target_tasks=["a/fruit", "b/fruit"], groups=[])
    with pytest.raises(ConfigError, match="same last path component 'fruit'"):
        pipeline_config_from_dict(data)


def test_cli_pipeline_rejects_bad_override(tasks, tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_dict(tasks, tmp_path / "out")))
    assert main(["pipeline", str(path), "base.train.epochs=-1"]) == 2
    assert "base.train.epochs=-1 is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(
    "targets, sources, message",
    [
        (["cifar10", "cifar-10"], ["dtd"], "target_tasks=['cifar10', 'cifar-10'] is invalid: it repeats cifar-10"),
        (["elevater:cifar-10", "CIFAR-10"], ["dtd"], "it repeats CIFAR-10"),
        (["dtd"], ["elevater:dtd"], "dtd is also in source_tasks"),
        (["MNIST", "mnist"], ["dtd"], "it repeats mnist"),
    ],
)
def test_config_compares_tasks_by_identity_not_spelling(tasks, tmp_path, targets, sources, message):
    data = pipeline_dict(tasks, tmp_path)
    data["target_tasks"] = targets
    data["source_tasks"] = sources
    data["groups"] = []
    with pytest.raises(ConfigError) as error:
        pipeline_config_from_dict(data)
    assert message in str(error.value)


def test_config_keeps_coop_and_elevater_versions_apart(tasks, tmp_path):
    data = pipeline_dict(tasks, tmp_path)
    data["source_tasks"] = ["coop:dtd"]
    data["target_tasks"] = ["dtd"]
    data["groups"] = []
    config = pipeline_config_from_dict(data)
    assert config.target_tasks == ["dtd"]


def test_pipeline_resumes_run_given_relative_task_paths(tasks, tmp_path, monkeypatch):
    from mvlpt import pipeline, training
    from mvlpt.config import dump_config

    monkeypatch.chdir(Path(tasks[0]).parent)
    relative = [Path(task).name for task in tasks]
    data = pipeline_dict(tasks, tmp_path / "out", source_tasks=relative[:2], target_tasks=relative[2:], groups=[])
    config = pipeline_config_from_dict(data)
    step = next(step for step in plan_pipeline(config) if step.kind == "source")

    # An interrupted run: train() wrote config.yaml with absolute task paths, and no results.json.
    started = config.run_config(step.method, step.tasks, step.shots, step.seed, step.directory, step.init)
    training.absolute_task_paths(started)
    step.directory.mkdir(parents=True)
    dump_config(started, step.directory / "config.yaml")

    resumed = []
    monkeypatch.setattr(training, "train", resumed.append)
    pipeline._execute(config, step)

    assert len(resumed) == 1
    assert resumed[0].data.tasks == [str(Path(task).resolve()) for task in tasks[:2]]


def test_config_group_other_spelling_named(tasks, tmp_path):
    fruit, stone = str(tasks[2]), str(tasks[3])
    with pytest.raises(ConfigError) as error:
        pipeline_config_from_dict(pipeline_dict(tasks, tmp_path, groups=[[fruit + "/", stone]]))
    message = str(error.value)
    assert "under another spelling" in message
    assert f"write {fruit!r}" in message
