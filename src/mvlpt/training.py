"""Few-shot prompt training on one task or several at once, with model selection and evaluation.

A run directory contains everything needed to read or repeat the run:

- ``config.yaml``: the full configuration;
- ``fewshot/<task>.json``: the chosen training and validation images of each task;
- ``metrics.jsonl``: one JSON object per epoch;
- ``prompt/``: the selected prompt checkpoint;
- ``results.json``: validation and test metrics per task and their average;
- ``train_state.pt`` while training runs, so an interrupted run resumes.

With several tasks the prompt is trained on the union of their few-shot
sets (see ``mvlpt.multitask``). Evaluation always scores each task over its
own classes with its own metric; model selection uses the average over tasks
of each task's validation metric.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import transforms
from tqdm.auto import tqdm

from . import __version__
from .backbone import FrozenCLIP, load_backbone
from .builtin import resolve_task
from .checkpoints import check_compatible, load_prompt_checkpoint, load_state_strict, save_prompt_checkpoint
from .config import RunConfig, dump_config
from .evaluation import ImageDataset, encode_dataset, predict, task_metrics, zero_shot_metrics
from .fewshot import FewShotSplit, read_split, sample_few_shot, write_split
from .model import PromptedCLIP, build_prompt_learner, vpt_templates
from .multitask import LabelSpace, MultitaskSampler, classification_loss, task_restricted_logits
from .rundir import (
    RunLock,
    append_jsonl,
    check_config_matches,
    clear_run,
    fewshot_path,
    save_torch_atomic,
    truncate_jsonl,
    write_json_atomic,
)
from .runtime import RunError, autocast_context, resolve_autocast_dtype, resolve_device, seed_everything
from .tasks import Task

logger = logging.getLogger(__name__)

__all__ = ["RunError", "evaluate_checkpoint", "learning_rate", "train", "zero_shot"]


# Data ---------------------------------------------------------------------------------------


def load_tasks(config: RunConfig) -> list[Task]:
    root = Path(config.data.root) if config.data.root else None
    return [resolve_task(spec, root) for spec in config.data.tasks]


def absolute_task_paths(config: RunConfig) -> None:
    """Replace task specs that name existing files or folders by absolute paths, in place.

    The run's config.yaml then still finds its tasks when ``mvlpt evaluate``
    runs from another working directory.
    """
    from .builtin import BUILTIN_TASKS
    from .datasets.catalog import is_catalog_name

    config.data.tasks = [
        spec
        if spec in BUILTIN_TASKS or is_catalog_name(spec) or not Path(spec).exists()
        else str(Path(spec).resolve())
        for spec in config.data.tasks
    ]


def train_transform(backbone: FrozenCLIP) -> transforms.Compose:
    """Random resized crop and horizontal flip, then the backbone's normalisation."""
    mean = backbone.preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = backbone.preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    return transforms.Compose(
        [
            transforms.Lambda(lambda image: image.convert("RGB")),
            transforms.RandomResizedCrop(backbone.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def choose_few_shot(config: RunConfig, task: Task, run_dir: Path) -> FewShotSplit:
    """Return the task's few-shot split: the one already in the run directory, or a new seeded draw."""
    path = fewshot_path(run_dir, task.name)
    if not path.exists():
        try:
            split = sample_few_shot(
                task.splits["train"],
                task.num_classes,
                config.data.shots,
                config.seed,
                task.classnames,
                multilabel=task.multilabel,
            )
        except ValueError as error:
            raise RunError(f"task {task.name}: {error}") from error
        path.parent.mkdir(parents=True, exist_ok=True)
        write_split(split, path)
        return split

    split = read_split(path)
    if split.shots != config.data.shots or split.seed != config.seed:
        raise RunError(
            f"{path} contains a {split.shots}-shot split for seed {split.seed}, but the run asks for "
            f"{config.data.shots} shots and seed {config.seed}; use another output_dir or delete the file"
        )
    if split.multilabel != task.multilabel:
        kind = "multi-label" if split.multilabel else "single-label"
        raise RunError(
            f"{path} contains a {kind} split, but task {task.name} is not {kind}; "
            "the file belongs to another task, so use another output_dir or delete the file"
        )
    pool = {sample.key: sample.labels for sample in task.splits["train"]}
    foreign = [sample for sample in (*split.train, *split.val) if pool.get(sample.key) != sample.labels]
    if foreign:
        raise RunError(
            f"{path} lists {len(foreign)} image(s) that are not in the training split of task {task.name} "
            f"with those labels, for example {foreign[0].key!r}; the file belongs to another task or data version"
        )
    return split


@dataclass
class SplitData:
    """One split of one task as a dataset, plus its frozen image features when those can be reused."""

    dataset: ImageDataset
    features: torch.Tensor | None = None
    labels: torch.Tensor | None = None


@dataclass
class TaskData:
    """One task of a run: its place in the label space and its train, validation and test data."""

    task: Task
    index: int
    classes: range
    splits: dict[str, SplitData]


def prepare_task_data(
    config: RunConfig,
    tasks: list[Task],
    label_space: LabelSpace,
    few_shot: list[FewShotSplit] | None,
    backbone: FrozenCLIP,
    reuse_features: bool,
    autocast_dtype: torch.dtype | None,
    split_names: tuple[str, ...] = ("train", "val", "test"),
) -> list[TaskData]:
    """Datasets of every task and split, with frozen image features encoded once when ``reuse_features``.

    Labels are in the union label space: class indices, or multi-hot vectors
    over the whole union for every task when any task is multi-label.
    ``few_shot`` gives each task's training and validation samples; without
    it, only "test" (or a split named in ``split_names``) of the task itself
    is used.
    """
    eval_transform = backbone.preprocess
    train_tf = train_transform(backbone) if config.data.augment else eval_transform
    num_targets = label_space.num_classes if any(task.multilabel for task in tasks) else None
    result = []
    for index, task in enumerate(tasks):
        offset = label_space.offsets[index]
        samples = {name: task.splits.get(name) for name in split_names}
        if few_shot is not None:
            samples["train"] = few_shot[index].train
            samples["val"] = few_shot[index].val

        splits = {}
        for name in split_names:
            if samples[name] is None:
                raise RunError(f"task {task.name} has no {name!r} split; it has {', '.join(sorted(task.splits))}")
            transform = train_tf if name == "train" else eval_transform
            dataset = ImageDataset(
                task, samples[name], transform, task_index=index, label_offset=offset, num_targets=num_targets
            )
            item = SplitData(dataset)
            if reuse_features:
                # The image features do not depend on the prompt: encode each image once for the whole run.
                item.features, item.labels = encode_dataset(
                    backbone,
                    dataset,
                    config.train.eval_batch_size,
                    autocast_dtype,
                    config.data.num_workers,
                    description=f"encoding {task.name} {name} images",
                )
            splits[name] = item
        result.append(TaskData(task, index, label_space.class_range(index), splits))
    return result


# Schedule -----------------------------------------------------------------------------------


def learning_rate(epoch: int, config) -> float:
    """Return the learning rate of ``epoch`` (0-based).

    The first ``warmup_epochs`` use the constant ``warmup_lr``. After them the
    cosine schedule over all ``epochs`` takes over at its value for ``epoch``.
    Dassl's constant warm-up wrapper around CosineAnnealingLR does the same.
    """
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))


# Model --------------------------------------------------------------------------------------


def build_model(config: RunConfig, backbone: FrozenCLIP, classnames: list[str], templates: list[str]) -> PromptedCLIP:
    learner = build_prompt_learner(config.prompt, backbone, classnames)
    learner.log_parameter_count()
    return PromptedCLIP(backbone, learner, classnames, vpt_templates(config.prompt, templates))


def task_templates(tasks: list[Task]) -> list[str]:
    """Return the templates of the first task, which VPT's ["task"] setting uses for all tasks."""
    templates = list(tasks[0].templates)
    for task in tasks[1:]:
        if list(task.templates) != templates:
            logger.warning(
                "tasks %s and %s have different templates; VPT's templates=['task'] uses those of %s",
                tasks[0].name, task.name, tasks[0].name,
            )
            break
    return templates


def initialise_from(model: PromptedCLIP, config: RunConfig, backbone: FrozenCLIP) -> None:
    """Copy every prompt parameter from the checkpoint ``config.init``; stop if anything does not fit.

    Only parameters shared across tasks transfer. A class-specific CoOp
    context belongs to its task's classes and is rejected.
    """
    checkpoint = load_prompt_checkpoint(config.init)
    check_compatible(
        checkpoint,
        method=config.prompt.method,
        backbone=backbone.identity,
        classnames=None,
        class_specific_ok=False,
    )
    load_state_strict(model.learner, checkpoint.state_dict, source=str(config.init))
    logger.info("initialised the %s prompt from %s", config.prompt.method, config.init)


def checkpoint_metadata(config: RunConfig, backbone: FrozenCLIP, label_space: LabelSpace, extra: dict) -> dict:
    return {
        "method": config.prompt.method,
        "prompt_config": dataclasses.asdict(config.prompt.active()),
        "backbone": backbone.identity,
        "classnames": list(label_space.classnames),
        "tasks": list(label_space.task_names),
        "class_offsets": list(label_space.offsets),
        "extra": extra,
    }


# Evaluation within a run --------------------------------------------------------------------


def evaluate_tasks(
    model: PromptedCLIP,
    task_data: list[TaskData],
    split_name: str,
    config: RunConfig,
    autocast_dtype: torch.dtype | None,
) -> dict[str, dict[str, float]]:
    """Metrics of each task on one split, each scored over its own classes only.

    Raises ValueError when a task's own metric is undefined on the split.
    """
    results = {}
    for item in task_data:
        split = item.splits[split_name]
        classes = torch.arange(item.classes.start, item.classes.stop)
        logits, labels = predict(
            model,
            dataset=split.dataset if split.features is None else None,
            features=split.features,
            labels=split.labels,
            batch_size=config.train.eval_batch_size,
            autocast_dtype=autocast_dtype,
            num_workers=config.data.num_workers,
            description=f"{split_name} {item.task.name}",
            class_indices=classes,
        )
        results[item.task.name] = task_metrics(logits, _task_labels(labels, item), item.task, split_name)
    return results


def _task_labels(labels: torch.Tensor, item: TaskData) -> torch.Tensor:
    """Turn union-space labels of one task's samples into that task's own labels.

    Multi-hot rows keep the task's columns; a single-label task in a run
    with multi-hot targets gets back its class index.
    """
    if labels.dim() == 1:
        return labels - item.classes.start

    own_columns = labels[:, item.classes.start : item.classes.stop]
    if item.task.multilabel:
        return own_columns
    return own_columns.argmax(dim=1)


def average_task_metric(per_task: dict[str, dict[str, float]], tasks: list[Task]) -> float:
    """Return the mean over tasks of each task's own metric."""
    return sum(per_task[task.name][task.metric] for task in tasks) / len(tasks)


def task_results(tasks: list[Task], val: dict | None, test: dict) -> dict:
    per_task = {}
    for task in tasks:
        entry = {"metric": task.metric}
        if val is not None:
            entry["val"] = val[task.name]
        entry["test"] = test[task.name]
        per_task[task.name] = entry
    average = {"test": average_task_metric(test, tasks)}
    if val is not None:
        average["val"] = average_task_metric(val, tasks)
    return {"per_task": per_task, "average": average}


# The training loop --------------------------------------------------------------------------


@dataclass
class TrainingState:
    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_prompt: dict[str, torch.Tensor] = field(default_factory=dict)
    elapsed_s: float = 0.0


def _open_tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def train(config: RunConfig, overwrite: bool = False) -> dict:
    """Train a prompt on the few-shot splits of ``config.data.tasks`` and evaluate it; return the results.

    A run whose ``results.json`` exists is not repeated: its results are
    returned. An interrupted run continues from ``train_state.pt``. Nothing in
    the run directory changes until the tasks, backbone and prompt have been
    built, so a run that fails its checks leaves an earlier run intact.
    """
    config.validate_for("train")
    absolute_task_paths(config)
    run_dir = Path(config.output_dir)
    if not overwrite:
        check_config_matches(config, run_dir)
        results_path = run_dir / "results.json"
        if results_path.exists():
            results = json.loads(results_path.read_text())
            if not isinstance(results, dict) or results.get("method") != config.prompt.method:
                raise RunError(
                    f"{results_path} does not contain the results of a {config.prompt.method} training run; "
                    f"use another output_dir, or pass --overwrite to replace it"
                )
            logger.info("%s already contains finished results; skipping the run", run_dir)
            return results

    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        return _train_locked(config, run_dir, overwrite)


def _train_locked(config: RunConfig, run_dir: Path, overwrite: bool) -> dict:
    started = time.perf_counter()
    seed_everything(config.seed)

    tasks = load_tasks(config)
    label_space = LabelSpace.from_tasks(tasks)
    device = resolve_device(config.train.device)
    autocast_dtype = resolve_autocast_dtype(config.train.precision, device)
    backbone = load_backbone(config.backbone.model, config.backbone.pretrained, config.backbone.cache_dir).to(device)
    model = build_model(config, backbone, list(label_space.classnames), task_templates(tasks)).to(device)
    if config.init:
        initialise_from(model, config, backbone)

    # Every check has passed: from here on the run directory is written.
    if overwrite:
        clear_run(run_dir)
    dump_config(config, run_dir / "config.yaml")
    few_shot = [choose_few_shot(config, task, run_dir) for task in tasks]
    for task, split in zip(tasks, few_shot):
        logger.info(
            "task %s: %d classes, %d training and %d validation images (%d shots, seed %d), %d test images",
            task.name, task.num_classes, len(split.train), len(split.val), split.shots, split.seed,
            len(task.splits["test"]),
        )

    reuse_features = not model.learner.image_depends_on_prompt and not config.data.augment
    task_data = prepare_task_data(config, tasks, label_space, few_shot, backbone, reuse_features, autocast_dtype)

    optimizer = torch.optim.SGD(
        model.learner.parameters(),
        lr=config.train.lr,
        momentum=config.train.momentum,
        weight_decay=config.train.weight_decay,
    )
    state = TrainingState()
    state_path = run_dir / "train_state.pt"
    if state_path.exists():
        state = _resume(state_path, model, optimizer)
        logger.info("resuming %s after epoch %d of %d", run_dir, state.epoch, config.train.epochs)
    # Lines of an epoch whose state was not saved are dropped, so the epoch is not listed twice.
    truncate_jsonl(run_dir / "metrics.jsonl", state.epoch)
    elapsed_before = state.elapsed_s

    state = _train_epochs(
        config, model, optimizer, task_data, label_space, tasks, state, run_dir, autocast_dtype, started
    )

    if config.train.model_selection == "best_val" and state.best_prompt:
        model.learner.load_state_dict(state.best_prompt)
        selected_epoch = state.best_epoch
    else:
        selected_epoch = config.train.epochs

    val = evaluate_tasks(model, task_data, "val", config, autocast_dtype)
    test = evaluate_tasks(model, task_data, "test", config, autocast_dtype)
    extra = {"selected_epoch": selected_epoch, "shots": config.data.shots, "seed": config.seed, "init": config.init}
    save_prompt_checkpoint(run_dir / "prompt", model.learner.state_dict(), checkpoint_metadata(config, backbone, label_space, extra))

    results = {
        "tasks": [task.name for task in tasks],
        "method": config.prompt.method,
        "backbone": {"model": config.backbone.model, "pretrained": config.backbone.pretrained},
        "shots": config.data.shots,
        "seed": config.seed,
        "init": config.init,
        "sampling": config.data.sampling,
        "label_space": config.train.label_space,
        "selected_epoch": selected_epoch,
        "model_selection": config.train.model_selection,
        **task_results(tasks, val, test),
        "trainable_parameters": model.learner.num_trainable_parameters(),
        "wall_time_s": round(elapsed_before + time.perf_counter() - started, 2),
        "mvlpt_version": __version__,
    }
    write_json_atomic(run_dir / "results.json", results)
    state_path.unlink(missing_ok=True)
    logger.info("%s finished: average test metric %.2f over %d task(s)", run_dir, results["average"]["test"], len(tasks))
    return results


def _train_epochs(config, model, optimizer, task_data, label_space, tasks, state, run_dir, autocast_dtype, started):
    metrics_path = run_dir / "metrics.jsonl"
    writer = _open_tensorboard(run_dir)
    generator = torch.Generator()
    names = ", ".join(task.name for task in tasks)
    progress = tqdm(
        range(state.epoch, config.train.epochs),
        desc=f"{config.prompt.method} on {names}",
        unit="epoch",
        initial=state.epoch,
        total=config.train.epochs,
        disable=None,
    )
    for epoch in progress:
        lr = learning_rate(epoch, config.train)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Batches and prompt dropout are seeded per epoch, so a resumed run repeats an uninterrupted one.
        generator.manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_019 + epoch)
        train_loss, train_accuracy = _train_epoch(model, task_data, label_space, optimizer, config, autocast_dtype, generator)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_accuracy": train_accuracy}

        is_last = epoch + 1 == config.train.epochs
        if (epoch + 1) % config.train.eval_every == 0 or is_last:
            val = evaluate_tasks(model, task_data, "val", config, autocast_dtype)
            score = average_task_metric(val, tasks)
            record["val_average"] = score
            for name, metrics in val.items():
                record.update({f"val_{name}_{metric}": value for metric, value in metrics.items()})
            if score > state.best_score:
                state.best_score = score
                state.best_epoch = epoch + 1
                state.best_prompt = copy.deepcopy(model.learner.state_dict())

        append_jsonl(metrics_path, record)
        if epoch + 1 == config.train.epochs or (epoch + 1) % max(1, config.train.epochs // 10) == 0:
            logger.info(
                "%s epoch %d/%d: train loss %.4f, validation %.2f",
                run_dir, epoch + 1, config.train.epochs, train_loss, record.get("val_average", float("nan")),
            )
        if writer is not None:
            for name, value in record.items():
                if name != "epoch":
                    writer.add_scalar(name, value, epoch + 1)
        progress.set_postfix(loss=f"{train_loss:.3f}", val=f"{record.get('val_average', float('nan')):.1f}")

        state.epoch = epoch + 1
        _save_state(run_dir / "train_state.pt", state, model, optimizer, time.perf_counter() - started)

    if writer is not None:
        writer.close()
    return state


def _training_batches(task_data: list[TaskData], config: RunConfig, generator: torch.Generator):
    """Yield (images, features, labels, task_indices) batches for one epoch; one of images/features is None."""
    splits = [item.splits["train"] for item in task_data]
    sampler = MultitaskSampler([len(split.dataset) for split in splits], config.data.sampling, generator)
    batch_size = config.train.batch_size

    if splits[0].features is not None:
        features = torch.cat([split.features for split in splits])
        labels = torch.cat([split.labels for split in splits])
        tasks = torch.cat([torch.full((len(split.features),), item.index) for split, item in zip(splits, task_data)])
        order = torch.tensor(list(sampler))
        for index in order.split(batch_size):
            yield None, features[index], labels[index], tasks[index]
        return

    loader = DataLoader(
        ConcatDataset([split.dataset for split in splits]),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=config.data.num_workers,
    )
    for images, labels, tasks in loader:
        yield images, None, labels, tasks


def _train_epoch(model, task_data, label_space, optimizer, config, autocast_dtype, generator) -> tuple[float, float]:
    """Run one epoch; return the mean loss and the training accuracy in percent.

    With multi-hot targets the accuracy counts a sample as correct when its
    highest logit is one of its positive classes.
    """
    device = model.backbone.device
    model.train()
    restrict = config.train.label_space == "task" and label_space.num_tasks > 1
    class_tasks = label_space.class_tasks()
    total_loss, correct, count = 0.0, 0, 0

    for images, features, labels, tasks in _training_batches(task_data, config, generator):
        class_indices = None
        if restrict:
            # Only the classes of the tasks in this batch need text features.
            class_indices = label_space.classes_of_tasks(tasks)
            if labels.dim() == 2:
                labels = labels[:, class_indices]
            else:
                position = torch.full((label_space.num_classes,), -1, dtype=torch.long)
                position[class_indices] = torch.arange(len(class_indices))
                labels = position[labels]

        with autocast_context(device, autocast_dtype):
            if features is not None:
                logits = model(image_features=features.to(device), class_indices=_to(class_indices, device))
            else:
                logits = model(images.to(device), class_indices=_to(class_indices, device))
        logits = logits.float()
        if restrict:
            logits = task_restricted_logits(logits, tasks.to(device), class_tasks[class_indices].to(device))

        labels = labels.to(device)
        loss = classification_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        total_loss += loss.item() * len(labels)
        predictions = logits.argmax(dim=-1)
        if labels.dim() == 2:
            correct += int((labels.gather(1, predictions.unsqueeze(1)) > 0).sum())
        else:
            correct += int((predictions == labels).sum())
        count += len(labels)
    return total_loss / max(count, 1), 100.0 * correct / max(count, 1)


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _save_state(path: Path, state: TrainingState, model: PromptedCLIP, optimizer, elapsed_s: float) -> None:
    save_torch_atomic(
        path,
        {
            "epoch": state.epoch,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "best_prompt": state.best_prompt,
            "prompt": model.learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "elapsed_s": state.elapsed_s + elapsed_s,
        },
    )


def _resume(path: Path, model: PromptedCLIP, optimizer) -> TrainingState:
    try:
        saved = torch.load(path, map_location=model.backbone.device, weights_only=True)
        model.learner.load_state_dict(saved["prompt"])
        optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, KeyError, EOFError, ValueError) as error:
        raise RunError(
            f"cannot resume from {path}: {error}; delete that file to restart the run from its first epoch"
        ) from error
    return TrainingState(
        epoch=saved["epoch"],
        best_score=saved["best_score"],
        best_epoch=saved["best_epoch"],
        best_prompt=saved["best_prompt"],
        elapsed_s=saved.get("elapsed_s", 0.0),
    )


# Evaluation of saved prompts and zero-shot --------------------------------------------------


# Prompt settings that only shape the starting values or training, so evaluation may differ in them.
TRAINING_ONLY_SETTINGS = ("ctx_init", "n_ctx", "dropout")


def check_prompt_settings(saved: dict, current: dict, source) -> None:
    """Raise CheckpointError when the run's prompt settings compute something else than the checkpoint's."""
    from .checkpoints import CheckpointError

    differing = [
        f"{key}: checkpoint {saved[key]!r}, run {current[key]!r}"
        for key in sorted(set(saved) & set(current))
        if key not in TRAINING_ONLY_SETTINGS and saved[key] != current[key]
    ]
    if differing:
        raise CheckpointError(
            f"checkpoint {source} was trained with other prompt settings ({'; '.join(differing)}); "
            f"evaluate it with the checkpoint's settings"
        )


def evaluate_checkpoint(
    checkpoint_dir: str | Path, config: RunConfig, split_name: str = "test", checkpoint=None
) -> dict:
    """Evaluate a saved prompt on each task of ``config.data.tasks``, loading it strictly.

    ``checkpoint`` is the already loaded PromptCheckpoint of ``checkpoint_dir``, if the caller has it.
    """
    if checkpoint is None:
        checkpoint = load_prompt_checkpoint(checkpoint_dir)
    check_prompt_settings(checkpoint.metadata.get("prompt_config", {}), dataclasses.asdict(config.prompt.active()), checkpoint_dir)
    tasks = load_tasks(config)
    label_space = LabelSpace.from_tasks(tasks)

    device = resolve_device(config.train.device)
    autocast_dtype = resolve_autocast_dtype(config.train.precision, device)
    backbone = load_backbone(config.backbone.model, config.backbone.pretrained, config.backbone.cache_dir).to(device)
    check_compatible(
        checkpoint, method=config.prompt.method, backbone=backbone.identity, classnames=list(label_space.classnames)
    )
    model = build_model(config, backbone, list(label_space.classnames), task_templates(tasks)).to(device)
    load_state_strict(model.learner, checkpoint.state_dict, source=str(checkpoint_dir))

    # Evaluate as training did: frozen image features when they do not depend on the prompt.
    reuse_features = not model.learner.image_depends_on_prompt
    task_data = prepare_task_data(
        config, tasks, label_space, None, backbone, reuse_features, autocast_dtype, (split_name,)
    )
    metrics = evaluate_tasks(model, task_data, split_name, config, autocast_dtype)
    return _split_results(tasks, config.prompt.method, split_name, metrics, config)


def zero_shot(config: RunConfig, split_name: str = "test") -> dict:
    """Evaluate zero-shot CLIP on each task, with the task's own template ensemble."""
    tasks = load_tasks(config)
    device = resolve_device(config.train.device)
    autocast_dtype = resolve_autocast_dtype(config.train.precision, device)
    backbone = load_backbone(config.backbone.model, config.backbone.pretrained, config.backbone.cache_dir).to(device)

    metrics = {}
    for task in tasks:
        if split_name not in task.splits:
            raise RunError(f"task {task.name} has no {split_name!r} split; it has {', '.join(sorted(task.splits))}")
        metrics[task.name] = zero_shot_metrics(
            backbone, task, split_name, config.train.eval_batch_size, autocast_dtype, config.data.num_workers
        )
    return _split_results(tasks, "zero-shot", split_name, metrics, config)


def _split_results(tasks: list[Task], method: str, split_name: str, metrics: dict, config: RunConfig) -> dict:
    return {
        "tasks": [task.name for task in tasks],
        "method": method,
        "backbone": {"model": config.backbone.model, "pretrained": config.backbone.pretrained},
        "split": split_name,
        "per_task": {task.name: {"metric": task.metric, split_name: metrics[task.name]} for task in tasks},
        "average": {split_name: average_task_metric(metrics, tasks)},
        "mvlpt_version": __version__,
    }
