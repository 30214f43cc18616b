"""Built-in task "textile": simulated fabric images from the PyPI package conformal-clip-data 0.1.4."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mvlpt.builtin.common import add_samples, match_key, open_grey_file, python_package_dir, seeded_cut
from mvlpt.tasks import Sample, Task, TaskError

logger = logging.getLogger(__name__)

TEXTILE_DISTRIBUTION = "conformal-clip-data"
TEXTILE_MODULE = "conformal_clip_data"
TEXTILE_VERSION = "0.1.4"
TEXTILE_INSTALL_COMMAND = "python3 -m pip install conformal-clip-data==0.1.4"
TEXTILE_IMAGE_DIR = Path("data/textile_images/simulated")
# Package folder -> class name. Version 0.1.4 contains 1,000 / 500 / 500 JPEG images of 250 x 250 pixels.
TEXTILE_FOLDERS = {
    "nominal": "defect-free",
    "local": "locally defective",
    "global": "globally defective",
}
TEXTILE_TEMPLATES = [
    "a photo of a {} textile.",
    "a close-up photo of {} fabric.",
    "a black and white image of a {} woven fabric.",
    "an inspection image of a {} textile surface.",
]
# A balanced test split, so plain accuracy weighs the three classes equally.
TEXTILE_TEST_PER_CLASS = 150

_TEXTILE_KEY = re.compile(r"(nominal|local|global)/textile_[0-9]{4}\.jpg")


@dataclass(frozen=True)
class TextileImageLoader:
    """Image loader for "textile", with keys "<nominal|local|global>/textile_<NNNN>.jpg"."""

    image_dir: Path

    def __call__(self, key: str) -> Image.Image:
        match_key(_TEXTILE_KEY, key, "textile", "<nominal|local|global>/textile_<NNNN>.jpg")
        return open_grey_file(self.image_dir / key)


def load_textile(root: Path) -> Task:
    """Build "textile" from the installed conformal-clip-data package; `root` is not used.

    Per class, the file names (sorted) are shuffled with the built-in split seed
    and cut into 150 test images and the rest train.
    """
    package_dir = python_package_dir(
        "textile", TEXTILE_MODULE, TEXTILE_DISTRIBUTION, TEXTILE_VERSION, TEXTILE_INSTALL_COMMAND
    )
    image_dir = package_dir / TEXTILE_IMAGE_DIR

    splits: dict[str, list[Sample]] = {}
    for label, folder in enumerate(TEXTILE_FOLDERS):
        folder_dir = image_dir / folder
        try:
            entries = list(folder_dir.iterdir())
        except OSError as error:
            raise TaskError(f"cannot list {folder_dir}: {error}; reinstall with: {TEXTILE_INSTALL_COMMAND}") from error
        names = sorted(entry.name for entry in entries if _TEXTILE_KEY.fullmatch(f"{folder}/{entry.name}"))

        chosen = seeded_cut(
            range(len(names)),
            [("test", TEXTILE_TEST_PER_CLASS), ("train", None)],
            group=f"textile class '{TEXTILE_FOLDERS[folder]}'",
            fix=f"reinstall with: {TEXTILE_INSTALL_COMMAND}",
        )
        add_samples(splits, chosen, label, lambda index, folder=folder, names=names: f"{folder}/{names[index]}")

    return Task(
        name="textile",
        classnames=list(TEXTILE_FOLDERS.values()),
        templates=list(TEXTILE_TEMPLATES),
        metric="accuracy",
        splits={name: splits[name] for name in ("train", "test")},
        image_loader=TextileImageLoader(image_dir),
        source=f"PyPI package conformal-clip-data {TEXTILE_VERSION} at {package_dir}",
    )
