from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mvlpt.cli import main
from mvlpt.multitask import (
    LabelSpace,
    MultitaskSampler,
    classification_loss,
    expected_task_frequencies,
    task_restricted_logits,
)
from mvlpt.tasks import Sample, Task
from conftest import write_image_task


def make_task(name, classnames):
    samples = [Sample(f"{label}/{index}", label) for label in range(len(classnames)) for index in range(2)]
    return Task(
        name=name,
        classnames=classnames,
        templates=["a photo of a {}."],
        metric="accuracy",
        splits={"train": samples, "test": samples},
        image_loader=lambda key: Image.new("RGB", (8, 8)),
    )


def test_label_space_keeps_shared_class_separate():
    space = LabelSpace.from_tasks([make_task("pets", ["cat", "dog"]), make_task("zoo", ["lion", "cat", "seal"])])
    assert space.classnames == ("cat", "dog", "lion", "cat", "seal")
    assert space.num_classes == 5
    assert space.class_range(0) == range(0, 2)
    assert space.class_range(1) == range(2, 5)
    assert space.class_tasks().tolist() == [0, 0, 1, 1, 1]


def test_label_space_rejects_repeated_task_name():
    with pytest.raises(ValueError, match="pets"):
        LabelSpace.from_tasks([make_task("pets", ["cat"]), make_task("pets", ["dog"])])


def test_classes_of_present_tasks_only():
    space = LabelSpace.from_tasks([make_task("a", ["x", "y"]), make_task("b", ["z"]), make_task("c", ["u", "v"])])
    assert space.classes_of_tasks(torch.tensor([2, 0, 2])).tolist() == [0, 1, 3, 4]


def test_restricted_logits_mask_other_tasks():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    masked = task_restricted_logits(logits, torch.tensor([0, 1]), torch.tensor([0, 0, 1]))
    assert masked[0].tolist() == [1.0, 2.0, float("-inf")]
    assert masked[1].tolist() == [float("-inf"), float("-inf"), 6.0]
    probabilities = masked.softmax(dim=1)
    assert probabilities[0, 2] == 0
    assert probabilities[1, 2] == 1


def test_loss_with_class_indices_is_cross_entropy():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 3, 4, 1])
    assert torch.allclose(classification_loss(logits, labels), F.cross_entropy(logits, labels))


def test_loss_with_multi_hot_targets():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    targets = torch.tensor([[1, 0, 1]])
    log_p = torch.log_softmax(logits, dim=1)[0]
    expected = -(0.5 * log_p[0] + 0.5 * log_p[2])
    assert torch.allclose(classification_loss(logits, targets), expected)


def test_loss_multi_hot_ignores_masked_classes():
    logits = torch.tensor([[0.0, float("-inf"), 2.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    loss = classification_loss(logits, targets)
    assert torch.isfinite(loss)
    assert torch.allclose(loss, -torch.log_softmax(logits, dim=1)[0, 0])


def test_loss_rejects_empty_multi_hot_row():
    with pytest.raises(ValueError, match="no positive class"):
        classification_loss(torch.zeros(1, 3), torch.zeros(1, 3))


def draw_task_counts(sizes, mode, epochs=200):
    generator = torch.Generator().manual_seed(0)
    sampler = MultitaskSampler(sizes, mode, generator)
    starts = np.cumsum([0, *sizes])
    counts = Counter()
    for _ in range(epochs):
        for index in sampler:
            counts[int(np.searchsorted(starts, index, side="right") - 1)] += 1
    total = sum(counts.values())
    return [counts[task] / total for task in range(len(sizes))]


def test_proportional_sampling_follows_task_sizes():
    sizes = [10, 30, 60]
    frequencies = draw_task_counts(sizes, "proportional")
    for observed, expected in zip(frequencies, expected_task_frequencies(sizes, "proportional")):
        assert observed == pytest.approx(expected, abs=1e-9)


def test_balanced_sampling_draws_tasks_equally():
    sizes = [10, 30, 60]
    frequencies = draw_task_counts(sizes, "balanced")
    for observed in frequencies:
        assert observed == pytest.approx(1 / 3, abs=0.01)


def test_balanced_sampling_covers_each_task_sample():
    generator = torch.Generator().manual_seed(1)
    sampler = MultitaskSampler([3, 50], "balanced", generator)
    drawn = Counter(index for index in sampler if index < 3)
    assert set(drawn) == {0, 1, 2}
    assert max(drawn.values()) - min(drawn.values()) <= 1


def test_sampler_is_seeded():
    first = list(MultitaskSampler([5, 7], "balanced", torch.Generator().manual_seed(3)))
    second = list(MultitaskSampler([5, 7], "balanced", torch.Generator().manual_seed(3)))
    assert first == second
    assert len(first) == 12


def test_sampler_rejects_unknown_mode():
    with pytest.raises(ValueError, match="sampling"):
        MultitaskSampler([3], "uniform", torch.Generator())


# End-to-end multitask runs on two small image-folder tasks ----------------------------------


@pytest.fixture()
def two_tasks(tmp_path):
    colours = write_image_task(tmp_path / "colours", {"red": (200, 30, 30), "green": (30, 200, 30)}, 0)
    shades = write_image_task(tmp_path / "shades", {"dark": (20, 20, 20), "light": (230, 230, 230), "red": (150, 0, 0)}, 1)
    return colours, shades


def multitask_args(tasks, tiny_config_path, out, method, *extra):
    args = ["train"]
    for task in tasks:
        args += ["--task", str(task)]
    return [
        *args,
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


@pytest.mark.parametrize("label_space", ["union", "task"])
def test_multitask_run_scores_each_task(two_tasks, tiny_config_path, tmp_path, label_space, capsys):
    out = tmp_path / "joint"
    args = multitask_args(two_tasks, tiny_config_path, out, "coop", f"train.label_space={label_space}")
    assert main(args) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["colours", "shades"]
    assert set(results["per_task"]) == {"colours", "shades"}
    for entry in results["per_task"].values():
        assert entry["metric"] == "accuracy"
    # ROC AUC applies to the two-class task only.
    assert set(results["per_task"]["colours"]["test"]) == {"accuracy", "mean_per_class_accuracy", "roc_auc"}
    assert set(results["per_task"]["shades"]["test"]) == {"accuracy", "mean_per_class_accuracy"}
    mean = (results["per_task"]["colours"]["test"]["accuracy"] + results["per_task"]["shades"]["test"]["accuracy"]) / 2
    assert results["average"]["test"] == pytest.approx(mean)
    assert (out / "fewshot" / "colours.json").is_file()
    assert (out / "fewshot" / "shades.json").is_file()
    assert "average over 2 tasks" in capsys.readouterr().out


def test_task_label_space_encodes_present_classes_only(two_tasks, tiny_config_path, tmp_path, monkeypatch):
    from mvlpt.model import PromptedCLIP

    requested = []
    original = PromptedCLIP.text_features

    def recording(self, prompts, class_indices=None):
        requested.append(None if class_indices is None else class_indices.tolist())
        return original(self, prompts, class_indices)

    monkeypatch.setattr(PromptedCLIP, "text_features", recording)
    # Batches of one sample each contain a single task, so only that task's classes are encoded.
    args = multitask_args(two_tasks, tiny_config_path, tmp_path / "run", "coop", "train.label_space=task", "train.batch_size=1")
    assert main(args) == 0
    training_calls = [indices for indices in requested if indices is not None and indices not in ([0, 1], [2, 3, 4])]
    assert training_calls == []
    assert [0, 1] in requested
    assert [2, 3, 4] in requested
    assert None not in requested


def test_checkpoint_records_union_classes(two_tasks, tiny_config_path, tmp_path):
    from mvlpt.checkpoints import load_prompt_checkpoint

    out = tmp_path / "joint"
    assert main(multitask_args(two_tasks, tiny_config_path, out, "vpt")) == 0
    checkpoint = load_prompt_checkpoint(out / "prompt")
    assert checkpoint.classnames == ["green", "red", "dark", "light", "red"]
    assert checkpoint.metadata["tasks"] == ["colours", "shades"]


# Target initialisation from a source prompt -------------------------------------------------


@pytest.mark.parametrize("method", ["coop", "vpt", "upt"])
def test_target_starts_from_source_prompt(two_tasks, tiny_config_path, tmp_path, method):
    from mvlpt.checkpoints import load_prompt_checkpoint
    from mvlpt.config import load_config
    from mvlpt.training import build_model, initialise_from, load_tasks
    from mvlpt.backbone import load_backbone

    colours, shades = two_tasks
    source = tmp_path / "source"
    assert main(multitask_args([colours], tiny_config_path, source, method)) == 0

    config = load_config(
        None,
        [
            f"data.tasks=[{shades}]",
            f"prompt.method={method}",
            f"backbone.model={tiny_config_path}",
            "backbone.pretrained=null",
            "prompt.coop.n_ctx=4",
            "prompt.vpt.n_tokens=4",
            "prompt.upt.width=32",
            f"init={source / 'prompt'}",
        ],
    )
    backbone = load_backbone(config.backbone.model, None)
    tasks = load_tasks(config)
    model = build_model(config, backbone, tasks[0].classnames, tasks[0].templates)
    initialise_from(model, config, backbone)

    source_state = load_prompt_checkpoint(source / "prompt").state_dict
    target_state = model.learner.state_dict()
    assert set(target_state) == set(source_state)
    for name, tensor in source_state.items():
        assert torch.equal(target_state[name], tensor), name


def test_target_run_from_source_records_init(two_tasks, tiny_config_path, tmp_path):
    colours, shades = two_tasks
    source = tmp_path / "source"
    assert main(multitask_args([colours], tiny_config_path, source, "coop")) == 0
    target = tmp_path / "target"
    assert main(multitask_args([shades], tiny_config_path, target, "coop", "--init", str(source / "prompt"))) == 0
    results = json.loads((target / "results.json").read_text())
    assert results["init"] == str(source / "prompt")


def test_class_specific_context_cannot_initialise(two_tasks, tiny_config_path, tmp_path, capsys):
    colours, shades = two_tasks
    source = tmp_path / "source"
    assert main(multitask_args([colours], tiny_config_path, source, "coop", "prompt.coop.class_specific=true")) == 0
    capsys.readouterr()
    status = main(
        multitask_args([shades], tiny_config_path, tmp_path / "target", "coop", "--init", str(source / "prompt"))
    )
    assert status == 2
    assert "class-specific" in capsys.readouterr().err


def test_other_method_cannot_initialise(two_tasks, tiny_config_path, tmp_path, capsys):
    colours, shades = two_tasks
    source = tmp_path / "source"
    assert main(multitask_args([colours], tiny_config_path, source, "vpt")) == 0
    capsys.readouterr()
    status = main(
        multitask_args([shades], tiny_config_path, tmp_path / "target", "coop", "--init", str(source / "prompt"))
    )
    assert status == 2
    error = capsys.readouterr().err
    assert "VPT" in error
    assert "CoOp" in error


def test_mismatched_shapes_list_every_parameter(two_tasks, tiny_config_path, tmp_path, capsys):
    colours, shades = two_tasks
    source = tmp_path / "source"
    assert main(multitask_args([colours], tiny_config_path, source, "upt")) == 0
    capsys.readouterr()
    args = multitask_args([shades], tiny_config_path, tmp_path / "target", "upt", "--init", str(source / "prompt"))
    status = main([*args, "prompt.upt.width=16"])
    assert status == 2
    error = capsys.readouterr().err
    assert "text_in.weight" in error
    assert "block.attn.in_proj_weight" in error
