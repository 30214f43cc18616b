"""Element-wise averaging of prompt checkpoints, e.g. one source prompt trained with several seeds.

The inputs must be interchangeable: the same method, backbone, parameter names,
shapes and dtypes, and the same prompt settings apart from those that only
affect initialisation or training. The result is saved as an ordinary prompt
checkpoint, so ``init`` and ``mvlpt evaluate`` read it like any other.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError, PromptCheckpoint, load_prompt_checkpoint, save_prompt_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["BACKBONE_IDENTITY_KEYS", "average_checkpoints"]

# Backbone metadata that must agree: prompts tuned on other weights or shapes do not average into a usable prompt.
BACKBONE_IDENTITY_KEYS = ("model", "pretrained", "text_width", "vision_width", "vision_layers", "embed_dim")

# Prompt settings that may differ between inputs. ctx_init and n_ctx only choose the starting context
# (with ctx_init set, n_ctx is ignored), and dropout only acts in training. Settings that change the
# parameter shapes (n_tokens, width, deep) are caught by the shape check.
SETTINGS_FREE_TO_DIFFER = ("ctx_init", "n_ctx", "dropout")


def average_checkpoints(paths: Sequence[str | Path], output: str | Path) -> Path:
    """Save the element-wise mean of the prompt tensors of ``paths`` as a new checkpoint in ``output``.

    Each mean is computed in float64 and cast back to the stored dtype. The metadata
    is that of the first input, with ``extra["averaged_from"]`` set to the list of
    input checkpoint directories. The save is atomic (see save_prompt_checkpoint).

    Raises CheckpointError, naming the checkpoints and what differs, for fewer than
    two inputs and for inputs that differ in method, backbone (model, pretrained
    weights or shapes), parameter names, tensor shapes or dtypes, or prompt settings.
    Class-specific CoOp contexts must also come from the same class list.
    """
    if isinstance(paths, (str, Path)):
        raise TypeError("paths must be a sequence of checkpoint paths, not one path")
    if len(paths) < 2:
        listed = ", ".join(str(path) for path in paths) or "none"
        raise CheckpointError(
            f"averaging needs at least two prompt checkpoints, got {len(paths)} ({listed}). "
            "Pass two or more checkpoint directories, e.g. the prompt/ folders of runs with different seeds."
        )

    checkpoints = [load_prompt_checkpoint(path) for path in paths]
    _check_method(checkpoints)
    _check_backbone(checkpoints)
    _check_parameter_names(checkpoints)
    _check_shapes(checkpoints)
    _check_settings(checkpoints)
    _check_class_specific_classes(checkpoints)

    first = checkpoints[0]
    averaged = {}
    for name, tensor in first.state_dict.items():
        stacked = torch.stack([checkpoint.state_dict[name].to(torch.float64) for checkpoint in checkpoints])
        averaged[name] = stacked.mean(dim=0).to(tensor.dtype)

    metadata = copy.deepcopy(first.metadata)
    metadata["extra"] = {**metadata.get("extra", {}), "averaged_from": [checkpoint.describe() for checkpoint in checkpoints]}
    directory = save_prompt_checkpoint(output, averaged, metadata)
    logger.info("averaged %d %s prompt checkpoints into %s", len(checkpoints), first.method, directory)
    return directory


# --- checks ------------------------------------------------------------------------------


def _values_by_checkpoint(checkpoints: list[PromptCheckpoint], value: Callable[[PromptCheckpoint], Any]) -> str | None:
    """Describe which checkpoints have which value, e.g. "'coop' in A, C; 'vpt' in B"; None when all agree."""
    groups: list[tuple[Any, list[str]]] = []
    for checkpoint in checkpoints:
        current = value(checkpoint)
        for known, names in groups:
            if known == current:
                names.append(checkpoint.describe())
                break
        else:
            groups.append((current, [checkpoint.describe()]))
    if len(groups) == 1:
        return None
    return "; ".join(f"{known!r} in {', '.join(names)}" for known, names in groups)


def _check_method(checkpoints: list[PromptCheckpoint]) -> None:
    differences = _values_by_checkpoint(checkpoints, lambda checkpoint: checkpoint.method)
    if differences is not None:
        raise CheckpointError(
            f"cannot average prompt checkpoints of different methods: {differences}. "
            "Average checkpoints of one method only."
        )


def _check_backbone(checkpoints: list[PromptCheckpoint]) -> None:
    problems = []
    for key in BACKBONE_IDENTITY_KEYS:
        differences = _values_by_checkpoint(checkpoints, lambda checkpoint: checkpoint.backbone.get(key))
        if differences is not None:
            problems.append(f"backbone {key}: {differences}")
    if problems:
        raise CheckpointError(
            f"cannot average prompt checkpoints trained on different backbones: {'; '.join(problems)}. "
            "Average checkpoints trained on the same backbone model and weights."
        )


def _check_parameter_names(checkpoints: list[PromptCheckpoint]) -> None:
    first = checkpoints[0]
    reference = set(first.state_dict)
    problems = []
    for checkpoint in checkpoints[1:]:
        names = set(checkpoint.state_dict)
        missing = sorted(reference - names)
        extra = sorted(names - reference)
        if missing:
            problems.append(f"{checkpoint.describe()} lacks {', '.join(missing)}")
        if extra:
            problems.append(f"{checkpoint.describe()} has the extra {', '.join(extra)}")
    if problems:
        raise CheckpointError(
            f"cannot average prompt checkpoints with different parameter names (compared with {first.describe()}): "
            f"{'; '.join(problems)}. Average checkpoints saved with the same prompt settings."
        )


def _check_shapes(checkpoints: list[PromptCheckpoint]) -> None:
    first = checkpoints[0]
    problems = []
    for name, tensor in first.state_dict.items():
        if not tensor.is_floating_point():
            problems.append(f"{name} has the non-float dtype {tensor.dtype} in {first.describe()}")
        for checkpoint in checkpoints[1:]:
            other = checkpoint.state_dict[name]
            if other.shape != tensor.shape:
                problems.append(
                    f"{name}: shape {tuple(tensor.shape)} in {first.describe()} vs {tuple(other.shape)} in {checkpoint.describe()}"
                )
            elif other.dtype != tensor.dtype:
                problems.append(f"{name}: dtype {tensor.dtype} in {first.describe()} vs {other.dtype} in {checkpoint.describe()}")
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise CheckpointError(
            f"cannot average prompt checkpoints whose tensors differ in shape or dtype, {len(problems)} problem(s):\n"
            f"{listing}\nAverage checkpoints saved with the same prompt settings (n_ctx, n_tokens, deep, width, "
            "class_specific) and backbone."
        )


def _check_settings(checkpoints: list[PromptCheckpoint]) -> None:
    keys = []
    for checkpoint in checkpoints:
        keys.extend(key for key in checkpoint.prompt_config if key not in keys)
    problems = []
    for key in keys:
        if key in SETTINGS_FREE_TO_DIFFER:
            continue
        differences = _values_by_checkpoint(checkpoints, lambda checkpoint: checkpoint.prompt_config.get(key))
        if differences is not None:
            problems.append(f"{key}: {differences}")
    if problems:
        raise CheckpointError(
            f"cannot average prompt checkpoints with different prompt settings: {'; '.join(problems)}. "
            "These settings change how the prompt is used, so average checkpoints trained with the same ones."
        )


def _check_class_specific_classes(checkpoints: list[PromptCheckpoint]) -> None:
    if not any(checkpoint.prompt_config.get("class_specific") for checkpoint in checkpoints):
        return
    first = checkpoints[0]
    problems = []
    for checkpoint in checkpoints[1:]:
        difference = _class_list_difference(first.classnames, checkpoint.classnames)
        if difference is not None:
            problems.append(f"{checkpoint.describe()} {difference}")
    if problems:
        raise CheckpointError(
            f"cannot average class-specific contexts trained on different class lists (compared with {first.describe()}): "
            f"{'; '.join(problems)}. Each context row belongs to one class, so average checkpoints trained on the "
            "same classes in the same order."
        )


def _class_list_difference(reference: list[str], classnames: list[str]) -> str | None:
    """Describe how ``classnames`` differs from ``reference`` in a few words; None when they are equal."""
    if classnames == reference:
        return None
    if len(classnames) != len(reference):
        return f"has {len(classnames)} classes instead of {len(reference)}"
    index = next(index for index, (a, b) in enumerate(zip(reference, classnames)) if a != b)
    return f"has class {classnames[index]!r} at index {index} where the first has {reference[index]!r}"
