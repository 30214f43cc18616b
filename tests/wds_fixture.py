"""Build small clip-benchmark webdataset repositories in a test folder, with Python's tarfile."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_pixels(split: str, index: int) -> np.ndarray:
    """Return the 8x8 RGB pixels of image `index` of `split`: distinct per image, so reads can be checked."""
    base = 7 * index + (0 if split == "train" else 101)
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0] = base % 256
    pixels[..., 1] = (3 * base) % 256
    pixels[:4, :, 2] = 255
    return pixels


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vector)
    return buffer.getvalue()


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_wds_repository(
    root: Path,
    classnames: list[str],
    labels: dict[str, list],
    per_shard: int = 3,
    templates: tuple[str, ...] = ("a photo of a {c}.",),
) -> Path:
    """Write `root` in the layout of a clip-benchmark repository and return it.

    `labels` maps each split to one label per image: an int for single-label
    data (a .cls member), or a list of class indices for multi-label data
    (a .npy multi-hot member, and dataset_type.txt set to "multilabel").
    Images are PNGs with the pixels of `image_pixels`, `per_shard` to a shard.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    multilabel = any(isinstance(label, list) for split_labels in labels.values() for label in split_labels)
    if multilabel:
        (root / "dataset_type.txt").write_text("multilabel\n")

    for split, split_labels in labels.items():
        split_dir = root / split
        split_dir.mkdir()
        shard_count = 0
        for start in range(0, len(split_labels), per_shard):
            with tarfile.open(split_dir / f"{shard_count}.tar", "w") as archive:
                for index in range(start, min(start + per_shard, len(split_labels))):
                    key = f"s{index:07d}"
                    _add_member(archive, f"{key}.png", _png_bytes(image_pixels(split, index)))
                    label = split_labels[index]
                    if isinstance(label, list):
                        vector = np.zeros(len(classnames), dtype=np.float32)
                        vector[label] = 1.0
                        _add_member(archive, f"{key}.npy", _npy_bytes(vector))
                    else:
                        _add_member(archive, f"{key}.cls", str(label).encode())
            shard_count += 1
        (split_dir / "nshards.txt").write_text(f"{shard_count}\n")
    return root
