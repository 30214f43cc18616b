"""Metrics, image feature extraction and zero-shot evaluation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbone import FrozenCLIP
from .model import PromptedCLIP, encode_class_templates
from .runtime import autocast_context
from .tasks import Sample, Task

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "mean_per_class_accuracy")


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy and mean per-class accuracy, both in percent.

    Mean per-class accuracy is the mean recall over the classes present in
    ``labels`` (scikit-learn's balanced accuracy).
    """
    predictions = logits.argmax(dim=-1).cpu().numpy()
    truth = labels.cpu().numpy()
    return {
        "accuracy": 100.0 * float(accuracy_score(truth, predictions)),
        "mean_per_class_accuracy": 100.0 * float(balanced_accuracy_score(truth, predictions)),
    }


class ImageDataset(Dataset):
    """Images of one task's samples, transformed for the backbone.

    Items are (image, label, task_index); ``label_offset`` shifts the labels
    into a multitask label space whose range for this task starts there.
    """

    def __init__(self, task: Task, samples: Sequence[Sample], transform, task_index: int = 0, label_offset: int = 0):
        self.task = task
        self.samples = list(samples)
        self.transform = transform
        self.task_index = task_index
        self.label_offset = label_offset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        return self.transform(self.task.load_image(sample.key)), sample.label + self.label_offset, self.task_index


@torch.no_grad()
def encode_dataset(
    backbone: FrozenCLIP,
    dataset: ImageDataset,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    description: str = "encoding images",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised frozen image features (N, E) in float32 and labels (N,), in dataset order."""
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
    """Logits (N, C) and labels (N,) for a dataset, or for precomputed image features.

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
    dataset = ImageDataset(task, task.splits[split_name], backbone.preprocess)
    features, labels = encode_dataset(
        backbone,
        dataset,
        batch_size,
        autocast_dtype,
        num_workers,
        description=f"encoding {task.name} {split_name} images",
    )
    return compute_metrics(zero_shot_logits(backbone, task.classnames, task.templates, features), labels)


def summarize_metrics(metrics: dict[str, float], task_metric: str) -> str:
    parts = [f"{name} {value:.2f}" for name, value in metrics.items()]
    return f"{task_metric} {metrics[task_metric]:.2f} ({', '.join(parts)})"
