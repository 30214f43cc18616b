"""Device, precision and random-seed choices shared by training and evaluation."""

from __future__ import annotations

import logging
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run cannot start or continue as configured."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    """Return bfloat16 for autocast, or None for plain fp32."""
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


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Enter bf16 autocast on ``device`` when ``dtype`` is bfloat16, else do nothing."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
