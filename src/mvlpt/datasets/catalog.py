"""The catalog of benchmark tasks: the 20 ELEVATER tasks and CoOp's 11 datasets.

Each task has a TaskSpec with its class names, prompt templates, metric and
the places its images can come from. Class names and templates come from the
clip-benchmark package (version 1.6.2, read from its installed JSON files)
where it has them, and otherwise from `tables.json` in this package, which
names the source of every table.

Names: a spec may carry a suite prefix, "elevater:" or "coop:". CoOp's
dataset class names, spelled exactly as CoOp's DATASET.NAME ("Caltech101",
"EuroSAT", "Food101"), always mean the CoOp dataset, so a list copied from
CoOp's configs gets CoOp's splits only. Any other bare name or alias, such as
ELEVATER's "oxford-iiit-pets" or clip-benchmark's "pets", is matched without
regard to case and means the ELEVATER task when one matches and the CoOp
dataset otherwise. So "caltech-101" and "caltech101" are ELEVATER's
Caltech-101, while "Caltech101" and "coop:caltech-101" are CoOp's split of
it. The bare name "mnist" stays the offline built-in task (see
`mvlpt.builtin`), so ELEVATER's MNIST is "elevater:mnist".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from mvlpt.tasks import TaskError

SUITES = ("elevater", "coop")
# Sources that `mvlpt data prepare --source` accepts; see mvlpt.datasets.prepare.
SOURCES = ("wds", "vision-datasets", "coop", "manual")

CLIP_BENCHMARK_VERSION = "1.6.2"
CLIP_BENCHMARK_INSTALL = f"pip install --no-deps clip-benchmark=={CLIP_BENCHMARK_VERSION}"
CLIP_BENCHMARK_CLASSNAMES = "en_classnames.json"
CLIP_BENCHMARK_TEMPLATES = "en_zeroshot_classification_templates.json"


@dataclass(frozen=True)
class TaskSpec:
    """Catalog entry of one benchmark task.

    `classnames` is the reference table: readers take the class names and
    their order from the data where the data defines them, and check them
    against this table. `table_source` names where `classnames` and
    `templates` come from. `sources` lists the `--source` values of
    `mvlpt data prepare` that can read this task, the default first.
    `coop_name` is CoOp's DATASET.NAME of a CoOp dataset, matched case-sensitively.
    """

    name: str
    title: str
    suite: str
    aliases: tuple[str, ...]
    # Left out of comparison and hashing: the name fields identify an entry, and lists do not hash.
    classnames: list[str] = field(repr=False, compare=False)
    templates: list[str] = field(repr=False, compare=False)
    metric: str
    multilabel: bool
    table_source: str
    wds_repo: str | None
    coop_dir: str | None
    elevater_name: str | None = None
    sources: tuple[str, ...] = ()
    coop_name: str | None = None

    @property
    def qualified_name(self) -> str:
        """Name with the suite prefix, unique over both suites, e.g. "coop:caltech-101"."""
        return f"{self.suite}:{self.name}"

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def task_name(self) -> str:
        """Name of the loaded Task: the bare name when it resolves to this entry, else the qualified name."""
        from mvlpt.builtin.registry import BUILTIN_TASKS

        if self.name not in BUILTIN_TASKS and find_entry(self.name) == (self.suite, self.name):
            return self.name
        return self.qualified_name


@dataclass(frozen=True)
class _Entry:
    """A catalog row before its tables are read: "cb:KEY" names a clip-benchmark table, "mvlpt:KEY" one of tables.json."""

    name: str
    title: str
    aliases: tuple[str, ...]
    classnames: str
    templates: str
    metric: str = "accuracy"
    multilabel: bool = False
    wds_repo: str | None = None
    elevater_name: str | None = None
    coop_dir: str | None = None
    # CoOp's DATASET.NAME, e.g. "Caltech101"; this exact spelling always names the CoOp dataset.
    coop_name: str | None = None
    # clip-benchmark class names to leave out, for CoOp's Caltech-101 which drops two classes.
    drop_classes: tuple[str, ...] = ()
    # (index, name) replacements that make repeated names unique, since a Task rejects repeated class names.
    rename_classes: tuple[tuple[int, str], ...] = ()
    sources: tuple[str, ...] = ("wds", "vision-datasets")


_WDS = "clip-benchmark/wds_"

# The 20 ELEVATER image-classification tasks, with the metrics ELEVATER reports.
_ELEVATER_ENTRIES = (
    _Entry("caltech-101", "Caltech-101", ("caltech101", "vtab/caltech101"), "cb:caltech101_vtab", "cb:caltech101",
           metric="mean_per_class_accuracy", wds_repo=_WDS + "vtab-caltech101", elevater_name="caltech-101"),
    _Entry("cifar-10", "CIFAR-10", ("cifar10",), "mvlpt:cifar10", "cb:cifar10",
           wds_repo=_WDS + "cifar10", elevater_name="cifar-10"),
    _Entry("cifar-100", "CIFAR-100", ("cifar100", "vtab/cifar100"), "mvlpt:cifar100", "cb:cifar100",
           wds_repo=_WDS + "vtab-cifar100", elevater_name="cifar-100"),
    _Entry("country-211", "Country-211", ("country211",), "cb:country211", "cb:country211",
           wds_repo=_WDS + "country211", elevater_name="country211"),
    _Entry("dtd", "Describable Textures (DTD)", ("vtab/dtd",), "mvlpt:dtd", "cb:dtd",
           wds_repo=_WDS + "vtab-dtd", elevater_name="dtd"),
    _Entry("eurosat", "EuroSAT", ("eurosat_clip", "vtab/eurosat"), "cb:eurosat", "cb:eurosat",
           wds_repo=_WDS + "vtab-eurosat", elevater_name="eurosat_clip"),
    _Entry("fer-2013", "FER-2013", ("fer2013",), "cb:fer2013", "cb:fer2013",
           wds_repo=_WDS + "fer2013", elevater_name="fer-2013"),
    _Entry("fgvc-aircraft", "FGVC-Aircraft", ("fgvc_aircraft", "fgvc-aircraft-2013b-variants102"),
           "mvlpt:fgvc_aircraft", "cb:fgvc_aircraft", metric="mean_per_class_accuracy",
           wds_repo=_WDS + "fgvc_aircraft", elevater_name="fgvc-aircraft-2013b-variants102"),
    _Entry("food-101", "Food-101", ("food101",), "mvlpt:food101", "cb:food101",
           wds_repo=_WDS + "food101", elevater_name="food-101"),
    _Entry("gtsrb", "GTSRB", (), "cb:gtsrb", "cb:gtsrb", wds_repo=_WDS + "gtsrb", elevater_name="gtsrb"),
    _Entry("hateful-memes", "Hateful Memes", ("hateful_memes", "hatefulmemes"), "mvlpt:hateful_memes",
           "mvlpt:hateful_memes", metric="roc_auc", elevater_name="hateful-memes",
           sources=("manual", "vision-datasets")),
    _Entry("kitti-distance", "KITTI distance", ("kitti_closest_vehicle_distance", "vtab/kitti_closest_vehicle_distance"),
           "cb:kitti_closest_vehicle_distance", "cb:kitti_closest_vehicle_distance",
           wds_repo=_WDS + "vtab-kitti_closest_vehicle_distance", elevater_name="kitti-distance"),
    _Entry("mnist", "MNIST", (), "cb:mnist", "cb:mnist", wds_repo=_WDS + "mnist", elevater_name="mnist"),
    _Entry("flowers-102", "Oxford Flowers-102", ("oxford-flower-102", "flowers", "flowers102", "vtab/flowers"),
           "cb:flowers", "cb:flowers", metric="mean_per_class_accuracy",
           wds_repo=_WDS + "vtab-flowers", elevater_name="oxford-flower-102"),
    _Entry("oxford-pets", "Oxford-IIIT Pets", ("oxford-iiit-pets", "pets", "vtab/pets"), "cb:pets", "cb:pets",
           metric="mean_per_class_accuracy", wds_repo=_WDS + "vtab-pets", elevater_name="oxford-iiit-pets"),
    _Entry("patch-camelyon", "PatchCamelyon", ("pcam", "vtab/pcam"), "cb:pcam", "cb:pcam",
           wds_repo=_WDS + "vtab-pcam", elevater_name="patch-camelyon"),
    _Entry("rendered-sst2", "Rendered SST-2", ("renderedsst2",), "mvlpt:rendered_sst2", "cb:renderedsst2",
           wds_repo=_WDS + "renderedsst2", elevater_name="rendered-sst2"),
    _Entry("resisc-45", "RESISC-45", ("resisc45", "resisc45_clip", "vtab/resisc45"), "mvlpt:resisc45", "cb:resisc45",
           wds_repo=_WDS + "vtab-resisc45", elevater_name="resisc45_clip"),
    _Entry("stanford-cars", "Stanford Cars", ("cars", "stanford_cars"), "mvlpt:stanford_cars", "cb:cars",
           wds_repo=_WDS + "cars", elevater_name="stanford-cars"),
    _Entry("voc-2007", "VOC 2007 classification", ("voc2007", "voc2007_multilabel", "voc-2007-classification"),
           "mvlpt:voc2007", "cb:voc2007_multilabel", metric="map_11point", multilabel=True,
           wds_repo=_WDS + "voc2007_multilabel", elevater_name="voc-2007-classification"),
)

# CoOp's 11 datasets. CoOp reports plain accuracy on all of them. Aliases are CoOp's dataset class names.
_COOP = ("coop",)
_COOP_ENTRIES = (
    # clip-benchmark's ImageNet table names two pairs of classes alike; the WordNet lemmas of
    # n04008634 ("projectile, missile") and n04355933 ("sunglass") tell them apart.
    _Entry("imagenet", "ImageNet", ("imagenet1k", "imagenet-1k"), "cb:imagenet1k", "cb:imagenet1k",
           coop_dir="imagenet", coop_name="ImageNet", rename_classes=((744, "projectile"), (836, "sunglass")), sources=_COOP),
    _Entry("caltech-101", "Caltech-101 (CoOp split)", ("caltech101",), "cb:caltech101", "cb:caltech101",
           coop_dir="caltech-101", coop_name="Caltech101", drop_classes=("background", "centered face"), sources=_COOP),
    _Entry("oxford-pets", "Oxford-IIIT Pets (CoOp split)", ("oxfordpets", "pets"), "cb:pets", "cb:pets",
           coop_dir="oxford_pets", coop_name="OxfordPets", sources=_COOP),
    _Entry("stanford-cars", "Stanford Cars (CoOp split)", ("stanfordcars", "cars"), "mvlpt:stanford_cars", "cb:cars",
           coop_dir="stanford_cars", coop_name="StanfordCars", sources=_COOP),
    _Entry("flowers-102", "Oxford Flowers-102 (CoOp split)", ("oxfordflowers", "flowers"), "cb:flowers", "cb:flowers",
           coop_dir="oxford_flowers", coop_name="OxfordFlowers", sources=_COOP),
    _Entry("food-101", "Food-101 (CoOp split)", ("food101",), "mvlpt:food101", "cb:food101",
           coop_dir="food-101", coop_name="Food101", sources=_COOP),
    _Entry("fgvc-aircraft", "FGVC-Aircraft (CoOp split)", ("fgvcaircraft", "fgvc_aircraft"), "mvlpt:fgvc_aircraft",
           "cb:fgvc_aircraft", coop_dir="fgvc_aircraft", coop_name="FGVCAircraft", sources=_COOP),
    _Entry("sun397", "SUN397", ("sun-397",), "mvlpt:sun397", "cb:sun397", coop_dir="sun397", coop_name="SUN397", sources=_COOP),
    _Entry("dtd", "Describable Textures (CoOp split)", ("describabletextures",), "mvlpt:dtd", "cb:dtd",
           coop_dir="dtd", coop_name="DescribableTextures", sources=_COOP),
    _Entry("eurosat", "EuroSAT (CoOp split)", (), "cb:eurosat", "cb:eurosat", coop_dir="eurosat", coop_name="EuroSAT", sources=_COOP),
    _Entry("ucf101", "UCF101 (middle video frames)", ("ucf-101",), "mvlpt:ucf101", "mvlpt:ucf101",
           coop_dir="ucf101", coop_name="UCF101", sources=_COOP),
)

_ENTRIES = {"elevater": _ELEVATER_ENTRIES, "coop": _COOP_ENTRIES}


def find_entry(name: str) -> tuple[str, str] | None:
    """Return (suite, canonical name) of the catalog task `name` refers to, or None, without reading any table.

    CoOp's exact DATASET.NAME spellings name CoOp datasets first; everything
    else is matched case-insensitively, ELEVATER before CoOp.
    """
    stripped = name.strip()
    for entry in _COOP_ENTRIES:
        if stripped == entry.coop_name:
            return "coop", entry.name

    text = stripped.lower()
    prefix, _, bare = text.rpartition(":")
    if prefix and prefix not in SUITES:
        return None

    suites = (prefix,) if prefix else SUITES
    for suite in suites:
        for entry in _ENTRIES[suite]:
            if bare == entry.name or bare in entry.aliases:
                return suite, entry.name
    return None


def is_catalog_name(name: str) -> bool:
    """Report whether `name` names a catalog task; cheap, reads no tables."""
    return find_entry(name) is not None


def lookup(name: str) -> TaskSpec:
    """Return the TaskSpec that `name` names: a canonical name or alias, optionally prefixed "elevater:" or "coop:"."""
    found = find_entry(name)
    if found is None:
        raise TaskError(
            f"unknown benchmark task '{name}'; ELEVATER tasks: {', '.join(e.name for e in _ELEVATER_ENTRIES)}; "
            f"CoOp datasets (prefix 'coop:' where ELEVATER has the same name, or use CoOp's exact DATASET.NAME "
            f"such as 'Caltech101'): {', '.join(e.name for e in _COOP_ENTRIES)}"
        )
    suite, canonical = found
    return _catalog()[suite][canonical]


def all_specs() -> list[TaskSpec]:
    """Return every catalog task: the ELEVATER tasks, then the CoOp datasets."""
    tables = _catalog()
    return [*tables["elevater"].values(), *tables["coop"].values()]


# Tables -----------------------------------------------------------------------------------


def __getattr__(attribute: str) -> dict[str, TaskSpec]:
    # ELEVATER_TASKS and COOP_TASKS are built on first use, so importing this
    # module works without clip-benchmark, e.g. for the built-in tasks.
    if attribute == "ELEVATER_TASKS":
        return _catalog()["elevater"]
    if attribute == "COOP_TASKS":
        return _catalog()["coop"]
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


@cache
def _catalog() -> dict[str, dict[str, TaskSpec]]:
    return {
        suite: {entry.name: _build_spec(suite, entry) for entry in entries} for suite, entries in _ENTRIES.items()
    }


def _build_spec(suite: str, entry: _Entry) -> TaskSpec:
    classnames, classnames_source = _read_classnames(entry.classnames)
    if entry.drop_classes:
        classnames = [classname for classname in classnames if classname not in entry.drop_classes]
        classnames_source += f" without {', '.join(repr(c) for c in entry.drop_classes)}"
    for index, replacement in entry.rename_classes:
        classnames[index] = replacement
    if entry.rename_classes:
        renamed = ", ".join(f"{index} as {replacement!r}" for index, replacement in entry.rename_classes)
        classnames_source += f", with classes {renamed}"
    templates, templates_source = _read_templates(entry.templates)

    return TaskSpec(
        name=entry.name,
        title=entry.title,
        suite=suite,
        aliases=entry.aliases,
        classnames=classnames,
        templates=templates,
        metric=entry.metric,
        multilabel=entry.multilabel,
        table_source=f"class names: {classnames_source}; templates: {templates_source}",
        wds_repo=entry.wds_repo,
        coop_dir=entry.coop_dir,
        elevater_name=entry.elevater_name,
        sources=entry.sources,
        coop_name=entry.coop_name,
    )


def _read_classnames(reference: str) -> tuple[list[str], str]:
    origin, _, key = reference.partition(":")
    if origin == "cb":
        return list(_clip_benchmark_table(CLIP_BENCHMARK_CLASSNAMES)[key]), _clip_benchmark_source(
            CLIP_BENCHMARK_CLASSNAMES, key
        )
    table = _package_tables()["classnames"][key]
    return list(table["names"]), table["source"]


def _read_templates(reference: str) -> tuple[list[str], str]:
    origin, _, key = reference.partition(":")
    if origin == "cb":
        # clip-benchmark marks the class name with "{c}"; mvlpt templates use "{}".
        templates = [template.replace("{c}", "{}") for template in _clip_benchmark_table(CLIP_BENCHMARK_TEMPLATES)[key]]
        return templates, _clip_benchmark_source(CLIP_BENCHMARK_TEMPLATES, key)
    table = _package_tables()["templates"][key]
    return list(table["templates"]), table["source"]


def _clip_benchmark_source(file_name: str, key: str) -> str:
    return f"clip-benchmark {CLIP_BENCHMARK_VERSION} {file_name} '{key}'"


@cache
def _clip_benchmark_table(file_name: str) -> dict[str, list[str]]:
    try:
        path = resources.files("clip_benchmark.datasets").joinpath(file_name)
        text = path.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise TaskError(
            f"the ELEVATER and CoOp class names and templates need the clip-benchmark package ({error}); "
            f"install it without its heavy dependencies: {CLIP_BENCHMARK_INSTALL}"
        ) from error
    return json.loads(text)


@cache
def _package_tables() -> dict:
    text = resources.files("mvlpt.datasets").joinpath("tables.json").read_text(encoding="utf-8")
    return json.loads(text)
