"""Parts shared by the built-in tasks: data root, package lookup, seeded splits, caches and image keys."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shlex
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from mvlpt.tasks import ImageLoadError, Sample, TaskError, open_image_file

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "MVLPT_DATA_ROOT"

# Seed of every built-in split. It is a constant, independent of the few-shot
# seed, so the splits are the same in every run and on every machine.
SPLIT_SEED = 0

MAKE_DATA_HINT = "or run 'make data', which installs the sources of every built-in task"

T = TypeVar("T")


class SourceMissingError(TaskError):
    """The package or files that a built-in task reads are not installed."""


def data_root() -> Path:
    """Return the folder for built-in task data: $MVLPT_DATA_ROOT if set, else ~/.cache/mvlpt/data."""
    configured = os.environ.get(DATA_ROOT_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "mvlpt" / "data"


def format_install(template: str, root: Path) -> str:
    """Fill the `{root}` placeholder of an install command with the shell-quoted data root."""
    return template.format(root=shlex.quote(str(root)))


def python_package_dir(task: str, module: str, distribution: str, version: str | None, install: str) -> Path:
    """Return the folder of the installed Python package `module`, without importing it.

    Raises SourceMissingError naming `install` when the package is absent, and
    TaskError when `version` is given and the installed distribution differs,
    because the built-in splits are defined on that version's files.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissingError(
            f"built-in task '{task}' needs the Python package {distribution}, which is not installed; "
            f"install it with: {install} ({MAKE_DATA_HINT})"
        )

    if version is not None:
        try:
            installed = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            logger.warning("cannot read the installed version of %s; expected %s", distribution, version)
        else:
            if installed != version:
                raise TaskError(
                    f"built-in task '{task}' needs {distribution} {version} but found version {installed}; "
                    f"install the pinned version with: {install}"
                )

    return Path(next(iter(spec.submodule_search_locations)))


class ProcessCache(Generic[T]):
    """Decoded data per source folder, read once per process and shared by threads."""

    def __init__(self) -> None:
        self._values: dict[Path, T] = {}
        self._lock = threading.Lock()
        _CACHES.append(self)

    def get(self, source: Path, read: Callable[[Path], T]) -> T:
        """Return the cached value for `source`, calling `read(source)` the first time."""
        with self._lock:
            if source not in self._values:
                self._values[source] = read(source)
            return self._values[source]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


_CACHES: list[ProcessCache] = []


def clear_caches() -> None:
    """Drop every decoded array, so that the next load reads the source files again."""
    for cache in _CACHES:
        cache.clear()


def seeded_cut(
    indices: Sequence[int],
    sizes: Sequence[tuple[str, int | None]],
    group: str,
    fix: str,
) -> dict[str, list[int]]:
    """Shuffle `indices` with a fresh numpy.random.default_rng(SPLIT_SEED) and cut the order into splits.

    `sizes` lists (split name, count) in cut order: the first count of shuffled
    indices go to the first split, the next to the second, and so on. A count of
    None takes all remaining indices and must come last, and otherwise the
    indices left after the last split are not used. Each split's indices come
    back in ascending order. Raises TaskError naming the image `group` and the
    `fix` when there are too few indices.
    """
    if any(count is None for _, count in sizes[:-1]):
        raise ValueError(f"only the last split may take the rest, got sizes {list(sizes)}")
    fixed = sum(count for _, count in sizes if count is not None)
    takes_rest = sizes[-1][1] is None
    needed = fixed + 1 if takes_rest else fixed
    if len(indices) < needed:
        raise TaskError(f"{group} has only {len(indices)} images, need at least {needed}; {fix}")

    order = np.random.default_rng(SPLIT_SEED).permutation(len(indices))
    shuffled = [indices[position] for position in order.tolist()]
    splits: dict[str, list[int]] = {}
    start = 0
    for split_name, count in sizes:
        stop = len(shuffled) if count is None else start + count
        splits[split_name] = sorted(shuffled[start:stop])
        start = stop
    return splits


def add_samples(
    splits: dict[str, list[Sample]],
    chosen: dict[str, list[int]],
    label: int,
    key: Callable[[int], str],
) -> None:
    """Append one Sample per chosen index to `splits`, with the key `key(index)`."""
    for split_name, indices in chosen.items():
        splits.setdefault(split_name, []).extend(Sample(key(index), label) for index in indices)


def match_key(pattern: re.Pattern[str], key: str, task: str, form: str) -> re.Match[str]:
    """Match an image key against `pattern`; raise ImageLoadError naming the expected `form`."""
    match = pattern.fullmatch(key)
    if match is None:
        raise ImageLoadError(f"invalid image key '{key}' for built-in task '{task}'; keys have the form {form}")
    return match


def grey_image(pixels: np.ndarray) -> Image.Image:
    """Return a 2-D uint8 array as an 8-bit greyscale ("L") PIL image."""
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))


def open_grey_file(path: Path) -> Image.Image:
    """Decode the image file at `path` as 8-bit greyscale; raises ImageLoadError naming the file."""
    return open_image_file(path).convert("L")
