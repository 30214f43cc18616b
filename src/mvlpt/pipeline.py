"""Multitask prompt tuning from one YAML file: source prompts, averaging, target runs, baselines and results tables.

The recipe follows MVLPT (Shen et al. 2022, arXiv:2211.11720). For each prompt
method and number of shots, one prompt is trained jointly on all source tasks
per seed, and these prompts are averaged over the seeds. Each target task is
then trained from the averaged prompt (``mvlpt``) and from the method's own
initialisation (``single``), optional groups of target tasks are trained
jointly from scratch (``group``), and zero-shot CLIP is evaluated once on every
target task. The results tables are built from the ``results.json`` file of
each run. docs/pipeline.md describes the file format and the run layout.

This module imports torch only when a pipeline runs, so that the command-line
parser can read the key list from PipelineConfig without loading it.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import io
import json
import logging
import re
import statistics
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .config import (
    MAX_SEED,
    METHODS,
    ConfigError,
    RunConfig,
    _coerce,
    _field_types,
    _keep_text,
    _meta,
    _parse_yaml,
    _read_yaml_file,
    _reject,
    _require_nonempty,
    _set_dotted,
    _write_text_atomic,
    config_from_dict,
    fields_help,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PipelineConfig",
    "PipelineResult",
    "ResultRow",
    "Step",
    "collect_results",
    "format_plan",
    "format_results_csv",
    "format_results_markdown",
    "load_pipeline_config",
    "pipeline_config_from_dict",
    "plan_pipeline",
    "run_pipeline",
]

# Run configuration keys that the pipeline sets for each run, with the pipeline keys that set them.
PIPELINE_SET_KEYS = {
    "data.tasks": "source_tasks, target_tasks and groups",
    "data.shots": "shots and source_shots",
    "seed": "seeds",
    "output_dir": "the pipeline's output_dir, below which each run gets its own directory",
    "init": "the averaged source prompt of the mvlpt runs",
    "prompt.method": "methods",
}

# Columns of a results table, in order.
SETTINGS = ("zero-shot", "single", "mvlpt", "group")

STAGE_TITLES = {
    "zero-shot": "zero-shot CLIP on the target tasks",
    "source": "source prompts",
    "average": "averaging the source prompts over seeds",
    "mvlpt": "target prompts initialised from the averaged source prompt",
    "single": "single-task baselines from scratch",
    "group": "joint groups of target tasks from scratch",
}

# Examples for the error message of a list field given another type.
LIST_EXAMPLES = {
    "methods": "[coop, vpt]",
    "shots": "[1, 5]",
    "seeds": "[1, 2, 3]",
    "source_tasks": "[eurosat, data/dtd]",
    "target_tasks": "[data/pets, data/flowers]",
    "groups": "[[data/pets, data/flowers]]",
}

PIPELINE_FILE = "pipeline.yaml"
RESULTS_MARKDOWN = "results.md"
RESULTS_CSV = "results.csv"
CSV_COLUMNS = ("method", "shots", "setting", "task", "metric", "mean", "std", "n_seeds", "values")


# --- the pipeline configuration --------------------------------------------------------


@dataclass
class PipelineConfig:
    """One multitask prompt tuning study: methods, shots, seeds, source and target tasks, and shared run settings."""

    _section = ""

    output_dir: str = field(
        default="runs/pipeline",
        metadata=_meta("Directory of every run of the pipeline, the averaged source prompts and the results tables."),
    )
    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata=_meta("Prompt methods to run, each a separate study: coop, vpt and/or upt."),
    )
    shots: list[int] = field(
        default_factory=lambda: [5],
        metadata=_meta(
            "Training images per class of the target tasks; each entry is a separate study with its own table.",
            unit="images per class",
        ),
    )
    source_shots: int | None = field(
        default=None,
        metadata=_meta(
            "Training images per class of the source tasks; null uses the entry of shots being run. "
            "When set, one source prompt serves every entry of shots.",
            unit="images per class",
        ),
    )
    seeds: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata=_meta(
            "Seeds of the few-shot sampling and training. Every run is repeated once per seed, and the source "
            "prompts of all seeds are averaged into the one that initialises the targets."
        ),
    )
    source_tasks: list[str] = field(
        default_factory=list,
        metadata=_meta(
            "Tasks trained jointly into one source prompt per seed: built-in names, prepared benchmark task names "
            "(docs/elevater.md), image-folder paths or CSV manifest paths. Required."
        ),
    )
    target_tasks: list[str] = field(
        default_factory=list,
        metadata=_meta(
            "Tasks each trained from the averaged source prompt (mvlpt) and from scratch (single), and evaluated "
            "zero-shot. Required, and disjoint from source_tasks."
        ),
    )
    groups: list[list[str]] = field(
        default_factory=list,
        metadata=_meta(
            "Joint groups of target tasks: each group is trained into one prompt per seed from scratch. "
            "A group has at least two target tasks, and a task belongs to one group at most."
        ),
    )
    zero_shot: bool = field(
        default=True,
        metadata=_meta("Evaluate zero-shot CLIP on every target task, with each task's own templates."),
    )
    base: dict[str, Any] = field(
        default_factory=dict,
        metadata=_meta(
            "Run settings shared by every run, as a mapping with the keys of a run configuration "
            "(docs/configuration.md) except data.tasks, data.shots, seed, output_dir, init and prompt.method, "
            "which the pipeline sets for each run."
        ),
    )

    def __post_init__(self) -> None:
        check_field_types(self, LIST_EXAMPLES)
        _require_nonempty(self, "output_dir", "Set output_dir to a directory such as runs/pipeline.")
        check_methods(self)
        self._check_numbers()
        self._check_tasks()
        self._check_groups()
        self._check_base()

    def validate(self) -> None:
        """Check every field again, e.g. after the fields were changed in code."""
        self.__post_init__()

    # Checks ------------------------------------------------------------------------------

    def _check_numbers(self) -> None:
        check_shots(self)
        if self.source_shots is not None and self.source_shots < 1:
            _reject(self, "source_shots", "it must be at least 1", "Set source_shots to 1 or more, or to null.")

        check_seeds(self)

    def _check_tasks(self) -> None:
        from .builtin.registry import task_identity

        for name in ("source_tasks", "target_tasks"):
            tasks = getattr(self, name)
            if not tasks:
                _reject(self, name, "the list is empty", f"List at least one task in {name}.")
            for index, task in enumerate(tasks):
                if not task.strip():
                    raise ConfigError(f"{name}[{index}]={task!r} is invalid: it is empty. Remove the empty entry.")
            reject_repeats(self, name, key=task_identity)

        source_identities = {task_identity(task) for task in self.source_tasks}
        shared = [task for task in self.target_tasks if task_identity(task) in source_identities]
        if shared:
            _reject(
                self,
                "target_tasks",
                f"{', '.join(shared)} {'is' if len(shared) == 1 else 'are'} also in source_tasks, "
                "so the source prompt would have seen them",
                "Keep source_tasks and target_tasks disjoint.",
            )

        directories: dict[str, str] = {}
        for task in self.target_tasks:
            name = task_directory_name(task)
            if name in directories:
                _reject(
                    self,
                    "target_tasks",
                    f"{directories[name]!r} and {task!r} have the same last path component {name!r}, "
                    "which names their run directories",
                    "Rename one of the task folders or manifests.",
                )
            directories[name] = task

    def _check_groups(self) -> None:
        owner: dict[str, int] = {}
        for index, group in enumerate(self.groups):
            path = f"groups[{index}]"
            if len(group) < 2:
                raise ConfigError(
                    f"{path}={group!r} is invalid: a group needs at least two target tasks, and the single runs "
                    "already train each task alone. Add tasks to the group or remove it; write groups as a list "
                    "of lists, e.g. groups: [[pets, flowers]]."
                )
            for task in group:
                if task not in self.target_tasks:
                    raise ConfigError(f"{path}={group!r} is invalid: {self._group_member_fix(task)}")
                if group.count(task) > 1:
                    raise ConfigError(f"{path}={group!r} is invalid: {task!r} appears more than once. List it once.")
                if task in owner and owner[task] != index:
                    raise ConfigError(
                        f"{path}={group!r} is invalid: {task!r} is also in groups[{owner[task]}], but the results "
                        "table has one group column. Put each task in one group at most."
                    )
                owner[task] = index

    def _group_member_fix(self, task: str) -> str:
        """Explain why group member `task` is not in target_tasks: another spelling of a target, or no target."""
        from .builtin.registry import task_identity

        identity = task_identity(task)
        spelled = [target for target in self.target_tasks if task_identity(target) == identity]
        if spelled:
            return (
                f"{task!r} names the target task {spelled[0]!r} under another spelling. Groups must spell "
                f"tasks as target_tasks does, so write {spelled[0]!r}."
            )
        return (
            f"{task!r} is not in target_tasks. Groups are made of target tasks; add it to target_tasks or "
            "remove it from the group."
        )

    def _check_base(self) -> None:
        check_base_keys(self.base, RunConfig, "")
        for method in self.methods:
            try:
                config = self.run_config(method, self.target_tasks, self.shots[0], self.seeds[0], self.output_dir)
            except ConfigError as error:
                raise ConfigError(prefix_run_keys(str(error))) from None
            if method == "coop" and config.prompt.coop.class_specific:
                raise ConfigError(
                    "base.prompt.coop.class_specific=True is invalid with coop in methods: class-specific contexts "
                    "belong to the classes of the source tasks, so they cannot initialise a target task. "
                    "Set base.prompt.coop.class_specific=false, or remove coop from methods."
                )

    # Run configurations ----------------------------------------------------------------

    def run_config(
        self,
        method: str,
        tasks: Sequence[str],
        shots: int,
        seed: int,
        output_dir: str | Path,
        init: str | Path | None = None,
    ) -> RunConfig:
        """Build the RunConfig of one run: ``base`` with the method, tasks, shots, seed, directory and init set."""
        return build_run_config(self.base, method, tasks, shots, seed, output_dir, init)

    def source_shots_for(self, shots: int) -> int:
        """Return the shots per class of the source prompt that initialises the targets of a ``shots`` study."""
        return shots if self.source_shots is None else self.source_shots

    def to_dict(self) -> dict:
        """Return the configuration as plain nested dicts and lists, ready for YAML."""
        return dataclasses.asdict(self)


def build_run_config(
    base: Mapping,
    method: str,
    tasks: Sequence[str],
    shots: int,
    seed: int,
    output_dir: str | Path,
    init: str | Path | None = None,
) -> RunConfig:
    """Build one run's RunConfig: the run settings ``base`` with the method, tasks, shots, seed, directory and init set."""
    data = copy.deepcopy(dict(base))
    data["prompt"] = {**(data.get("prompt") or {}), "method": method}
    data["data"] = {**(data.get("data") or {}), "tasks": list(tasks), "shots": shots}
    data["seed"] = seed
    data["output_dir"] = str(output_dir)
    data["init"] = None if init is None else str(init)
    return config_from_dict(data)


def _describe_list(hint: Any) -> str:
    return "a list of lists of task names" if hint == list[list[str]] else f"a list of {typing.get_args(hint)[0].__name__} values"


def check_field_types(config: Any, list_examples: Mapping[str, str]) -> None:
    """Check and convert the fields of a study configuration; ``list_examples`` gives an example value of each list field.

    ``base`` must be a mapping and is copied. A number where a list of numbers is
    expected becomes a list of one, and so does one string where a list of strings is.
    """
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "base":
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"base={value!r} has the wrong type: expected a mapping of run configuration keys, "
                    f"got {type(value).__name__}. Write base as a mapping, e.g. base: {{train: {{epochs: 50}}}}."
                )
            config.base = copy.deepcopy(dict(value))
            continue
        hint = hints[f.name]
        # One number where a list of numbers is expected means a list of one: seeds=1.
        if hint == list[int] and isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        one_string = isinstance(value, str) and hint == list[str]
        if f.name in list_examples and not isinstance(value, (list, tuple)) and not one_string:
            raise ConfigError(
                f"{f.name}={value!r} has the wrong type: expected {_describe_list(hint)}, got {type(value).__name__}. "
                f"Write a YAML list, e.g. {f.name}: {list_examples[f.name]}."
            )
        converted = _coerce(value, hint, f.name)
        if converted is not getattr(config, f.name):
            setattr(config, f.name, converted)


def check_methods(config: Any) -> None:
    """Require a non-empty list of known prompt methods in ``config.methods``, each listed once."""
    if not config.methods:
        _reject(config, "methods", "the list is empty", f"List at least one of {', '.join(METHODS)}.")
    for index, method in enumerate(config.methods):
        if method not in METHODS:
            raise ConfigError(
                f"methods[{index}]={method!r} is invalid: it must be one of {', '.join(METHODS)}. "
                f"Replace it with one of {', '.join(METHODS)}."
            )
    reject_repeats(config, "methods")


def check_shots(config: Any) -> None:
    """Require a non-empty list of shots in ``config.shots``, each at least 1 and listed once."""
    if not config.shots:
        _reject(config, "shots", "the list is empty", "List at least one number of shots, e.g. [1, 5].")
    for index, shots in enumerate(config.shots):
        if shots < 1:
            raise ConfigError(f"shots[{index}]={shots!r} is invalid: it must be at least 1. Set it to 1 or more.")
    reject_repeats(config, "shots")


def check_seeds(config: Any) -> None:
    """Require a non-empty list of seeds in ``config.seeds``, each in [0, MAX_SEED] and listed once."""
    if not config.seeds:
        _reject(config, "seeds", "the list is empty", "List at least one seed, e.g. [1, 2, 3].")
    for index, seed in enumerate(config.seeds):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(
                f"seeds[{index}]={seed!r} is invalid: it must be in [0, {MAX_SEED}]. "
                "Use a non-negative integer below 2**32."
            )
    reject_repeats(config, "seeds")


def reject_repeats(config: Any, name: str, key: Callable[[Any], Any] | None = None) -> None:
    """Raise ConfigError naming the entries that appear more than once in the list field ``name``.

    With ``key``, entries repeat when their keys are equal, e.g. two spellings of one task.
    """
    values = getattr(config, name)
    keys = [value if key is None else key(value) for value in values]
    repeated = [value for index, value in enumerate(values) if keys[index] in keys[:index]]
    if repeated:
        listed = ", ".join(str(value) for value in dict.fromkeys(repeated))
        _reject(config, name, f"it repeats {listed}", f"List each entry of {name} once.")


def task_directory_name(task: str) -> str:
    """Return the directory name of a target task's runs: the last component of its spec, e.g. eurosat for data/eurosat."""
    path = Path(task).expanduser()
    name = path.name
    if name in ("", ".", ".."):
        name = path.resolve().name
    return name


def check_base_keys(
    data: Mapping, cls: type, section: str, set_keys: Mapping[str, str] = PIPELINE_SET_KEYS, owner: str = "pipeline"
) -> None:
    """Reject keys of ``base`` that RunConfig does not have or that the ``owner`` study sets; leave values to RunConfig.

    ``set_keys`` maps each run key the study sets to the study keys it comes from.
    """
    hints = _field_types(cls)
    valid = [f.name for f in dataclasses.fields(cls) if _join(section, f.name) not in set_keys]
    for key, value in data.items():
        dotted = _join(section, str(key))
        if dotted in set_keys:
            raise ConfigError(
                f"base.{dotted} cannot be set in a {owner}: the {owner} sets it for each run from "
                f"{set_keys[dotted]}. Remove base.{dotted}."
            )
        if key not in valid:
            message = f"unknown key {'base.' + dotted!r}."
            close = difflib.get_close_matches(str(key), [f.name for f in dataclasses.fields(cls)], n=1, cutoff=0.6)
            if close and _join(section, close[0]) in set_keys:
                message += f" The {owner} sets {_join(section, close[0])} itself, from {set_keys[_join(section, close[0])]}."
            elif close:
                message += f" Did you mean {'base.' + _join(section, close[0])!r}?"
            where = f"base.{section}" if section else "base"
            raise ConfigError(f"{message} Valid keys in {where}: {', '.join(valid)}.")

        hint = hints[key]
        if not dataclasses.is_dataclass(hint) or value is None:
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"base.{dotted}={value!r} has the wrong type: expected a mapping of its keys, got "
                f"{type(value).__name__}. Write base.{dotted} as a mapping."
            )
        check_base_keys(value, hint, dotted, set_keys, owner)


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


@cache
def _run_key_pattern() -> re.Pattern:
    """Match the dotted run configuration keys (train.epochs, prompt.coop, ...) in a ConfigError message."""
    names = set()
    for name, *_ in fields_help(RunConfig):
        parts = name.split(".")
        for end in range(2, len(parts) + 1):
            names.add(".".join(parts[:end]))
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w.])({alternatives})(?!\w)")


def prefix_run_keys(message: str) -> str:
    """Rewrite run configuration keys in ``message`` as the pipeline keys under base: train.epochs -> base.train.epochs."""
    return _run_key_pattern().sub(r"base.\1", message)


# --- loading ----------------------------------------------------------------------------


def pipeline_config_from_dict(data: Mapping | None) -> PipelineConfig:
    """Build a PipelineConfig from a mapping, checking every key and value; missing keys keep their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"a pipeline configuration must be a mapping of keys to values, got {type(data).__name__} {data!r}.")
    valid = [f.name for f in dataclasses.fields(PipelineConfig)]
    for key in data:
        if key not in valid:
            raise _unknown_pipeline_key(key, valid)
    return PipelineConfig(**data)


def _unknown_pipeline_key(key: Any, valid: list[str]) -> ConfigError:
    message = f"unknown key {str(key)!r}."
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    run_keys = [name for name, *_ in fields_help(RunConfig) if name not in PIPELINE_SET_KEYS]
    top_level = {name.split(".")[0] for name in run_keys}
    if close:
        message += f" Did you mean {close[0]!r}?"
    elif str(key) in top_level:
        message += f" Run settings go under base: write base.{key}."
    else:
        leaves = [name for name in run_keys if name.split(".")[-1] == str(key)]
        if leaves:
            message += f" Run settings go under base: did you mean 'base.{leaves[0]}'?"
    return ConfigError(f"{message} Valid keys at the top level of a pipeline configuration: {', '.join(valid)}.")


def load_pipeline_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Load a PipelineConfig from a YAML file (or the defaults when ``path`` is None) and apply overrides.

    Each override is ``dotted.key=value`` with the value read as YAML, e.g. ``seeds=[1]``,
    ``methods=[coop]`` or ``base.train.epochs=2``. Under base, text fields keep their text
    as run configuration overrides do (``base.prompt.coop.ctx_init=yes`` is the string "yes").
    Overrides apply in order, so a later one wins.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'dotted.key=value' strings, not one string")
    data = _read_pipeline_file(Path(path)) if path is not None else {}
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(data, key, value, override)
    return pipeline_config_from_dict(data)


def _read_pipeline_file(path: Path) -> dict:
    return _read_yaml_file(path, kind="pipeline configuration", example="configs/pipeline-example.yaml")


def parse_override(text: str) -> tuple[str, Any]:
    """Split a study override ``key=value`` into the key and its value read as YAML; under base, text fields keep their text."""
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator:
        raise ConfigError(f"override {text!r} is invalid: it has no '='. Write dotted.key=value, e.g. seeds=[1] or base.train.epochs=5.")
    if not key or "" in key.split("."):
        raise ConfigError(f"override {text!r} is invalid: the key before '=' is empty or has an empty part. Write e.g. seeds=[1].")
    try:
        value = _parse_yaml(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"override {text!r} is invalid: the value is not valid YAML ({problem}). Quote text values, e.g. {key}='...'."
        ) from exc

    if key.startswith("base."):
        value = _keep_text(key.removeprefix("base."), raw, value)
    elif key == "output_dir" and isinstance(value, (bool, int, float)):
        value = raw.strip()
    return key, value


# --- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One unit of work: a training run, the averaging of source prompts, or the zero-shot evaluation.

    ``kind`` is zero-shot, source, average, mvlpt, single or group. ``shots`` is the
    shots per class the run trains with (for source runs and averages, the source shots).
    """

    kind: str
    directory: Path
    method: str | None = None
    shots: int | None = None
    seed: int | None = None
    tasks: tuple[str, ...] = ()
    init: Path | None = None
    inputs: tuple[Path, ...] = ()
    group: int | None = None

    @property
    def is_run(self) -> bool:
        """True for a step that trains or evaluates, which counts as a run; False for an average."""
        return self.kind != "average"

    def is_finished(self) -> bool:
        """Check whether the step's output exists: results.json of a run, or prompt.json of an average."""
        name = "prompt.json" if self.kind == "average" else "results.json"
        return (self.directory / name).is_file()

    def describe(self) -> str:
        """Describe the step in a few words for logs and the dry-run listing."""
        tasks = ", ".join(self.tasks)
        if self.kind == "zero-shot":
            return f"zero-shot CLIP on {tasks}"
        if self.kind == "average":
            return f"{self.method} {self.shots}-shot source prompts: average of {len(self.inputs)} seeds"
        setting = f"group {self.group}" if self.kind == "group" else self.kind
        text = f"{self.method} {setting}, {_count(self.shots, 'shot')}, seed {self.seed}, on {tasks}"
        if self.init is not None:
            text += f", from {self.init}"
        return text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def method_directory(config: PipelineConfig, method: str, shots: int) -> Path:
    """Return ``<output_dir>/<method>/<shots>shot``, the directory of one study."""
    return Path(config.output_dir) / method / f"{shots}shot"


def target_run_directory(config: PipelineConfig, kind: str, method: str, shots: int, seed: int, task: str = "", group: int = 0) -> Path:
    """Return the directory of an mvlpt or single run on ``task``, or of a run of group number ``group`` (from 1)."""
    study = method_directory(config, method, shots)
    if kind == "group":
        return study / f"group-{group}" / f"seed{seed}"
    return study / kind / task_directory_name(task) / f"seed{seed}"


def plan_pipeline(config: PipelineConfig) -> list[Step]:
    """List every step of the pipeline in the order they run.

    Zero-shot CLIP comes first, because it is quick and loads every target task.
    Then, for each method and shots: the source runs of each seed, their average,
    the mvlpt runs, the single runs and the groups. Source runs shared by several
    entries of shots (when source_shots is set) appear once. With one seed there is
    nothing to average, and the targets start from that seed's source prompt.
    """
    steps = []
    if config.zero_shot:
        steps.append(Step("zero-shot", Path(config.output_dir) / "zero-shot", tasks=tuple(config.target_tasks)))

    planned_sources = set()
    for method in config.methods:
        for shots in config.shots:
            source_shots = config.source_shots_for(shots)
            source_dir = method_directory(config, method, source_shots) / "source"
            source_prompts = tuple(source_dir / f"seed{seed}" / "prompt" for seed in config.seeds)
            if source_dir not in planned_sources:
                planned_sources.add(source_dir)
                for seed in config.seeds:
                    steps.append(
                        Step("source", source_dir / f"seed{seed}", method, source_shots, seed, tuple(config.source_tasks))
                    )
                if len(config.seeds) > 1:
                    steps.append(Step("average", source_dir / "average", method, source_shots, inputs=source_prompts))
            init = source_dir / "average" if len(config.seeds) > 1 else source_prompts[0]

            for kind in ("mvlpt", "single"):
                for task in config.target_tasks:
                    for seed in config.seeds:
                        directory = target_run_directory(config, kind, method, shots, seed, task=task)
                        steps.append(
                            Step(kind, directory, method, shots, seed, (task,), init=init if kind == "mvlpt" else None)
                        )
            for number, group in enumerate(config.groups, start=1):
                for seed in config.seeds:
                    directory = target_run_directory(config, "group", method, shots, seed, group=number)
                    steps.append(Step("group", directory, method, shots, seed, tuple(group), group=number))
    return steps


def format_plan(steps: Sequence[Step]) -> str:
    """List the steps with their run number, directory and whether they are finished, one per line."""
    total = sum(step.is_run for step in steps)
    lines = [f"{total} runs"]
    count = 0
    for step in steps:
        if step.is_run:
            count += 1
            label = f"run {count}/{total}"
        else:
            label = "average"
        status = "finished" if step.is_finished() else "to do"
        lines.append(f"{label}: {step.describe()} -> {step.directory} ({status})")
    return "\n".join(lines)


# --- running ----------------------------------------------------------------------------


@dataclass
class PipelineResult:
    """Outputs of a finished pipeline: the table rows, the Markdown tables and the paths of the files written."""

    rows: list[ResultRow]
    markdown: str
    markdown_path: Path
    csv_path: Path


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    """Run every step of ``config`` that has not finished, then write and return the results tables.

    Finished runs are not repeated: train() returns an existing results.json, the
    zero-shot results are reused when they record the same target tasks and backbone,
    and an average is kept when it lists the same source prompts. The tables are
    written to results.md and results.csv in the output directory, each atomically.
    """
    from tqdm.auto import tqdm

    config.validate()
    steps = plan_pipeline(config)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)
    _write_text_atomic(output / PIPELINE_FILE, text)

    total = sum(step.is_run for step in steps)
    logger.info("pipeline %s: %d runs, %d finished", output, total, sum(step.is_run and step.is_finished() for step in steps))
    count = 0
    stage = None
    with tqdm(total=total, desc="pipeline", unit="run", disable=None) as progress:
        for step in steps:
            if (step.kind, step.method, step.shots) != stage:
                stage = (step.kind, step.method, step.shots)
                where = "" if step.method is None else f" ({step.method}, {_count(step.shots, 'shot')})"
                logger.info("stage: %s%s", STAGE_TITLES[step.kind], where)
            if step.is_run:
                count += 1
                logger.info("run %d/%d: %s -> %s", count, total, step.describe(), step.directory)
            _execute(config, step)
            if step.is_run:
                progress.update(1)

    rows = collect_results(config)
    markdown = format_results_markdown(config, rows)
    markdown_path = output / RESULTS_MARKDOWN
    csv_path = output / RESULTS_CSV
    _write_text_atomic(markdown_path, markdown)
    _write_text_atomic(csv_path, format_results_csv(rows))
    logger.info("pipeline %s finished: tables written to %s and %s", output, markdown_path, csv_path)
    return PipelineResult(rows, markdown, markdown_path, csv_path)


def _execute(config: PipelineConfig, step: Step) -> None:
    from . import training

    if step.kind == "zero-shot":
        _run_zero_shot(config, step)
    elif step.kind == "average":
        _average_sources(step)
    else:
        run = config.run_config(step.method, step.tasks, step.shots, step.seed, step.directory, step.init)
        # train() records task folders and manifests as absolute paths, so compare in that form.
        training.absolute_task_paths(run)
        _check_run_directory(run, step.directory)
        training.train(run)


def _check_run_directory(run: RunConfig, directory: Path) -> None:
    """Raise RunError when ``directory`` contains a run of another configuration.

    train() does the same check, but its message suggests --overwrite, which the
    pipeline command does not have.
    """
    from .config import load_config
    from .rundir import differing_keys
    from .runtime import RunError

    path = directory / "config.yaml"
    if not path.exists():
        return
    differing = differing_keys(load_config(path).to_dict(), run.to_dict())
    if differing:
        raise RunError(
            f"{directory} contains a run of another configuration ({', '.join(differing[:5])} differ), so this "
            "pipeline cannot reuse it. Use another output_dir for the changed settings, or delete the run "
            "directories written with the earlier ones"
        )


def _zero_shot_config(config: PipelineConfig) -> RunConfig:
    """Build the run configuration of the zero-shot evaluation; its method, shots and seed do not affect the result."""
    directory = Path(config.output_dir) / "zero-shot"
    return config.run_config(config.methods[0], config.target_tasks, config.shots[0], config.seeds[0], directory)


def _zero_shot_identity(run: RunConfig) -> dict:
    """Return the target tasks and backbone of the zero-shot results, stored in its results.json for reruns to compare."""
    return {
        "task_specs": list(run.data.tasks),
        "backbone": {"model": run.backbone.model, "pretrained": run.backbone.pretrained},
    }


def _run_zero_shot(config: PipelineConfig, step: Step) -> None:
    from . import training
    from .rundir import write_json_atomic

    run = _zero_shot_config(config)
    results_path = step.directory / "results.json"
    identity = _zero_shot_identity(run)
    if results_path.exists():
        results = _read_results(results_path)
        recorded = {key: results.get(key) for key in identity}
        if recorded == identity:
            logger.info("%s already contains zero-shot results; skipping", step.directory)
            return
        # No other step reads these results, so evaluating again and replacing them is safe.
        logger.info(
            "%s contains zero-shot results for %s, but this pipeline evaluates %s; evaluating again",
            step.directory, recorded, identity,
        )

    results = training.zero_shot(run)
    results.update(identity)
    write_json_atomic(results_path, results)


def _average_sources(step: Step) -> None:
    from . import averaging
    from .checkpoints import METADATA_FILE, load_prompt_checkpoint
    from .runtime import RunError

    expected = [str(path) for path in step.inputs]
    if (step.directory / METADATA_FILE).exists():
        found = load_prompt_checkpoint(step.directory).metadata.get("extra", {}).get("averaged_from")
        if found == expected:
            logger.info("%s already averages the same source prompts; skipping", step.directory)
            return
        raise RunError(
            f"{step.directory} contains a prompt averaged from {found}, but this pipeline averages {expected}. "
            f"The mvlpt runs that started from it would not match the new average; delete {step.directory} and the "
            f"mvlpt run directories whose init is {step.directory}, or use another output_dir"
        )
    averaging.average_checkpoints(step.inputs, step.directory)


# --- results tables ---------------------------------------------------------------------


@dataclass
class ResultRow:
    """One cell of a results table: a setting's test metric on one target task, or on their average, over seeds.

    ``values`` are percentages, one per seed in the order of the pipeline's seeds
    (one value for zero-shot). For the "average" task each value is the mean over
    the target tasks for one seed. ``task_spec`` is the task as written in
    target_tasks, or None for the average.
    """

    method: str
    shots: int
    setting: str
    task: str
    metric: str
    values: list[float]
    task_spec: str | None = None

    @property
    def mean(self) -> float:
        return statistics.mean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None for a single value."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def cell(self) -> str:
        """Format the cell as "mean ± std" with two decimals, or the mean alone for one value."""
        if self.std is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.std:.2f}"


def collect_results(config: PipelineConfig) -> list[ResultRow]:
    """Read the test metric of every target task from the results.json files of the pipeline's runs.

    Returns the rows of every (method, shots) table: for each target task, one row
    per setting (zero-shot, single, mvlpt, and group for tasks in a group), then
    the average rows. Raises RunError when a results.json is missing or does not
    list the tasks its run was planned with.
    """
    zero_shot = _zero_shot_scores(config) if config.zero_shot else {}
    group_of = {task: number for number, group in enumerate(config.groups, start=1) for task in group}

    rows = []
    for method in config.methods:
        for shots in config.shots:
            table = []
            for task in config.target_tasks:
                runs = {}
                for kind in ("single", "mvlpt"):
                    runs[kind] = [
                        (target_run_directory(config, kind, method, shots, seed, task=task), (task,)) for seed in config.seeds
                    ]
                if task in group_of:
                    number = group_of[task]
                    group = tuple(config.groups[number - 1])
                    runs["group"] = [
                        (target_run_directory(config, "group", method, shots, seed, group=number), group)
                        for seed in config.seeds
                    ]

                if config.zero_shot:
                    name, metric, value = zero_shot[task]
                    table.append(ResultRow(method, shots, "zero-shot", name, metric, [value], task))
                for setting in ("single", "mvlpt", "group"):
                    if setting not in runs:
                        continue
                    scores = [_task_score(directory, tasks, task) for directory, tasks in runs[setting]]
                    name, metric, _ = scores[0]
                    table.append(ResultRow(method, shots, setting, name, metric, [score for *_, score in scores], task))
            rows.extend(table)
            rows.extend(_average_rows(config, method, shots, table))
    return rows


def _average_rows(config: PipelineConfig, method: str, shots: int, table: list[ResultRow]) -> list[ResultRow]:
    """Average each setting over the target tasks, seed by seed; skip a setting that lacks a target task."""
    rows = []
    for setting in SETTINGS:
        cells = [row for row in table if row.setting == setting]
        if not cells or len(cells) != len(config.target_tasks):
            continue
        per_seed = [statistics.mean(values) for values in zip(*(row.values for row in cells))]
        metrics = {row.metric for row in cells}
        metric = metrics.pop() if len(metrics) == 1 else "mean of the task metrics"
        rows.append(ResultRow(method, shots, setting, "average", metric, per_seed))
    return rows


def _read_results(path: Path) -> dict:
    from .runtime import RunError

    if not path.is_file():
        raise RunError(f"{path} not found: the run has not finished; run the pipeline again to complete it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"{path} could not be read ({error}); delete it and run the pipeline again") from error


def _task_score(run_dir: Path, tasks: Sequence[str], task: str) -> tuple[str, str, float]:
    """Return (task name, metric, test value) of ``task`` in a run trained on ``tasks``, from its results.json.

    results.json lists the task names in the order of the run's data.tasks, so the
    position of the spec in ``tasks`` gives its name.
    """
    from .runtime import RunError

    path = run_dir / "results.json"
    results = _read_results(path)
    names = results.get("tasks", [])
    if len(names) != len(tasks):
        raise RunError(
            f"{path} lists the tasks {names}, but the pipeline planned this run on {list(tasks)}; "
            f"delete {run_dir} and run the pipeline again"
        )
    name = names[list(tasks).index(task)]
    entry = results["per_task"][name]
    metric = entry["metric"]
    return name, metric, float(entry["test"][metric])


def _zero_shot_scores(config: PipelineConfig) -> dict[str, tuple[str, str, float]]:
    directory = Path(config.output_dir) / "zero-shot"
    return {task: _task_score(directory, config.target_tasks, task) for task in config.target_tasks}


def format_results_markdown(config: PipelineConfig, rows: Sequence[ResultRow]) -> str:
    """Format one Markdown table per (method, shots): a row per target task and the average, a column per setting."""
    seeds = ", ".join(str(seed) for seed in config.seeds)
    settings = [setting for setting in SETTINGS if any(row.setting == setting for row in rows)]
    lines = [
        "# Multitask prompt tuning results",
        "",
        f"Source tasks: {', '.join(config.source_tasks)}. Target tasks: {', '.join(config.target_tasks)}.",
        "",
        "Each cell is the task's test metric in percent, as mean ± sample standard deviation over the seeds "
        f"{seeds} (the mean alone for one value). zero-shot: CLIP with each task's own templates. single: one "
        "prompt per task from the method's own initialisation. mvlpt: one prompt per task, initialised from the "
        "source prompt averaged over the seeds. group: one prompt trained jointly on the task's group. The average "
        "row is the mean over the target tasks; its ± is the spread over seeds of the per-seed mean over tasks.",
    ]
    for method in config.methods:
        for shots in config.shots:
            table_rows = [row for row in rows if row.method == method and row.shots == shots]
            source = config.source_shots_for(shots)
            lines += ["", f"## {method}, {_count(shots, 'shot')}", ""]
            if source != shots:
                lines += [f"Source prompt trained with {_count(source, 'shot')} per class.", ""]
            lines.append("| task | metric | " + " | ".join(settings) + " |")
            lines.append("|---|---|" + "---|" * len(settings))
            for spec in [*config.target_tasks, None]:
                cells = {
                    row.setting: row
                    for row in table_rows
                    if (row.task == "average" if spec is None else row.task_spec == spec)
                }
                if not cells:
                    continue
                first = next(iter(cells.values()))
                name = "average" if spec is None else first.task
                values = [cells[setting].cell() if setting in cells else "" for setting in settings]
                lines.append(f"| {name} | {first.metric} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def format_results_csv(rows: Sequence[ResultRow]) -> str:
    """Format the rows as CSV in long form: method, shots, setting, task, metric, mean, std, n_seeds, values.

    ``values`` lists the per-seed values separated by ";", and ``std`` is empty for one value.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        std = "" if row.std is None else repr(row.std)
        values = ";".join(repr(value) for value in row.values)
        writer.writerow([row.method, row.shots, row.setting, row.task, row.metric, repr(row.mean), std, len(row.values), values])
    return buffer.getvalue()
