"""Multi-label tasks: samples, few-shot selection, split files, training and evaluation end to end."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mvlpt.training as training
from mvlpt.cli import main
from mvlpt.fewshot import MULTILABEL_VALIDATION_RULE, FewShotSplit, read_split, sample_few_shot, write_split
from mvlpt.tasks import DEFAULT_TEMPLATES, FileImageLoader, Sample, Task, TaskError, load_image_folder
from conftest import write_image_task

CLASS_COLOURS = {"red": (200, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 200)}
# Every non-empty subset of the three classes: each class is in 4 of the 7.
LABEL_SETS = [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


def multilabel_sample(key: str, labels) -> Sample:
    labels = sorted(labels)
    return Sample(key, labels[0], tuple(labels[1:]))


def write_mixture_task(root: Path, per_set_train: int = 3, per_set_test: int = 2) -> Task:
    """Write images that mix the colours of their classes and return the multi-label task over them."""
    rng = np.random.default_rng(0)
    colours = list(CLASS_COLOURS.values())
    splits: dict[str, list[Sample]] = {}
    for split_name, count in (("train", per_set_train), ("test", per_set_test)):
        folder = root / split_name
        folder.mkdir(parents=True)
        samples = []
        for set_index, labels in enumerate(LABEL_SETS):
            mixture = np.sum([colours[label] for label in labels], axis=0)
            for index in range(count):
                noise = rng.integers(-20, 20, size=(16, 16, 3))
                pixels = np.clip(mixture + noise, 0, 255).astype(np.uint8)
                key = f"{split_name}/set{set_index}-{index}.png"
                Image.fromarray(pixels).save(root / key)
                samples.append(multilabel_sample(key, labels))
        splits[split_name] = samples

    return Task(
        name="mixtures",
        classnames=list(CLASS_COLOURS),
        templates=list(DEFAULT_TEMPLATES),
        metric="map_11point",
        splits=splits,
        image_loader=FileImageLoader(root),
        source=str(root),
        multilabel=True,
    )


@pytest.fixture()
def registered_tasks(monkeypatch):
    """Task specs that resolve to tasks built in the test, as the dataset readers would build them."""
    registry: dict[str, Task] = {}
    original = training.resolve_task

    def resolve(spec: str, root=None) -> Task:
        return registry[spec] if spec in registry else original(spec, root)

    monkeypatch.setattr(training, "resolve_task", resolve)
    return registry


@pytest.fixture()
def mixture_task(tmp_path, registered_tasks) -> Task:
    task = write_mixture_task(tmp_path / "mixtures")
    registered_tasks["mixtures"] = task
    return task


def train_args(tasks: list[str], tiny_config_path: str, out: Path, method: str, *extra: str) -> list[str]:
    task_flags = [part for task in tasks for part in ("--task", task)]
    return [
        "train",
        *task_flags,
        "--method", method,
        "--model", tiny_config_path,
        "--pretrained", "null",
        "--shots", "5",
        "--epochs", "1",
        "train.warmup_epochs=0",
        "--output-dir", str(out),
        "train.batch_size=8",
        "train.precision=fp32",
        "prompt.coop.n_ctx=4",
        "prompt.vpt.n_tokens=4",
        "prompt.upt.width=32",
        *extra,
    ]


# Samples and task validation -------------------------------------------------------------------


def test_sample_labels_property() -> None:
    assert Sample("a", 1).labels == (1,)
    assert Sample("a", 0, (2, 5)).labels == (0, 2, 5)


def test_single_label_task_rejects_other_labels() -> None:
    samples = [Sample("a.png", 0, (1,)), Sample("b.png", 1)]
    with pytest.raises(TaskError, match="sample 'a.png' has other_labels.*single-label"):
        Task("t", ["x", "y"], ["{}"], "accuracy", {"train": samples, "test": samples}, lambda key: None)


@pytest.mark.parametrize(
    "sample",
    [Sample("a.png", 1, (0,)), Sample("a.png", 0, (2, 1)), Sample("a.png", 0, (1, 1))],
    ids=["label-not-smallest", "unsorted", "repeated"],
)
def test_multilabel_sample_must_be_canonical(sample: Sample) -> None:
    samples = [sample]
    with pytest.raises(TaskError, match="sample 'a.png'.*smallest class index"):
        Task("t", ["x", "y", "z"], ["{}"], "map_11point", {"train": samples, "test": samples}, lambda key: None, multilabel=True)


def test_multilabel_other_label_out_of_range() -> None:
    samples = [Sample("a.png", 0, (3,))]
    with pytest.raises(TaskError, match="sample 'a.png' has label 3, outside 0..2"):
        Task("t", ["x", "y", "z"], ["{}"], "map_11point", {"train": samples, "test": samples}, lambda key: None, multilabel=True)


# Few-shot selection ---------------------------------------------------------------------------


def make_multilabel_pool(size: int = 120, num_classes: int = 6) -> list[Sample]:
    rng = random.Random(11)
    pool = []
    for index in range(size):
        labels = rng.sample(range(num_classes), rng.randint(1, 3))
        pool.append(multilabel_sample(f"img{index:03d}.jpg", labels))
    return pool


def arrange_for_seed(visit_order: list[Sample], seed: int) -> list[Sample]:
    """Return the pool that `random.Random(seed).shuffle` turns into `visit_order`."""
    permutation = list(range(len(visit_order)))
    random.Random(seed).shuffle(permutation)
    pool: list[Sample | None] = [None] * len(visit_order)
    for position, source in enumerate(permutation):
        pool[source] = visit_order[position]
    return pool


def test_multilabel_selection_stable_and_seeded() -> None:
    pool = make_multilabel_pool()

    first = sample_few_shot(pool, 6, shots=5, seed=0, multilabel=True)
    again = sample_few_shot(list(pool), 6, shots=5, seed=0, multilabel=True)
    other = sample_few_shot(pool, 6, shots=5, seed=1, multilabel=True)

    assert first == again
    assert first.multilabel
    assert first.train + first.val != other.train + other.val


def test_multilabel_selection_counts_each_class() -> None:
    split = sample_few_shot(make_multilabel_pool(), 6, shots=5, seed=2, multilabel=True)
    chosen = split.train + split.val
    counts = Counter(label for sample in chosen for label in sample.labels)

    assert len(set(chosen)) == len(chosen)
    assert all(counts[label] >= 5 for label in range(6))
    # An image is kept for any one of its classes, so some class overshoots.
    assert max(counts.values()) > 5


def test_multilabel_selection_rule_by_hand() -> None:
    # K = 4, so an image is kept while one of its classes has fewer than 4,
    # if its least-chosen class has at most 2 or its most-chosen at most 6.
    # Visit order and class counts after each image:
    #   x0..x3 {0}      -> kept: class 0 reaches 4
    #   x4 {0}          -> skipped: its only class has 4
    #   y0 {0, 1}       -> kept (class 1 has 0): 5, 1
    #   y1 {0, 1}       -> kept: 6, 2
    #   y2 {0, 1}       -> kept (class 1 has 2 <= K/2): 7, 3
    #   z {0, 1}        -> skipped: class 1 has 3 > K/2 and class 0 has 7 > 1.5 K
    #   w {1}           -> kept: class 1 reaches 4, and the visit stops
    #   v {1}           -> never visited
    x = [Sample(f"x{index}", 0) for index in range(5)]
    y = [Sample(f"y{index}", 0, (1,)) for index in range(3)]
    z, w, v = Sample("z", 0, (1,)), Sample("w", 1), Sample("v", 1)
    pool = arrange_for_seed([*x, *y, z, w, v], seed=7)

    split = sample_few_shot(pool, 2, shots=4, seed=7, multilabel=True)

    # K = 4 < 5, so validation is the training set itself.
    assert [sample.key for sample in split.train] == ["x0", "x1", "x2", "x3", "y0", "y1", "y2", "w"]
    assert split.val == split.train


def test_multilabel_selection_warns_short_class(caplog) -> None:
    # As above without w and v: class 1 stops at 3 images, because its last
    # image also shows class 0, which already has 7 > 1.5 K.
    x = [Sample(f"x{index}", 0) for index in range(4)]
    y = [Sample(f"y{index}", 0, (1,)) for index in range(3)]
    pool = arrange_for_seed([*x, *y, Sample("z", 0, (1,))], seed=3)

    with caplog.at_level(logging.WARNING, logger="mvlpt.fewshot"):
        split = sample_few_shot(pool, 2, shots=4, seed=3, classnames=["cat", "dog"], multilabel=True)

    assert len(split.train) == 7
    assert "dog: 3" in caplog.text


def test_multilabel_selection_short_pool_rejected() -> None:
    pool = [Sample(f"a{index}", 0, (1,)) for index in range(5)] + [Sample("b", 0, (2,))]
    with pytest.raises(ValueError, match="class 'c' has 1 training image"):
        sample_few_shot(pool, 3, shots=2, seed=0, classnames=["a", "b", "c"], multilabel=True)


def test_multilabel_validation_rule() -> None:
    split = sample_few_shot(make_multilabel_pool(), 6, shots=10, seed=4, multilabel=True)
    val_counts = Counter(label for sample in split.val for label in sample.labels)
    train_counts = Counter(label for sample in split.train for label in sample.labels)

    assert not set(split.train) & set(split.val)
    # ceil(10 / 5) = 2 validation images for every class, and training images left for each.
    assert all(val_counts[label] >= 2 for label in range(6))
    assert all(train_counts[label] >= 1 for label in range(6))


def test_multilabel_validation_keeps_training_image() -> None:
    # K = 5, one validation image per class. Class 0 occurs only in the
    # images {0, k}, k = 1..5, and each class k also has 4 images {k}. In
    # selection order, {0, 1} to {0, 4} go to validation for their class k,
    # which leaves {0, 5} as the last class-0 image: it stays in training, and
    # class 5 takes its validation image from the next {5} instead.
    visit_order = []
    for k in range(1, 6):
        visit_order.append(Sample(f"0-{k}", 0, (k,)))
        visit_order.extend(Sample(f"{k}-{index}", k) for index in range(4))
    pool = arrange_for_seed(visit_order, seed=0)

    split = sample_few_shot(pool, 6, shots=5, seed=0, multilabel=True)

    assert [sample.key for sample in split.val] == ["0-1", "0-2", "0-3", "0-4", "5-0"]
    assert Sample("0-5", 0, (5,)) in split.train
    assert len(split.train) == 20


def test_single_label_sampling_rejects_multilabel_samples() -> None:
    pool = [Sample("a", 0, (1,)), Sample("b", 1)]
    with pytest.raises(ValueError, match="sample 'a' has several labels"):
        sample_few_shot(pool, 2, shots=1, seed=0)


# Split files ------------------------------------------------------------------------------------


def test_split_file_round_trip_other_labels(tmp_path: Path) -> None:
    split = sample_few_shot(make_multilabel_pool(), 6, shots=5, seed=0, multilabel=True)
    path = tmp_path / "fewshot" / "task.json"

    write_split(split, path)
    data = json.loads(path.read_text())
    restored = read_split(path)

    assert restored == split
    assert data["multilabel"] is True
    assert data["validation_rule"] == MULTILABEL_VALIDATION_RULE
    assert any("other_labels" in entry for entry in data["train"] + data["val"])


def test_split_file_without_other_labels_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"shots": 1, "seed": 0, "train": [{"key": "a", "label": 2}], "val": [{"key": "a", "label": 2}]}))

    split = read_split(path)

    assert split == FewShotSplit(shots=1, seed=0, train=[Sample("a", 2)], val=[Sample("a", 2)])
    assert not split.multilabel


def test_split_file_bad_other_labels(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    entry = {"key": "a", "label": 0, "other_labels": ["b"]}
    path.write_text(json.dumps({"shots": 1, "seed": 0, "train": [entry], "val": []}))

    with pytest.raises(ValueError, match="entry 0.*other_labels"):
        read_split(path)


def test_single_label_split_file_unchanged() -> None:
    data = FewShotSplit(shots=1, seed=0, train=[Sample("a", 0)], val=[Sample("a", 0)]).to_json()

    assert "multilabel" not in data
    assert data["train"] == [{"key": "a", "label": 0}]


# Training and evaluation end to end ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["coop", "vpt", "upt"])
def test_train_multilabel_task(mixture_task, tiny_config_path, tmp_path, method, capsys) -> None:
    out = tmp_path / method
    assert main(train_args(["mixtures"], tiny_config_path, out, method)) == 0

    results = json.loads((out / "results.json").read_text())
    entry = results["per_task"]["mixtures"]
    assert entry["metric"] == "map_11point"
    assert 0.0 <= entry["test"]["map_11point"] <= 100.0
    assert 0.0 <= entry["val"]["map_11point"] <= 100.0
    assert results["average"]["test"] == entry["test"]["map_11point"]
    assert f"mixtures {method} test: map_11point" in capsys.readouterr().out

    split = read_split(out / "fewshot" / "mixtures.json")
    assert split.multilabel
    expected = sample_few_shot(mixture_task.splits["train"], 3, shots=5, seed=1, multilabel=True)
    assert split == expected


def test_evaluate_multilabel_checkpoint(mixture_task, tiny_config_path, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(train_args(["mixtures"], tiny_config_path, out, "upt")) == 0
    results = json.loads((out / "results.json").read_text())
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(out / "prompt"), "train.precision=fp32"]) == 0

    printed = capsys.readouterr().out
    assert f"test: map_11point {results['per_task']['mixtures']['test']['map_11point']:.2f}" in printed


def test_zero_shot_multilabel(mixture_task, tiny_config_path, tmp_path, capsys) -> None:
    out = tmp_path / "zero-shot"
    args = ["zero-shot", "--task", "mixtures", "--model", tiny_config_path, "--pretrained", "null"]
    assert main([*args, "--output-dir", str(out)]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["per_task"]["mixtures"]["metric"] == "map_11point"
    assert "map_11point" in results["per_task"]["mixtures"]["test"]
    assert "zero-shot test: map_11point" in capsys.readouterr().out


@pytest.mark.parametrize("label_space", ["union", "task"])
def test_multitask_mixes_multilabel_and_single_label(
    mixture_task, registered_tasks, tiny_config_path, tmp_path, label_space, capsys
) -> None:
    colours = write_image_task(tmp_path / "colours", {"cyan": (0, 200, 200), "grey": (120, 120, 120)}, 1)
    registered_tasks["colours"] = load_image_folder(colours)
    out = tmp_path / label_space

    args = train_args(["mixtures", "colours"], tiny_config_path, out, "coop", f"train.label_space={label_space}")
    assert main(args) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["per_task"]["mixtures"]["metric"] == "map_11point"
    assert "map_11point" in results["per_task"]["mixtures"]["test"]
    assert results["per_task"]["colours"]["metric"] == "accuracy"
    assert 0.0 <= results["per_task"]["colours"]["test"]["accuracy"] <= 100.0
    assert read_split(out / "fewshot" / "colours.json").multilabel is False

    capsys.readouterr()
    assert main(["summarize", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| mixtures | coop | joint | 5 |" in table
    assert "| map_11point |" in table
    assert "| accuracy |" in table


def test_train_roc_auc_task(registered_tasks, tiny_config_path, tmp_path, capsys) -> None:
    folder = write_image_task(tmp_path / "binary", {"dark": (40, 40, 40), "light": (220, 220, 220)}, 2)
    registered_tasks["binary"] = load_image_folder(folder, name="binary", metric="roc_auc")
    out = tmp_path / "run"

    assert main(train_args(["binary"], tiny_config_path, out, "coop")) == 0

    results = json.loads((out / "results.json").read_text())
    entry = results["per_task"]["binary"]
    assert entry["metric"] == "roc_auc"
    assert 0.0 <= entry["test"]["roc_auc"] <= 100.0
    assert "accuracy" in entry["test"]
    assert "binary coop test: roc_auc" in capsys.readouterr().out


def test_split_file_of_other_kind_rejected(mixture_task, tiny_config_path, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    single = FewShotSplit(shots=5, seed=1, train=[Sample("train/set0-0.png", 0)], val=[])
    write_split(single, out / "fewshot" / "mixtures.json")

    assert main(train_args(["mixtures"], tiny_config_path, out, "coop")) == 2
    assert "single-label split" in capsys.readouterr().err
