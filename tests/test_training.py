from __future__ import annotations

import json
import math

import pytest

from mvlpt.checkpoints import load_prompt_checkpoint
from mvlpt.cli import main
from mvlpt.config import TrainConfig
from mvlpt.training import learning_rate
from conftest import write_image_task

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture()
def colour_task(tmp_path):
    """An image-folder task of three colours: 6 training and 3 test images per class."""
    return write_image_task(tmp_path / "colours", COLOURS, 0)


def run_args(task, tiny_config_path, out, method, *extra):
    return [
        "train",
        "--task", str(task),
        "--method", method,
        "--model", tiny_config_path,
        "--pretrained", "null",
        "--shots", "5",
        "--epochs", "2",
        "--output-dir", str(out),
        "train.batch_size=8",
        "train.precision=fp32",
        "prompt.coop.n_ctx=4",
        "prompt.vpt.n_tokens=4",
        "prompt.upt.width=32",
        *extra,
    ]


@pytest.mark.parametrize("method", ["coop", "vpt", "upt"])
def test_cli_train_writes_run(colour_task, tiny_config_path, tmp_path, method, capsys):
    out = tmp_path / method
    assert main(run_args(colour_task, tiny_config_path, out, method)) == 0

    for name in ("config.yaml", "fewshot/colours.json", "metrics.jsonl", "results.json"):
        assert (out / name).is_file(), name
    assert not (out / "train_state.pt").exists()
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in epochs] == [1, 2]
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == method
    assert 0.0 <= results["per_task"]["colours"]["test"]["accuracy"] <= 100.0
    checkpoint = load_prompt_checkpoint(out / "prompt")
    assert checkpoint.method == method
    assert checkpoint.classnames == ["blue", "green", "red"]
    assert "test: accuracy" in capsys.readouterr().out


def test_rerun_skips_finished_run(colour_task, tiny_config_path, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0
    before = (out / "metrics.jsonl").read_text()
    results = (out / "results.json").read_text()
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0
    assert (out / "metrics.jsonl").read_text() == before
    assert (out / "results.json").read_text() == results


def test_changed_config_in_same_dir_rejected(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0
    status = main(run_args(colour_task, tiny_config_path, out, "coop", "train.lr=0.1"))
    assert status == 2
    assert "train.lr" in capsys.readouterr().err


def test_interrupted_run_resumes(colour_task, tiny_config_path, tmp_path, monkeypatch):
    import mvlpt.training as training

    out = tmp_path / "run"
    original = training._train_epoch
    calls = {"count": 0}

    def interrupt_second_epoch(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", interrupt_second_epoch)
    assert main(run_args(colour_task, tiny_config_path, out, "vpt")) == 130
    assert (out / "train_state.pt").exists()
    assert not (out / "results.json").exists()

    monkeypatch.setattr(training, "_train_epoch", original)
    assert main(run_args(colour_task, tiny_config_path, out, "vpt")) == 0
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_evaluate_reproduces_test_metrics(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "upt")) == 0
    results = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "prompt"), "train.precision=fp32"]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy {results['per_task']['colours']['test']['accuracy']:.2f}" in printed


def test_evaluate_other_method_rejected(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0
    status = main(["evaluate", "--checkpoint", str(out / "prompt"), "prompt.method=vpt"])
    assert status == 2
    assert "vpt" in capsys.readouterr().err.lower()


def test_zero_shot_command(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "zs"
    args = ["zero-shot", "--task", str(colour_task), "--model", tiny_config_path, "--pretrained", "null"]
    assert main([*args, "--output-dir", str(out)]) == 0
    assert "zero-shot test: accuracy" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "zero-shot"


def test_coop_encodes_each_image_once(colour_task, tiny_config_path, tmp_path, monkeypatch):
    from mvlpt.backbone import FrozenCLIP

    encoded = {"images": 0}
    original = FrozenCLIP.encode_image

    def counting(self, images, layer_prompts=None):
        encoded["images"] += images.shape[0]
        return original(self, images, layer_prompts)

    monkeypatch.setattr(FrozenCLIP, "encode_image", counting)
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop", "train.epochs=4")) == 0
    # 15 few-shot images (12 train + 3 val) and 9 test images, each encoded exactly once over 4 epochs.
    assert encoded["images"] == 15 + 9


def test_vpt_encodes_class_text_once(colour_task, tiny_config_path, tmp_path, monkeypatch):
    from mvlpt.backbone import FrozenCLIP

    calls = {"count": 0}
    original = FrozenCLIP.encode_text

    def counting(self, texts):
        calls["count"] += 1
        return original(self, texts)

    monkeypatch.setattr(FrozenCLIP, "encode_text", counting)
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "vpt", "train.epochs=3")) == 0
    assert calls["count"] == 1


def test_learning_rate_schedule():
    config = TrainConfig(epochs=10, lr=0.002, warmup_epochs=1, warmup_lr=1e-5)
    assert learning_rate(0, config) == 1e-5
    assert learning_rate(1, config) == pytest.approx(0.5 * 0.002 * (1 + math.cos(math.pi / 10)))
    assert learning_rate(5, config) == pytest.approx(0.001)
    assert learning_rate(9, config) < learning_rate(8, config)


def test_model_selection_last_uses_final_prompt(colour_task, tiny_config_path, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop", "train.model_selection=last")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["selected_epoch"] == 2


def test_zero_shot_keeps_existing_results(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0
    before = (out / "results.json").read_text()
    args = ["zero-shot", "--task", str(colour_task), "--model", tiny_config_path, "--pretrained", "null"]
    assert main([*args, "--output-dir", str(out)]) == 2
    assert "training run" in capsys.readouterr().err
    assert main([*args, "--output-dir", str(out), "--overwrite"]) == 2
    assert (out / "results.json").read_text() == before

    zero_shot_dir = tmp_path / "zero-shot"
    assert main([*args, "--output-dir", str(zero_shot_dir)]) == 0
    capsys.readouterr()
    assert main([*args, "--output-dir", str(zero_shot_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--output-dir", str(zero_shot_dir), "--overwrite"]) == 0


def test_train_rejects_foreign_results(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"method": "zero-shot", "per_task": {}}')
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 2
    assert "coop training run" in capsys.readouterr().err


def test_failed_overwrite_keeps_earlier_run(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0
    before = {name: (out / name).read_text() for name in ("results.json", "metrics.jsonl", "config.yaml")}
    missing_task = tmp_path / "no-such-task"
    args = run_args(missing_task, tiny_config_path, out, "coop", "--overwrite")
    assert main(args) == 2
    for name, text in before.items():
        assert (out / name).read_text() == text, name
    assert (out / "prompt" / "prompt.json").exists()


def test_failed_start_does_not_block_rerun(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop", "prompt.coop.n_ctx=80")) == 2
    assert "context vectors" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0


def test_resume_does_not_repeat_epoch_lines(colour_task, tiny_config_path, tmp_path, monkeypatch):
    import mvlpt.training as training

    out = tmp_path / "run"
    original = training._save_state
    calls = {"count": 0}

    def interrupt_second_save(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_save_state", interrupt_second_save)
    assert main(run_args(colour_task, tiny_config_path, out, "coop", "train.epochs=3")) == 130
    monkeypatch.setattr(training, "_save_state", original)
    assert main(run_args(colour_task, tiny_config_path, out, "coop", "train.epochs=3")) == 0
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_run_directory_lock_rejects_second_process(tmp_path):
    import os

    from mvlpt.rundir import RunLock
    from mvlpt.runtime import RunError

    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == str(os.getpid())
        with pytest.raises(RunError, match="in use"):
            with RunLock(tmp_path):
                pass
    assert not (tmp_path / "run.lock").exists()


def test_stale_lock_is_taken_over(tmp_path):
    from mvlpt.rundir import RunLock

    (tmp_path / "run.lock").write_text("999999999")
    with RunLock(tmp_path):
        pass
    assert not (tmp_path / "run.lock").exists()


def test_evaluate_rejects_other_prompt_settings(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(colour_task, tiny_config_path, out, "coop")) == 0
    capsys.readouterr()
    status = main(["evaluate", "--checkpoint", str(out / "prompt"), "prompt.coop.class_token_position=front"])
    assert status == 2
    assert "class_token_position" in capsys.readouterr().err


def test_evaluate_matches_training_default_precision(colour_task, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "run"
    args = [item for item in run_args(colour_task, tiny_config_path, out, "coop") if item != "train.precision=fp32"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "prompt")]) == 0
    expected = results["per_task"]["colours"]["test"]
    printed = capsys.readouterr().out
    assert f"accuracy {expected['accuracy']:.2f} (mean_per_class_accuracy {expected['mean_per_class_accuracy']:.2f})" in printed


def test_output_dir_inside_file_is_user_error(colour_task, tiny_config_path, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(run_args(colour_task, tiny_config_path, blocker / "run", "coop")) == 2
    assert "file.txt" in capsys.readouterr().err


def test_relative_task_path_stored_absolute(colour_task, tiny_config_path, tmp_path, monkeypatch):
    from mvlpt.config import load_config

    monkeypatch.chdir(colour_task.parent)
    out = tmp_path / "run"
    assert main(run_args(colour_task.name, tiny_config_path, out, "coop")) == 0
    assert load_config(out / "config.yaml").data.tasks == [str(colour_task.resolve())]


def test_summarize_skips_foreign_results(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text("[]")
    assert main(["summarize", str(tmp_path)]) == 1
