"""Measure what the frozen-work caches save per training step.

CoOp's image features and VPT's class text features do not depend on the
prompt, so the training loop computes them once per run. This script times
one optimisation step with and without each cache on random inputs:

- CoOp with precomputed image features, against encoding the batch each step;
- VPT with class text features encoded once, against re-encoding them each step.

Example (the figures in docs/benchmarks/core.md):

    python benchmarks/frozen_caches.py --model ViT-B-16 --steps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from statistics import median

import torch
import torch.nn.functional as F

from mvlpt.backbone import load_backbone
from mvlpt.model import PromptedCLIP, encode_class_templates
from mvlpt.prompts import CoOpPromptLearner, VPTPromptLearner
from mvlpt.training import resolve_autocast_dtype


def time_steps(step, steps: int) -> float:
    """Median wall time of ``step()`` in seconds, after one warm-up call."""
    step()
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        durations.append(time.perf_counter() - started)
    return median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name or mvlpt:NAME (random weights)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument("--classes", type=int, default=10, help="number of classes")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="autocast precision")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cpu")
    dtype = resolve_autocast_dtype(args.precision, device)
    backbone = load_backbone(args.model, pretrained=None)
    classnames = [f"class {index}" for index in range(args.classes)]
    images = torch.randn(args.batch_size, 3, backbone.image_size, backbone.image_size)
    labels = torch.randint(0, args.classes, (args.batch_size,))
    autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)  # noqa: E731

    coop = PromptedCLIP(backbone, CoOpPromptLearner(backbone, classnames), classnames)
    coop_optimizer = torch.optim.SGD(coop.learner.parameters(), lr=0.002, momentum=0.9)
    with torch.no_grad(), autocast():
        cached_features = F.normalize(backbone.encode_image(images).float(), dim=-1)

    def coop_step(features):
        with autocast():
            logits = coop(image_features=features) if features is not None else coop(images)
        loss = F.cross_entropy(logits.float(), labels)
        coop_optimizer.zero_grad()
        loss.backward()
        coop_optimizer.step()

    vpt = PromptedCLIP(backbone, VPTPromptLearner(backbone), classnames)
    vpt_optimizer = torch.optim.SGD(vpt.learner.parameters(), lr=0.002, momentum=0.9)

    def vpt_step(reencode_text: bool):
        if reencode_text:
            vpt._fixed_text_features = None
        with autocast():
            logits = vpt(images)
        loss = F.cross_entropy(logits.float(), labels)
        vpt_optimizer.zero_grad()
        loss.backward()
        vpt_optimizer.step()

    def encode_once():
        with torch.no_grad(), autocast():
            backbone.encode_image(images)

    def encode_text_once():
        with autocast():
            encode_class_templates(backbone, classnames, ["a photo of a {}."])

    timings = {
        "coop_step_cached_image_features_s": time_steps(lambda: coop_step(cached_features), args.steps),
        "coop_step_encoding_images_s": time_steps(lambda: coop_step(None), args.steps),
        "image_encoding_per_batch_s": time_steps(encode_once, args.steps),
        "vpt_step_cached_text_features_s": time_steps(lambda: vpt_step(False), args.steps),
        "vpt_step_reencoding_text_s": time_steps(lambda: vpt_step(True), args.steps),
        "class_text_encoding_s": time_steps(encode_text_once, args.steps),
    }
    report = {
        "model": args.model,
        "batch_size": args.batch_size,
        "classes": args.classes,
        "autocast": str(dtype),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        **{name: round(value, 4) for name, value in timings.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
