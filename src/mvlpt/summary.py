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
            except (OSError, json.JSONDecodeError) as error:
                logger.warning("skipping unreadable results file %s: %s", file, error)
                continue
            row["run_dir"] = str(file.parent)
            rows.append(row)
    return rows


def results_table(rows: list[dict], split: str = "test") -> str:
    """Return a Markdown table: one row per (task, method, shots), the task metric as mean ± std over seeds.

    A run trained on several tasks contributes one row entry per task.
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    metrics: dict[tuple, str] = {}
    for row in rows:
        for task, entry in row.get("per_task", {}).items():
            if split not in entry:
                continue
            key = (task, row["method"], row.get("shots", "-"))
            groups[key].append(float(entry[split][entry["metric"]]))
            metrics[key] = entry["metric"]

    lines = [
        f"| task | method | shots | metric | {split} | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda item: tuple(str(part) for part in item)):
        values = groups[key]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        task, method, shots = key
        lines.append(
            f"| {task} | {method} | {shots} | {metrics[key]} | {statistics.mean(values):.2f}{spread} | {len(values)} |"
        )
    return "\n".join(lines)
