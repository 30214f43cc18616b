"""Seeded K-shot sampling of a task's train split, and the validation rule.

The chosen images are written next to each run (`write_split`) so that the
run can be repeated exactly even if the sampling code or numpy changes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvlpt.tasks import Sample

logger = logging.getLogger(__name__)

MIN_SHOTS_FOR_HELD_OUT_VAL = 5

VALIDATION_RULE = (
    "For K >= 5 shots, the first ceil(K/5) images chosen for each class form the validation set "
    "and the other K - ceil(K/5) form the training set. For K < 5, the validation set is the "
    "training set itself."
)


@dataclass(frozen=True)
class FewShotSplit:
    """The K-shot training and validation samples chosen from a task's train split."""

    shots: int
    seed: int
    train: list[Sample]
    val: list[Sample]

    def to_json(self) -> dict[str, Any]:
        return {
            "shots": self.shots,
            "seed": self.seed,
            "train": [{"key": sample.key, "label": sample.label} for sample in self.train],
            "val": [{"key": sample.key, "label": sample.label} for sample in self.val],
            "validation_rule": VALIDATION_RULE,
        }

    @classmethod
    def from_json(cls, data: Any) -> FewShotSplit:
        """Build a split from `to_json` output; raises ValueError naming the invalid field."""
        if not isinstance(data, dict):
            raise ValueError(f"few-shot split must be a JSON object, got {type(data).__name__}")

        for field_name in ("shots", "seed"):
            value = data.get(field_name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"few-shot split field '{field_name}' must be an integer, got {value!r}")

        return cls(
            shots=data["shots"],
            seed=data["seed"],
            train=_samples_from_json(data.get("train"), "train"),
            val=_samples_from_json(data.get("val"), "val"),
        )


def _samples_from_json(entries: Any, field_name: str) -> list[Sample]:
    if not isinstance(entries, list):
        raise ValueError(f"few-shot split field '{field_name}' must be a list, got {type(entries).__name__}")

    samples: list[Sample] = []
    for position, entry in enumerate(entries):
        key = entry.get("key") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(key, str) or isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(
                f"few-shot split field '{field_name}', entry {position}: expected "
                f'{{"key": <string>, "label": <integer>}}, got {entry!r}'
            )
        samples.append(Sample(key, label))
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
) -> FewShotSplit:
    """Choose `shots` images per class from `samples` and split them into train and val.

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

    candidates_by_class: list[list[Sample]] = [[] for _ in range(num_classes)]
    for sample in samples:
        if not 0 <= sample.label < num_classes:
            raise ValueError(
                f"sample '{sample.key}' has label {sample.label}, outside 0..{num_classes - 1}"
            )
        candidates_by_class[sample.label].append(sample)

    short = [label for label, candidates in enumerate(candidates_by_class) if len(candidates) < shots]
    if short:
        label = short[0]
        name = f"class {classnames[label]!r}" if classnames is not None else f"class {label}"
        smallest = min(len(candidates) for candidates in candidates_by_class)
        raise ValueError(
            f"{name} has {len(candidates_by_class[label])} training image(s) but {shots} shots were requested "
            f"({len(short)} class(es) have too few); the smallest class has {smallest} image(s), so lower shots "
            f"to at most {smallest} or add images"
        )

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


def write_split(split: FewShotSplit, path: str | Path) -> None:
    """Write `split` as JSON to `path` atomically.

    The JSON goes to a temporary file in the same folder, which then replaces
    `path` with os.replace, so readers see the old file or the new one and
    never a partial write. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    temp_path = Path(handle.name)
    try:
        with handle:
            json.dump(split.to_json(), handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates the file readable by its owner only.
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


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
