"""Shared fixtures: a tiny randomly initialised CLIP so tests run on the CPU in seconds."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

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
