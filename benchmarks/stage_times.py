"""Sum the recorded wall time of a pipeline's runs, stage by stage.

Every training run writes its own wall time (`wall_time_s`) into its
results.json. This script adds those times up per method, shots and kind of
run (source, mvlpt, single, group) under the output directory of `mvlpt
pipeline`. A report can then give the cost of each stage even when the
pipeline was interrupted and resumed.

Example (the figures in docs/benchmarks/offline.md):

    python benchmarks/stage_times.py ~/.cache/mvlpt/runs/offline-benchmark
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def stage_times(output_dir: Path) -> dict[tuple[str, str, str], tuple[int, float]]:
    """Map (method, shots, kind) to (number of finished runs, total seconds)."""
    totals: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for results_path in sorted(output_dir.glob("*/*shot/*/**/results.json")):
        parts = results_path.relative_to(output_dir).parts
        method, shots, kind = parts[0], parts[1], parts[2]
        if kind.startswith("group-"):
            kind = "group"
        wall_time = json.loads(results_path.read_text(encoding="utf-8")).get("wall_time_s")
        if wall_time is not None:
            totals[(method, shots, kind)].append(float(wall_time))
    return {key: (len(times), sum(times)) for key, times in totals.items()}


def format_minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="output_dir of an `mvlpt pipeline` run")
    args = parser.parse_args()
    if not args.output_dir.is_dir():
        parser.error(f"{args.output_dir} is not a directory; give the output_dir of an `mvlpt pipeline` run")

    times = stage_times(args.output_dir)
    if not times:
        parser.error(f"no results.json with a wall time under {args.output_dir}; has the pipeline run there?")

    print("| method | shots | stage | runs | wall time |")
    print("|---|---|---|---|---|")
    grand_total = 0.0
    for (method, shots, kind), (count, seconds) in sorted(times.items(), key=lambda item: (item[0][0], int(item[0][1].removesuffix("shot")), item[0][2])):
        grand_total += seconds
        print(f"| {method} | {shots.removesuffix('shot')} | {kind} | {count} | {format_minutes(seconds)} |")
    print(f"| all | | | {sum(count for count, _ in times.values())} | {format_minutes(grand_total)} |")


if __name__ == "__main__":
    main()
