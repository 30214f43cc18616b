"""Built-in tasks "solar-defect" and "solar-type": solar-cell images from the PyPI package elpv-dataset.

Both tasks label the same 2,624 electroluminescence (EL) images of solar
cells, one by defect probability and one by cell type, and both use the same
split of the images. The package's files are read directly, because its
loader decodes all images at once.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mvlpt.builtin.common import (
    ProcessCache,
    match_key,
    open_grey_file,
    python_package_dir,
    seeded_cut,
)
from mvlpt.tasks import Sample, Task, TaskError

logger = logging.getLogger(__name__)

ELPV_DISTRIBUTION = "elpv-dataset"
ELPV_MODULE = "elpv_dataset"
ELPV_VERSION = "1.0.0.post1"
ELPV_INSTALL_COMMAND = "python3 -m pip install elpv-dataset==1.0.0.post1"
ELPV_LICENSE = "CC-BY-NC-SA-4.0"

# Class i is the defect probability i/3 of labels.csv.
DEFECT_CLASSNAMES = ["defect-free", "possibly defective", "likely defective", "defective"]
# labels.csv type column -> class name.
CELL_TYPES = {"mono": "monocrystalline", "poly": "polycrystalline"}
SOLAR_TEMPLATES = [
    "an electroluminescence image of a {} solar cell.",
    "an EL image of a {} solar cell.",
    "a black and white electroluminescence image of a {} photovoltaic cell.",
    "a close-up electroluminescence image of a {} cell from a solar module.",
]
# "test" takes len(group) // SOLAR_TEST_DIVISOR images of each (defect probability, cell type) group.
SOLAR_TEST_DIVISOR = 3

_ELPV_KEY = re.compile(r"images/cell[0-9]{4}\.png")


@dataclass(frozen=True)
class SolarCell:
    """One row of labels.csv: image path relative to the data folder, defect class and cell-type class."""

    key: str
    defect: int
    cell_type: int


def read_solar_labels(data_dir: Path) -> list[SolarCell]:
    """Parse labels.csv (whitespace-separated path, defect probability, type) in file order."""
    path = data_dir / "labels.csv"
    reinstall = f"reinstall with: {ELPV_INSTALL_COMMAND}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TaskError(f"cannot read {path}: {error}; {reinstall}") from error

    cells = []
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            key, probability_text, type_text = fields
            probability = float(probability_text)
        except ValueError as error:
            raise TaskError(f"{path}, line {line_number}: expected 'path probability type'; {reinstall}") from error

        defect = round(probability * 3)
        if not 0 <= defect <= 3 or not math.isclose(probability * 3, defect, abs_tol=1e-6):
            raise TaskError(f"{path}, line {line_number}: defect probability {probability} is not 0, 1/3, 2/3 or 1")
        if type_text not in CELL_TYPES:
            raise TaskError(f"{path}, line {line_number}: cell type '{type_text}' is not mono or poly")
        if _ELPV_KEY.fullmatch(key) is None:
            raise TaskError(f"{path}, line {line_number}: image path '{key}' is not of the form images/cellNNNN.png")
        cells.append(SolarCell(key, defect, list(CELL_TYPES).index(type_text)))
    return cells


_solar_cache: ProcessCache[list[SolarCell]] = ProcessCache()


@dataclass(frozen=True)
class SolarImageLoader:
    """Image loader for the solar tasks, with keys "images/cell<NNNN>.png" relative to the package's data folder."""

    data_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match_key(_ELPV_KEY, key, "solar-defect and solar-type", "images/cell<NNNN>.png, e.g. images/cell0001.png")
        return open_grey_file(self.data_dir / key)


def solar_split(cells: list[SolarCell]) -> dict[str, list[int]]:
    """Return the row indices of "test" and "train", shared by both solar tasks.

    Each (defect probability, cell type) group is shuffled with the built-in
    split seed, and its first third (rounded down) goes to "test".
    """
    splits: dict[str, list[int]] = {"train": [], "test": []}
    for defect in range(len(DEFECT_CLASSNAMES)):
        for cell_type in range(len(CELL_TYPES)):
            rows = [row for row, cell in enumerate(cells) if (cell.defect, cell.cell_type) == (defect, cell_type)]
            chosen = seeded_cut(
                rows,
                [("test", len(rows) // SOLAR_TEST_DIVISOR), ("train", None)],
                group=f"elpv group with defect class {defect} and type {list(CELL_TYPES)[cell_type]}",
                fix=f"reinstall with: {ELPV_INSTALL_COMMAND}",
            )
            for split_name, indices in chosen.items():
                splits[split_name].extend(indices)
    return {split_name: sorted(indices) for split_name, indices in splits.items()}


def _solar_task(name: str, label_field: str, classnames: list[str], metric: str) -> Task:
    package_dir = python_package_dir(name, ELPV_MODULE, ELPV_DISTRIBUTION, ELPV_VERSION, ELPV_INSTALL_COMMAND)
    data_dir = package_dir / "data"
    cells = _solar_cache.get(data_dir, read_solar_labels)

    splits: dict[str, list[Sample]] = {}
    for split_name, rows in solar_split(cells).items():
        splits[split_name] = [Sample(cells[row].key, getattr(cells[row], label_field)) for row in rows]

    return Task(
        name=name,
        classnames=list(classnames),
        templates=list(SOLAR_TEMPLATES),
        metric=metric,
        splits=splits,
        image_loader=SolarImageLoader(data_dir),
        source=f"PyPI package elpv-dataset {ELPV_VERSION} at {package_dir} (data licence {ELPV_LICENSE})",
    )


def load_solar_defect(root: Path) -> Task:
    """Build "solar-defect": four defect-probability classes, scored by mean per-class accuracy.

    The classes are badly imbalanced (1,508 / 295 / 106 / 715 images in
    version 1.0.0.post1), so plain accuracy would mostly reward the
    defect-free class. `root` is not used.
    """
    return _solar_task("solar-defect", "defect", DEFECT_CLASSNAMES, "mean_per_class_accuracy")


def load_solar_type(root: Path) -> Task:
    """Build "solar-type": monocrystalline or polycrystalline cells (1,074 / 1,550 images), scored by accuracy.

    `root` is not used.
    """
    return _solar_task("solar-type", "cell_type", list(CELL_TYPES.values()), "accuracy")
