"""Built-in tasks "faces" and "textures": images bundled with scikit-image.

The files in scikit-image's data folder are read directly. skimage.data's
own functions fall back to downloading a file that is missing, and nothing
here may download.
"""

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

SKIMAGE_DISTRIBUTION = "scikit-image"
SKIMAGE_MODULE = "skimage"
SKIMAGE_INSTALL_COMMAND = "python3 -m pip install 'scikit-image>=0.26'"

# lfw_subset.npy: 200 images of 25 x 25 pixels, floats in 0..1. The first 100
# are faces from the LFW dataset and the last 100 are crops of the background
# of the same photos.
FACES_FILE = "lfw_subset.npy"
FACES_CLASSNAMES = ["face", "background"]
FACES_PER_CLASS = 100
FACES_IMAGE_SIZE = 25
FACES_TEST_PER_CLASS = 50
FACES_TRAIN_PER_CLASS = 50
FACES_TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a small cropped photo of a {}.",
]
_FACES_KEY = re.compile(r"(face|background)/([0-9]+)")

# One 512 x 512 greyscale photo per class, cut into an 8 x 8 grid of
# non-overlapping 64 x 64 patches.
TEXTURES_CLASSNAMES = ["brick", "grass", "gravel"]
TEXTURES_PHOTO_SIZE = 512
TEXTURES_PATCH_SIZE = 64
TEXTURES_GRID = TEXTURES_PHOTO_SIZE // TEXTURES_PATCH_SIZE
TEXTURES_TEST_PER_CLASS = 40
TEXTURES_TRAIN_PER_CLASS = 24
TEXTURES_TEMPLATES = [
    "a photo of a {} texture.",
    "a close-up photo of {}.",
    "a black and white photo of {}.",
    "a cropped photo of a {} surface.",
]
_TEXTURES_KEY = re.compile(r"(brick|grass|gravel)/r([0-9]+)c([0-9]+)")


def skimage_data_dir(task: str) -> Path:
    """Return scikit-image's data folder; raises SourceMissingError when scikit-image is not installed."""
    package_dir = python_package_dir(task, SKIMAGE_MODULE, SKIMAGE_DISTRIBUTION, None, SKIMAGE_INSTALL_COMMAND)
    return package_dir / "data"


def _missing_file_error(path: Path) -> TaskError:
    return TaskError(
        f"{path} not found or unreadable; this scikit-image version does not bundle it, "
        f"so install one that does with: {SKIMAGE_INSTALL_COMMAND}"
    )


def read_faces(data_dir: Path) -> np.ndarray:
    """Return the LFW subset as uint8 images of shape (200, 25, 25), faces first."""
    path = data_dir / FACES_FILE
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise _missing_file_error(path) from error

    expected_shape = (2 * FACES_PER_CLASS, FACES_IMAGE_SIZE, FACES_IMAGE_SIZE)
    if values.shape != expected_shape or values.dtype.kind != "f" or values.min() < 0.0 or values.max() > 1.0:
        raise TaskError(
            f"{path} contains {values.dtype} values of shape {values.shape}, expected floats in 0..1 "
            f"of shape {expected_shape}; reinstall with: {SKIMAGE_INSTALL_COMMAND}"
        )
    return np.rint(values * 255.0).astype(np.uint8)


def read_texture_photos(data_dir: Path) -> dict[str, np.ndarray]:
    """Return the brick, grass and gravel photos as uint8 arrays of shape (512, 512)."""
    photos = {}
    for classname in TEXTURES_CLASSNAMES:
        path = data_dir / f"{classname}.png"
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L"))
        except OSError as error:
            raise _missing_file_error(path) from error
        if pixels.shape != (TEXTURES_PHOTO_SIZE, TEXTURES_PHOTO_SIZE):
            raise TaskError(f"{path} has {pixels.shape[1]} x {pixels.shape[0]} pixels, expected 512 x 512")
        photos[classname] = pixels
    return photos


_faces_cache: ProcessCache[np.ndarray] = ProcessCache()
_textures_cache: ProcessCache[dict[str, np.ndarray]] = ProcessCache()


@dataclass(frozen=True)
class FacesImageLoader:
    """Image loader for "faces", with keys "face/<i>" (row i) and "background/<i>" (row 100 + i), i in 0..99."""

    data_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match = match_key(_FACES_KEY, key, "faces", "face/<index> or background/<index>, index 0..99")
        label, index = FACES_CLASSNAMES.index(match.group(1)), int(match.group(2))
        if index >= FACES_PER_CLASS:
            raise ImageLoadError(f"faces image key '{key}' is out of range; each class has {FACES_PER_CLASS} images")
        return grey_image(_faces_cache.get(self.data_dir, read_faces)[label * FACES_PER_CLASS + index])


@dataclass(frozen=True)
class TexturesImageLoader:
    """Image loader for "textures", with keys "<class>/r<row>c<column>" naming a patch of the 8 x 8 grid."""

    data_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match = match_key(_TEXTURES_KEY, key, "textures", "<class>/r<row>c<column>, e.g. brick/r3c5")
        row, column = int(match.group(2)), int(match.group(3))
        if row >= TEXTURES_GRID or column >= TEXTURES_GRID:
            raise ImageLoadError(f"textures image key '{key}' is out of range; rows and columns are 0..7")

        photo = _textures_cache.get(self.data_dir, read_texture_photos)[match.group(1)]
        top, left = row * TEXTURES_PATCH_SIZE, column * TEXTURES_PATCH_SIZE
        return grey_image(photo[top : top + TEXTURES_PATCH_SIZE, left : left + TEXTURES_PATCH_SIZE])


def load_faces(root: Path) -> Task:
    """Build "faces" (face or background) from scikit-image's LFW subset; `root` is not used.

    Per class, the 100 images are shuffled with the built-in split seed and cut
    into 50 test and 50 train images.
    """
    data_dir = skimage_data_dir("faces")
    _faces_cache.get(data_dir, read_faces)

    splits: dict[str, list[Sample]] = {}
    for label, classname in enumerate(FACES_CLASSNAMES):
        chosen = seeded_cut(
            range(FACES_PER_CLASS),
            [("test", FACES_TEST_PER_CLASS), ("train", FACES_TRAIN_PER_CLASS)],
            group=f"faces class '{classname}'",
            fix=f"reinstall with: {SKIMAGE_INSTALL_COMMAND}",
        )
        add_samples(splits, chosen, label, lambda index, classname=classname: f"{classname}/{index}")

    return Task(
        name="faces",
        classnames=list(FACES_CLASSNAMES),
        templates=list(FACES_TEMPLATES),
        metric="accuracy",
        splits={name: splits[name] for name in ("train", "test")},
        image_loader=FacesImageLoader(data_dir),
        source=f"scikit-image {data_dir / FACES_FILE}",
    )


def load_textures(root: Path) -> Task:
    """Build "textures" (brick, grass, gravel) from scikit-image's texture photos; `root` is not used.

    Per class, the 64 patches (index = 8 * row + column) are shuffled with the
    built-in split seed and cut into 40 test and 24 train patches. Patches of
    one photo share its lighting, camera and surface, so test patches are not
    independent of train patches.
    """
    data_dir = skimage_data_dir("textures")
    _textures_cache.get(data_dir, read_texture_photos)

    def key(classname: str, index: int) -> str:
        row, column = divmod(index, TEXTURES_GRID)
        return f"{classname}/r{row}c{column}"

    splits: dict[str, list[Sample]] = {}
    for label, classname in enumerate(TEXTURES_CLASSNAMES):
        chosen = seeded_cut(
            range(TEXTURES_GRID * TEXTURES_GRID),
            [("test", TEXTURES_TEST_PER_CLASS), ("train", TEXTURES_TRAIN_PER_CLASS)],
            group=f"textures class '{classname}'",
            fix=f"reinstall with: {SKIMAGE_INSTALL_COMMAND}",
        )
        add_samples(splits, chosen, label, lambda index, classname=classname: key(classname, index))

    return Task(
        name="textures",
        classnames=list(TEXTURES_CLASSNAMES),
        templates=list(TEXTURES_TEMPLATES),
        metric="accuracy",
        splits={name: splits[name] for name in ("train", "test")},
        image_loader=TexturesImageLoader(data_dir),
        source=f"scikit-image {data_dir} (brick.png, grass.png, gravel.png)",
    )
