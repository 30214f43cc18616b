"""Contrastive pretraining of a small CLIP on the offline benchmark's pretraining splits.

No pretrained CLIP weights can be downloaded offline, and prompt tuning on
a randomly initialised CLIP measures nothing. This module pretrains a small
open_clip configuration on real images whose captions are made from class
names and prompt templates ("a photo of the number: "3"."), using only the
"pretrain" split of the tasks that have one. Those splits share no image
with any test split or few-shot pool, so the prompt-tuning results measured
later are not inflated by pretraining on the evaluation images.

The loss is CLIP's symmetric contrastive loss with one caption per image.
Captions of the same class are positives for each other's images: each row
of the target matrix spreads its mass evenly over those positives, so an
identical caption in the batch is never pushed away as a negative.

The output folder is an ordinary open_clip model folder
(``open_clip_config.json`` and ``open_clip_model.safetensors``). It loads like
any user checkpoint: ``backbone.model=<folder>/open_clip_config.json`` with
``backbone.pretrained=<folder>/open_clip_model.safetensors``, or
``backbone.model=local-dir:<folder>`` through open_clip directly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .backbone import _bundled_config_path, _read_json_config, load_backbone
from .builtin import data_root, load_builtin
from .evaluation import ImageDataset, zero_shot_metrics
from .rundir import replace_atomic, write_json_atomic
from .runtime import autocast_context, resolve_autocast_dtype, seed_everything
from .tasks import Task

logger = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
REPORT_FILE = "pretrain.json"


@dataclass
class PretrainConfig:
    """Settings of one pretraining run; the defaults are those of the shipped offline CLIP."""

    model: str = field(default="mvlpt:mini-vit-32", metadata={"help": "bundled mvlpt:NAME or path of a JSON model configuration"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "built-in tasks whose pretrain split is used; empty = all that have one"})
    steps: int = field(default=1500, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=128, metadata={"help": "images (and captions) per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps before the cosine decay"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batches and captions"})
    precision: str = field(default="auto", metadata={"help": "auto, bf16 or fp32"})
    output: str | None = field(default=None, metadata={"help": "output folder; default <data root>/models/offline-clip"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain {name}={getattr(self, name)} is invalid; it must be at least 1")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise ValueError(f"pretrain warmup_steps={self.warmup_steps} is invalid; use 0 to steps - 1 ({self.steps - 1})")
        if self.lr <= 0:
            raise ValueError(f"pretrain lr={self.lr} is invalid; it must be positive")


def default_output() -> Path:
    return data_root() / "models" / "offline-clip"


def pretrain_tasks(config: PretrainConfig) -> list[Task]:
    """Return the built-in tasks to pretrain on: those named, or every built-in task with a pretrain split."""
    from .builtin import BUILTIN_TASKS

    names = config.tasks or list(BUILTIN_TASKS)
    tasks = [load_builtin(name) for name in names]
    if config.tasks:
        missing = [task.name for task in tasks if "pretrain" not in task.splits]
        if missing:
            raise ValueError(f"task(s) {', '.join(missing)} have no pretrain split; name tasks that have one")
        return tasks
    return [task for task in tasks if "pretrain" in task.splits]


def _model_config_path(model: str) -> Path:
    return _bundled_config_path(model) if model.startswith("mvlpt:") else Path(model)


def _learning_rate(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, class_ids: torch.Tensor, logit_scale) -> torch.Tensor:
    """Symmetric CLIP loss where images and captions of the same class are all positives.

    ``class_ids`` (B,) identifies each image's class across all tasks; image
    i and caption j are a positive pair when their class ids are equal.
    """
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    logits = logit_scale * image_features @ text_features.t()
    positives = (class_ids.unsqueeze(0) == class_ids.unsqueeze(1)).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    image_loss = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_loss = -(targets * torch.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (image_loss + text_loss)


def _encode_pretrain_images(tasks: list[Task], preprocess) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """Preprocessed pretrain images (N, 3, H, W), their global class ids (N,), and each class's captions."""
    images, class_ids, captions = [], [], []
    for task in tasks:
        offset = len(captions)
        dataset = ImageDataset(task, task.splits["pretrain"], preprocess)
        for index in tqdm(range(len(dataset)), desc=f"preparing {task.name} pretrain images", leave=False, unit="img", disable=None):
            image, label, _ = dataset[index]
            images.append(image)
            class_ids.append(offset + label)
        for name in task.classnames:
            captions.append([template.format(name) for template in task.templates])
    return torch.stack(images), torch.tensor(class_ids), captions


def pretrain(config: PretrainConfig) -> Path:
    """Pretrain the model and write the open_clip folder; return the folder path."""
    started = time.perf_counter()
    seed_everything(config.seed)
    output = Path(config.output) if config.output else default_output()
    tasks = pretrain_tasks(config)
    if not tasks:
        raise ValueError("no built-in task has a pretrain split installed; run `make data` first")

    model_cfg, preprocess_cfg = _read_json_config(_model_config_path(config.model))
    backbone = load_backbone(config.model, pretrained=None)
    model = backbone.model
    for parameter in model.parameters():
        parameter.requires_grad_(True)

    images, class_ids, captions = _encode_pretrain_images(tasks, backbone.preprocess)
    logger.info(
        "pretraining %s on %d images of %d classes from %s", config.model, len(images), len(captions),
        ", ".join(task.name for task in tasks),
    )

    device = torch.device("cpu")
    autocast_dtype = resolve_autocast_dtype(config.precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []

    model.train()
    progress = tqdm(range(config.steps), desc="pretraining", unit="step", disable=None)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        batch_ids = class_ids[batch]
        choices = torch.randint(0, 1 << 30, (config.batch_size,), generator=generator).tolist()
        texts = [captions[c][choice % len(captions[c])] for c, choice in zip(batch_ids.tolist(), choices)]

        # Captions are cut after their longest sequence; with the causal mask this changes no feature.
        token_ids = backbone.trim_token_ids(backbone.tokenize(texts))
        with autocast_context(device, autocast_dtype):
            image_features = model.encode_image(images[batch])
            text_features = backbone.encode_text_embeddings(model.token_embedding(token_ids), token_ids)
            loss = contrastive_loss(image_features, text_features, batch_ids, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            # CLIP clamps the temperature so logits stay below 100.
            model.logit_scale.clamp_(0, math.log(100))

        losses.append(loss.item())
        if step % 20 == 0:
            progress.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")

    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    _write_model_folder(output, model, model_cfg, preprocess_cfg)
    report = {
        "config": dataclasses.asdict(config),
        "tasks": [task.name for task in tasks],
        "pretrain_images": len(images),
        "classes": len(captions),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }
    write_json_atomic(output / REPORT_FILE, report)
    logger.info("wrote the pretrained model to %s in %.0f s", output, report["wall_time_s"])
    return output


def _write_model_folder(output: Path, model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict) -> None:
    """Write weights then configuration atomically, so a folder with a config always has complete weights."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    replace_atomic(output / WEIGHTS_FILE, lambda temporary: save_file(state, temporary))
    write_json_atomic(output / CONFIG_FILE, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})


def zero_shot_report(folder: Path, tasks: list[Task], batch_size: int = 256) -> dict[str, dict]:
    """Zero-shot test accuracy of the pretrained model on each task, beside chance (100 / classes)."""
    backbone = load_backbone(str(folder / CONFIG_FILE), pretrained=str(folder / WEIGHTS_FILE))
    dtype = resolve_autocast_dtype("auto", backbone.device)
    report = {}
    for task in tasks:
        metrics = zero_shot_metrics(backbone, task, "test", batch_size, dtype)
        report[task.name] = {
            "metric": task.metric,
            "zero_shot": metrics[task.metric],
            "chance": 100.0 / task.num_classes,
            "seen_in_pretraining": "pretrain" in task.splits,
        }
    return report


def format_report(report: dict[str, dict]) -> str:
    lines = ["| task | seen in pretraining | metric | zero-shot | chance |", "|---|---|---|---|---|"]
    for name, row in report.items():
        seen = "yes" if row["seen_in_pretraining"] else "no"
        lines.append(f"| {name} | {seen} | {row['metric']} | {row['zero_shot']:.1f} | {row['chance']:.1f} |")
    return "\n".join(lines)


def load_report(folder: Path) -> dict:
    return json.loads((folder / REPORT_FILE).read_text())
