"""Run directories: atomic writes, and the check that a directory belongs to this configuration."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .config import RunConfig, load_config
from .runtime import RunError

# Files a run writes, removed by --overwrite. The prompt checkpoint is replaced when the new run saves its own.
RUN_FILES = ("results.json", "metrics.jsonl", "train_state.pt", "config.yaml")
FEWSHOT_DIR = "fewshot"


def replace_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Create ``path`` by calling ``write`` on a temporary file beside it, then renaming that file.

    Readers see the old file or the complete new one, never a partial file.
    The result gets mode 0644 like files written directly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file, so readers never see a partial file."""

    def write(temporary: str) -> None:
        with open(temporary, "w") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")

    replace_atomic(path, write)


def save_torch_atomic(path: Path, data: Any) -> None:
    replace_atomic(path, lambda temporary: torch.save(data, temporary))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as stream:
        stream.write(json.dumps(record) + "\n")


def fewshot_path(run_dir: Path, task_name: str) -> Path:
    """Path of the few-shot split file of one task in a run directory."""
    safe = task_name.replace(os.sep, "_").replace("/", "_")
    return run_dir / FEWSHOT_DIR / f"{safe}.json"


# Settings that change where or how fast a run executes, not what it computes.
IGNORED_KEYS = ("output_dir", "train.device", "train.eval_batch_size", "data.num_workers")


def check_config_matches(config: RunConfig, run_dir: Path) -> None:
    """Raise RunError when ``run_dir`` was written by a configuration that computes something else.

    Keys in IGNORED_KEYS may differ, so a run directory can be moved, or
    resumed on another device.
    """
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    previous = load_config(path).to_dict()
    current = config.to_dict()
    differing = [key for key in differing_keys(previous, current) if key not in IGNORED_KEYS]
    if differing:
        listed = ", ".join(differing[:5])
        raise RunError(
            f"{run_dir} was written by a run with other settings (these keys differ: {listed}); "
            f"use another output_dir, or pass --overwrite to replace that run"
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
    prompt = run_dir / "prompt"
    for name in ("prompt.json", "prompt.safetensors"):
        (prompt / name).unlink(missing_ok=True)


class RunLock:
    """An exclusive lock file in a run directory, so two processes never train the same run at once."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"

    def __enter__(self) -> "RunLock":
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = self.path.read_text().strip() or "unknown"
            if owner.isdigit() and not _process_alive(int(owner)):
                # The process that held the lock has ended without removing it.
                self.path.unlink(missing_ok=True)
                return self.__enter__()
            raise RunError(
                f"{self.path.parent} is in use by another mvlpt process (pid {owner}); wait for it to finish, "
                f"or delete {self.path} if no such process runs"
            ) from None
        with os.fdopen(handle, "w") as stream:
            stream.write(str(os.getpid()))
        return self

    def __exit__(self, *exc_info) -> None:
        self.path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def truncate_jsonl(path: Path, records: int) -> None:
    """Keep only the first ``records`` lines of a JSON-lines file, dropping lines of unfinished epochs."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > records:
        replace_atomic(path, lambda temporary: Path(temporary).write_text("".join(lines[:records])))
