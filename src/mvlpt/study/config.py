"""The transfer study configuration: tasks, prompt methods, shots, seeds, run settings, executor and analysis settings.

It reads YAML files and ``key=value`` overrides like the pipeline configuration,
and checks every key when it is built. This module does not import torch, so the
command-line parser can list the keys cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, _meta, _read_yaml_file, _reject, _require_nonempty, _set_dotted, fields_help
from ..pipeline import (
    build_run_config,
    check_base_keys,
    check_field_types,
    check_methods,
    check_seeds,
    check_shots,
    parse_override,
    prefix_run_keys,
    reject_repeats,
    task_directory_name,
)

__all__ = ["EXECUTORS", "TransferConfig", "load_transfer_config", "transfer_config_from_dict"]

EXECUTORS = ("local", "ray")

# Run configuration keys that the study sets for each run, with the study keys that set them.
TRANSFER_SET_KEYS = {
    "data.tasks": "tasks (each run trains on one task)",
    "data.shots": "shots",
    "seed": "seeds",
    "output_dir": "the study's output_dir, below which each run gets its own directory",
    "init": "the source task's prompt, for the pair runs",
    "prompt.method": "methods",
}

# Examples for the error message of a list field given another type.
LIST_EXAMPLES = {
    "tasks": "[mnist, data/pets, data/flowers]",
    "methods": "[coop, vpt]",
    "shots": "[1, 5]",
    "seeds": "[1, 2, 3]",
}


@dataclass
class TransferConfig:
    """A task transferability study: every ordered pair of tasks, for each method, number of shots and seed."""

    _section = ""

    output_dir: str = field(
        default="runs/transfer",
        metadata=_meta("Directory of every run of the study and of the analysis (analysis/)."),
    )
    tasks: list[str] = field(
        default_factory=list,
        metadata=_meta(
            "Tasks of the study: built-in names, prepared benchmark task names, image-folder paths or CSV manifest paths. Each is trained alone "
            "from scratch, and each ordered pair (source, target) of two different tasks is trained from the source's "
            "prompt. At least two; their last path components must differ, because they name the run directories."
        ),
    )
    methods: list[str] = field(
        default_factory=lambda: ["coop", "vpt", "upt"],
        metadata=_meta("Prompt methods, each a separate gain matrix: coop, vpt and/or upt."),
    )
    shots: list[int] = field(
        default_factory=lambda: [5],
        metadata=_meta(
            "Training images per class of every run; each entry is a separate gain matrix.", unit="images per class"
        ),
    )
    seeds: list[int] = field(
        default_factory=lambda: [1],
        metadata=_meta(
            "Seeds of the few-shot sampling and training. Every run is repeated once per seed; the pair run of a seed "
            "starts from the source prompt of the same seed."
        ),
    )
    base: dict[str, Any] = field(
        default_factory=dict,
        metadata=_meta(
            "Run settings shared by every run, as a mapping with the keys of a run configuration "
            "(docs/configuration.md) except data.tasks, data.shots, seed, output_dir, init and prompt.method, "
            "which the study sets for each run."
        ),
    )
    executor: str = field(
        default="local",
        metadata=_meta(
            "Where the runs execute: local (this machine, see workers) or ray (tasks on a Ray cluster, see "
            'ray_address; needs pip install "mvlpt[ray]").'
        ),
    )
    workers: int = field(
        default=1,
        metadata=_meta(
            "Runs at once with the local executor: 1 runs them one after another in this process; N > 1 starts N "
            "worker processes.",
            unit="processes",
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=_meta(
            "Torch threads of each run with the local executor; null leaves torch's default with workers: 1 and gives "
            "each of N > 1 workers the machine's CPU cores divided by N. 1 is fastest for small models on a busy "
            "machine, where threads of one run wait for each other.",
            unit="threads",
        ),
    )
    ray_address: str | None = field(
        default=None,
        metadata=_meta(
            "Ray cluster to join with the ray executor: null starts a local Ray instance, auto joins the cluster this "
            "machine belongs to, or give an address such as ray://HOST:10001."
        ),
    )
    ray_num_cpus: float = field(
        default=1.0,
        metadata=_meta(
            "CPUs that Ray reserves for each run; each run uses that many torch threads (at least 1).", unit="CPUs"
        ),
    )
    top_k: int = field(
        default=3,
        metadata=_meta("Number of best source tasks listed for each target task.", unit="tasks"),
    )
    group_min_gain: float = field(
        default=0.0,
        metadata=_meta(
            "Suggested groups contain tasks that each gain more than this from every other member, in both "
            "directions.",
            unit="percent relative gain",
        ),
    )
    similarity_images: int = field(
        default=256,
        metadata=_meta(
            "Training images per task, drawn with a fixed seed, whose frozen image features give the visual "
            "similarity; a task with fewer uses all of them.",
            unit="images",
        ),
    )

    def __post_init__(self) -> None:
        check_field_types(self, LIST_EXAMPLES)
        _require_nonempty(self, "output_dir", "Set output_dir to a directory such as runs/transfer.")
        self._check_tasks()
        check_methods(self)
        check_shots(self)
        check_seeds(self)
        self._check_execution()
        self._check_analysis()
        self._check_base()

    def validate(self) -> None:
        """Check every field again, e.g. after the fields were changed in code."""
        self.__post_init__()

    def _check_tasks(self) -> None:
        from ..builtin.registry import task_identity

        if len(self.tasks) < 2:
            _reject(
                self,
                "tasks",
                "a transfer study needs at least two tasks",
                "List two or more tasks, e.g. tasks: [mnist, digits, faces].",
            )
        for index, task in enumerate(self.tasks):
            if not task.strip():
                raise ConfigError(f"tasks[{index}]={task!r} is invalid: it is empty. Remove the empty entry.")
        reject_repeats(self, "tasks", key=task_identity)

        directories: dict[str, str] = {}
        for task in self.tasks:
            name = task_directory_name(task)
            if name in directories:
                _reject(
                    self,
                    "tasks",
                    f"{directories[name]!r} and {task!r} have the same last path component {name!r}, "
                    "which names their run directories",
                    "Rename one of the task folders or manifests.",
                )
            directories[name] = task

    def _check_execution(self) -> None:
        if self.executor not in EXECUTORS:
            _reject(self, "executor", f"it must be one of {', '.join(EXECUTORS)}", "Set executor to local or ray.")
        if self.workers < 1:
            _reject(self, "workers", "it must be at least 1", "Set workers to 1 (one run at a time) or more.")
        if self.threads is not None and self.threads < 1:
            _reject(self, "threads", "it must be at least 1", "Set threads to 1 or more, or to null.")
        _require_nonempty(self, "ray_address", "Set ray_address to auto, a cluster address, or null.")
        if self.ray_num_cpus <= 0:
            _reject(self, "ray_num_cpus", "it must be positive", "Set ray_num_cpus to e.g. 1 or 2.")

    def _check_analysis(self) -> None:
        if self.top_k < 1:
            _reject(self, "top_k", "it must be at least 1", "Set top_k to 1 or more.")
        if self.similarity_images < 1:
            _reject(self, "similarity_images", "it must be at least 1", "Set similarity_images to e.g. 256.")

    def _check_base(self) -> None:
        check_base_keys(self.base, RunConfig, "", TRANSFER_SET_KEYS, "transfer study")
        for method in self.methods:
            try:
                config = self.run_config(method, self.tasks[0], self.shots[0], self.seeds[0], self.output_dir)
            except ConfigError as error:
                raise ConfigError(prefix_run_keys(str(error))) from None
            if method == "coop" and config.prompt.coop.class_specific:
                raise ConfigError(
                    "base.prompt.coop.class_specific=True is invalid with coop in methods: class-specific contexts "
                    "belong to the classes of the source task, so they cannot initialise another task. "
                    "Set base.prompt.coop.class_specific=false, or remove coop from methods."
                )

    def run_config(
        self, method: str, task: str, shots: int, seed: int, output_dir: str | Path, init: str | Path | None = None
    ) -> RunConfig:
        """Build the RunConfig of one run on ``task``: ``base`` with the method, task, shots, seed, directory and init set."""
        return build_run_config(self.base, method, [task], shots, seed, output_dir, init)

    def to_dict(self) -> dict:
        """Return the configuration as plain nested dicts and lists, ready for YAML."""
        return dataclasses.asdict(self)


def transfer_config_from_dict(data: Mapping | None) -> TransferConfig:
    """Build a TransferConfig from a mapping, checking every key and value; missing keys keep their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"a transfer study configuration must be a mapping of keys to values, got {type(data).__name__} {data!r}."
        )
    valid = [f.name for f in dataclasses.fields(TransferConfig)]
    for key in data:
        if key not in valid:
            raise _unknown_key(key, valid)
    return TransferConfig(**data)


def _unknown_key(key: Any, valid: list[str]) -> ConfigError:
    message = f"unknown key {str(key)!r}."
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    run_keys = [name for name, *_ in fields_help(RunConfig) if name not in TRANSFER_SET_KEYS]
    if close:
        message += f" Did you mean {close[0]!r}?"
    elif str(key) in {name.split(".")[0] for name in run_keys}:
        message += f" Run settings go under base: write base.{key}."
    else:
        leaves = [name for name in run_keys if name.split(".")[-1] == str(key)]
        if leaves:
            message += f" Run settings go under base: did you mean 'base.{leaves[0]}'?"
    return ConfigError(f"{message} Valid keys at the top level of a transfer study configuration: {', '.join(valid)}.")


def load_transfer_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TransferConfig:
    """Load a TransferConfig from a YAML file (or the defaults when ``path`` is None) and apply overrides.

    Each override is ``dotted.key=value`` with the value read as YAML, e.g. ``methods=[coop]``,
    ``executor=ray``, ``workers=2`` or ``base.train.epochs=5``. Overrides apply in order.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'dotted.key=value' strings, not one string")
    data = {}
    if path is not None:
        data = _read_yaml_file(Path(path), kind="transfer study configuration", example="configs/transfer-offline.yaml")
    for override in overrides:
        key, value = parse_override(override)
        if key in ("output_dir", "ray_address") and isinstance(value, (bool, int, float)):
            value = override.partition("=")[2].strip()
        _set_dotted(data, key, value, override)
    return transfer_config_from_dict(data)
