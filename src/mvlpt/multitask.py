"""Several tasks as one training problem: the union label space, batch sampling and the loss.

The label space is the concatenation of the tasks' class lists, in task
order, so each task owns a contiguous range of class indices. Two tasks that
share a class name (say "cat") keep separate entries: the classes are the
same word in two label spaces, and each entry gets its own class prompt and
logit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from .tasks import Task

SAMPLINGS = ("proportional", "balanced")


@dataclass(frozen=True)
class LabelSpace:
    """The union of several tasks' classes; task ``t`` owns indices ``offsets[t]`` to ``offsets[t + 1] - 1``."""

    task_names: tuple[str, ...]
    classnames: tuple[str, ...]
    offsets: tuple[int, ...]

    @classmethod
    def from_tasks(cls, tasks: Sequence[Task]) -> "LabelSpace":
        names = [task.name for task in tasks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"task name(s) {', '.join(repeated)} appear more than once; each task in a run needs its own name"
            )
        offsets = [0]
        classnames: list[str] = []
        for task in tasks:
            classnames.extend(task.classnames)
            offsets.append(len(classnames))
        return cls(tuple(names), tuple(classnames), tuple(offsets))

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def num_classes(self) -> int:
        return self.offsets[-1]

    def class_range(self, task_index: int) -> range:
        return range(self.offsets[task_index], self.offsets[task_index + 1])

    def class_tasks(self) -> torch.Tensor:
        """Task index of every class in the union, shape (C,)."""
        sizes = torch.tensor([len(self.class_range(index)) for index in range(self.num_tasks)])
        return torch.repeat_interleave(torch.arange(self.num_tasks), sizes)

    def classes_of_tasks(self, task_indices: torch.Tensor) -> torch.Tensor:
        """Sorted union class indices of the distinct tasks in ``task_indices``."""
        present = torch.unique(task_indices.cpu()).tolist()
        return torch.cat([torch.arange(self.offsets[t], self.offsets[t + 1]) for t in present])


def task_restricted_logits(
    logits: torch.Tensor, sample_tasks: torch.Tensor, column_tasks: torch.Tensor
) -> torch.Tensor:
    """Set every logit of a class outside the sample's own task to -inf.

    ``logits`` is (B, C'), ``sample_tasks`` (B,) the task of each sample and
    ``column_tasks`` (C',) the task of each logit column. Masked classes get
    zero probability, so the softmax runs over the sample's task alone.
    """
    own_task = column_tasks.unsqueeze(0) == sample_tasks.unsqueeze(1)
    return logits.masked_fill(~own_task, float("-inf"))


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from class indices (B,) or from multi-hot targets (B, C).

    Multi-hot rows are normalised to sum to one, so a multi-label sample
    spreads its target probability evenly over its positive classes, as the
    MVLPT reference does. Logits of -inf (masked classes) must have zero target.
    """
    logits = logits.float()
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)

    targets = targets.float()
    totals = targets.sum(dim=1, keepdim=True)
    if bool((totals <= 0).any()):
        raise ValueError("a multi-hot target row has no positive class; every training sample needs at least one label")
    probabilities = targets / totals
    log_probabilities = torch.log_softmax(logits, dim=1)
    # Masked classes have log-probability -inf and target 0; their product must count as 0, not NaN.
    products = torch.where(probabilities > 0, probabilities * log_probabilities, torch.zeros_like(log_probabilities))
    return -products.sum(dim=1).mean()


class MultitaskSampler(Sampler[int]):
    """Sample indices of a concatenation of per-task sample lists, for one epoch.

    ``proportional`` shuffles all samples together, so each task appears in
    proportion to its number of samples (the MVLPT reference's behaviour).
    ``balanced`` picks a task uniformly at random for every draw, then that
    task's next sample from its own shuffled order (reshuffled when used up),
    so each task is drawn equally often. An epoch has as many draws as there
    are samples in both modes.
    """

    def __init__(self, task_sizes: Sequence[int], mode: str, generator: torch.Generator):
        if mode not in SAMPLINGS:
            raise ValueError(f"sampling {mode!r} is invalid; use one of {', '.join(SAMPLINGS)}")
        if not task_sizes or any(size <= 0 for size in task_sizes):
            raise ValueError(f"every task needs at least one training sample, got sizes {list(task_sizes)}")
        self.task_sizes = list(task_sizes)
        self.mode = mode
        self.generator = generator
        self.starts = [0]
        for size in self.task_sizes:
            self.starts.append(self.starts[-1] + size)

    def __len__(self) -> int:
        return self.starts[-1]

    def __iter__(self) -> Iterator[int]:
        if self.mode == "proportional":
            yield from torch.randperm(len(self), generator=self.generator).tolist()
            return

        n_tasks = len(self.task_sizes)
        orders = [torch.randperm(size, generator=self.generator).tolist() for size in self.task_sizes]
        positions = [0] * n_tasks
        tasks = torch.randint(0, n_tasks, (len(self),), generator=self.generator).tolist()
        for task in tasks:
            if positions[task] == self.task_sizes[task]:
                orders[task] = torch.randperm(self.task_sizes[task], generator=self.generator).tolist()
                positions[task] = 0
            yield self.starts[task] + orders[task][positions[task]]
            positions[task] += 1


def expected_task_frequencies(task_sizes: Sequence[int], mode: str) -> list[float]:
    """Return the expected share of draws of each task under ``mode``."""
    if mode == "balanced":
        return [1.0 / len(task_sizes)] * len(task_sizes)
    total = math.fsum(task_sizes)
    return [size / total for size in task_sizes]
