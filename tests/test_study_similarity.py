"""Visual and label similarity between tasks, on constructed features and on small image-folder tasks."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from mvlpt.study.config import transfer_config_from_dict
from mvlpt.study.similarity import compute_task_similarities, label_similarity, visual_similarity
from conftest import write_image_task


def unit(*values):
    vector = np.array(values, dtype=float)
    return vector / np.linalg.norm(vector)


def cluster(centre, count=20, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(centre) + spread * rng.normal(size=(count, len(centre)))


def test_visual_identical_tasks_are_maximal():
    features = cluster(unit(1, 0, 0, 0))
    similarity = visual_similarity([features, features.copy()])
    assert similarity == pytest.approx(np.ones((2, 2)))


def test_visual_orders_shifted_and_unrelated():
    base = cluster(unit(1, 0, 0, 0), seed=1)
    shifted = cluster(unit(1, 0.5, 0, 0), seed=2)
    unrelated = cluster(unit(0, 0, 1, 0), seed=3)
    similarity = visual_similarity([base, shifted, unrelated])
    assert similarity[0, 0] == pytest.approx(1.0)
    assert similarity[0, 1] < 1.0
    assert similarity[0, 2] < similarity[0, 1]
    assert similarity[0, 2] == pytest.approx(0.0, abs=0.05)
    assert similarity == pytest.approx(similarity.T)


def test_visual_cosine_of_centroids():
    # Two features per task, already unit length: the centroids are (1, 1)/2 and (1, 0), at 45 degrees.
    first = np.array([[1.0, 0.0], [0.0, 1.0]])
    second = np.array([[1.0, 0.0], [1.0, 0.0]])
    similarity = visual_similarity([first, second])
    assert similarity[0, 1] == pytest.approx(math.cos(math.pi / 4))


def test_visual_normalises_each_feature():
    # Scaling one image's feature must not change its weight in the centroid.
    first = np.array([[1.0, 0.0], [0.0, 1.0]])
    scaled = np.array([[10.0, 0.0], [0.0, 1.0]])
    assert visual_similarity([first, scaled])[0, 1] == pytest.approx(1.0)


def test_visual_missing_task_is_nan():
    similarity = visual_similarity([cluster(unit(1, 0)), None])
    assert similarity[0, 0] == pytest.approx(1.0)
    assert np.isnan(similarity[0, 1])
    assert np.isnan(similarity[1, 1])


def test_label_identical_and_disjoint_classes():
    e1, e2, e3, e4 = np.eye(4)
    same = label_similarity([np.stack([e1, e2]), np.stack([e2, e1])])
    assert same == pytest.approx(np.ones((2, 2)))

    disjoint = label_similarity([np.stack([e1, e2]), np.stack([e3, e4])])
    assert disjoint[0, 1] == pytest.approx(0.0)


def test_label_partial_overlap():
    e1, e2, e3, _ = np.eye(4)
    # Half the classes match in each direction.
    half = label_similarity([np.stack([e1, e2]), np.stack([e1, e3])])
    assert half[0, 1] == pytest.approx(0.5)
    # A subset: from {e1, e2} to {e1} the mean best match is 0.5, from {e1} back it is 1.
    subset = label_similarity([np.stack([e1, e2]), e1[None, :]])
    assert subset[0, 1] == pytest.approx(0.75)
    assert subset[1, 0] == pytest.approx(0.75)


def test_label_order_of_tasks_and_classes():
    rng = np.random.default_rng(4)
    tasks = [rng.normal(size=(count, 8)) for count in (2, 3, 5)]
    similarity = label_similarity(tasks)
    shuffled = label_similarity([task[::-1] for task in tasks])
    assert similarity == pytest.approx(similarity.T)
    assert similarity == pytest.approx(shuffled)
    assert np.diag(similarity) == pytest.approx(np.ones(3))


# On image-folder tasks with the tiny CLIP ------------------------------------------------


def similarity_config(tasks, out):
    return transfer_config_from_dict(
        {
            "output_dir": str(out),
            "tasks": [str(task) for task in tasks],
            "methods": ["coop"],
            "shots": [2],
            "similarity_images": 6,
            "base": {
                "backbone": {"model": "mvlpt:tiny-vit", "pretrained": None},
                "train": {"precision": "fp32"},
            },
        }
    )


@pytest.fixture(scope="module")
def image_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("similarity-tasks")
    sky = write_image_task(root / "sky", {"blue": (30, 30, 200), "white": (230, 230, 230)}, 0, train=4, test=1)
    copy = root / "copy" / "sky-copy"
    shutil.copytree(sky, copy)
    fruit = write_image_task(root / "fruit", {"apple": (200, 30, 30), "lemon": (220, 220, 40)}, 2, train=4, test=1)
    return sky, copy, fruit


def test_identical_image_tasks_are_maximal(image_tasks, tmp_path):
    config = similarity_config(image_tasks, tmp_path / "study")
    result = compute_task_similarities(config, tmp_path / "similarity.json")
    assert result.labels == ["sky", "sky-copy", "fruit"]
    assert result.problems == []
    for matrix in (result.visual, result.label):
        assert matrix[0, 1] == pytest.approx(1.0, abs=1e-5)
        assert matrix[0, 2] < matrix[0, 1]
        assert matrix == pytest.approx(matrix.T)


def test_similarity_cache_reused(image_tasks, tmp_path, monkeypatch):
    config = similarity_config(image_tasks, tmp_path / "study")
    cache = tmp_path / "similarity.json"
    first = compute_task_similarities(config, cache)
    assert json.loads(cache.read_text())["identity"]["images_per_task"] == 6

    def fail(*args, **kwargs):
        raise AssertionError("the cached similarities should have been reused")

    monkeypatch.setattr("mvlpt.backbone.load_backbone", fail)
    second = compute_task_similarities(config, cache)
    assert second.visual == pytest.approx(first.visual)
    assert second.label == pytest.approx(first.label)

    config.similarity_images = 5
    with pytest.raises(AssertionError, match="cached"):
        compute_task_similarities(config, cache)


def test_unreadable_task_gets_nan(image_tasks, tmp_path):
    broken = write_image_task(tmp_path / "broken", {"red": (200, 0, 0), "green": (0, 200, 0)}, 5, train=2, test=1)
    for image in (broken / "train").rglob("*.png"):
        image.write_bytes(b"not an image")
    config = similarity_config([image_tasks[0], image_tasks[2], broken], tmp_path / "study")
    result = compute_task_similarities(config, tmp_path / "similarity.json")
    assert len(result.problems) == 1
    assert result.problems[0].startswith("broken (visual similarity only): cannot read image")
    assert np.isnan(result.visual[2]).all()
    assert math.isfinite(result.visual[0, 1])
    # The class names still give the label similarity.
    assert np.isfinite(result.label).all()


def test_missing_task_gets_nan(image_tasks, tmp_path):
    config = similarity_config([image_tasks[0], image_tasks[2], tmp_path / "absent"], tmp_path / "study")
    result = compute_task_similarities(config, tmp_path / "similarity.json")
    assert result.problems[0].startswith("absent: task")
    assert np.isnan(result.visual[2]).all()
    assert np.isnan(result.label[2]).all()
    assert math.isfinite(result.label[0, 1])
