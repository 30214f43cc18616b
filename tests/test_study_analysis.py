"""Gain matrices, correlations, best sources and groups of the transfer study, from known numbers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from mvlpt.study.analysis import (
    best_sources,
    collect_gain_matrices,
    rank_correlation,
    relative_gain,
    suggest_groups,
)
from mvlpt.study.config import transfer_config_from_dict
from mvlpt.study.jobs import plan_transfer
from mvlpt.study.report import write_report
from mvlpt.study.similarity import TaskSimilarities

TASKS = ["mnist", "digits", "faces"]


def study_config(out, **changes):
    data = {
        "output_dir": str(out),
        "tasks": TASKS,
        "methods": ["coop"],
        "shots": [5],
        "seeds": [1, 2],
        "base": {"backbone": {"model": "mvlpt:tiny-vit", "pretrained": None}},
    }
    data.update(changes)
    return transfer_config_from_dict(data)


def write_results(directory: Path, task: str, value: float, metric: str = "accuracy") -> None:
    """Write the results.json of a finished one-task run whose test metric is ``value``."""
    directory.mkdir(parents=True, exist_ok=True)
    results = {"tasks": [task], "method": "coop", "per_task": {task: {"metric": metric, "test": {metric: value}}}}
    (directory / "results.json").write_text(json.dumps(results))


# Scores of the single runs (baselines) and pair runs, by seed; ("digits", "faces") is missing.
SINGLE = {"mnist": {1: 80.0, 2: 90.0}, "digits": {1: 50.0, 2: 70.0}, "faces": {1: 40.0}}
PAIRS = {
    ("mnist", "digits"): {1: 60.0, 2: 72.0},
    ("faces", "digits"): {1: 45.0, 2: 60.0},
    ("digits", "mnist"): {1: 88.0, 2: 92.0},
    ("faces", "mnist"): {2: 81.0},
    ("mnist", "faces"): {1: 50.0, 2: 55.0},
}


@pytest.fixture()
def known_study(tmp_path):
    config = study_config(tmp_path / "study")
    jobs = plan_transfer(config)
    for job in jobs:
        if job.kind == "single":
            value = SINGLE[job.target].get(job.seed)
        else:
            value = PAIRS.get((job.source, job.target), {}).get(job.seed)
        if value is not None:
            write_results(Path(job.directory), job.target, value)
    return config, jobs


def test_relative_gain_averages_scores_first():
    gain, seeds, transfer, baseline = relative_gain({1: 50.0, 2: 70.0}, {1: 60.0, 2: 72.0})
    assert seeds == 2
    assert baseline == 60.0
    assert transfer == 66.0
    assert gain == pytest.approx(10.0)


def test_relative_gain_uses_common_seeds():
    gain, seeds, _, _ = relative_gain({1: 50.0, 2: 70.0}, {1: 55.0})
    assert seeds == 1
    assert gain == pytest.approx(10.0)


def test_relative_gain_without_common_seed_is_nan():
    gain, seeds, _, _ = relative_gain({1: 50.0}, {2: 55.0})
    assert seeds == 0
    assert math.isnan(gain)


def test_relative_gain_zero_baseline_is_nan():
    gain, _, _, _ = relative_gain({1: 0.0}, {1: 10.0})
    assert math.isnan(gain)


def test_gain_matrix_from_results(known_study):
    config, jobs = known_study
    (matrix,) = collect_gain_matrices(config, jobs)
    labels = matrix.labels
    assert labels == TASKS

    def cell(source, target):
        return matrix.gain[labels.index(source), labels.index(target)]

    # mnist -> digits: mean pair (60 + 72) / 2 = 66 over mean baseline (50 + 70) / 2 = 60.
    assert cell("mnist", "digits") == pytest.approx(10.0)
    # faces -> digits: 52.5 over 60.
    assert cell("faces", "digits") == pytest.approx(-12.5)
    # digits -> mnist: 90 over 85.
    assert cell("digits", "mnist") == pytest.approx(100 * (90 - 85) / 85)
    # faces -> mnist finished for seed 2 only, so only seed 2 of the baseline counts: 81 over 90.
    assert cell("faces", "mnist") == pytest.approx(-10.0)
    assert matrix.n_seeds[labels.index("faces"), labels.index("mnist")] == 1
    # mnist -> faces: the baseline of faces has seed 1 only: 50 over 40.
    assert cell("mnist", "faces") == pytest.approx(25.0)
    # digits -> faces never ran.
    assert math.isnan(cell("digits", "faces"))
    for index in range(3):
        assert math.isnan(matrix.gain[index, index])
    assert matrix.finished_pairs() == 5
    assert matrix.planned_pairs() == 6


def test_gain_matrix_empty_study(tmp_path):
    config = study_config(tmp_path / "empty")
    (matrix,) = collect_gain_matrices(config, plan_transfer(config))
    assert np.isnan(matrix.gain).all()
    assert matrix.finished_pairs() == 0


def test_rank_correlation_known_ranks():
    gain = np.array([[np.nan, 1.0, 2.0], [3.0, np.nan, 4.0], [5.0, 6.0, np.nan]])
    similarity = np.array([[1.0, 0.1, 0.2], [0.3, 1.0, 0.4], [0.5, 0.6, 1.0]])
    result = rank_correlation(similarity, gain)
    assert result.n == 6
    assert result.rho == pytest.approx(1.0)
    assert result.p_value < 0.01

    reversed_similarity = similarity.copy()
    reversed_similarity[~np.eye(3, dtype=bool)] = -similarity[~np.eye(3, dtype=bool)]
    assert rank_correlation(reversed_similarity, gain).rho == pytest.approx(-1.0)


def test_rank_correlation_matches_pearson_of_ranks():
    rng = np.random.default_rng(3)
    gain = rng.normal(size=(5, 5))
    similarity = rng.normal(size=(5, 5))
    np.fill_diagonal(gain, np.nan)
    gain[0, 3] = np.nan
    result = rank_correlation(similarity, gain)

    mask = np.isfinite(gain) & ~np.eye(5, dtype=bool)
    x, y = similarity[mask], gain[mask]
    ranks_x = np.argsort(np.argsort(x)).astype(float)
    ranks_y = np.argsort(np.argsort(y)).astype(float)
    expected = np.corrcoef(ranks_x, ranks_y)[0, 1]
    assert result.n == 19
    assert result.rho == pytest.approx(expected)


def test_rank_correlation_undefined_cases():
    gain = np.full((3, 3), np.nan)
    gain[0, 1], gain[1, 0] = 1.0, 2.0
    few = rank_correlation(np.ones((3, 3)), gain)
    assert few.n == 2
    assert math.isnan(few.rho)

    full = np.arange(9, dtype=float).reshape(3, 3)
    constant = rank_correlation(np.ones((3, 3)), full)
    assert constant.n == 6
    assert math.isnan(constant.rho)


def test_best_sources_ranked():
    gain = np.array([[np.nan, 5.0, -1.0], [2.0, np.nan, 3.0], [4.0, np.nan, np.nan]])
    best = best_sources(gain, 2)
    assert best[0] == [(2, 4.0), (1, 2.0)]
    assert best[1] == [(0, 5.0)]
    assert best[2] == [(1, 3.0), (0, -1.0)]


def test_groups_need_gain_both_ways():
    # Tasks 0, 1, 2 all gain from each other; 3 and 4 gain from each other; 5 gains from 0 but 0 loses from 5.
    gain = np.full((6, 6), -1.0)
    np.fill_diagonal(gain, np.nan)
    for s in (0, 1, 2):
        for t in (0, 1, 2):
            if s != t:
                gain[s, t] = 2.0
    gain[3, 4] = gain[4, 3] = 1.0
    gain[0, 5] = 3.0
    assert suggest_groups(gain, 0.0) == [[0, 1, 2], [3, 4]]
    assert suggest_groups(gain, 1.5) == [[0, 1, 2]]


def test_groups_disjoint_and_largest_first():
    # Two overlapping triangles {0, 1, 2} and {2, 3, 4}; the second has the higher gains, so it is taken first.
    gain = np.full((5, 5), -1.0)
    np.fill_diagonal(gain, np.nan)
    for group, value in (((0, 1, 2), 1.0), ((2, 3, 4), 5.0)):
        for s in group:
            for t in group:
                if s != t:
                    gain[s, t] = value
    assert suggest_groups(gain, 0.0) == [[2, 3, 4], [0, 1]]


def test_groups_ignore_missing_pairs():
    gain = np.array([[np.nan, 2.0], [np.nan, np.nan]])
    assert suggest_groups(gain, 0.0) == []


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()


def assert_valid_svg(path: Path) -> None:
    root = ElementTree.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_report_files(known_study):
    config, jobs = known_study
    matrices = collect_gain_matrices(config, jobs)
    similarity = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.3], [0.2, 0.3, 1.0]])
    similarities = TaskSimilarities(list(TASKS), similarity, similarity.copy())
    report = write_report(config, matrices, similarities)
    analysis = Path(config.output_dir) / "analysis"
    assert report.directory == analysis

    rows = read_csv(analysis / "gain_matrix-coop-5shot.csv")
    assert rows[0] == ["source \\ target", *TASKS]
    assert rows[1][0] == "mnist"
    assert rows[1][1] == ""
    assert float(rows[1][2]) == pytest.approx(10.0)
    assert float(rows[1][3]) == pytest.approx(25.0)
    assert rows[2][3] == ""

    pairs = {(row[2], row[3]): row for row in read_csv(analysis / "pairs.csv")[1:]}
    assert len(pairs) == 6
    assert pairs[("mnist", "digits")][5:] == ["2", "60.0", "66.0", "6.0", repr(10.0)]
    assert pairs[("digits", "faces")][5] == "0"
    assert pairs[("digits", "faces")][9] == ""

    correlations = read_csv(analysis / "correlations.csv")
    assert correlations[0] == ["method", "shots", "similarity", "spearman_rho", "p_value", "n_pairs"]
    assert [row[2] for row in correlations[1:]] == ["visual", "label"]
    assert correlations[1][5] == "5"

    best = read_csv(analysis / "best_sources.csv")
    digits = [row for row in best[1:] if row[2] == "digits"]
    assert [row[4] for row in digits] == ["mnist", "faces"]

    groups = read_csv(analysis / "groups.csv")
    # mnist and digits gain from each other (+10 % and +5.9 %); no other pair does both ways.
    assert groups[1][:5] == ["coop", "5", "1", "2", "mnist;digits"]
    assert "groups:\n  - [mnist, digits]" in report.summary

    for stem in ("gain_matrix-coop-5shot", "visual_similarity", "label_similarity"):
        assert_valid_png(analysis / f"{stem}.png")
        assert_valid_svg(analysis / f"{stem}.svg")
    assert read_csv(analysis / "visual_similarity.csv")[1] == ["mnist", "1.0", "0.5", "0.2"]
    assert (analysis / "summary.md").read_text() == report.summary
    assert "Pairs with a gain: 5 of 6." in report.summary
