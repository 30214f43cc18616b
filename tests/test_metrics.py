"""Metrics checked against values worked out by hand on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mvlpt import evaluation, tasks
from mvlpt.evaluation import average_precision_11point, compute_metrics, task_metrics
from mvlpt.tasks import Sample, Task, TaskError


def test_metric_names_defined_once() -> None:
    assert evaluation.METRICS is tasks.METRICS
    assert tasks.METRICS == ("accuracy", "mean_per_class_accuracy", "map_11point", "roc_auc")


def test_accuracy_and_mean_per_class_accuracy() -> None:
    # Labels 0, 0, 0, 1 and predictions 0, 0, 1, 1: 3 of 4 correct; class 0
    # has recall 2/3 and class 1 recall 1, so the mean per-class accuracy is
    # (2/3 + 1) / 2 = 5/6.
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])

    metrics = compute_metrics(logits, labels)

    assert metrics["accuracy"] == pytest.approx(75.0)
    assert metrics["mean_per_class_accuracy"] == pytest.approx(500.0 / 6.0)
    assert "roc_auc" not in metrics
    assert "map_11point" not in metrics


def test_roc_auc_counts_ties_as_half() -> None:
    # Class-1 probabilities 0.1, 0.4 (negatives) and 0.4, 0.8 (positives).
    # Of the 4 positive-negative pairs, 3 rank the positive higher and 1 is
    # tied, which counts 1/2: AUC = (3 + 0.5) / 4 = 0.875.
    probabilities = [0.1, 0.4, 0.4, 0.8]
    logits = torch.tensor([[0.0, math.log(p / (1.0 - p))] for p in probabilities])
    labels = torch.tensor([0, 0, 1, 1])

    metrics = compute_metrics(logits, labels)

    assert metrics["roc_auc"] == pytest.approx(87.5)


def test_roc_auc_uses_class_one_probability() -> None:
    # The positives (class 1) get the two highest class-1 probabilities.
    logits = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])

    assert compute_metrics(logits, labels)["roc_auc"] == pytest.approx(100.0)
    assert compute_metrics(logits, 1 - labels)["roc_auc"] == pytest.approx(0.0)


def test_roc_auc_omitted_with_one_class_present() -> None:
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])

    metrics = compute_metrics(logits, torch.tensor([1, 1]))

    assert "roc_auc" not in metrics
    assert metrics["accuracy"] == pytest.approx(50.0)


def test_ap_11point_worked_example() -> None:
    # Ranked by score: positive, negative, positive, negative, negative.
    # Operating points (recall, precision): (0.5, 1), (0.5, 1/2), (1, 2/3),
    # (1, 1/2), (1, 2/5). For t = 0, 0.1, ..., 0.5 the maximum precision at
    # recall >= t is 1 (6 thresholds); for t = 0.6, ..., 1 it is 2/3
    # (5 thresholds). AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positives = np.array([True, False, True, False, False])

    assert average_precision_11point(scores, positives) == pytest.approx(28.0 / 33.0)


def test_ap_11point_has_no_point_at_recall_zero() -> None:
    # Ranked: negative, positive, negative. Points: (0, 0), (1, 1/2), (1, 1/3).
    # Every threshold gets 1/2, so AP = 1/2. scikit-learn's extra point
    # (recall 0, precision 1) would give t = 0 a precision of 1 and AP = 6/11.
    scores = np.array([0.9, 0.8, 0.7])
    positives = np.array([False, True, False])

    assert average_precision_11point(scores, positives) == pytest.approx(0.5)


def test_ap_11point_tied_scores_enter_together() -> None:
    # The two images scored 0.8 (one positive, one negative) form one point:
    # (recall 1/2, precision 1/2); then (1, 2/3). Every threshold gets 2/3.
    positives = np.array([True, False, True])
    scores = np.array([0.8, 0.8, 0.1])

    assert average_precision_11point(scores, positives) == pytest.approx(2.0 / 3.0)
    assert average_precision_11point(scores[[1, 0, 2]], positives[[1, 0, 2]]) == pytest.approx(2.0 / 3.0)


def test_ap_11point_exact_recall_reaches_threshold() -> None:
    # 10 positives ranked first, then 1 negative: recall 0.3 after 3 images
    # must count for t = 0.3; every threshold gets precision 1.
    positives = np.array([True] * 10 + [False])
    scores = np.linspace(1.0, 0.0, 11)

    assert average_precision_11point(scores, positives) == pytest.approx(1.0)


def test_ap_11point_without_positive_rejected() -> None:
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision_11point(np.array([0.5, 0.2]), np.array([False, False]))


def multilabel_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Three images, classes 0 and 1, and class 2 without any positive.

    Only the class-0 logit varies (2, 0.5, -2), so the softmax probability of
    class 0 falls from image 0 to image 2, and that of classes 1 and 2 rises.
    """
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    return logits, labels


def test_map_11point_worked_example() -> None:
    # Class 0 ranks images 0 (negative), 1, 2 (positives): points (0, 0),
    # (1/2, 1/2), (1, 2/3), so every threshold gets 2/3 and AP = 2/3.
    # Class 1 ranks images 2 (positive), 1 (negative), 0 (positive): the
    # first worked example's pattern, AP = 28/33.
    # Class 2 has no positive and is left out: mAP = (2/3 + 28/33) / 2 = 25/33.
    logits, labels = multilabel_case()

    metrics = compute_metrics(logits, labels, multilabel=True)

    assert metrics["map_11point"] == pytest.approx(100.0 * 25.0 / 33.0)


def test_precision_at_1_worked_example() -> None:
    # Top classes: image 0 -> class 0 (not a label), image 1 -> class 0
    # (a label), image 2 -> class 1 or 2 at equal scores; argmax takes the first,
    # class 1 (a label). 2 of 3 hits.
    logits, labels = multilabel_case()

    metrics = compute_metrics(logits, labels, multilabel=True)

    assert metrics["precision_at_1"] == pytest.approx(200.0 / 3.0)
    assert set(metrics) == {"map_11point", "precision_at_1"}


def test_multilabel_metrics_reject_class_indices() -> None:
    with pytest.raises(ValueError, match="multi-hot"):
        compute_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), multilabel=True)


def make_task(metric: str, num_classes: int, multilabel: bool = False, test_labels=(0, 1)) -> Task:
    samples = [Sample(f"image-{index}", label) for index, label in enumerate(test_labels)]
    return Task(
        name="toy",
        classnames=[f"class {index}" for index in range(num_classes)],
        templates=["a photo of a {}."],
        metric=metric,
        splits={"train": samples, "test": samples},
        image_loader=lambda key: Image.new("RGB", (4, 4)),
        multilabel=multilabel,
    )


def test_roc_auc_task_needs_two_classes() -> None:
    with pytest.raises(TaskError, match="roc_auc.*3 classes"):
        make_task("roc_auc", num_classes=3)

    assert make_task("roc_auc", num_classes=2).metric == "roc_auc"


def test_map_task_must_be_multilabel() -> None:
    with pytest.raises(TaskError, match="map_11point.*single-label"):
        make_task("map_11point", num_classes=3)


def test_multilabel_task_needs_map_metric() -> None:
    with pytest.raises(TaskError, match="multi-label.*'accuracy'"):
        make_task("accuracy", num_classes=3, multilabel=True)


def test_task_metrics_reports_undefined_metric() -> None:
    task = make_task("roc_auc", num_classes=2)
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])

    with pytest.raises(ValueError, match="'roc_auc' is undefined.*only class 1"):
        task_metrics(logits, torch.tensor([1, 1]), task, "test")

    metrics = task_metrics(logits, torch.tensor([1, 0]), task, "test")
    assert metrics["roc_auc"] == pytest.approx(100.0)
