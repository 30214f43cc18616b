"""Run directories: atomic writes, and the check that a directory belongs to this configuration."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, load_config
from .runtime import RunError

# Files a run writes, removed by --overwrite. The prompt checkpoint is replaced when the new run saves its own.
RUN_FILES = ("results.json", "metrics.jsonl", "train_state.pt", "config.yaml")
FEWSHOT_DIR = "fewshot"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_torch_atomic(path: Path, data: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(data, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as stream:
        stream.write(json.dumps(record) + "\n")


def fewshot_path(run_dir: Path, task_name: str) -> Path:
    """Path of the few-shot split file of one task in a run directory."""
    safe = task_name.replace(os.sep, "_").replace("/", "_")
    return run_dir / FEWSHOT_DIR / f"{safe}.json"


def check_config_matches(config: RunConfig, run_dir: Path) -> None:
    """Raise RunError when ``run_dir`` was written by a different configuration."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    previous = load_config(path).to_dict()
    current = config.to_dict()
    if previous != current:
        differing = differing_keys(previous, current)
        raise RunError(
            f"{run_dir} was written by a different configuration ({', '.join(differing[:5])} differ); "
            f"use another output_dir, or pass --overwrite to start this run afresh there"
        )


def differing_keys(first: dict, second: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(first) | set(second)):
        a, b = first.get(key), second.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(differing_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def clear_run(run_dir: Path) -> None:
    """Remove the files an earlier run wrote, for --overwrite."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    fewshot = run_dir / FEWSHOT_DIR
    if fewshot.is_dir():
        for file in fewshot.glob("*.json"):
            file.unlink()
