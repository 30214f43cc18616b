"""Seeded K-shot sampling of a task's train split, and the validation rule.

Single-label tasks get exactly K images per class. Multi-label tasks follow
ELEVATER's counting rule, where an image counts once for each of its classes
and a class may end with more than K images (`sample_few_shot`).

The chosen images are written next to each run (`write_split`) so that the
run can be repeated exactly even if the sampling code, numpy or Python's
random module changes.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvlpt.rundir import replace_atomic
from mvlpt.tasks import Sample

logger = logging.getLogger(__name__)

MIN_SHOTS_FOR_HELD_OUT_VAL = 5

VALIDATION_RULE = (
    "For K >= 5 shots, the first ceil(K/5) images chosen for each class form the validation set "
    "and the other K - ceil(K/5) form the training set. For K < 5, the validation set is the "
    "training set itself."
)

MULTILABEL_VALIDATION_RULE = (
    "For K >= 5 shots, the chosen images are visited in selection order, and an image goes to the "
    "validation set while one of its classes has fewer than ceil(K/5) validation images, unless that "
    "would leave one of its classes without a training image; the other images form the training set. "
    "For K < 5, the validation set is the training set itself."
)


@dataclass(frozen=True)
class FewShotSplit:
    """The K-shot training and validation samples chosen from a task's train split.

    `multilabel` records which selection and validation rule made the split.
    """

    shots: int
    seed: int
    train: list[Sample]
    val: list[Sample]
    multilabel: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "shots": self.shots,
            "seed": self.seed,
            "train": [_sample_to_json(sample) for sample in self.train],
            "val": [_sample_to_json(sample) for sample in self.val],
            "validation_rule": MULTILABEL_VALIDATION_RULE if self.multilabel else VALIDATION_RULE,
        }
        # Single-label files keep the format they had before multi-label
        # tasks existed, so the key appears only when it is true.
        if self.multilabel:
            data["multilabel"] = True
        return data

    @classmethod
    def from_json(cls, data: Any) -> FewShotSplit:
        """Build a split from `to_json` output; raises ValueError naming the invalid field."""
        if not isinstance(data, dict):
            raise ValueError(f"few-shot split must be a JSON object, got {type(data).__name__}")

        for field_name in ("shots", "seed"):
            value = data.get(field_name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"few-shot split field '{field_name}' must be an integer, got {value!r}")

        multilabel = data.get("multilabel", False)
        if not isinstance(multilabel, bool):
            raise ValueError(f"few-shot split field 'multilabel' must be true or false, got {multilabel!r}")

        return cls(
            shots=data["shots"],
            seed=data["seed"],
            train=_samples_from_json(data.get("train"), "train"),
            val=_samples_from_json(data.get("val"), "val"),
            multilabel=multilabel,
        )


def _sample_to_json(sample: Sample) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": sample.key, "label": sample.label}
    if sample.other_labels:
        entry["other_labels"] = list(sample.other_labels)
    return entry


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _samples_from_json(entries: Any, field_name: str) -> list[Sample]:
    """Read split entries. "other_labels" is optional, so files written before multi-label support still load."""
    if not isinstance(entries, list):
        raise ValueError(f"few-shot split field '{field_name}' must be a list, got {type(entries).__name__}")

    samples: list[Sample] = []
    for position, entry in enumerate(entries):
        key = entry.get("key") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        other_labels = entry.get("other_labels", []) if isinstance(entry, dict) else None
        valid_other_labels = isinstance(other_labels, list) and all(_is_int(value) for value in other_labels)
        if not isinstance(key, str) or not _is_int(label) or not valid_other_labels:
            raise ValueError(
                f"few-shot split field '{field_name}', entry {position}: expected "
                f'{{"key": <string>, "label": <integer>}} with an optional "other_labels": [<integer>, ...], '
                f"got {entry!r}"
            )
        samples.append(Sample(key, label, tuple(other_labels)))
    return samples


def num_validation_shots(shots: int) -> int:
    """Return how many of the K chosen images per class go to validation.

    For K >= 5 this is ceil(0.2 * K), computed as the integer ceil(K / 5).
    For K < 5 it is 0, because the training images double as the validation
    set.
    """
    if shots < MIN_SHOTS_FOR_HELD_OUT_VAL:
        return 0
    return (shots + 4) // 5


def sample_few_shot(
    samples: Sequence[Sample],
    num_classes: int,
    shots: int,
    seed: int,
    classnames: Sequence[str] | None = None,
    multilabel: bool = False,
) -> FewShotSplit:
    """Choose `shots` images per class from `samples` and split them into train and val.

    With `multilabel` the multi-label rule of `_sample_few_shot_multilabel`
    applies. Without it, every sample must have a single label, and the
    following rule applies.

    The result depends only on the multiset of samples, `shots` and `seed`.
    The candidates of each class are sorted by key, so input order does not
    matter. Then one `numpy.random.default_rng(seed)` generator visits the
    classes in label order and picks K of each class's candidates without
    replacement (`Generator.choice`). The order of the picks is the selection
    order.

    Validation rule: for K >= 5, the first ceil(0.2 * K) picks of each class
    form the validation set and the rest the training set. For K < 5
    (K = 1, 2, 3, 4) the validation set is the training set itself, the same
    K samples per class. For example K = 5 gives 1 val and 4 train per class,
    K = 6 gives 2 and 4, and K = 20 gives 4 and 16.

    Raises ValueError if `shots` < 1, if a label is outside 0..num_classes-1,
    or if a class has fewer than K candidates; `classnames`, when given, name
    the class in that message.

    NOTE: numpy does not promise the same random stream across releases, so
    the split file written with a run is the record, not the seed.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")

    for sample in samples:
        for label in sample.labels:
            if not 0 <= label < num_classes:
                raise ValueError(f"sample '{sample.key}' has label {label}, outside 0..{num_classes - 1}")
        if sample.other_labels and not multilabel:
            raise ValueError(
                f"sample '{sample.key}' has several labels {sample.labels}, but single-label sampling was "
                "requested; pass multilabel=True for a multi-label task"
            )

    if multilabel:
        return _sample_few_shot_multilabel(samples, num_classes, shots, seed, classnames)

    candidates_by_class: list[list[Sample]] = [[] for _ in range(num_classes)]
    for sample in samples:
        candidates_by_class[sample.label].append(sample)
    _check_enough_images([len(candidates) for candidates in candidates_by_class], shots, classnames)

    rng = np.random.default_rng(seed)
    num_val = num_validation_shots(shots)
    train: list[Sample] = []
    val: list[Sample] = []
    for candidates in candidates_by_class:
        candidates.sort(key=lambda sample: sample.key)
        picks = rng.choice(len(candidates), size=shots, replace=False)
        chosen = [candidates[int(index)] for index in picks]

        if num_val == 0:
            train.extend(chosen)
            val.extend(chosen)
        else:
            val.extend(chosen[:num_val])
            train.extend(chosen[num_val:])

    logger.debug("sampled %d shots x %d classes with seed %d", shots, num_classes, seed)
    return FewShotSplit(shots=shots, seed=seed, train=train, val=val)


def _check_enough_images(image_counts: Sequence[int], shots: int, classnames: Sequence[str] | None) -> None:
    """Raise ValueError naming the first class with fewer than `shots` images in the pool."""
    short = [label for label, count in enumerate(image_counts) if count < shots]
    if not short:
        return

    label = short[0]
    name = f"class {classnames[label]!r}" if classnames is not None else f"class {label}"
    smallest = min(image_counts)
    raise ValueError(
        f"{name} has {image_counts[label]} training image(s) but {shots} shots were requested "
        f"({len(short)} class(es) have too few); the smallest class has {smallest} image(s), so lower shots "
        f"to at most {smallest} or add images"
    )


def _sample_few_shot_multilabel(
    samples: Sequence[Sample],
    num_classes: int,
    shots: int,
    seed: int,
    classnames: Sequence[str] | None = None,
) -> FewShotSplit:
    """Choose about `shots` images per class of a multi-label task and split them into train and val.

    The selection is the rule of ELEVATER's toolkit, which calls
    `DatasetManifest.sample_few_shot_subset` of the vision-datasets package.
    An image counts once for each of its classes:

    1. `random.Random(seed).shuffle` puts the samples, in the order the task
       lists them, into a random order.
    2. Each image in that order is skipped when all of its classes already
       have K chosen images. Otherwise it is kept when its least-chosen class
       has at most K/2 images or its most-chosen class at most 1.5 K.
    3. The visit stops as soon as every class has K chosen images.

    So a class can end with more than K images, because an image is kept for
    any one of its classes. It can also end with fewer than K when its images
    all show a class that already has more than 1.5 K, and a warning then
    names it. Unlike single-label sampling, the result depends on the order
    of `samples`, which a task keeps fixed as its source files list them.

    The validation rule is MULTILABEL_VALIDATION_RULE. Raises ValueError when
    a class has fewer than K images in `samples`.
    """
    image_counts = [0] * num_classes
    for sample in samples:
        for label in sample.labels:
            image_counts[label] += 1
    _check_enough_images(image_counts, shots, classnames)

    order = list(samples)
    random.Random(seed).shuffle(order)

    chosen: list[Sample] = []
    chosen_counts = [0] * num_classes
    for sample in order:
        counts = [chosen_counts[label] for label in sample.labels]
        if min(counts) >= shots:
            continue
        if min(counts) <= shots / 2 or max(counts) <= 1.5 * shots:
            chosen.append(sample)
            for label in sample.labels:
                chosen_counts[label] += 1
        if min(chosen_counts) >= shots:
            break

    short = [label for label, count in enumerate(chosen_counts) if count < shots]
    if short:
        names = [classnames[label] if classnames is not None else str(label) for label in short]
        logger.warning(
            "multi-label few-shot sampling with %d shots, seed %d: %d class(es) got fewer than %d images (%s), "
            "because their other images all contain a class that already has more than 1.5 x %d",
            shots, seed, len(short), shots,
            ", ".join(f"{name}: {chosen_counts[label]}" for name, label in zip(names, short)), shots,
        )

    train, val = _split_multilabel_validation(chosen, num_classes, shots)
    logger.debug("sampled %d multi-label images for %d shots x %d classes with seed %d", len(chosen), shots, num_classes, seed)
    return FewShotSplit(shots=shots, seed=seed, train=train, val=val, multilabel=True)


def _split_multilabel_validation(chosen: list[Sample], num_classes: int, shots: int) -> tuple[list[Sample], list[Sample]]:
    """Apply MULTILABEL_VALIDATION_RULE to the chosen images, in selection order."""
    num_val = num_validation_shots(shots)
    if num_val == 0:
        return list(chosen), list(chosen)

    chosen_counts = [0] * num_classes
    for sample in chosen:
        for label in sample.labels:
            chosen_counts[label] += 1

    val_counts = [0] * num_classes
    train: list[Sample] = []
    val: list[Sample] = []
    for sample in chosen:
        needed = any(val_counts[label] < num_val for label in sample.labels)
        # An image can be pulled into validation by another of its classes, so
        # without this check a class could lose all its training images.
        keeps_training_image = all(chosen_counts[label] - val_counts[label] > 1 for label in sample.labels)
        if needed and keeps_training_image:
            val.append(sample)
            for label in sample.labels:
                val_counts[label] += 1
        else:
            train.append(sample)
    return train, val


def write_split(split: FewShotSplit, path: str | Path) -> None:
    """Write `split` as JSON to `path` atomically, through `mvlpt.rundir.replace_atomic`.

    Readers see the old file or the new one and never a partial write.
    Missing parent folders are created.
    """

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(split.to_json(), handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    replace_atomic(Path(path), write)


def read_split(path: str | Path) -> FewShotSplit:
    """Read a split written by `write_split`; raises ValueError naming the file if it is invalid."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"few-shot split file {path} not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"few-shot split file {path} is not valid JSON: {error}") from error

    try:
        return FewShotSplit.from_json(data)
    except ValueError as error:
        raise ValueError(f"invalid few-shot split file {path}: {error}") from error
