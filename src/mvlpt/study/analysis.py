"""Gain matrices, rank correlations with task similarity, best sources and suggested groups of a transfer study.

Definitions (docs/transfer.md has the reasons):

- The score of a run is its task's own test metric from results.json, in percent.
- The relative gain of pair (s, t) is (T - B) / B x 100, where T is the mean
  score of the pair runs s -> t and B the mean score of t's single runs, over the
  seeds for which both finished. Scores are averaged before the ratio.
- The diagonal (s = t) is not a transfer and stays empty (NaN).
- Correlations are Spearman's rank correlation between a similarity and the
  gain over the ordered pairs that have both, with its p-value and n.
- Suggested groups are disjoint sets of at least two tasks in which every task
  gains more than ``group_min_gain`` from every other, found greedily, largest
  group first.

Everything here works on partial studies: a missing run gives a NaN cell.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pipeline import task_directory_name
from ..runtime import RunError
from .config import TransferConfig
from .jobs import PAIR, SINGLE, Job

logger = logging.getLogger(__name__)

__all__ = [
    "Correlation",
    "GainMatrix",
    "best_sources",
    "collect_gain_matrices",
    "gain_matrix",
    "rank_correlation",
    "read_score",
    "relative_gain",
    "suggest_groups",
]


@dataclass
class GainMatrix:
    """Relative gains of one method and number of shots: ``gain[s, t]`` in percent for source s and target t.

    ``n_seeds[s, t]`` is the number of seeds the cell averages; ``baseline[t]`` and
    ``transfer[s, t]`` are the mean scores behind it (NaN where missing).
    """

    method: str
    shots: int
    labels: list[str]
    specs: list[str]
    metrics: list[str | None]
    gain: np.ndarray
    n_seeds: np.ndarray
    baseline: np.ndarray
    transfer: np.ndarray

    @property
    def slug(self) -> str:
        """Return ``<method>-<k>shot``, the suffix of this matrix's file names."""
        return f"{self.method}-{self.shots}shot"

    def finished_pairs(self) -> int:
        return int(np.isfinite(self.gain).sum())

    def planned_pairs(self) -> int:
        return len(self.labels) * (len(self.labels) - 1)


def read_score(run_dir: Path) -> tuple[str, float] | None:
    """Return (metric, test value in percent) of the one task of a finished run, or None when results.json is missing."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        entry = results["per_task"][results["tasks"][0]]
        metric = entry["metric"]
        return metric, float(entry["test"][metric])
    except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as error:
        raise RunError(f"{path} could not be read ({type(error).__name__}: {error}); delete {run_dir} and rerun the study") from error


def relative_gain(baseline: Mapping[int, float], transfer: Mapping[int, float]) -> tuple[float, int, float, float]:
    """Return (relative gain in percent, seeds used, mean transfer score, mean baseline score) from per-seed scores.

    Only seeds present in both mappings count. The mean scores are taken first
    and the gain is their relative difference, so one seed with a low baseline
    cannot dominate the average. With no common seed, or a zero baseline, the
    gain is NaN.
    """
    seeds = sorted(set(baseline) & set(transfer))
    if not seeds:
        return math.nan, 0, math.nan, math.nan
    base = statistics.fmean(baseline[seed] for seed in seeds)
    mean = statistics.fmean(transfer[seed] for seed in seeds)
    if base == 0:
        return math.nan, len(seeds), mean, base
    return (mean - base) / base * 100.0, len(seeds), mean, base


def gain_matrix(
    labels: Sequence[str],
    baseline: Mapping[int, Mapping[int, float]],
    transfer: Mapping[tuple[int, int], Mapping[int, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the (T, T) matrices of relative gain, seeds used, mean transfer score and mean baseline score.

    ``baseline[t]`` maps seed to the score of task t's single run and
    ``transfer[(s, t)]`` seed to the score of the pair run s -> t. The diagonal
    and cells without results are NaN.
    """
    count = len(labels)
    gain = np.full((count, count), np.nan)
    n_seeds = np.zeros((count, count), dtype=int)
    transfer_mean = np.full((count, count), np.nan)
    baseline_mean = np.full(count, np.nan)
    for target in range(count):
        scores = baseline.get(target, {})
        if scores:
            baseline_mean[target] = statistics.fmean(scores.values())
        for source in range(count):
            if source == target:
                continue
            value, used, mean, _ = relative_gain(scores, transfer.get((source, target), {}))
            gain[source, target] = value
            n_seeds[source, target] = used
            transfer_mean[source, target] = mean
    return gain, n_seeds, transfer_mean, baseline_mean


def collect_gain_matrices(config: TransferConfig, jobs: Sequence[Job]) -> list[GainMatrix]:
    """Read the score of every finished run of the plan and build one GainMatrix per method and shots."""
    labels = [task_directory_name(task) for task in config.tasks]
    index = {task: position for position, task in enumerate(config.tasks)}
    matrices = []
    for method in config.methods:
        for shots in config.shots:
            baseline: dict[int, dict[int, float]] = {}
            transfer: dict[tuple[int, int], dict[int, float]] = {}
            metrics: list[str | None] = [None] * len(labels)
            for job in jobs:
                if job.method != method or job.shots != shots:
                    continue
                score = read_score(Path(job.directory))
                if score is None:
                    continue
                metric, value = score
                target = index[job.target]
                metrics[target] = metric
                if job.kind == SINGLE:
                    baseline.setdefault(target, {})[job.seed] = value
                elif job.kind == PAIR:
                    transfer.setdefault((index[job.source], target), {})[job.seed] = value
            gain, n_seeds, transfer_mean, baseline_mean = gain_matrix(labels, baseline, transfer)
            matrices.append(
                GainMatrix(method, shots, labels, list(config.tasks), metrics, gain, n_seeds, baseline_mean, transfer_mean)
            )
    return matrices


# Correlation ---------------------------------------------------------------------------


@dataclass
class Correlation:
    """Spearman's rank correlation between a similarity and the gain over ``n`` ordered pairs (NaN below 3 pairs)."""

    rho: float
    p_value: float
    n: int


def rank_correlation(similarity: np.ndarray, gain: np.ndarray) -> Correlation:
    """Correlate similarity[s, t] with gain[s, t] over the off-diagonal cells where both are finite.

    rho and the p-value are NaN with fewer than three pairs, or when either
    side is constant, because the rank correlation is then undefined.
    """
    from scipy.stats import spearmanr

    mask = np.isfinite(similarity) & np.isfinite(gain)
    np.fill_diagonal(mask, False)
    x, y = similarity[mask], gain[mask]
    n = int(mask.sum())
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spearmanr(x, y)
    return Correlation(float(result[0]), float(result[1]), n)


# Best sources and groups ---------------------------------------------------------------


def best_sources(gain: np.ndarray, k: int) -> dict[int, list[tuple[int, float]]]:
    """Return, for each target t, up to ``k`` (source, gain) with the highest finite gain[s, t], best first.

    Ties keep the order of the tasks.
    """
    result = {}
    for target in range(gain.shape[0]):
        column = [(source, float(gain[source, target])) for source in range(gain.shape[0]) if np.isfinite(gain[source, target])]
        column.sort(key=lambda item: -item[1])
        result[target] = column[:k]
    return result


def suggest_groups(gain: np.ndarray, min_gain: float) -> list[list[int]]:
    """Return disjoint groups of tasks in which each task gains more than ``min_gain`` from every other member.

    Two tasks are linked when gain[s, t] and gain[t, s] both exceed ``min_gain``;
    a group is a clique of that graph. The largest clique is taken first (ties:
    the higher mean gain inside it, then the earlier tasks), its tasks are
    removed, and the search repeats until no two remaining tasks are linked.
    """
    count = gain.shape[0]
    with np.errstate(invalid="ignore"):
        linked = (gain > min_gain) & (gain.T > min_gain)
    neighbours = {task: {other for other in range(count) if other != task and linked[task, other]} for task in range(count)}

    groups = []
    remaining = set(range(count))
    while True:
        graph = {task: neighbours[task] & remaining for task in remaining}
        cliques = [clique for clique in _maximal_cliques(graph) if len(clique) >= 2]
        if not cliques:
            break
        best = max(cliques, key=lambda clique: (len(clique), group_stats(gain, sorted(clique))[1], [-task for task in sorted(clique)]))
        groups.append(sorted(best))
        remaining -= set(best)
    return groups


def _maximal_cliques(graph: dict[int, set[int]]) -> list[frozenset[int]]:
    """List the maximal cliques of an undirected graph (Bron-Kerbosch with pivoting)."""
    cliques: list[frozenset[int]] = []

    def expand(clique: frozenset[int], candidates: set[int], excluded: set[int]) -> None:
        if not candidates and not excluded:
            cliques.append(clique)
            return
        pivot = max(candidates | excluded, key=lambda task: len(graph[task] & candidates))
        for task in sorted(candidates - graph[pivot]):
            expand(clique | {task}, candidates & graph[task], excluded & graph[task])
            candidates = candidates - {task}
            excluded = excluded | {task}

    expand(frozenset(), set(graph), set())
    return cliques


def group_stats(gain: np.ndarray, group: Sequence[int]) -> tuple[float, float]:
    """Return the minimum and the mean of gain[s, t] over the ordered pairs inside ``group``."""
    values = [float(gain[s, t]) for s in group for t in group if s != t]
    return min(values), statistics.fmean(values)
