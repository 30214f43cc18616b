"""Annotated heatmaps of task-by-task matrices, saved as PNG and SVG with matplotlib's Agg backend.

Cells scale with the number of tasks, so a 20 x 20 matrix keeps readable labels
and values. A NaN cell is drawn hatched grey when it is a missing result and
plain light grey on the diagonal, where no value is defined.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..rundir import replace_atomic

logger = logging.getLogger(__name__)

__all__ = ["plot_heatmap"]

# Inches per cell; the figure grows with the number of tasks so that 20 x 20 cells stay readable.
CELL_INCHES = 0.62
MISSING_COLOUR = "#f2f2f2"
DIAGONAL_COLOUR = "#d9d9d9"


def plot_heatmap(
    matrix: np.ndarray,
    labels: Sequence[str],
    path_stem: Path,
    title: str,
    colorbar_label: str,
    *,
    diverging: bool,
    value_format: str = "{:.1f}",
    row_axis: str = "",
    column_axis: str = "",
    note: str = "",
    diagonal_defined: bool = True,
) -> list[Path]:
    """Draw ``matrix`` as an annotated heatmap and write ``<path_stem>.png`` and ``<path_stem>.svg``; return both paths.

    ``diverging`` centres a red-blue colour map on 0, for gains. Otherwise a
    sequential map spans the finite off-diagonal values, because the diagonal
    of a similarity matrix (all ones) would flatten the contrast. With
    ``diagonal_defined`` False the diagonal is drawn as undefined.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    count = len(labels)
    size = max(4.0, CELL_INCHES * count + 2.5)
    if count <= 10:
        font = 9
    elif count <= 16:
        font = 7
    else:
        font = 6
    figure, axes = plt.subplots(figsize=(size + 1.2, size))

    off_diagonal = matrix[~np.eye(count, dtype=bool)] if count > 1 else matrix.ravel()
    finite = off_diagonal[np.isfinite(off_diagonal)]
    if diverging:
        limit = float(np.max(np.abs(finite))) if finite.size else 1.0
        limit = limit if limit > 0 else 1.0
        colour_map = matplotlib.colormaps["RdBu"]
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    else:
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if high <= low:
            low, high = low - 0.5, high + 0.5
        colour_map = matplotlib.colormaps["viridis"]
        norm = matplotlib.colors.Normalize(vmin=low, vmax=high)

    masked = np.ma.masked_invalid(matrix)
    colour_map = colour_map.with_extremes(bad=MISSING_COLOUR)
    image = axes.imshow(masked, cmap=colour_map, norm=norm, aspect="equal")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label(colorbar_label)

    for row in range(count):
        for column in range(count):
            value = matrix[row, column]
            if row == column and not diagonal_defined:
                axes.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, facecolor=DIAGONAL_COLOUR, edgecolor="none"))
                continue
            if not math.isfinite(value):
                axes.add_patch(
                    Rectangle((column - 0.5, row - 0.5), 1, 1, facecolor="none", edgecolor="#a0a0a0", hatch="///", linewidth=0)
                )
                continue
            red, green, blue, _ = colour_map(norm(value))
            text_colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.55 else "white"
            axes.text(column, row, value_format.format(value), ha="center", va="center", fontsize=font, color=text_colour)

    axes.set_xticks(range(count), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=font + 1)
    axes.set_yticks(range(count), labels, fontsize=font + 1)
    axes.set_xlabel(column_axis)
    axes.set_ylabel(row_axis)
    axes.set_title(title)
    if note:
        figure.text(0.01, 0.01, note, fontsize=8, ha="left", va="bottom", wrap=True)
    figure.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))

    paths = []
    for suffix in (".png", ".svg"):
        path = path_stem.with_suffix(suffix)
        replace_atomic(path, lambda temporary, kind=suffix[1:]: figure.savefig(temporary, format=kind, dpi=150))
        paths.append(path)
    plt.close(figure)
    logger.info("wrote %s.png and .svg", path_stem)
    return paths
