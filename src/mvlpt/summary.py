"""Results tables built from the ``results.json`` files of run directories."""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)


def collect_results(paths: list[Path]) -> list[dict]:
    """Read every ``results.json`` at or below ``paths``, each with its run directory under "run_dir"."""
    rows = []
    for path in paths:
        files = [path] if path.is_file() else sorted(path.rglob("results.json"))
        for file in files:
            try:
                row = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                logger.warning("skipping unreadable results file %s: %s", file, error)
                continue
            if not isinstance(row, dict) or not isinstance(row.get("per_task"), dict):
                logger.warning("skipping %s: it is not an mvlpt results file", file)
                continue
            row["run_dir"] = str(file.parent)
            rows.append(row)
    return rows


def run_setting(row: dict) -> str:
    """Name how a run was trained: zero-shot, single (one task, from scratch), init (from a checkpoint) or joint."""
    if row.get("method") == "zero-shot":
        return "zero-shot"
    if row.get("init"):
        return "init"
    if len(row.get("tasks", [])) > 1:
        return "joint"
    return "single"


def results_table(rows: list[dict], split: str = "test") -> str:
    """Return a Markdown table: one row per (task, method, setting, shots, backbone), the task metric as mean ± std over seeds.

    A run trained on several tasks contributes one entry per task.
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    metrics: dict[tuple, str] = {}
    for row in rows:
        for task, entry in row.get("per_task", {}).items():
            if split not in entry:
                continue
            backbone = row.get("backbone") or {}
            weights = backbone.get("pretrained") or "random weights"
            model = f"{backbone.get('model', '?')} ({weights})"
            key = (task, row["method"], run_setting(row), row.get("shots", "-"), model)
            groups[key].append(float(entry[split][entry["metric"]]))
            metrics[key] = entry["metric"]

    lines = [
        f"| task | method | setting | shots | backbone | metric | {split} | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda item: tuple(str(part) for part in item)):
        values = groups[key]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        task, method, setting, shots, model = key
        mean = statistics.mean(values)
        lines.append(
            f"| {task} | {method} | {setting} | {shots} | {model} | {metrics[key]} | {mean:.2f}{spread} | {len(values)} |"
        )
    return "\n".join(lines)
