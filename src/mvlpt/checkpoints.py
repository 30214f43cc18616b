"""Prompt checkpoints: the learned prompt parameters and what they were trained for.

A prompt checkpoint is a directory with two files. ``prompt.safetensors`` contains the
prompt parameters only, as a flat name -> tensor dict. ``prompt.json`` records the
method, its settings, the backbone shapes, the class names and the task, together with
the SHA-256 of the tensor file, so a tensor file from another save is detected.
The frozen backbone is never saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from mvlpt import __version__

logger = logging.getLogger(__name__)

FORMAT = "mvlpt-prompt"
FORMAT_VERSION = 1
TENSORS_FILE = "prompt.safetensors"
METADATA_FILE = "prompt.json"

# Backbone shapes that decide whether prompt parameters fit a model.
BACKBONE_SHAPE_KEYS = ("text_width", "vision_width", "vision_layers", "embed_dim")

# Keys that save_prompt_checkpoint writes itself. Values passed in for them are replaced.
_RESERVED_KEYS = ("format", "format_version", "mvlpt_version", "safetensors_sha256")

_METHOD_NAMES = {"coop": "CoOp", "vpt": "VPT", "upt": "UPT"}

_LAYOUT_HINT = f"a prompt checkpoint directory contains {TENSORS_FILE} and {METADATA_FILE}"


class CheckpointError(ValueError):
    """Missing, damaged or incompatible prompt checkpoint. The message names the path and the fix."""


@dataclass
class PromptCheckpoint:
    """Prompt parameters with their metadata (the contents of prompt.json)."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict
    directory: Path | None = None

    @property
    def method(self) -> str:
        """Prompt tuning method the parameters belong to: coop, vpt or upt."""
        return self.metadata["method"]

    @property
    def classnames(self) -> list[str]:
        """Class names in label order, as trained."""
        return list(self.metadata["classnames"])

    @property
    def backbone(self) -> dict:
        """Backbone model name, pretrained tag and shapes (text_width, vision_width, vision_layers, embed_dim)."""
        return dict(self.metadata["backbone"])

    @property
    def prompt_config(self) -> dict:
        """Settings of the method, as the method's config section in a dict."""
        return dict(self.metadata.get("prompt_config", {}))

    def describe(self) -> str:
        """Name the checkpoint for messages: its directory, or "the checkpoint" when it was not loaded from disk."""
        return str(self.directory) if self.directory is not None else "the checkpoint"


# --- saving ----------------------------------------------------------------------------


def save_prompt_checkpoint(directory: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping) -> Path:
    """Save prompt parameters and metadata to ``directory`` and return its path.

    ``metadata`` needs ``method`` (str), ``backbone`` (a mapping with ``model`` and the
    shapes text_width, vision_width, vision_layers, embed_dim, each an int or None) and
    ``classnames`` (list of str). ``prompt_config``, ``task`` and ``extra`` default to
    empty values. The format keys are filled in here.

    Tensors are detached, copied to the CPU and made contiguous. Both files are written
    under temporary names in ``directory`` and then renamed with os.replace, the JSON
    last. An existing checkpoint therefore stays in place until both new files are
    complete. A crash between the two renames leaves a tensor file whose SHA-256 does
    not match prompt.json, which load_prompt_checkpoint reports.
    """
    directory = Path(directory)
    tensors = _cpu_tensors(state_dict)
    document = _metadata_document(metadata)

    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save a prompt checkpoint to {directory}: it is a file; {_LAYOUT_HINT}. Choose a directory path.")
    directory.mkdir(parents=True, exist_ok=True)

    tensors_path = directory / TENSORS_FILE
    metadata_path = directory / METADATA_FILE
    token = uuid.uuid4().hex
    temporary_tensors = directory / f".{TENSORS_FILE}.{token}.tmp"
    temporary_metadata = directory / f".{METADATA_FILE}.{token}.tmp"
    try:
        safetensors.torch.save_file(tensors, str(temporary_tensors))
        os.chmod(temporary_tensors, 0o644)
        _fsync_file(temporary_tensors)
        document["safetensors_sha256"] = _sha256(temporary_tensors)

        with open(temporary_metadata, "x", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

        os.replace(temporary_tensors, tensors_path)
        os.replace(temporary_metadata, metadata_path)
    except BaseException:
        temporary_tensors.unlink(missing_ok=True)
        temporary_metadata.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)

    logger.info("saved %d prompt tensors (%s) to %s", len(tensors), document["method"], directory)
    return directory


def _cpu_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise CheckpointError(f"prompt parameter names must be strings, got {name!r}; pass module.state_dict()-style names.")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"prompt parameter {name!r} is a {type(tensor).__name__}, not a tensor; pass tensors only.")
        # A copy, not just .contiguous(): safetensors rejects tensors that share storage,
        # such as two entries for one parameter. Prompt tensors are small.
        tensors[name] = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return tensors


def _metadata_document(metadata: Mapping) -> dict[str, Any]:
    """Check ``metadata`` and return the prompt.json document without its SHA-256."""
    method = metadata.get("method")
    if not isinstance(method, str) or not method:
        raise CheckpointError(f"checkpoint metadata 'method'={method!r} is invalid; pass the prompt method, e.g. 'coop'.")

    backbone = metadata.get("backbone")
    if not isinstance(backbone, Mapping):
        raise CheckpointError(
            f"checkpoint metadata 'backbone'={backbone!r} is invalid; pass a mapping with model and {', '.join(BACKBONE_SHAPE_KEYS)}."
        )
    missing = [key for key in ("model", *BACKBONE_SHAPE_KEYS) if key not in backbone]
    if missing:
        raise CheckpointError(f"checkpoint metadata 'backbone' lacks {', '.join(missing)}; add them from the backbone.")
    for key in BACKBONE_SHAPE_KEYS:
        value = backbone[key]
        # None marks a shape the backbone does not have, e.g. vision_layers of a ResNet image tower.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise CheckpointError(f"checkpoint metadata backbone.{key}={value!r} is invalid; pass an integer or None.")

    classnames = metadata.get("classnames")
    if not isinstance(classnames, (list, tuple)) or not all(isinstance(name, str) for name in classnames):
        raise CheckpointError(f"checkpoint metadata 'classnames'={classnames!r} is invalid; pass a list of class name strings.")

    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mvlpt_version": __version__,
        "method": method,
        "prompt_config": dict(metadata.get("prompt_config", {})),
        "backbone": dict(backbone),
        "classnames": list(classnames),
        "task": metadata.get("task", ""),
        "extra": dict(metadata.get("extra", {})),
    }
    for key, value in metadata.items():
        if key not in document and key not in _RESERVED_KEYS:
            document[key] = value

    try:
        json.dumps(document, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata cannot be written as JSON: {exc}. Pass only str, numbers, bools, lists and dicts.") from exc
    return document


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    """Flush the renames to disk. Skipped where the directory cannot be opened for reading."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# --- loading ---------------------------------------------------------------------------


def load_prompt_checkpoint(directory: str | Path) -> PromptCheckpoint:
    """Load a prompt checkpoint from its directory or from the path of either of its files.

    Raises CheckpointError when a file is missing, prompt.json is not an mvlpt prompt
    checkpoint of a supported version, or the tensor file does not match prompt.json.
    """
    directory = _checkpoint_directory(Path(directory))
    tensors_path = directory / TENSORS_FILE
    metadata_path = directory / METADATA_FILE

    missing = [path.name for path in (tensors_path, metadata_path) if not path.is_file()]
    if missing:
        raise CheckpointError(f"{directory} is not a complete prompt checkpoint: {', '.join(missing)} not found; {_LAYOUT_HINT}.")

    metadata = _read_metadata(metadata_path)
    expected_sha256 = metadata.get("safetensors_sha256")
    if expected_sha256 is not None and _sha256(tensors_path) != expected_sha256:
        raise CheckpointError(
            f"{tensors_path} does not match {metadata_path} (SHA-256 differs): the files come from different saves, "
            "for example after an interrupted save. Save the checkpoint again."
        )

    try:
        state_dict = safetensors.torch.load_file(str(tensors_path), device="cpu")
    except (safetensors.SafetensorError, OSError) as exc:
        raise CheckpointError(f"{tensors_path} could not be read as safetensors: {exc}. Save the checkpoint again.") from exc

    logger.info("loaded %d prompt tensors (%s) from %s", len(state_dict), metadata["method"], directory)
    return PromptCheckpoint(state_dict=state_dict, metadata=metadata, directory=directory)


def _checkpoint_directory(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.name in (TENSORS_FILE, METADATA_FILE) and path.is_file():
        return path.parent
    if path.exists():
        raise CheckpointError(f"{path} is not a prompt checkpoint; {_LAYOUT_HINT}. Pass the directory or one of these files.")
    raise CheckpointError(f"prompt checkpoint {path} not found; {_LAYOUT_HINT}. Pass the directory of a saved checkpoint.")


def _read_metadata(path: Path) -> dict:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}), so this is not a readable mvlpt prompt checkpoint.") from exc

    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise CheckpointError(
            f"{path} is not an mvlpt prompt checkpoint: expected \"format\": \"{FORMAT}\", found {found!r}. "
            "Pass a directory written by save_prompt_checkpoint."
        )

    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format_version {version!r}; the file is damaged. Save the checkpoint again.")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version}, but this mvlpt {__version__} reads up to {FORMAT_VERSION}. "
            f"Upgrade mvlpt to the version that wrote it ({metadata.get('mvlpt_version', 'unknown')})."
        )

    problems = []
    if not isinstance(metadata.get("method"), str):
        problems.append("method is not a string")
    if not isinstance(metadata.get("backbone"), dict):
        problems.append("backbone is not a mapping")
    classnames = metadata.get("classnames")
    if not isinstance(classnames, list) or not all(isinstance(name, str) for name in classnames):
        problems.append("classnames is not a list of strings")
    if problems:
        raise CheckpointError(f"{path} is damaged: {'; '.join(problems)}. Save the checkpoint again.")
    return metadata


# --- checks before loading into a model -----------------------------------------------


def _method_name(method: str) -> str:
    return _METHOD_NAMES.get(method, method)


def check_compatible(
    checkpoint: PromptCheckpoint,
    *,
    method: str,
    backbone: Mapping,
    classnames: Sequence[str] | None,
    class_specific_ok: bool = True,
) -> None:
    """Raise CheckpointError unless ``checkpoint`` fits a run with this method, backbone and classes.

    ``backbone`` needs the shapes text_width, vision_width, vision_layers and embed_dim,
    and should contain ``model``. ``classnames=None`` skips the class check, e.g. when
    a shared context moves to another task. ``class_specific_ok=False`` rejects a
    checkpoint with one context per class, which only fits its own classes. The checks
    run in this order and the first failure is raised: method, backbone shapes,
    class-specific context, class names.
    """
    where = checkpoint.describe()

    if checkpoint.method != method:
        raise CheckpointError(
            f"checkpoint {where} contains {_method_name(checkpoint.method)} prompts, "
            f"but this run uses {_method_name(method)}; train with prompt.method={checkpoint.method} "
            f"or pick a {_method_name(method)} checkpoint."
        )

    _check_backbone(checkpoint, backbone)

    if not class_specific_ok and checkpoint.prompt_config.get("class_specific"):
        raise CheckpointError(
            f"checkpoint {where} contains class-specific contexts for its {len(checkpoint.classnames)} classes, "
            "which cannot be used here; pick a checkpoint trained with prompt.coop.class_specific=false."
        )

    if classnames is not None:
        _check_classnames(checkpoint, list(classnames))


def _check_backbone(checkpoint: PromptCheckpoint, backbone: Mapping) -> None:
    missing = [key for key in BACKBONE_SHAPE_KEYS if key not in backbone]
    if missing:
        raise ValueError(f"check_compatible needs backbone shapes {', '.join(missing)}; pass them from the loaded backbone")

    saved = checkpoint.backbone
    saved_model = saved.get("model", "unknown")
    run_model = backbone.get("model", "unknown")
    differences = [
        f"{key} {saved.get(key)} in the checkpoint vs {backbone[key]} in this run"
        for key in BACKBONE_SHAPE_KEYS
        if saved.get(key) != backbone[key]
    ]
    if differences:
        raise CheckpointError(
            f"checkpoint {checkpoint.describe()} was trained on backbone {saved_model}, but this run uses {run_model}, "
            f"and their shapes differ: {'; '.join(differences)}. "
            f"Set backbone.model={saved_model} or pick a checkpoint trained on {run_model}."
        )

    for key in ("model", "pretrained"):
        if key in backbone and key in saved and saved[key] != backbone[key]:
            logger.warning(
                "checkpoint %s was trained with backbone %s=%r, this run uses %r; the shapes match, so it loads, "
                "but the prompts were tuned for other weights",
                checkpoint.describe(),
                key,
                saved[key],
                backbone[key],
            )


def _preview(names: Sequence[str], limit: int = 5) -> str:
    preview = ", ".join(repr(name) for name in names[:limit])
    if len(names) > limit:
        preview += f" and {len(names) - limit} more"
    return preview


def _check_classnames(checkpoint: PromptCheckpoint, classnames: list[str]) -> None:
    saved = checkpoint.classnames
    if saved == classnames:
        return

    details = []
    missing = [name for name in saved if name not in classnames]
    extra = [name for name in classnames if name not in saved]
    if missing:
        details.append(f"missing from this run: {_preview(missing)}")
    if extra:
        details.append(f"not in the checkpoint: {_preview(extra)}")
    if not missing and not extra:
        positions = [index for index, (a, b) in enumerate(zip(saved, classnames)) if a != b]
        if positions:
            index = positions[0]
            details.append(
                f"same names in a different order, first at index {index}: "
                f"{saved[index]!r} in the checkpoint vs {classnames[index]!r} in this run"
            )
        else:
            details.append("same names, different counts of duplicates")

    raise CheckpointError(
        f"checkpoint {checkpoint.describe()} was trained on {len(saved)} classes, but this run has {len(classnames)} classes; "
        f"{'; '.join(details)}. Use the task the checkpoint was trained on ({checkpoint.metadata.get('task') or 'unnamed'}) "
        "or train a new prompt for these classes."
    )


def load_state_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into the parameters of ``module`` with the same names.

    Pass the module that contains only the prompt parameters. Every parameter must have
    a tensor of its shape and every tensor a parameter, otherwise CheckpointError lists
    each problem, names ``source``, and no parameter is changed. Values are cast to the
    parameter's dtype and device.
    """
    parameters = dict(module.named_parameters())
    problems = []
    for name, parameter in parameters.items():
        if name not in state_dict:
            problems.append(f"missing {name}: expected shape {tuple(parameter.shape)}, not in the checkpoint")
    for name, tensor in state_dict.items():
        if name not in parameters:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            problems.append(f"unexpected {name}: found {shape}, not a parameter of the module")
        elif not isinstance(tensor, torch.Tensor):
            problems.append(f"invalid {name}: expected a tensor, found {type(tensor).__name__}")
        elif tensor.shape != parameters[name].shape:
            problems.append(
                f"shape mismatch {name}: expected {tuple(parameters[name].shape)}, found {tuple(tensor.shape)}"
            )

    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise CheckpointError(
            f"cannot load prompt parameters from {source}: {len(problems)} problem(s):\n{listing}\n"
            "The parameters depend on the prompt settings (n_ctx, n_tokens, deep, class_specific, width) "
            "and the backbone; load a checkpoint saved with the same settings."
        )

    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state_dict[name])
    logger.debug("loaded %d prompt parameters from %s", len(parameters), source)
