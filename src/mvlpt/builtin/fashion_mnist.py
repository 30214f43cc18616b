"""Built-in task "fashion-mnist": clothing photos from the Debian package dataset-fashion-mnist."""

from __future__ import annotations

import gzip
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvlpt.builtin.common import (
    MAKE_DATA_HINT,
    ProcessCache,
    SourceMissingError,
    add_samples,
    grey_image,
    match_key,
    seeded_cut,
)
from mvlpt.tasks import ImageLoadError, Sample, Task, TaskError

logger = logging.getLogger(__name__)

FASHION_INSTALL_COMMAND = "apt-get update && apt-get install -y dataset-fashion-mnist"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSNAMES = [
    "t-shirt or top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
FASHION_TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a product photo of a {}.",
    "a photo of a {}, a fashion item.",
]
FASHION_IMAGE_SIZE = 28

# The 70,000 images are pooled and a fixed subset is drawn per class, so the
# task stays small enough for runs on a CPU.
FASHION_TEST_PER_CLASS = 200
FASHION_TRAIN_PER_CLASS = 100
FASHION_PRETRAIN_PER_CLASS = 500

# Key prefix -> (image file, label file) of the two halves of the original release.
FASHION_PARTS = {
    "train-images": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k-images": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_KEY = re.compile(r"(train-images|t10k-images)/([0-9]+)")
_IDX_UNSIGNED_BYTE = 0x08

# Per data folder: key prefix -> (images of shape (count, 28, 28), labels of shape (count,)).
_fashion_cache: ProcessCache[dict[str, tuple[np.ndarray, np.ndarray]]] = ProcessCache()


def fashion_data_dir(root: Path) -> Path | None:
    """Return the folder with the four Fashion-MNIST IDX files, or None when none has them all.

    `<root>/fashion-mnist` is tried first, for machines without the Debian
    package, then the Debian package's folder.
    """
    for folder in (root / "fashion-mnist", FASHION_DEBIAN_DIR):
        if all((folder / name).is_file() for files in FASHION_PARTS.values() for name in files):
            return folder
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes into an array of the shape its header gives."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as error:
        raise TaskError(f"cannot read IDX file {path}: {error}; reinstall with: {FASHION_INSTALL_COMMAND}") from error

    # Header: two zero bytes, the element type, the number of dimensions, then
    # one big-endian uint32 per dimension.
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != _IDX_UNSIGNED_BYTE:
        raise TaskError(
            f"{path} is not an IDX file of unsigned bytes; reinstall with: {FASHION_INSTALL_COMMAND}"
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    if len(raw) - header_size != int(np.prod(shape)):
        raise TaskError(
            f"IDX file {path} has {len(raw) - header_size} data bytes but its header gives the shape {shape}; "
            f"reinstall with: {FASHION_INSTALL_COMMAND}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_fashion_parts(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = {}
    for prefix, (image_file, label_file) in FASHION_PARTS.items():
        images = read_idx(data_dir / image_file)
        labels = read_idx(data_dir / label_file)
        if images.ndim != 3 or images.shape[1:] != (FASHION_IMAGE_SIZE, FASHION_IMAGE_SIZE):
            raise TaskError(f"{data_dir / image_file} contains images of shape {images.shape[1:]}, expected 28 x 28")
        if labels.shape != (len(images),) or labels.max(initial=0) >= len(FASHION_CLASSNAMES):
            raise TaskError(
                f"{data_dir / label_file} does not contain one label in 0..9 per image of {data_dir / image_file}"
            )
        parts[prefix] = (images, labels)
    return parts


@dataclass(frozen=True)
class FashionImageLoader:
    """Image loader for "fashion-mnist", with keys "<train-images|t10k-images>/<row in that file>"."""

    data_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match = match_key(_FASHION_KEY, key, "fashion-mnist", "train-images/<row> or t10k-images/<row>")
        images, _ = _fashion_cache.get(self.data_dir, _read_fashion_parts)[match.group(1)]
        row = int(match.group(2))
        if row >= len(images):
            raise ImageLoadError(f"Fashion-MNIST image key '{key}' is out of range; the file has {len(images)} images")
        return grey_image(images[row])


def load_fashion_mnist(root: Path) -> Task:
    """Build the "fashion-mnist" task from the IDX files of the Debian package dataset-fashion-mnist.

    Both halves of the release are pooled (train rows first). Per class, the
    pooled indices are shuffled with the built-in split seed and cut into 200
    test, 100 train and 500 pretrain images, and the rest is not used.
    """
    data_dir = fashion_data_dir(root)
    if data_dir is None:
        raise SourceMissingError(
            f"built-in task 'fashion-mnist' needs the Debian package dataset-fashion-mnist, not found in "
            f"{FASHION_DEBIAN_DIR} or {root / 'fashion-mnist'}; install it with: {FASHION_INSTALL_COMMAND} "
            f"({MAKE_DATA_HINT}), or copy its four .gz IDX files into {root / 'fashion-mnist'}"
        )

    parts = _fashion_cache.get(data_dir, _read_fashion_parts)
    prefixes = list(FASHION_PARTS)
    pooled_labels = np.concatenate([parts[prefix][1] for prefix in prefixes])
    first_t10k_index = len(parts[prefixes[0]][1])

    def key(index: int) -> str:
        if index < first_t10k_index:
            return f"{prefixes[0]}/{index}"
        return f"{prefixes[1]}/{index - first_t10k_index}"

    splits: dict[str, list[Sample]] = {}
    for label, classname in enumerate(FASHION_CLASSNAMES):
        chosen = seeded_cut(
            np.flatnonzero(pooled_labels == label).tolist(),
            [
                ("test", FASHION_TEST_PER_CLASS),
                ("train", FASHION_TRAIN_PER_CLASS),
                ("pretrain", FASHION_PRETRAIN_PER_CLASS),
            ],
            group=f"Fashion-MNIST class '{classname}'",
            fix=f"reinstall with: {FASHION_INSTALL_COMMAND}",
        )
        add_samples(splits, chosen, label, key)

    return Task(
        name="fashion-mnist",
        classnames=list(FASHION_CLASSNAMES),
        templates=list(FASHION_TEMPLATES),
        metric="accuracy",
        splits={name: splits[name] for name in ("train", "test", "pretrain")},
        image_loader=FashionImageLoader(data_dir),
        source=f"Debian package dataset-fashion-mnist at {data_dir}",
    )
