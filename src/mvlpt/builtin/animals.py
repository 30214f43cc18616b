"""Built-in task "animals": animal silhouettes from the PyPI package animal-mnist 0.4.

The package stores its images and labels as gzipped pickles. A pickle can
call any importable function while it loads, so they are read with
`ArrayUnpickler`, which rebuilds numpy arrays and rejects every other global.
The package's own loader module imports TensorFlow and is never imported.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvlpt.builtin.common import (
    ProcessCache,
    add_samples,
    grey_image,
    match_key,
    python_package_dir,
    seeded_cut,
)
from mvlpt.tasks import ImageLoadError, Sample, Task, TaskError

logger = logging.getLogger(__name__)

ANIMALS_DISTRIBUTION = "animal-mnist"
ANIMALS_MODULE = "animal_mnist"
ANIMALS_VERSION = "0.4"
# --no-deps: the package declares TensorFlow and pandas, which reading the data does not need.
ANIMALS_INSTALL_COMMAND = "python3 -m pip install --no-deps animal-mnist==0.4"
ANIMALS_IMAGE_FILE = Path("data/Animal_MNIST/animal_data_version_3.gz")
ANIMALS_LABEL_FILE = Path("data/Animal_MNIST/animal_label_version_3.gz")
# Label order of the package's label array (checked by viewing each class's images).
ANIMALS_CLASSNAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
ANIMALS_TEMPLATES = [
    "a silhouette of a {}.",
    "a black and white silhouette of a {}.",
    "a white silhouette of a {} on a black background.",
    "a low resolution silhouette of a {}.",
    "a small black and white picture of a {}.",
]
ANIMALS_IMAGE_SIZE = 28
ANIMALS_TEST_PER_CLASS = 150
ANIMALS_TRAIN_PER_CLASS = 100

_ANIMALS_KEY = re.compile(r"([a-z]+)/([0-9]+)")


def _array_reconstructor() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # numpy 1.x
    return _reconstruct


# (module, name) pairs that a pickle of a plain numpy array refers to. Pickles
# written by numpy 1.x name numpy.core, those written by numpy 2 numpy._core.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _array_reconstructor,
    ("numpy._core.multiarray", "_reconstruct"): _array_reconstructor,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and raises UnpicklingError on any other global."""

    def find_class(self, module: str, name: str) -> object:
        resolve = _ARRAY_GLOBALS.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"pickle refers to {module}.{name}, which is not allowed; only numpy arrays "
                "(numpy ndarray, dtype and _reconstruct) may be loaded"
            )
        return resolve()


def load_array_pickle(path: Path) -> np.ndarray:
    """Read a gzipped pickle of one numpy array with ArrayUnpickler.

    Raises pickle.UnpicklingError when the pickle refers to any other global
    or contains something other than an array of numbers, and OSError or EOFError
    when the file cannot be read.
    """
    with gzip.open(path, "rb") as handle:
        value = ArrayUnpickler(handle).load()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"{path} does not contain a numeric numpy array but {type(value).__name__}")
    return value


@dataclass(frozen=True)
class AnimalArrays:
    """Decoded package data: uint8 images (count, 28, 28), labels (count,), and per class its rows."""

    images: np.ndarray
    labels: np.ndarray
    class_rows: list[np.ndarray]


def read_animal_arrays(package_dir: Path) -> AnimalArrays:
    """Read and check the image and label pickles of the animal-mnist package in `package_dir`."""
    reinstall = f"reinstall with: {ANIMALS_INSTALL_COMMAND}"
    arrays = []
    for relative in (ANIMALS_IMAGE_FILE, ANIMALS_LABEL_FILE):
        path = package_dir / relative
        try:
            arrays.append(load_array_pickle(path))
        except (pickle.UnpicklingError, OSError, EOFError, ValueError) as error:
            raise TaskError(f"cannot read animal-mnist file {path}: {error}; {reinstall}") from error
    images, labels = arrays

    if images.ndim != 3 or images.shape[1:] != (ANIMALS_IMAGE_SIZE, ANIMALS_IMAGE_SIZE) or images.dtype != np.uint8:
        raise TaskError(
            f"animal-mnist images have shape {images.shape} and type {images.dtype}, "
            f"expected (count, 28, 28) uint8; {reinstall}"
        )
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or not np.isin(labels, np.arange(len(ANIMALS_CLASSNAMES))).all():
        raise TaskError(f"animal-mnist labels are not one class index 0..9 per image; {reinstall}")

    class_rows = [np.flatnonzero(labels == label) for label in range(len(ANIMALS_CLASSNAMES))]
    return AnimalArrays(images=images, labels=labels.astype(np.int64), class_rows=class_rows)


def first_copies(images: np.ndarray) -> np.ndarray:
    """Return a boolean mask that is True for the first row of every distinct image and False for repeats."""
    seen: set[bytes] = set()
    keep = np.zeros(len(images), dtype=bool)
    for row, image in enumerate(images):
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            keep[row] = True
    return keep


_animals_cache: ProcessCache[AnimalArrays] = ProcessCache()


@dataclass(frozen=True)
class AnimalImageLoader:
    """Image loader for "animals", with keys "<class>/<index among that class's rows>", e.g. "zebra/17"."""

    package_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match = match_key(_ANIMALS_KEY, key, "animals", "<class>/<index>, e.g. zebra/17")
        classname, index = match.group(1), int(match.group(2))
        if classname not in ANIMALS_CLASSNAMES:
            raise ImageLoadError(
                f"animals image key '{key}' names unknown class '{classname}'; "
                f"classes: {', '.join(ANIMALS_CLASSNAMES)}"
            )

        arrays = _animals_cache.get(self.package_dir, read_animal_arrays)
        rows = arrays.class_rows[ANIMALS_CLASSNAMES.index(classname)]
        if index >= len(rows):
            raise ImageLoadError(
                f"animals image key '{key}' is out of range; class '{classname}' has {len(rows)} images"
            )
        return grey_image(arrays.images[rows[index]])


def load_animals(root: Path) -> Task:
    """Build the "animals" task from the installed animal-mnist package (`root` is not used).

    An image that occurs more than once in the package (284 in version 0.4)
    is kept only at its first row, so no image can land in two splits. Per
    class, the remaining indices are shuffled with the built-in split seed and
    cut into 150 test, 100 train and the rest pretrain.
    """
    package_dir = python_package_dir(
        "animals", ANIMALS_MODULE, ANIMALS_DISTRIBUTION, ANIMALS_VERSION, ANIMALS_INSTALL_COMMAND
    )
    arrays = _animals_cache.get(package_dir, read_animal_arrays)
    keep = first_copies(arrays.images)

    splits: dict[str, list[Sample]] = {}
    for label, classname in enumerate(ANIMALS_CLASSNAMES):
        rows = arrays.class_rows[label]
        unique_indices = np.flatnonzero(keep[rows]).tolist()
        chosen = seeded_cut(
            unique_indices,
            [("test", ANIMALS_TEST_PER_CLASS), ("train", ANIMALS_TRAIN_PER_CLASS), ("pretrain", None)],
            group=f"animals class '{classname}'",
            fix=f"reinstall with: {ANIMALS_INSTALL_COMMAND}",
        )
        add_samples(splits, chosen, label, lambda index, classname=classname: f"{classname}/{index}")

    return Task(
        name="animals",
        classnames=list(ANIMALS_CLASSNAMES),
        templates=list(ANIMALS_TEMPLATES),
        metric="accuracy",
        splits={name: splits[name] for name in ("train", "test", "pretrain")},
        image_loader=AnimalImageLoader(package_dir),
        source=f"PyPI package animal-mnist {ANIMALS_VERSION} at {package_dir}",
    )
