"""Metrics, image feature extraction and zero-shot evaluation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_curve, roc_auc_score
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbone import FrozenCLIP
from .model import PromptedCLIP, encode_class_templates
from .runtime import autocast_context
from .tasks import METRICS, Sample, Task

logger = logging.getLogger(__name__)

# k / 10 rounds exactly as a recall of tp / positives with the same value does,
# so a recall of exactly 0.3 reaches the threshold 0.3 (np.linspace gives 0.30000000000000004).
RECALL_THRESHOLDS = np.arange(11) / 10


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool = False) -> dict[str, float]:
    """Compute every metric that applies to the predictions, each in percent.

    Single-label (``labels`` of shape (N,) with class indices):

    - ``accuracy``: top-1 accuracy of the argmax class.
    - ``mean_per_class_accuracy``: the mean recall over the classes present in
      ``labels`` (scikit-learn's balanced accuracy).
    - ``roc_auc``: only with two classes and both present in ``labels``; the
      area under the ROC curve of the softmax probability of class index 1
      (scikit-learn's ``roc_auc_score``, where tied scores count one half).

    Multi-label (``labels`` of shape (N, C) with 1 for each positive class):

    - ``map_11point``: the VOC 2007 11-point interpolated average precision of
      each class, ranking the images by the softmax probability of that class,
      averaged over the classes that have at least one positive in
      ``labels``. Classes without a positive have no defined recall and are
      left out, and the metric is omitted when no class has a positive.
    - ``precision_at_1``: the share of images whose highest-scoring class is
      one of their positive classes.
    """
    if multilabel:
        return _multilabel_metrics(logits, labels)

    predictions = logits.argmax(dim=-1).cpu().numpy()
    truth = labels.cpu().numpy()
    metrics = {
        "accuracy": 100.0 * float(accuracy_score(truth, predictions)),
        "mean_per_class_accuracy": 100.0 * float(balanced_accuracy_score(truth, predictions)),
    }
    if logits.shape[-1] == 2 and len(np.unique(truth)) == 2:
        probabilities = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
        metrics["roc_auc"] = 100.0 * float(roc_auc_score(truth, probabilities))
    return metrics


def _multilabel_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    if labels.dim() != 2 or labels.shape != logits.shape:
        raise ValueError(
            f"multi-label metrics need multi-hot labels of the logits' shape {tuple(logits.shape)}, "
            f"got labels of shape {tuple(labels.shape)}"
        )
    # The softmax follows ELEVATER's evaluation. It changes how one class's
    # scores rank across images, so AP differs from AP on raw logits.
    scores = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    positives = labels.cpu().numpy() > 0

    metrics = {}
    class_aps = [
        average_precision_11point(scores[:, index], positives[:, index])
        for index in range(positives.shape[1])
        if positives[:, index].any()
    ]
    if class_aps:
        metrics["map_11point"] = 100.0 * float(np.mean(class_aps))

    top_class = scores.argmax(axis=1)
    metrics["precision_at_1"] = 100.0 * float(positives[np.arange(len(top_class)), top_class].mean())
    return metrics


def average_precision_11point(scores: np.ndarray, positives: np.ndarray) -> float:
    """Return the VOC 2007 11-point interpolated average precision of one class, from 0 to 1.

    For each recall threshold t in 0, 0.1, ..., 1 it takes the maximum
    precision among the operating points with recall >= t, or 0 if there is
    none, and averages the 11 values (the VOC 2007 devkit's VOCevalcls).
    Images with equal scores enter the ranking together, as one threshold of
    scikit-learn's ``precision_recall_curve``. `positives` needs at least one
    True value.
    """
    if not np.any(positives):
        raise ValueError("average precision needs at least one positive image; the recall is undefined without one")

    precision, recall, _ = precision_recall_curve(positives, scores)
    # precision_recall_curve appends the point (recall 0, precision 1), which
    # no threshold reaches. The devkit has no such point, so it is dropped.
    precision, recall = precision[:-1], recall[:-1]

    interpolated = []
    for threshold in RECALL_THRESHOLDS:
        reached = recall >= threshold
        interpolated.append(float(precision[reached].max()) if reached.any() else 0.0)
    return float(np.mean(interpolated))


def task_metrics(logits: torch.Tensor, labels: torch.Tensor, task: Task, split_name: str) -> dict[str, float]:
    """Compute the metrics of one task's split, and raise ValueError when the task's own metric is undefined there."""
    metrics = compute_metrics(logits, labels, multilabel=task.multilabel)
    if task.metric not in metrics:
        reason = (
            "no class has a positive image"
            if task.multilabel
            else f"it needs images of both classes, but the split has only class {int(labels.unique()[0])}"
        )
        raise ValueError(
            f"task '{task.name}', split '{split_name}': metric '{task.metric}' is undefined because {reason}; "
            "evaluate on a split with images of every class"
        )
    return metrics


def multi_hot(label_indices: Sequence[int], width: int) -> torch.Tensor:
    """Return a float vector of length `width` with 1 at each of `label_indices` and 0 elsewhere."""
    target = torch.zeros(width)
    target[list(label_indices)] = 1.0
    return target


class ImageDataset(Dataset):
    """Images of one task's samples, transformed for the backbone.

    Items are (image, target, task_index). Without ``num_targets`` the target
    is the class index ``sample.label + label_offset``. With ``num_targets``
    it is a multi-hot float vector of that length, with 1 at ``label_offset``
    plus each of the sample's labels. Multi-label tasks need multi-hot
    targets. A multitask run that includes a multi-label task gives them to
    every task, so that batches mixing tasks have targets of one shape.
    """

    def __init__(
        self,
        task: Task,
        samples: Sequence[Sample],
        transform,
        task_index: int = 0,
        label_offset: int = 0,
        num_targets: int | None = None,
    ):
        self.task = task
        self.samples = list(samples)
        self.transform = transform
        self.task_index = task_index
        self.label_offset = label_offset
        self.num_targets = num_targets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = self.transform(self.task.load_image(sample.key))
        if self.num_targets is None:
            return image, sample.label + self.label_offset, self.task_index
        target = multi_hot([label + self.label_offset for label in sample.labels], self.num_targets)
        return image, target, self.task_index


@torch.no_grad()
def encode_dataset(
    backbone: FrozenCLIP,
    dataset: ImageDataset,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    description: str = "encoding images",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised frozen image features (N, E) in float32 and targets (N,) or (N, C), in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features, labels = [], []
    device = backbone.device
    for images, batch_labels, _ in tqdm(loader, desc=description, leave=False, unit="batch", disable=None):
        with autocast_context(device, autocast_dtype):
            batch_features = backbone.encode_image(images.to(device))
        features.append(F.normalize(batch_features.float(), dim=-1).cpu())
        labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def predict(
    model: PromptedCLIP,
    *,
    dataset: ImageDataset | None = None,
    features: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    batch_size: int = 100,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    description: str = "evaluating",
    class_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and targets, (N,) or multi-hot (N, C'), for a dataset or precomputed image features.

    With ``class_indices`` the logits cover only those classes, in that order.
    """
    model.eval()
    device = model.backbone.device
    if class_indices is not None:
        class_indices = class_indices.to(device)
    if features is not None:
        outputs = []
        for start in range(0, len(features), batch_size):
            batch = features[start : start + batch_size].to(device)
            with autocast_context(device, autocast_dtype):
                outputs.append(model(image_features=batch, class_indices=class_indices).float().cpu())
        return torch.cat(outputs), labels

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    outputs, all_labels = [], []
    for images, batch_labels, _ in tqdm(loader, desc=description, leave=False, unit="batch", disable=None):
        with autocast_context(device, autocast_dtype):
            outputs.append(model(images.to(device), class_indices=class_indices).float().cpu())
        all_labels.append(batch_labels)
    return torch.cat(outputs), torch.cat(all_labels)


@torch.no_grad()
def zero_shot_logits(
    backbone: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str], image_features: torch.Tensor
) -> torch.Tensor:
    """Zero-shot CLIP logits from normalised image features and a template ensemble."""
    text_features = encode_class_templates(backbone, classnames, templates).cpu()
    return backbone.logit_scale.cpu() * image_features.float() @ text_features.t()


def zero_shot_metrics(
    backbone: FrozenCLIP,
    task: Task,
    split_name: str,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Zero-shot CLIP metrics of one task split, with the task's own template ensemble."""
    num_targets = task.num_classes if task.multilabel else None
    dataset = ImageDataset(task, task.splits[split_name], backbone.preprocess, num_targets=num_targets)
    features, labels = encode_dataset(
        backbone,
        dataset,
        batch_size,
        autocast_dtype,
        num_workers,
        description=f"encoding {task.name} {split_name} images",
    )
    logits = zero_shot_logits(backbone, task.classnames, task.templates, features)
    return task_metrics(logits, labels, task, split_name)


def summarize_metrics(metrics: dict[str, float], task_metric: str) -> str:
    parts = [f"{name} {value:.2f}" for name, value in metrics.items()]
    return f"{task_metric} {metrics[task_metric]:.2f} ({', '.join(parts)})"
