"""Built-in task "digits": scikit-learn's 8 x 8 handwritten digits (`sklearn.datasets.load_digits`)."""

from __future__ import annotations

import logging
import re
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

DIGITS_INSTALL_COMMAND = "python3 -m pip install 'scikit-learn>=1.4'"
DIGITS_IMAGE_SIZE = 8
# load_digits gives ink counts 0..16 per pixel (on-pixels in a 4 x 4 block).
DIGITS_MAX_VALUE = 16
DIGITS_TEST_PER_CLASS = 50
DIGITS_TRAIN_PER_CLASS = 30
DIGITS_TEMPLATES = [
    'a photo of the digit "{}".',
    'a low resolution image of the number "{}".',
    'a blurry pixelated image of the digit "{}".',
    'a tiny black and white picture of the handwritten number "{}".',
]
_DIGITS_KEY = re.compile(r"d([0-9])/([0-9]+)")


@dataclass(frozen=True)
class DigitArrays:
    """load_digits() as uint8 images (count, 8, 8) scaled to 0..255, and labels (count,)."""

    images: np.ndarray
    labels: np.ndarray


def read_digits(package_dir: Path) -> DigitArrays:
    """Load scikit-learn's digits from the installed scikit-learn in `package_dir`."""
    # Imported on first use, because importing sklearn.datasets takes about a second.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if values.ndim != 3 or values.shape[1:] != (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE) or labels.shape != (len(values),):
        raise TaskError(f"load_digits() returned images of shape {values.shape}, expected (count, 8, 8)")
    if values.min() < 0 or values.max() > DIGITS_MAX_VALUE:
        raise TaskError(f"load_digits() returned pixel values outside 0..{DIGITS_MAX_VALUE}")

    images = np.rint(values * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)
    return DigitArrays(images=images, labels=labels)


_digits_cache: ProcessCache[DigitArrays] = ProcessCache()


@dataclass(frozen=True)
class DigitsImageLoader:
    """Image loader for "digits", with keys "d<digit>/<row of load_digits()>", e.g. "d3/1204"."""

    package_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match = match_key(_DIGITS_KEY, key, "digits", "d<digit>/<row>, e.g. d3/3")
        digit, row = int(match.group(1)), int(match.group(2))
        arrays = _digits_cache.get(self.package_dir, read_digits)
        if row >= len(arrays.images) or arrays.labels[row] != digit:
            raise ImageLoadError(f"digits image key '{key}' names no image: row {row} is not a {digit}")
        return grey_image(arrays.images[row])


def load_digits_task(root: Path) -> Task:
    """Build "digits" from scikit-learn's bundled digits; `root` is not used.

    Per digit, the rows are shuffled with the built-in split seed and cut into
    50 test, 30 train and the rest pretrain.
    """
    package_dir = python_package_dir("digits", "sklearn", "scikit-learn", None, DIGITS_INSTALL_COMMAND)
    arrays = _digits_cache.get(package_dir, read_digits)

    splits: dict[str, list[Sample]] = {}
    for digit in range(10):
        chosen = seeded_cut(
            np.flatnonzero(arrays.labels == digit).tolist(),
            [("test", DIGITS_TEST_PER_CLASS), ("train", DIGITS_TRAIN_PER_CLASS), ("pretrain", None)],
            group=f"digits class {digit}",
            fix=f"reinstall with: {DIGITS_INSTALL_COMMAND}",
        )
        add_samples(splits, chosen, digit, lambda row, digit=digit: f"d{digit}/{row}")

    return Task(
        name="digits",
        classnames=[str(digit) for digit in range(10)],
        templates=list(DIGITS_TEMPLATES),
        metric="accuracy",
        splits={name: splits[name] for name in ("train", "test", "pretrain")},
        image_loader=DigitsImageLoader(package_dir),
        source=f"scikit-learn load_digits() at {package_dir}",
    )
