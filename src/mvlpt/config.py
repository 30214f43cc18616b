"""Typed run configuration: dataclasses, YAML files and ``dotted.key=value`` overrides.

Each field carries its help text, and its unit where it has one, in
``field(metadata=...)``, so the CLI help and docs/configuration.md come from the same
source. Every dataclass checks its own fields in ``__post_init__`` and raises
ConfigError with the dotted path of the field, the value and the fix. The dataclasses
are mutable, so ``RunConfig.validate_for`` checks every field again before a command runs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import math
import os
import re
import string
import types
import typing
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import yaml

logger = logging.getLogger(__name__)

METHODS = ("coop", "vpt", "upt")
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
UPT_ATTENTIONS = ("per_token", "joint")
MODEL_SELECTIONS = ("best_val", "last")
PRECISIONS = ("auto", "bf16", "fp32")
TASK_TEMPLATES = "task"
COMMANDS_NEEDING_TASK = ("train", "evaluate", "zero-shot")
SAMPLINGS = ("proportional", "balanced")
LABEL_SPACES = ("union", "task")

# numpy.random.seed, the strictest of the seeded generators, accepts seeds below 2**32.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """Invalid configuration key, value or file. The message names the dotted key, the value and the fix."""


def _meta(help_text: str, unit: str | None = None) -> dict[str, str]:
    meta = {"help": help_text}
    if unit is not None:
        meta["unit"] = unit
    return meta


# --- checks shared by the dataclasses -------------------------------------------------


def _dotted(config: Any, name: str) -> str:
    """Return the dotted path of a field of ``config`` inside a RunConfig, e.g. ``prompt.coop.n_ctx``."""
    section = getattr(type(config), "_section", "")
    return f"{section}.{name}" if section else name


def _reject(config: Any, name: str, reason: str, fix: str) -> NoReturn:
    value = getattr(config, name)
    raise ConfigError(f"{_dotted(config, name)}={value!r} is invalid: {reason}. {fix}")


def _require_at_least(config: Any, name: str, minimum: float) -> None:
    if getattr(config, name) < minimum:
        path = _dotted(config, name)
        _reject(config, name, f"it must be at least {minimum}", f"Set {path} to {minimum} or more.")


def _require_fraction(config: Any, name: str) -> None:
    """Require a value in [0, 1), as for a dropout probability or SGD momentum."""
    if not 0.0 <= getattr(config, name) < 1.0:
        path = _dotted(config, name)
        _reject(config, name, "it must be in [0, 1)", f"Set {path} to at least 0 and below 1.")


def _require_choice(config: Any, name: str, choices: Sequence[str]) -> None:
    value = getattr(config, name)
    if value not in choices:
        path = _dotted(config, name)
        listed = ", ".join(choices)
        _reject(config, name, f"it must be one of {listed}", f"Set {path} to one of {listed}.")


def _require_nonempty(config: Any, name: str, fix: str) -> None:
    value = getattr(config, name)
    if value is not None and not value.strip():
        _reject(config, name, "it is empty", fix)


def _check_ctx_init(config: Any) -> None:
    words = config.ctx_init
    if words and not words.strip():
        _reject(config, "ctx_init", "it contains only whitespace", 'Give words such as "a photo of a", or "" for random initialisation.')
    if "{}" in words:
        _reject(
            config,
            "ctx_init",
            "it contains {}, but ctx_init is the words before the class name, not a template",
            'Write the words only, e.g. "a photo of a".',
        )


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(hint))
    if origin is list:
        return f"list[{_type_name(typing.get_args(hint)[0])}]"
    if hint is type(None):
        return "None"
    return hint.__name__


def _expected(hint: Any) -> str:
    """Describe in words what values a type hint allows, for error messages."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _expected(arg) for arg in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])} values"
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} (a mapping in YAML)"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(hint, hint.__name__)


def _type_error(path: str, value: Any, hint: Any) -> ConfigError:
    inner = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
    fixes = {
        str: 'Quote text in YAML, e.g. "yes" or "123".',
        int: "Write a whole number without quotes, e.g. 5.",
        float: "Write a number without quotes, e.g. 0.002.",
        bool: "Write true or false without quotes.",
    }
    if typing.get_origin(inner[0]) is list:
        fix = 'Write a YAML list, e.g. ["a photo of a {}."].'
    elif dataclasses.is_dataclass(inner[0]):
        fix = f"Write {path} as a mapping of its keys."
    else:
        fix = fixes.get(inner[0], "")
    return ConfigError(
        f"{path}={value!r} has the wrong type: expected {_expected(hint)}, got {type(value).__name__}. {fix}".rstrip()
    )


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Return ``value`` as type ``hint`` (int to float, tuple or one string to list) or raise ConfigError.

    bool is rejected where an int or float is expected, although Python makes it an
    int, because ``epochs: true`` is a mistake. Floats must be finite.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{path}: only X | None unions are supported, got {hint}")
        try:
            return _coerce(value, inner[0], path)
        except ConfigError:
            raise _type_error(path, value, hint) from None

    if origin is list:
        item_hint = typing.get_args(hint)[0]
        # One string where a list of strings is expected means a list of one: data.tasks=mnist.
        if item_hint is str and isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _type_error(path, value, hint)
        return [_coerce(item, item_hint, f"{path}[{index}]") for index, item in enumerate(value)]

    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(path, value, hint)
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path}={value!r} is invalid: it must be a finite number. Set {path} to a finite value.")
        return number

    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, value, hint)
        return value

    if hint in (bool, str) or dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise _type_error(path, value, hint)
        return value

    raise TypeError(f"{path}: unsupported field type {hint}")


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_types(config: Any) -> None:
    """Check every field of ``config`` against its annotation, converting int to float and tuple to list."""
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        converted = _coerce(value, hints[f.name], _dotted(config, f.name))
        if converted is not value:
            setattr(config, f.name, converted)


# --- the configuration dataclasses -----------------------------------------------------


@dataclass
class BackboneConfig:
    """The frozen CLIP model."""

    _section = "backbone"

    model: str = field(
        default="ViT-B-16",
        metadata=_meta(
            "open_clip model name (e.g. ViT-B-16), an hf-hub:ORG/REPO or local-dir:PATH id, "
            "or the path of a JSON model configuration."
        ),
    )
    pretrained: str | None = field(
        default="openai",
        metadata=_meta(
            "open_clip pretrained tag (e.g. openai) or the path of a local checkpoint file. "
            "null builds random weights, which only suits tests."
        ),
    )
    cache_dir: str | None = field(
        default=None,
        metadata=_meta("Directory where downloaded weights are cached; null leaves the choice to open_clip."),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require_nonempty(self, "model", "Set backbone.model to an open_clip model name such as ViT-B-16.")
        _require_nonempty(self, "pretrained", "Set backbone.pretrained to a tag such as openai, or to null for random weights.")
        _require_nonempty(self, "cache_dir", "Set backbone.cache_dir to a directory, or to null for the default cache.")


@dataclass
class CoOpConfig:
    """Learnable text context vectors around the class name (CoOp)."""

    _section = "prompt.coop"

    n_ctx: int = field(
        default=16,
        metadata=_meta("Number of learnable context vectors M. Ignored when ctx_init is set.", unit="vectors"),
    )
    ctx_init: str = field(
        default="",
        metadata=_meta(
            'Words whose token embeddings initialise the context, e.g. "a photo of a". '
            "M then becomes the number of tokens of these words and n_ctx is ignored. "
            'With "" the context is drawn from a normal distribution with standard deviation 0.02.'
        ),
    )
    class_specific: bool = field(
        default=False,
        metadata=_meta(
            "Learn one context per class (CSC) instead of one shared by all classes. Cannot be combined with ctx_init."
        ),
    )
    class_token_position: str = field(
        default="middle",
        metadata=_meta("Position of the class name relative to the context: end, middle or front."),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require_at_least(self, "n_ctx", 1)
        _check_ctx_init(self)
        _require_choice(self, "class_token_position", CLASS_TOKEN_POSITIONS)
        if self.class_specific and self.ctx_init:
            raise ConfigError(
                f"prompt.coop.class_specific=True cannot be combined with prompt.coop.ctx_init={self.ctx_init!r}: "
                "class-specific contexts start from random values. "
                'Set prompt.coop.ctx_init="" or prompt.coop.class_specific=false.'
            )


@dataclass
class VPTConfig:
    """Learnable visual prompt tokens in the image encoder (VPT)."""

    _section = "prompt.vpt"

    n_tokens: int = field(
        default=16,
        metadata=_meta("Number of visual prompt tokens inserted per layer.", unit="tokens"),
    )
    deep: bool = field(
        default=True,
        metadata=_meta(
            "Insert a new set of prompt tokens before every transformer layer (deep); "
            "false inserts them before the first layer only (shallow)."
        ),
    )
    dropout: float = field(
        default=0.0,
        metadata=_meta("Dropout probability on the prompt tokens, in [0, 1).", unit="probability"),
    )
    templates: list[str] = field(
        default_factory=lambda: ["a photo of a {}."],
        metadata=_meta(
            "Text templates, each with one {} that str.format fills with the class name; "
            'they are encoded once to build the classifier. ["task"] averages the task\'s own templates.'
        ),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require_at_least(self, "n_tokens", 1)
        _require_fraction(self, "dropout")
        self._check_templates()

    def _check_templates(self) -> None:
        if not self.templates:
            _reject(self, "templates", "the list is empty", 'Give at least one template, e.g. ["a photo of a {}."], or ["task"].')
        if TASK_TEMPLATES in self.templates:
            if len(self.templates) > 1:
                _reject(
                    self,
                    "templates",
                    '"task" selects the task\'s own templates and must be the only entry',
                    'Use ["task"] alone, or list your own templates without "task".',
                )
            return

        for template in self.templates:
            if _count_format_fields(template) != 1:
                raise ConfigError(
                    f"prompt.vpt.templates contains the invalid template {template!r}: "
                    "a template needs exactly one {} for the class name and no other {...} fields. "
                    'Write it like "a photo of a {}.", with {{ and }} for literal braces.'
                )


def _count_format_fields(template: str) -> int:
    """Count the replacement fields of a str.format template.

    Returns -1 when the template is malformed or has a field other than a bare {}.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return -1
    fields = [(name, spec, conversion) for _, name, spec, conversion in parsed if name is not None]
    if any(name != "" or spec or conversion for name, spec, conversion in fields):
        return -1
    return len(fields)


@dataclass
class UPTConfig:
    """Text context and visual prompt tokens generated together by a small transformer (UPT)."""

    _section = "prompt.upt"

    n_ctx: int = field(
        default=4,
        metadata=_meta("Number of learnable text context vectors. Ignored when ctx_init is set.", unit="vectors"),
    )
    n_tokens: int = field(
        default=4,
        metadata=_meta("Number of visual prompt tokens per layer.", unit="tokens"),
    )
    width: int = field(
        default=128,
        metadata=_meta("Width of the prompt transformer shared by the text and visual prompts.", unit="features"),
    )
    deep: bool = field(
        default=True,
        metadata=_meta("Insert prompts before every transformer layer (deep); false inserts them before the first layer only."),
    )
    dropout: float = field(
        default=0.0,
        metadata=_meta("Dropout probability on the prompt tokens, in [0, 1).", unit="probability"),
    )
    ctx_init: str = field(
        default="",
        metadata=_meta(
            "Words whose token embeddings initialise the text context. "
            'M then becomes the number of tokens of these words and n_ctx is ignored. '
            'With "" the context is drawn from a normal distribution with standard deviation 0.02.'
        ),
    )
    class_token_position: str = field(
        default="middle",
        metadata=_meta("Position of the class name relative to the text context: end, middle or front."),
    )
    attention: str = field(
        default="per_token",
        metadata=_meta(
            "Attention in the prompt transformer: per_token (the MVLPT reference computation, "
            "in which no prompt token attends to another) or joint (self-attention across all prompt tokens)."
        ),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require_at_least(self, "n_ctx", 1)
        _require_at_least(self, "n_tokens", 1)
        _require_at_least(self, "width", 1)
        _require_fraction(self, "dropout")
        _check_ctx_init(self)
        _require_choice(self, "class_token_position", CLASS_TOKEN_POSITIONS)
        _require_choice(self, "attention", UPT_ATTENTIONS)


@dataclass
class PromptConfig:
    """The prompt tuning method and the settings of each method."""

    _section = "prompt"

    method: str = field(
        default="coop",
        metadata=_meta(
            "Prompt tuning method: coop (text context), vpt (visual prompt tokens) or upt (both, from one prompt transformer)."
        ),
    )
    coop: CoOpConfig = field(default_factory=CoOpConfig, metadata=_meta("Settings used when method is coop."))
    vpt: VPTConfig = field(default_factory=VPTConfig, metadata=_meta("Settings used when method is vpt."))
    upt: UPTConfig = field(default_factory=UPTConfig, metadata=_meta("Settings used when method is upt."))

    def __post_init__(self) -> None:
        _check_types(self)
        _require_choice(self, "method", METHODS)

    def active(self) -> CoOpConfig | VPTConfig | UPTConfig:
        """Return the sub-config of the selected method."""
        return getattr(self, self.method)


@dataclass
class DataConfig:
    """The task and its few-shot training split."""

    _section = "data"

    tasks: list[str] = field(
        default_factory=list,
        metadata=_meta(
            "Tasks to train on: built-in task names, prepared ELEVATER/CoOp task names (docs/elevater.md), image-folder paths or CSV manifest paths. One task trains a "
            "single-task prompt; several train one prompt on all of them (a multitask source prompt or a joint group). "
            "Required by train and evaluate."
        ),
    )
    shots: int = field(
        default=5,
        metadata=_meta("Training images per class K.", unit="images per class"),
    )
    augment: bool = field(
        default=False,
        metadata=_meta(
            "Apply random resized crops and horizontal flips to training images. "
            "Without augmentation, methods whose image features do not depend on the prompt encode each image once."
        ),
    )
    num_workers: int = field(
        default=0,
        metadata=_meta("DataLoader worker processes; 0 loads data in the main process.", unit="processes"),
    )
    sampling: str = field(
        default="proportional",
        metadata=_meta(
            "How multitask batches draw samples: proportional (uniformly over all samples, so each task in proportion "
            "to its size, as the MVLPT reference does) or balanced (each task equally often)."
        ),
    )
    root: str | None = field(
        default=None,
        metadata=_meta("Data root for built-in tasks; null uses $MVLPT_DATA_ROOT, or ~/.cache/mvlpt/data when that is unset."),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require_at_least(self, "shots", 1)
        _require_at_least(self, "num_workers", 0)
        _require_choice(self, "sampling", SAMPLINGS)
        for task in self.tasks:
            if not task.strip():
                _reject(self, "tasks", "an entry is empty", "Remove the empty entry from data.tasks.")
        repeated = sorted({task for task in self.tasks if self.tasks.count(task) > 1})
        if repeated:
            _reject(self, "tasks", f"{', '.join(repeated)} appear more than once", "List each task once in data.tasks.")
        _require_nonempty(self, "root", "Set data.root to a directory, or to null for the default.")


@dataclass
class TrainConfig:
    """SGD with a constant warm-up followed by a cosine learning-rate schedule."""

    _section = "train"

    epochs: int = field(default=200, metadata=_meta("Training epochs.", unit="epochs"))
    batch_size: int = field(default=32, metadata=_meta("Training images per optimiser step.", unit="images"))
    eval_batch_size: int = field(
        default=100,
        metadata=_meta("Images per forward pass during validation and testing.", unit="images"),
    )
    lr: float = field(
        default=0.002,
        metadata=_meta("Peak learning rate of SGD, reached after the warm-up and then decayed along a cosine schedule."),
    )
    momentum: float = field(default=0.9, metadata=_meta("SGD momentum, in [0, 1)."))
    weight_decay: float = field(default=5e-4, metadata=_meta("SGD weight decay (L2 penalty coefficient)."))
    warmup_epochs: int = field(
        default=1,
        metadata=_meta(
            "Epochs trained at the constant warmup_lr before the cosine schedule starts; 0 to epochs - 1.",
            unit="epochs",
        ),
    )
    warmup_lr: float = field(default=1e-5, metadata=_meta("Constant learning rate during the warm-up epochs."))
    model_selection: str = field(
        default="best_val",
        metadata=_meta(
            "Prompt kept at the end: best_val (the epoch with the highest validation accuracy) or last (the final epoch)."
        ),
    )
    precision: str = field(
        default="auto",
        metadata=_meta("Numeric precision: auto (bfloat16 autocast where the device supports it), bf16 or fp32."),
    )
    device: str = field(default="auto", metadata=_meta("Device: auto, cpu, cuda or cuda:N."))
    eval_every: int = field(default=1, metadata=_meta("Validate every N epochs.", unit="epochs"))
    label_space: str = field(
        default="union",
        metadata=_meta(
            "Classes the training loss ranges over when several tasks are trained together: union (cross-entropy over "
            "all tasks' classes, as the MVLPT reference does) or task (each sample's logits restricted to its own task's "
            "classes by masking the others with -inf). Evaluation always scores each task over its own classes."
        ),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        _require_at_least(self, "epochs", 1)
        _require_at_least(self, "batch_size", 1)
        _require_at_least(self, "eval_batch_size", 1)
        if self.lr <= 0:
            _reject(self, "lr", "the learning rate must be positive", "Set train.lr to a value above 0, e.g. 0.002.")
        _require_fraction(self, "momentum")
        _require_at_least(self, "weight_decay", 0)
        _require_at_least(self, "warmup_epochs", 0)
        if self.warmup_epochs >= self.epochs:
            _reject(
                self,
                "warmup_epochs",
                f"the warm-up must end before the last epoch, but train.epochs={self.epochs}",
                f"Set train.warmup_epochs to at most {self.epochs - 1}, or raise train.epochs.",
            )
        _require_at_least(self, "warmup_lr", 0)
        _require_choice(self, "model_selection", MODEL_SELECTIONS)
        _require_choice(self, "precision", PRECISIONS)
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            _reject(self, "device", "it must be auto, cpu, cuda or cuda:N", "Set train.device to e.g. cuda:0.")
        _require_at_least(self, "eval_every", 1)
        _require_choice(self, "label_space", LABEL_SPACES)


@dataclass
class RunConfig:
    """Everything one run needs: backbone, prompt, data, training, seed and output directory."""

    _section = ""

    backbone: BackboneConfig = field(default_factory=BackboneConfig, metadata=_meta("The frozen CLIP model."))
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata=_meta("The prompt tuning method."))
    data: DataConfig = field(default_factory=DataConfig, metadata=_meta("The task and its few-shot split."))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=_meta("Optimiser and schedule."))
    seed: int = field(default=1, metadata=_meta("Seed for the few-shot sampling and for training."))
    output_dir: str = field(default="runs/run", metadata=_meta("Run directory where outputs are written."))
    init: str | None = field(
        default=None,
        metadata=_meta("Prompt checkpoint directory whose parameters initialise the prompt; null uses the method's own initialisation."),
    )

    def __post_init__(self) -> None:
        _check_types(self)
        if not 0 <= self.seed <= MAX_SEED:
            _reject(self, "seed", f"it must be in [0, {MAX_SEED}]", "Set seed to a non-negative integer below 2**32.")
        _require_nonempty(self, "output_dir", "Set output_dir to a directory such as runs/coop.")
        _require_nonempty(self, "init", "Set init to a prompt checkpoint directory, or to null.")

    def validate_for(self, command: str) -> None:
        """Check every field again, then the fields that ``command`` needs.

        train and evaluate need data.tasks, and train needs ``init`` to exist when it is
        set. Other commands get only the per-field checks.
        """
        # Parents first, because their type checks make sure the sections are dataclasses.
        self.__post_init__()
        self.prompt.__post_init__()
        for section in (self.backbone, self.prompt.coop, self.prompt.vpt, self.prompt.upt, self.data, self.train):
            section.__post_init__()

        if command in COMMANDS_NEEDING_TASK and not self.data.tasks:
            raise ConfigError(
                f"data.tasks=[] is invalid: the {command} command needs a task. "
                "Pass --task (or set data.tasks) with a built-in or prepared benchmark task name, an image-folder path or a CSV manifest path."
            )
        if command == "train" and self.init is not None and not Path(self.init).exists():
            raise ConfigError(
                f"init={self.init!r} is invalid: the prompt checkpoint was not found. "
                "Set init to a directory containing prompt.json and prompt.safetensors, or to null."
            )

    def to_dict(self) -> dict:
        """Return the configuration as plain nested dicts and lists, ready for YAML or JSON."""
        return dataclasses.asdict(self)


# --- building from dicts ---------------------------------------------------------------


def config_from_dict(data: Mapping | None, cls: type = RunConfig) -> Any:
    """Build ``cls`` from nested mappings, checking every key and value.

    Missing keys keep their defaults, and a section given as null keeps all its defaults.
    Unknown keys and wrongly typed values raise ConfigError with the dotted key.
    """
    return _build(cls, data, getattr(cls, "_section", ""))


def _build(cls: type, data: Mapping | None, section: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = section or "the configuration"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(data).__name__} {data!r}.")

    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(section, key, list(fields))
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and (value is None or isinstance(value, Mapping)):
            value = _build(hint, value, _join(section, key))
        kwargs[key] = value
    return cls(**kwargs)


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _unknown_key_error(section: str, key: Any, valid: list[str]) -> ConfigError:
    dotted = _join(section, str(key))
    message = f"unknown key {dotted!r}."
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if close:
        message += f" Did you mean {_join(section, close[0])!r}?"
    else:
        elsewhere = [name for name, *_ in fields_help(RunConfig) if name.split(".")[-1] == str(key)]
        if elsewhere:
            message += f" Did you mean {elsewhere[0]!r}?"
    where = f"in {section}" if section else "at the top level"
    message += f" Valid keys {where}: {', '.join(valid)}."
    return ConfigError(message)


# --- YAML files and overrides ----------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-5 as a float.

    PyYAML 6 follows YAML 1.1, which needs a dot in the mantissa, so it reads 1e-5 as
    the string "1e-5".
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a RunConfig from a YAML file (or the defaults when ``path`` is None) and apply overrides.

    Each override is ``dotted.key=value``, with the value read as YAML, so
    ``train.epochs=5``, ``prompt.vpt.deep=false``, ``backbone.pretrained=null`` and
    ``prompt.vpt.templates=["a {}."]`` work. A value for a text field is kept as written
    when YAML would read it as a number or bool (``output_dir=2024`` is the string
    "2024"). Overrides apply in order, so a later one wins.
    """
    data = _read_yaml_file(Path(path)) if path is not None else {}
    _apply_override_strings(data, overrides)
    return config_from_dict(data)


def apply_overrides(config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """Return a new RunConfig: ``config`` with ``dotted.key=value`` overrides applied as in load_config."""
    data = config.to_dict()
    _apply_override_strings(data, overrides)
    return config_from_dict(data)


def _apply_override_strings(data: dict, overrides: Sequence[str]) -> None:
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'dotted.key=value' strings, not one string")
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(data, key, value, override)


def _read_yaml_file(path: Path, kind: str = "configuration", example: str = "configs/coop.yaml") -> dict:
    """Read a YAML file that must contain a mapping; ``kind`` and ``example`` word the errors."""
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "was not found"
        raise ConfigError(f"{kind} file {str(path)!r} {problem}. Pass the path of a YAML file such as {example}.")
    try:
        data = _parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} file {str(path)!r} is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{kind} file {str(path)!r} is not UTF-8 text ({exc.reason}); pass a YAML file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{kind} file {str(path)!r} must contain a mapping of keys to values, got {type(data).__name__}."
        )
    logger.debug("read configuration file %s", path)
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(
            f"override {text!r} is invalid: it has no '='. Write dotted.key=value, e.g. train.epochs=5 or prompt.vpt.deep=false."
        )
    if not key or "" in key.split("."):
        raise ConfigError(
            f"override {text!r} is invalid: the key before '=' is empty or has an empty part. Write e.g. train.epochs=5."
        )
    try:
        value = _parse_yaml(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"override {text!r} is invalid: the value is not valid YAML ({problem}). Quote text values, e.g. {key}='...'."
        ) from exc
    return key, _keep_text(key, raw, value)


def _keep_text(key: str, raw: str, value: Any) -> Any:
    """Keep the override text as written where a text field would otherwise get a bool or number.

    YAML reads ``yes`` as True and ``2024`` as an int. An empty value, which YAML reads
    as null, becomes "" for a text field that does not allow null.
    """
    hint = _leaf_type(key)
    if hint is None or not (hint is str or str in typing.get_args(hint)):
        return value
    if isinstance(value, (bool, int, float)):
        return raw.strip()
    if value is None and not raw.strip() and hint is str:
        return ""
    return value


def _leaf_type(key: str) -> Any:
    """Return the type hint of the RunConfig field at ``key``, or None when no field has that path."""
    cls: Any = RunConfig
    hint: Any = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hint = _field_types(cls).get(part)
        if hint is None:
            return None
        cls = hint
    return hint


def _set_dotted(data: dict, key: str, value: Any, override: str) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"override {override!r} is invalid: {prefix} is a value, not a section. Set {prefix}=VALUE instead."
            )
        node = child

    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        _merge(node[last], value)
    else:
        node[last] = value


def _merge(target: dict, source: Mapping) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write ``config`` as YAML, atomically: a temporary file in the same directory, then os.replace."""
    path = Path(path)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, text)


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and os.replace.

    Readers see either the old file or the complete new one. The temporary file is
    removed when writing fails.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- help and documentation ------------------------------------------------------------


def _leaf_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, dataclasses.Field]]:
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        dotted = _join(prefix, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaf_fields(hint, dotted)
        else:
            yield dotted, hint, f


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def fields_help(cls: type = RunConfig) -> list[tuple[str, str, str, str]]:
    """List (dotted name, type, default, help) for every leaf field of ``cls``.

    Names are relative to ``cls``, so for RunConfig they are the override keys. The
    default is written as JSON, which YAML also reads, and the help ends with the unit
    where the field has one.
    """
    rows = []
    for dotted, hint, f in _leaf_fields(cls):
        help_text = f.metadata.get("help", "")
        unit = f.metadata.get("unit")
        if unit:
            help_text = f"{help_text} Unit: {unit}."
        rows.append((dotted, _type_name(hint), json.dumps(_default_of(f)), help_text))
    return rows


def format_fields_table(cls: type = RunConfig) -> str:
    """Return a Markdown table of every leaf field of ``cls``: key, type, default, unit and meaning."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| Key | Type | Default | Unit | Meaning |", "|---|---|---|---|---|"]
    for dotted, hint, f in _leaf_fields(cls):
        default = json.dumps(_default_of(f))
        unit = f.metadata.get("unit", "")
        help_text = f.metadata.get("help", "")
        lines.append(f"| `{dotted}` | `{cell(_type_name(hint))}` | `{cell(default)}` | {cell(unit)} | {cell(help_text)} |")
    return "\n".join(lines) + "\n"
