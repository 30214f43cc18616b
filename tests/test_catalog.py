"""The ELEVATER and CoOp catalog: complete tables, metrics and name resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvlpt.datasets import catalog
from mvlpt.datasets.catalog import COOP_TASKS, ELEVATER_TASKS, lookup
from mvlpt.tasks import Sample, Task, TaskError

# Class counts of ELEVATER's datasets (Elevater_Toolkit_IC vision_datasets.json). ELEVATER's
# Caltech-101 keeps the background class, so it has 102.
ELEVATER_CLASS_COUNTS = {
    "caltech-101": 102,
    "cifar-10": 10,
    "cifar-100": 100,
    "country-211": 211,
    "dtd": 47,
    "eurosat": 10,
    "fer-2013": 7,
    "fgvc-aircraft": 100,
    "food-101": 101,
    "gtsrb": 43,
    "hateful-memes": 2,
    "kitti-distance": 4,
    "mnist": 10,
    "flowers-102": 102,
    "oxford-pets": 37,
    "patch-camelyon": 2,
    "rendered-sst2": 2,
    "resisc-45": 45,
    "stanford-cars": 196,
    "voc-2007": 20,
}

# CoOp's datasets; its Caltech-101 drops the background and easy-faces classes.
COOP_CLASS_COUNTS = {
    "imagenet": 1000,
    "caltech-101": 100,
    "oxford-pets": 37,
    "stanford-cars": 196,
    "flowers-102": 102,
    "food-101": 101,
    "fgvc-aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
}

MEAN_PER_CLASS = {"caltech-101", "fgvc-aircraft", "flowers-102", "oxford-pets"}


def test_elevater_tables_complete():
    assert {name: spec.num_classes for name, spec in ELEVATER_TASKS.items()} == ELEVATER_CLASS_COUNTS


def test_coop_tables_complete():
    assert {name: spec.num_classes for name, spec in COOP_TASKS.items()} == COOP_CLASS_COUNTS


@pytest.mark.parametrize("spec", catalog.all_specs(), ids=lambda spec: spec.qualified_name)
def test_spec_tables_valid(spec):
    assert len(set(spec.classnames)) == spec.num_classes
    assert all(name.strip() for name in spec.classnames)
    assert spec.templates
    for template in spec.templates:
        assert template.count("{}") == 1, template
        assert "{c}" not in template
    assert spec.table_source.startswith("class names: ")
    assert "templates: " in spec.table_source
    assert spec.sources


@pytest.mark.parametrize("spec", catalog.all_specs(), ids=lambda spec: spec.qualified_name)
def test_spec_builds_valid_task(spec):
    labels = [0, 1] if spec.multilabel else []
    sample = Sample("image.png", 0, tuple(labels[1:]))
    task = Task(
        name=spec.task_name,
        classnames=spec.classnames,
        templates=spec.templates,
        metric=spec.metric,
        splits={"train": [sample], "test": [sample]},
        image_loader=lambda key: None,
        multilabel=spec.multilabel,
    )
    assert task.num_classes == spec.num_classes


def test_elevater_metrics():
    for name, spec in ELEVATER_TASKS.items():
        if name in MEAN_PER_CLASS:
            assert spec.metric == "mean_per_class_accuracy", name
        elif name == "voc-2007":
            assert spec.metric == "map_11point"
            assert spec.multilabel
        elif name == "hateful-memes":
            assert spec.metric == "roc_auc"
        else:
            assert spec.metric == "accuracy", name
    assert sum(spec.multilabel for spec in catalog.all_specs()) == 1


def test_coop_metrics_are_accuracy():
    assert {spec.metric for spec in COOP_TASKS.values()} == {"accuracy"}


def test_sources_of_tables_named():
    assert "clip-benchmark 1.6.2 en_classnames.json 'caltech101_vtab'" in ELEVATER_TASKS["caltech-101"].table_source
    assert "OpenAI CLIP repository" in ELEVATER_TASKS["cifar-100"].table_source
    assert "templates: written for mvlpt" in ELEVATER_TASKS["hateful-memes"].table_source
    assert "without 'background', 'centered face'" in COOP_TASKS["caltech-101"].table_source


def test_wds_repositories_and_coop_folders():
    for name, spec in ELEVATER_TASKS.items():
        if name == "hateful-memes":
            assert spec.wds_repo is None
            assert spec.sources[0] == "manual"
        else:
            assert spec.wds_repo.startswith("clip-benchmark/wds_"), name
            assert spec.sources[0] == "wds"
        assert spec.coop_dir is None
        assert spec.elevater_name
    for spec in COOP_TASKS.values():
        assert spec.coop_dir
        assert spec.sources == ("coop",)
    assert ELEVATER_TASKS["voc-2007"].wds_repo == "clip-benchmark/wds_voc2007_multilabel"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar-10", "elevater:cifar-10"),
        ("CIFAR10", "elevater:cifar-10"),
        ("oxford-iiit-pets", "elevater:oxford-pets"),
        ("vtab/pets", "elevater:oxford-pets"),
        ("resisc45_clip", "elevater:resisc-45"),
        ("voc-2007-classification", "elevater:voc-2007"),
        ("caltech-101", "elevater:caltech-101"),
        ("coop:caltech-101", "coop:caltech-101"),
        ("coop:Caltech101", "coop:caltech-101"),
        ("elevater:mnist", "elevater:mnist"),
        ("mnist", "elevater:mnist"),
        ("imagenet", "coop:imagenet"),
        ("OxfordPets", "coop:oxford-pets"),
        ("DescribableTextures", "coop:dtd"),
        ("sun397", "coop:sun397"),
    ],
)
def test_lookup_names_and_aliases(name, expected):
    assert lookup(name).qualified_name == expected


def test_task_names_resolve_back():
    # The loaded Task's name, used in run directories, must name the same entry again.
    for spec in catalog.all_specs():
        assert lookup(spec.task_name) == spec
    assert ELEVATER_TASKS["caltech-101"].task_name == "caltech-101"
    assert COOP_TASKS["caltech-101"].task_name == "coop:caltech-101"
    assert ELEVATER_TASKS["mnist"].task_name == "elevater:mnist"
    assert COOP_TASKS["ucf101"].task_name == "ucf101"


def test_aliases_unique_within_suite():
    for suite in catalog.SUITES:
        names = [name for spec in catalog.all_specs() if spec.suite == suite for name in (spec.name, *spec.aliases)]
        assert len(names) == len(set(names)), suite


def test_unknown_name_lists_tasks():
    with pytest.raises(TaskError, match="unknown benchmark task 'cifar-11'.*cifar-10.*ucf101"):
        lookup("cifar-11")
    with pytest.raises(TaskError, match="unknown benchmark task"):
        lookup("vtab:cifar-10")


def test_is_catalog_name_reads_no_tables(monkeypatch):
    monkeypatch.setattr(catalog, "_catalog", lambda: pytest.fail("tables were read"))
    assert catalog.is_catalog_name("coop:dtd")
    assert catalog.is_catalog_name("elevater:mnist")
    assert not catalog.is_catalog_name("data/colours")
    assert not catalog.is_catalog_name("coop:cifar-10")


def test_missing_clip_benchmark_names_install(monkeypatch):
    def missing(package):
        raise ModuleNotFoundError(f"No module named '{package}'")

    catalog._clip_benchmark_table.cache_clear()
    monkeypatch.setattr(catalog.resources, "files", missing)
    try:
        with pytest.raises(TaskError, match="pip install --no-deps clip-benchmark==1.6.2"):
            catalog._clip_benchmark_table(catalog.CLIP_BENCHMARK_CLASSNAMES)
    finally:
        catalog._clip_benchmark_table.cache_clear()


def test_elevater_config_names_catalog_tasks():
    from mvlpt.pipeline import load_pipeline_config

    config = load_pipeline_config(Path(__file__).parent.parent / "configs" / "elevater.yaml", [])

    targets = [lookup(name) for name in config.target_tasks]
    sources = [lookup(name) for name in config.source_tasks]
    assert sorted(spec.name for spec in targets) == sorted(ELEVATER_TASKS)
    assert all(spec.suite == "elevater" for spec in targets)
    assert sorted(spec.name for spec in sources) == sorted(COOP_TASKS)
    assert all(spec.suite == "coop" for spec in sources)
    assert all(name == lookup(name).task_name for name in [*config.target_tasks, *config.source_tasks])
    assert config.shots == [1, 5, 20]
    assert config.seeds == [0, 1, 2]  # ELEVATER numbers its few-shot draws 0, 1, 2
    assert config.base["backbone"] == {"model": "ViT-B-16", "pretrained": "openai"}


def test_specs_hash_and_compare():
    specs = catalog.all_specs()
    assert len(set(specs)) == 31
    assert lookup("cifar10") == ELEVATER_TASKS["cifar-10"]
    assert ELEVATER_TASKS["dtd"] != COOP_TASKS["dtd"]
