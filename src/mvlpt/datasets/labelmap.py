"""Reconcile the class names that a data source defines with the catalog's class-name table.

Readers keep the label order of the data, because the label indices in the
data files refer to it. A source may order its classes differently from the
catalog table. ELEVATER's CIFAR-100 class list (vision_benchmark/datasets/prompts.py
in its toolkit), for example, is not in alphabetical order. Matching by name,
not by position, keeps every image paired with the right prompt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from mvlpt.datasets.catalog import TaskSpec
from mvlpt.tasks import Sample, Task, TaskError

logger = logging.getLogger(__name__)

# Examples shown in a log message about names that differ from the table.
MAX_EXAMPLES = 3


def normalize_classname(name: str) -> str:
    """Return `name` lower-cased, with runs of spaces, underscores and hyphens made one space."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()).strip()


def match_classnames(spec: TaskSpec, data_names: Sequence[str], source: str) -> list[str]:
    """Return the class names of a task whose data at `source` defines `data_names`, in the data's label order.

    The data must have as many classes as the catalog table, or TaskError
    names both counts. When every data name equals a table name after
    `normalize_classname`, the table's spelling is used. When no data name
    matches, the data belongs to another task, and TaskError lists examples.
    Otherwise the names differ in content, so the data's names are used with
    underscores turned into spaces, and a warning lists the first differences.
    """
    if len(data_names) != len(spec.classnames):
        raise TaskError(
            f"{source} defines {len(data_names)} classes, but task '{spec.task_name}' has "
            f"{len(spec.classnames)} ({spec.table_source}); check that the files belong to {spec.title}"
        )

    table_by_key = {normalize_classname(name): name for name in spec.classnames}
    unmatched = [name for name in data_names if normalize_classname(name) not in table_by_key]
    if not unmatched:
        return [table_by_key[normalize_classname(name)] for name in data_names]
    if len(unmatched) == len(data_names):
        raise TaskError(
            f"{source}: none of the {len(data_names)} class names is in the table of task '{spec.task_name}' "
            f"({spec.table_source}); the data has e.g. {', '.join(repr(n) for n in data_names[:MAX_EXAMPLES])}, "
            f"the table {', '.join(repr(n) for n in spec.classnames[:MAX_EXAMPLES])}. Check that the files "
            f"belong to {spec.title}"
        )

    logger.warning(
        "%s: %d of %d class names are not in the table of task '%s' (%s), e.g. %s; "
        "the prompts use the names from the data",
        source,
        len(unmatched),
        len(data_names),
        spec.task_name,
        spec.table_source,
        ", ".join(repr(name) for name in unmatched[:MAX_EXAMPLES]),
    )
    return [name.replace("_", " ").strip() for name in data_names]


def task_from_spec(
    spec: TaskSpec,
    splits: dict[str, list[Sample]],
    image_loader: Callable,
    source: str,
    classnames: Sequence[str] | None = None,
) -> Task:
    """Build the Task of catalog entry `spec` from the splits a reader has parsed.

    `classnames` are the data's names after `match_classnames`; without them
    the table's names are used.
    """
    return Task(
        name=spec.task_name,
        classnames=list(spec.classnames if classnames is None else classnames),
        templates=list(spec.templates),
        metric=spec.metric,
        splits=splits,
        image_loader=image_loader,
        source=source,
        multilabel=spec.multilabel,
    )
