"""Shared fixtures: a tiny randomly initialised CLIP so tests run on the CPU in seconds."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from mvlpt.backbone import FrozenCLIP, load_backbone

TINY_CONFIG = str(resources.files("mvlpt") / "configs" / "tiny-vit.json")


@pytest.fixture(scope="session")
def tiny_config_path() -> str:
    return TINY_CONFIG


@pytest.fixture()
def backbone() -> FrozenCLIP:
    torch.manual_seed(0)
    return load_backbone(TINY_CONFIG)


@pytest.fixture()
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=generator)


def write_image_task(root, classes, seed, train=6, test=3):
    """Write an image-folder task of noisy 16x16 colour images; ``classes`` maps class name to RGB."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for name, rgb in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                noise = rng.integers(-20, 20, size=(16, 16, 3))
                pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root
