"""The analysis folder of a transfer study: CSV files, heatmaps and summary.md.

Files written to ``<output_dir>/analysis/`` (each atomically):

- ``gain_matrix-<method>-<k>shot.csv`` and ``.png``/``.svg``: relative gain, source rows, target columns;
- ``pairs.csv``: every pair in long form, with the scores behind its gain;
- ``visual_similarity.csv``/``.png``/``.svg`` and ``label_similarity.csv``/``.png``/``.svg``;
- ``correlations.csv``, ``best_sources.csv``, ``groups.csv``;
- ``summary.md``: all of it in words and tables;
- ``similarity.json``: the similarities with what they were computed from, reused by later analyses.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..rundir import replace_atomic
from .analysis import Correlation, GainMatrix, best_sources, group_stats, rank_correlation, suggest_groups
from .config import TransferConfig
from .plots import plot_heatmap
from .similarity import TaskSimilarities

logger = logging.getLogger(__name__)

__all__ = ["AnalysisReport", "write_report"]

ANALYSIS_DIR = "analysis"
SIMILARITY_KINDS = ("visual", "label")


@dataclass
class AnalysisReport:
    """Result of writing the analysis: the summary text and the analysis folder."""

    summary: str
    directory: Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a temporary file, so readers never see a partial file."""
    replace_atomic(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def _number(value: float) -> str:
    """Format a float for CSV at full precision; NaN becomes an empty cell."""
    return "" if not math.isfinite(value) else repr(float(value))


def _csv_text(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue()


def matrix_csv(matrix: np.ndarray, labels: Sequence[str], corner: str) -> str:
    """Format a task-by-task matrix as CSV: a header row of column labels, then one row per task."""
    rows: list[list[object]] = [[corner, *labels]]
    for label, values in zip(labels, matrix):
        rows.append([label, *(_number(value) for value in values)])
    return _csv_text(rows)


# Header rows of the CSV files that hold one block of rows per method and shots.
PAIR_COLUMNS = ["method", "shots", "source", "target", "metric", "n_seeds", "baseline", "transfer", "gain_points", "relative_gain_percent"]
CORRELATION_COLUMNS = ["method", "shots", "similarity", "spearman_rho", "p_value", "n_pairs"]
BEST_SOURCE_COLUMNS = ["method", "shots", "target", "rank", "source", "relative_gain_percent", "n_seeds"]
GROUP_COLUMNS = ["method", "shots", "group", "size", "tasks", "min_gain_percent", "mean_gain_percent"]


def write_report(
    config: TransferConfig,
    matrices: Sequence[GainMatrix],
    similarities: TaskSimilarities,
    run_counts: tuple[int, int] | None = None,
) -> AnalysisReport:
    """Write every analysis file of the study and return the summary.

    ``run_counts`` (finished, planned), when given, goes into the summary.
    """
    directory = Path(config.output_dir) / ANALYSIS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    _write_similarities(directory, similarities)

    tables: dict[str, list[list[object]]] = {
        "pairs.csv": [PAIR_COLUMNS],
        "correlations.csv": [CORRELATION_COLUMNS],
        "best_sources.csv": [BEST_SOURCE_COLUMNS],
        "groups.csv": [GROUP_COLUMNS],
    }
    sections = []
    for matrix in matrices:
        _write_gain_matrix(directory, matrix)
        sections.append(_analyse_matrix(config, matrix, similarities, tables))
    for name, rows in tables.items():
        write_text_atomic(directory / name, _csv_text(rows))

    summary = _summary(config, similarities, sections, run_counts)
    write_text_atomic(directory / "summary.md", summary)
    logger.info("analysis written to %s", directory)
    return AnalysisReport(summary, directory)


def _write_similarities(directory: Path, similarities: TaskSimilarities) -> None:
    for kind in SIMILARITY_KINDS:
        matrix = getattr(similarities, kind)
        write_text_atomic(directory / f"{kind}_similarity.csv", matrix_csv(matrix, similarities.labels, "task"))
        plot_heatmap(
            matrix,
            similarities.labels,
            directory / f"{kind}_similarity",
            f"{kind.capitalize()} similarity between tasks",
            f"{kind} similarity (cosine)",
            diverging=False,
            value_format="{:.2f}",
            note="Cosine similarity of frozen CLIP features, 1 on the diagonal.",
        )


def _analyse_matrix(
    config: TransferConfig, matrix: GainMatrix, similarities: TaskSimilarities, tables: dict[str, list[list[object]]]
) -> list[str]:
    """Add the rows of one gain matrix to ``tables`` and return its section of summary.md."""
    tables["pairs.csv"].extend(_pair_rows(matrix))

    correlations = {kind: rank_correlation(getattr(similarities, kind), matrix.gain) for kind in SIMILARITY_KINDS}
    for kind, correlation in correlations.items():
        tables["correlations.csv"].append(
            [matrix.method, matrix.shots, kind, _number(correlation.rho), _number(correlation.p_value), correlation.n]
        )

    best = best_sources(matrix.gain, config.top_k)
    for target, ranked in best.items():
        for rank, (source, value) in enumerate(ranked, start=1):
            seeds = int(matrix.n_seeds[source, target])
            tables["best_sources.csv"].append(
                [matrix.method, matrix.shots, matrix.labels[target], rank, matrix.labels[source], _number(value), seeds]
            )

    groups = suggest_groups(matrix.gain, config.group_min_gain)
    for number, group in enumerate(groups, start=1):
        lowest, mean = group_stats(matrix.gain, group)
        names = ";".join(matrix.specs[task] for task in group)
        tables["groups.csv"].append([matrix.method, matrix.shots, number, len(group), names, _number(lowest), _number(mean)])
    return _study_section(config, matrix, correlations, best, groups)


def _write_gain_matrix(directory: Path, matrix: GainMatrix) -> None:
    stem = directory / f"gain_matrix-{matrix.slug}"
    write_text_atomic(stem.with_suffix(".csv"), matrix_csv(matrix.gain, matrix.labels, "source \\ target"))
    missing = matrix.planned_pairs() - matrix.finished_pairs()
    note = "Rows: source task; columns: target task. Cell: relative gain of the target over its single-task run, in %. "
    note += "Grey diagonal: not a transfer."
    if missing:
        note += f" Hatched: {missing} of {matrix.planned_pairs()} pairs have no result yet."
    plot_heatmap(
        matrix.gain,
        matrix.labels,
        stem,
        f"Transfer gain, {matrix.method}, {matrix.shots} shots",
        "relative gain (%)",
        diverging=True,
        value_format="{:+.1f}",
        row_axis="source task",
        column_axis="target task",
        note=note,
        diagonal_defined=False,
    )


def _pair_rows(matrix: GainMatrix) -> list[list[object]]:
    rows = []
    for source, source_label in enumerate(matrix.labels):
        for target, target_label in enumerate(matrix.labels):
            if source == target:
                continue
            baseline = matrix.baseline[target]
            transfer = matrix.transfer[source, target]
            points = transfer - baseline if matrix.n_seeds[source, target] else math.nan
            rows.append(
                [
                    matrix.method,
                    matrix.shots,
                    source_label,
                    target_label,
                    matrix.metrics[target] or "",
                    int(matrix.n_seeds[source, target]),
                    _number(baseline),
                    _number(transfer),
                    _number(points),
                    _number(matrix.gain[source, target]),
                ]
            )
    return rows


# summary.md ----------------------------------------------------------------------------


def _cell(value: float, text: str = "{:+.1f}") -> str:
    return text.format(value) if math.isfinite(value) else ""


def _markdown_matrix(matrix: np.ndarray, labels: Sequence[str], corner: str, text: str, diagonal: str | None) -> list[str]:
    lines = [f"| {corner} | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for row, label in enumerate(labels):
        cells = []
        for column in range(len(labels)):
            cells.append(diagonal if row == column and diagonal is not None else _cell(matrix[row, column], text))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _correlation_text(correlation: Correlation) -> str:
    if not math.isfinite(correlation.rho):
        return f"undefined (n = {correlation.n} pairs; it needs at least 3 pairs whose values vary)"
    return f"rho = {correlation.rho:+.3f}, p = {correlation.p_value:.3g}, n = {correlation.n} pairs"


def _study_section(
    config: TransferConfig,
    matrix: GainMatrix,
    correlations: dict[str, Correlation],
    best: dict[int, list[tuple[int, float]]],
    groups: list[list[int]],
) -> list[str]:
    finished = matrix.finished_pairs()
    lines = [f"## {matrix.method}, {matrix.shots} shots", ""]
    lines.append(
        f"Pairs with a gain: {finished} of {matrix.planned_pairs()}. Figure: gain_matrix-{matrix.slug}.png "
        f"(and .svg); numbers: gain_matrix-{matrix.slug}.csv and pairs.csv."
    )
    if finished:
        finite = matrix.gain[np.isfinite(matrix.gain)]
        lines.append(
            f"Mean relative gain {finite.mean():+.2f} %. Pairs above 0: {int((finite > 0).sum())}; "
            f"below 0: {int((finite < 0).sum())}."
        )
    lines += ["", "Relative gain in % (rows: source, columns: target; empty: no result yet):", ""]
    lines += _markdown_matrix(matrix.gain, matrix.labels, "source \\ target", "{:+.1f}", "—")

    lines += ["", "Rank correlation (Spearman) of similarity with gain:", ""]
    for kind, correlation in correlations.items():
        lines.append(f"- {kind} similarity: {_correlation_text(correlation)}")

    lines += ["", f"Best sources per target (up to {config.top_k}):", ""]
    for target, ranked in best.items():
        listed = ", ".join(f"{matrix.labels[source]} {value:+.1f} %" for source, value in ranked) or "no results yet"
        lines.append(f"- {matrix.labels[target]}: {listed}")

    lines += ["", f"Suggested groups for joint tuning (every member gains more than {config.group_min_gain:g} % from every other):", ""]
    if groups:
        for number, group in enumerate(groups, start=1):
            lowest, mean = group_stats(matrix.gain, group)
            names = ", ".join(matrix.labels[task] for task in group)
            lines.append(f"{number}. {names} (lowest gain {lowest:+.1f} %, mean {mean:+.1f} %)")
        lines += ["", "As the groups list of a pipeline configuration (the tasks must be among its target_tasks):", ""]
        lines += ["```yaml", "groups:"]
        lines += ["  - [" + ", ".join(matrix.specs[task] for task in group) + "]" for group in groups]
        lines += ["```"]
    else:
        lines.append("None: no two tasks gain from each other in both directions.")
    return lines


def _summary(
    config: TransferConfig, similarities: TaskSimilarities, sections: list[list[str]], run_counts: tuple[int, int] | None
) -> str:
    lines = [
        "# Task transfer study",
        "",
        f"Tasks: {', '.join(similarities.labels)}. Methods: {', '.join(config.methods)}. "
        f"Shots: {', '.join(str(shots) for shots in config.shots)}. Seeds: {', '.join(str(seed) for seed in config.seeds)}.",
        "",
    ]
    if run_counts is not None:
        finished, planned = run_counts
        lines += [f"Runs finished: {finished} of {planned} planned.", ""]
    lines += [
        "The relative gain of a pair (source, target) is (T - B) / B x 100, where T is the target's test score "
        "when its prompt starts from the source task's prompt, and B its score trained alone from scratch; "
        "both are means over the seeds that finished for both. Scores are each task's own test metric.",
        "",
        "## Similarity between tasks",
        "",
        "Visual similarity: cosine similarity of the mean normalised CLIP image feature of "
        f"up to {config.similarity_images} training images per task. Label similarity: mean best-match cosine "
        "similarity between the class-name text features of two tasks, averaged over both directions. "
        "Figures: visual_similarity.png and label_similarity.png (and .svg).",
        "",
    ]
    if similarities.problems:
        lines += ["Tasks without similarity (their rows are empty):", ""]
        lines += [f"- {problem}" for problem in similarities.problems]
        lines.append("")
    for kind in SIMILARITY_KINDS:
        lines += [f"{kind.capitalize()} similarity:", ""]
        lines += _markdown_matrix(getattr(similarities, kind), similarities.labels, "task", "{:.2f}", None)
        lines.append("")
    for section in sections:
        lines += section
        lines.append("")
    return "\n".join(lines)
