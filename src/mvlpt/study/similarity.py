"""Similarity between tasks, from the frozen CLIP: visual (image features) and label (class-name text features).

Both measures are cosine similarities of normalised CLIP features, in [-1, 1],
symmetric, and 1 for a task compared with itself:

- visual similarity of tasks A and B is the cosine similarity of their
  centroids, where a task's centroid is the mean of the normalised image
  features of a fixed-seed sample of its training images;
- label similarity is the mean, over the classes of A, of the best cosine
  similarity to a class of B, averaged with the same from B to A. The class
  features encode each class name in one template for every task
  (``LABEL_TEMPLATE``), so only the names differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..pipeline import task_directory_name
from .config import TransferConfig

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_TEMPLATE",
    "TaskSimilarities",
    "compute_task_similarities",
    "label_similarity",
    "visual_similarity",
]

# One template for every task, so label similarity compares class names and not the tasks' own templates.
LABEL_TEMPLATE = "a photo of a {}."

# Seed of the sample of training images whose features give the visual similarity.
SAMPLE_SEED = 0


def _normalise_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def visual_similarity(features: Sequence[np.ndarray | None]) -> np.ndarray:
    """Return the (T, T) cosine similarities of the task centroids; ``features[i]`` is task i's (N_i, E) image features.

    Each feature is normalised, the task centroid is their mean, and the centroids
    are normalised before the dot product. A task given as None gets NaN.
    """
    count = len(features)
    centroids = []
    for item in features:
        if item is None:
            centroids.append(None)
            continue
        centroid = _normalise_rows(np.asarray(item, dtype=np.float64)).mean(axis=0)
        centroids.append(_normalise_rows(centroid))

    similarity = np.full((count, count), np.nan)
    for i in range(count):
        for j in range(count):
            if centroids[i] is not None and centroids[j] is not None:
                similarity[i, j] = float(centroids[i] @ centroids[j])
    return similarity


def label_similarity(class_features: Sequence[np.ndarray | None]) -> np.ndarray:
    """Return the (T, T) symmetrised best-match similarities; ``class_features[i]`` is task i's (C_i, E) class features.

    For tasks A and B: the mean over A's classes of the highest cosine similarity
    to any class of B, and the same from B to A, averaged. Identical class lists
    give 1; a task given as None gets NaN.
    """
    count = len(class_features)
    normalised = [None if item is None else _normalise_rows(np.asarray(item, dtype=np.float64)) for item in class_features]
    similarity = np.full((count, count), np.nan)
    for i in range(count):
        for j in range(count):
            if normalised[i] is None or normalised[j] is None:
                continue
            cosine = normalised[i] @ normalised[j].T
            similarity[i, j] = 0.5 * (cosine.max(axis=1).mean() + cosine.max(axis=0).mean())
    return similarity


@dataclass
class TaskSimilarities:
    """Visual and label similarity matrices of the study's tasks, in the order of ``labels``.

    ``problems`` lists the tasks whose features could not be computed, with the
    error; their rows and columns are NaN in the matrices concerned.
    """

    labels: list[str]
    visual: np.ndarray
    label: np.ndarray
    problems: list[str] = field(default_factory=list)


def _identity(config: TransferConfig) -> dict:
    """Return what the similarities depend on, stored with them so that a rerun can reuse them."""
    from ..builtin.registry import task_identity

    run = config.run_config(config.methods[0], config.tasks[0], config.shots[0], config.seeds[0], config.output_dir)
    return {
        "tasks": [task_identity(task) for task in config.tasks],
        "backbone": {"model": run.backbone.model, "pretrained": run.backbone.pretrained},
        "data_root": run.data.root,
        "images_per_task": config.similarity_images,
        "sample_seed": SAMPLE_SEED,
        "label_template": LABEL_TEMPLATE,
        "mvlpt_version": __version__,
    }


def compute_task_similarities(config: TransferConfig, cache_path: Path) -> TaskSimilarities:
    """Compute the visual and label similarity of the study's tasks, or read them from ``cache_path``.

    The cache is used when it matches the tasks, backbone, sample size and
    mvlpt version and no task failed. Otherwise the similarities are computed
    again and the cache is replaced.
    """
    import json

    from ..rundir import write_json_atomic

    identity = _identity(config)
    labels = [task_directory_name(task) for task in config.tasks]
    if cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("cannot read %s (%s); computing the similarities again", cache_path, error)
            cached = {}
        if cached.get("identity") == identity and not cached.get("problems"):
            logger.info("reusing the task similarities in %s", cache_path)
            return TaskSimilarities(labels, np.array(cached["visual"], dtype=float), np.array(cached["label"], dtype=float))

    similarities = _compute(config, labels)
    write_json_atomic(
        cache_path,
        {
            "identity": identity,
            "labels": labels,
            "visual": _to_json(similarities.visual),
            "label": _to_json(similarities.label),
            "problems": similarities.problems,
        },
    )
    return similarities


def _to_json(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(value) else float(value) for value in row] for row in matrix]


def _compute(config: TransferConfig, labels: list[str]) -> TaskSimilarities:
    import torch
    from tqdm.auto import tqdm

    from ..backbone import load_backbone
    from ..builtin import resolve_task
    from ..evaluation import ImageDataset, encode_dataset
    from ..model import encode_class_templates
    from ..runtime import resolve_autocast_dtype, resolve_device
    from ..tasks import ImageLoadError, TaskError

    run = config.run_config(config.methods[0], config.tasks[0], config.shots[0], config.seeds[0], config.output_dir)
    device = resolve_device(run.train.device)
    autocast_dtype = resolve_autocast_dtype(run.train.precision, device)
    backbone = load_backbone(run.backbone.model, run.backbone.pretrained, run.backbone.cache_dir).to(device)
    root = Path(run.data.root) if run.data.root else None

    image_features: list[np.ndarray | None] = []
    class_features: list[np.ndarray | None] = []
    problems = []
    for spec, label in tqdm(list(zip(config.tasks, labels)), desc="task similarity", unit="task", disable=None):
        try:
            task = resolve_task(spec, root)
        except (TaskError, OSError, ValueError) as error:
            logger.warning("no similarity for task %s: %s", label, error)
            problems.append(f"{label}: {error}")
            image_features.append(None)
            class_features.append(None)
            continue
        with torch.no_grad():
            names = encode_class_templates(backbone, task.classnames, [LABEL_TEMPLATE])
        class_features.append(names.float().cpu().numpy())

        split = "train" if "train" in task.splits else "test"
        samples = _sample(task.splits[split], config.similarity_images)
        dataset = ImageDataset(task, samples, backbone.preprocess)
        try:
            features, _ = encode_dataset(
                backbone,
                dataset,
                run.train.eval_batch_size,
                autocast_dtype,
                run.data.num_workers,
                description=f"encoding {len(samples)} {label} images",
            )
        except (ImageLoadError, OSError, ValueError) as error:
            logger.warning("no visual similarity for task %s: %s", label, error)
            problems.append(f"{label} (visual similarity only): {error}")
            image_features.append(None)
            continue
        image_features.append(features.numpy())
    return TaskSimilarities(labels, visual_similarity(image_features), label_similarity(class_features), problems)


def _sample(samples: list, count: int) -> list:
    """Return ``count`` samples drawn without replacement with SAMPLE_SEED, in their split order; all if fewer."""
    if len(samples) <= count:
        return list(samples)
    chosen = np.random.default_rng(SAMPLE_SEED).choice(len(samples), size=count, replace=False)
    return [samples[index] for index in sorted(chosen)]
