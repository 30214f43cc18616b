"""Few-shot prompt training on one task: the run directory, the loop and model selection.

A run directory contains everything needed to read or repeat the run:

- ``config.yaml``: the full configuration;
- ``fewshot.json``: the chosen training and validation images;
- ``metrics.jsonl``: one JSON object per epoch;
- ``prompt/``: the selected prompt checkpoint;
- ``results.json``: the final validation and test metrics;
- ``train_state.pt`` while training runs, so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms
from tqdm.auto import tqdm

from . import __version__
from .backbone import FrozenCLIP, load_backbone
from .builtin import resolve_task
from .checkpoints import check_compatible, load_prompt_checkpoint, load_state_strict, save_prompt_checkpoint
from .config import RunConfig, dump_config
from .evaluation import ImageDataset, autocast_context, compute_metrics, encode_dataset, predict, zero_shot_logits
from .fewshot import FewShotSplit, read_split, sample_few_shot, write_split
from .model import PromptedCLIP, build_prompt_learner, vpt_templates
from .tasks import Task

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run cannot start or continue as configured."""


# Files and reproducibility ------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_torch_atomic(path: Path, data: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(data, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Device and precision -----------------------------------------------------------------------


def _cpu_has_bf16() -> bool:
    """Report whether the CPU computes bf16 natively (AMX or AVX-512 BF16), where bf16 autocast is fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"train.device={name!r} but CUDA is not available; use train.device=cpu or auto")
    return device


def resolve_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 for autocast, or None for plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = _cpu_has_bf16()
    if precision == "bf16":
        if not supported:
            logger.warning("bf16 requested but %s has no native bf16 support; it will run, slowly", device)
        return torch.bfloat16
    return torch.bfloat16 if supported else None


# Data ---------------------------------------------------------------------------------------


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
    """Return the run's few-shot split: the one already in the run directory, or a new seeded draw."""
    path = run_dir / "fewshot.json"
    if path.exists():
        split = read_split(path)
        if split.shots != config.data.shots or split.seed != config.seed:
            raise RunError(
                f"{path} contains a {split.shots}-shot split for seed {split.seed}, but the run asks for "
                f"{config.data.shots} shots and seed {config.seed}; use another output_dir or delete the file"
            )
        pool = {sample.key: sample.label for sample in task.splits["train"]}
        foreign = [sample for sample in (*split.train, *split.val) if pool.get(sample.key) != sample.label]
        if foreign:
            raise RunError(
                f"{path} lists {len(foreign)} image(s) that are not in the training split of task {task.name} "
                f"with that label, for example {foreign[0].key!r}; the file belongs to another task or data version"
            )
        return split
    split = sample_few_shot(task.splits["train"], task.num_classes, config.data.shots, config.seed)
    write_split(split, path)
    return split


@dataclass
class SplitData:
    """One split as a dataset, plus its frozen image features when those can be reused."""

    dataset: ImageDataset
    features: torch.Tensor | None = None
    labels: torch.Tensor | None = None


# Schedule -----------------------------------------------------------------------------------


def learning_rate(epoch: int, config) -> float:
    """Learning rate of ``epoch`` (0-based).

    The first ``warmup_epochs`` use the constant ``warmup_lr``. After them the
    cosine schedule over all ``epochs`` takes over at its value for ``epoch``.
    Dassl's constant warm-up wrapper around CosineAnnealingLR does the same.
    """
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))


# The run ------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_prompt: dict[str, torch.Tensor] = field(default_factory=dict)


def _checkpoint_metadata(config: RunConfig, backbone: FrozenCLIP, task: Task, extra: dict) -> dict:
    prompt_config = config.prompt.active()
    return {
        "format": "mvlpt-prompt",
        "format_version": 1,
        "mvlpt_version": __version__,
        "method": config.prompt.method,
        "prompt_config": dataclasses.asdict(prompt_config),
        "backbone": backbone.identity,
        "classnames": list(task.classnames),
        "task": task.name,
        "extra": extra,
    }


def initialise_from(model: PromptedCLIP, config: RunConfig, backbone: FrozenCLIP) -> None:
    """Copy every prompt parameter from ``config.init``; stop if anything does not fit."""
    checkpoint = load_prompt_checkpoint(config.init)
    check_compatible(checkpoint, method=config.prompt.method, backbone=backbone.identity, classnames=None)
    load_state_strict(model.learner, checkpoint.state_dict, source=str(config.init))
    logger.info("initialised the %s prompt from %s", config.prompt.method, config.init)


def build_model(config: RunConfig, backbone: FrozenCLIP, task: Task) -> PromptedCLIP:
    learner = build_prompt_learner(config.prompt, backbone, task.classnames)
    learner.log_parameter_count()
    templates = vpt_templates(config.prompt, task.templates)
    return PromptedCLIP(backbone, learner, task.classnames, templates)


def _prepare_splits(
    config: RunConfig,
    task: Task,
    split: FewShotSplit,
    backbone: FrozenCLIP,
    reuse_features: bool,
    autocast_dtype: torch.dtype | None,
) -> dict[str, SplitData]:
    eval_transform = backbone.preprocess
    train_tf = train_transform(backbone) if config.data.augment else eval_transform
    data = {
        "train": SplitData(ImageDataset(task, split.train, train_tf)),
        "val": SplitData(ImageDataset(task, split.val, eval_transform)),
        "test": SplitData(ImageDataset(task, task.splits["test"], eval_transform)),
    }
    if not reuse_features:
        return data

    # CoOp's image features do not depend on the prompt: encode each image once for the whole run.
    for name, item in data.items():
        item.features, item.labels = encode_dataset(
            backbone,
            item.dataset,
            config.train.eval_batch_size,
            autocast_dtype,
            config.data.num_workers,
            description=f"encoding {name} images",
        )
    return data


def _evaluate(model, item: SplitData, config: RunConfig, autocast_dtype, description: str) -> dict[str, float]:
    logits, labels = predict(
        model,
        dataset=item.dataset if item.features is None else None,
        features=item.features,
        labels=item.labels,
        batch_size=config.train.eval_batch_size,
        autocast_dtype=autocast_dtype,
        num_workers=config.data.num_workers,
        description=description,
    )
    return compute_metrics(logits, labels)


def _open_tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _check_config_matches(config: RunConfig, run_dir: Path) -> None:
    """Refuse to resume or reuse a run directory written by a different configuration."""
    from .config import load_config

    path = run_dir / "config.yaml"
    if not path.exists():
        return
    previous = load_config(path).to_dict()
    current = config.to_dict()
    if previous != current:
        differing = _differing_keys(previous, current)
        raise RunError(
            f"{run_dir} was written by a different configuration ({', '.join(differing[:5])} differ); "
            f"use another output_dir, or pass --overwrite to start this run afresh there"
        )


def _differing_keys(first: dict, second: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(first) | set(second)):
        a, b = first.get(key), second.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(_differing_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def clear_run(run_dir: Path) -> None:
    """Remove the files a previous run wrote, for --overwrite."""
    for name in ("results.json", "metrics.jsonl", "train_state.pt", "fewshot.json", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)


def train(config: RunConfig, overwrite: bool = False) -> dict:
    """Train a prompt on the few-shot split of one task and evaluate it; return the results.

    A run whose ``results.json`` exists is not repeated: its results are
    returned. An interrupted run continues from ``train_state.pt``.
    """
    config.validate_for("train")
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_run(run_dir)
    _check_config_matches(config, run_dir)

    results_path = run_dir / "results.json"
    if results_path.exists():
        logger.info("%s already contains finished results; skipping the run", run_dir)
        return json.loads(results_path.read_text())

    dump_config(config, run_dir / "config.yaml")
    started = time.perf_counter()
    seed_everything(config.seed)

    task = resolve_task(config.data.task, Path(config.data.root) if config.data.root else None)
    split = choose_few_shot(config, task, run_dir)
    logger.info(
        "task %s: %d classes, %d training and %d validation images (%d shots, seed %d), %d test images",
        task.name, task.num_classes, len(split.train), len(split.val), split.shots, split.seed, len(task.splits["test"]),
    )

    device = resolve_device(config.train.device)
    autocast_dtype = resolve_autocast_dtype(config.train.precision, device)
    backbone = load_backbone(config.backbone.model, config.backbone.pretrained, config.backbone.cache_dir).to(device)
    model = build_model(config, backbone, task).to(device)
    if config.init:
        initialise_from(model, config, backbone)

    reuse_features = not model.learner.image_depends_on_prompt and not config.data.augment
    data = _prepare_splits(config, task, split, backbone, reuse_features, autocast_dtype)

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
        logger.info("resuming %s at epoch %d", run_dir, state.epoch + 1)

    metrics_path = run_dir / "metrics.jsonl"
    writer = _open_tensorboard(run_dir)
    generator = torch.Generator().manual_seed(config.seed)
    task_metric = task.metric

    epochs = range(state.epoch, config.train.epochs)
    progress = tqdm(epochs, desc=f"{config.prompt.method} on {task.name}", unit="epoch", initial=state.epoch, total=config.train.epochs)
    for epoch in progress:
        lr = learning_rate(epoch, config.train)
        for group in optimizer.param_groups:
            group["lr"] = lr

        generator.manual_seed(config.seed * 100_003 + epoch)
        train_loss, train_accuracy = _train_epoch(model, data["train"], optimizer, config, autocast_dtype, generator)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_accuracy": train_accuracy}

        is_last = epoch + 1 == config.train.epochs
        if (epoch + 1) % config.train.eval_every == 0 or is_last:
            val = _evaluate(model, data["val"], config, autocast_dtype, "validating")
            record.update({f"val_{name}": value for name, value in val.items()})
            if val[task_metric] > state.best_score:
                state.best_score = val[task_metric]
                state.best_epoch = epoch + 1
                state.best_prompt = copy.deepcopy(model.learner.state_dict())

        _append_jsonl(metrics_path, record)
        if writer is not None:
            for name, value in record.items():
                if name != "epoch":
                    writer.add_scalar(name, value, epoch + 1)
        progress.set_postfix(loss=f"{train_loss:.3f}", val=f"{record.get(f'val_{task_metric}', float('nan')):.1f}")

        state.epoch = epoch + 1
        _save_state(state_path, state, model, optimizer)

    if writer is not None:
        writer.close()

    if config.train.model_selection == "best_val" and state.best_prompt:
        model.learner.load_state_dict(state.best_prompt)
        selected_epoch = state.best_epoch
    else:
        selected_epoch = config.train.epochs

    val = _evaluate(model, data["val"], config, autocast_dtype, "validating")
    test = _evaluate(model, data["test"], config, autocast_dtype, "testing")
    save_prompt_checkpoint(
        run_dir / "prompt",
        model.learner.state_dict(),
        _checkpoint_metadata(config, backbone, task, {"selected_epoch": selected_epoch, "shots": split.shots, "seed": split.seed}),
    )

    results = {
        "task": task.name,
        "method": config.prompt.method,
        "shots": split.shots,
        "seed": config.seed,
        "metric": task_metric,
        "selected_epoch": selected_epoch,
        "model_selection": config.train.model_selection,
        "val": val,
        "test": test,
        "trainable_parameters": model.learner.num_trainable_parameters(),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "mvlpt_version": __version__,
    }
    write_json_atomic(results_path, results)
    state_path.unlink(missing_ok=True)
    logger.info("%s %s on %s: test %s %.2f", config.prompt.method, run_dir, task.name, task_metric, test[task_metric])
    return results


def _train_epoch(model, item: SplitData, optimizer, config: RunConfig, autocast_dtype, generator) -> tuple[float, float]:
    device = model.backbone.device
    model.train()
    total_loss, correct, count = 0.0, 0, 0

    if item.features is not None:
        order = torch.randperm(len(item.features), generator=generator)
        batches = [
            (None, item.features[index], item.labels[index])
            for index in order.split(config.train.batch_size)
        ]
    else:
        loader = DataLoader(
            item.dataset,
            batch_size=config.train.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=config.data.num_workers,
        )
        batches = ((images, None, labels) for images, labels, _ in loader)

    for images, features, labels in batches:
        labels = labels.to(device)
        with autocast_context(device, autocast_dtype):
            if features is not None:
                logits = model(image_features=features.to(device))
            else:
                logits = model(images.to(device))
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(dim=-1) == labels).sum())
        count += len(labels)
    return total_loss / max(count, 1), 100.0 * correct / max(count, 1)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as stream:
        stream.write(json.dumps(record) + "\n")


def _save_state(path: Path, state: TrainingState, model: PromptedCLIP, optimizer) -> None:
    save_torch_atomic(
        path,
        {
            "epoch": state.epoch,
            "best_score": state.best_score,
            "best_epoch": state.best_epoch,
            "best_prompt": state.best_prompt,
            "prompt": model.learner.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
    )


def _resume(path: Path, model: PromptedCLIP, optimizer) -> TrainingState:
    saved = torch.load(path, map_location=model.backbone.device, weights_only=True)
    model.learner.load_state_dict(saved["prompt"])
    optimizer.load_state_dict(saved["optimizer"])
    return TrainingState(
        epoch=saved["epoch"],
        best_score=saved["best_score"],
        best_epoch=saved["best_epoch"],
        best_prompt=saved["best_prompt"],
    )


# Evaluation of saved prompts and zero-shot --------------------------------------------------


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    config: RunConfig,
    split_name: str = "test",
) -> dict:
    """Evaluate a saved prompt on a task split, loading it strictly."""
    checkpoint = load_prompt_checkpoint(checkpoint_dir)
    task = resolve_task(config.data.task, Path(config.data.root) if config.data.root else None)
    if split_name not in task.splits:
        raise RunError(f"task {task.name} has no {split_name!r} split; it has {', '.join(sorted(task.splits))}")

    device = resolve_device(config.train.device)
    autocast_dtype = resolve_autocast_dtype(config.train.precision, device)
    backbone = load_backbone(config.backbone.model, config.backbone.pretrained, config.backbone.cache_dir).to(device)
    check_compatible(checkpoint, method=config.prompt.method, backbone=backbone.identity, classnames=task.classnames)
    model = build_model(config, backbone, task).to(device)
    load_state_strict(model.learner, checkpoint.state_dict, source=str(checkpoint_dir))

    dataset = ImageDataset(task, task.splits[split_name], backbone.preprocess)
    logits, labels = predict(
        model,
        dataset=dataset,
        batch_size=config.train.eval_batch_size,
        autocast_dtype=autocast_dtype,
        num_workers=config.data.num_workers,
    )
    metrics = compute_metrics(logits, labels)
    return {"task": task.name, "method": config.prompt.method, "split": split_name, "metric": task.metric, split_name: metrics}


def zero_shot(config: RunConfig, split_name: str = "test") -> dict:
    """Zero-shot CLIP on a task split with the task's template ensemble."""
    task = resolve_task(config.data.task, Path(config.data.root) if config.data.root else None)
    if split_name not in task.splits:
        raise RunError(f"task {task.name} has no {split_name!r} split; it has {', '.join(sorted(task.splits))}")

    device = resolve_device(config.train.device)
    autocast_dtype = resolve_autocast_dtype(config.train.precision, device)
    backbone = load_backbone(config.backbone.model, config.backbone.pretrained, config.backbone.cache_dir).to(device)
    dataset = ImageDataset(task, task.splits[split_name], backbone.preprocess)
    features, labels = encode_dataset(
        backbone, dataset, config.train.eval_batch_size, autocast_dtype, config.data.num_workers
    )
    logits = zero_shot_logits(backbone, task.classnames, task.templates, features)
    metrics = compute_metrics(logits, labels)
    return {
        "task": task.name,
        "method": "zero-shot",
        "split": split_name,
        "metric": task.metric,
        "templates": len(task.templates),
        split_name: metrics,
    }
