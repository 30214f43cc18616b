"""The base class of prompt learners, and the prompt tensors they produce."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass
class PromptTensors:
    """The prompts of one forward pass, before they are broadcast over a batch.

    ``text_context`` is (M, D_text) for a shared context or (C, M, D_text) for
    class-specific contexts. ``visual`` contains one (M, D_vision) tensor per
    vision layer that receives prompts: the first is inserted before layer 0,
    the others replace the prompt tokens before layers 1, 2, ...
    """

    text_context: torch.Tensor | None = None
    visual: list[torch.Tensor] | None = None


class PromptLearner(nn.Module):
    """Base class of the CoOp, VPT and UPT prompt learners.

    Subclasses set ``method`` and the two flags that tell the training loop
    which frozen computations can be done once: image features when
    ``image_depends_on_prompt`` is False, class text features when
    ``text_depends_on_prompt`` is False.
    """

    method: ClassVar[str] = ""
    text_depends_on_prompt: ClassVar[bool] = True
    image_depends_on_prompt: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.visual_dropout = nn.Dropout(0.0)

    def forward(self) -> PromptTensors:
        raise NotImplementedError

    def num_trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    def log_parameter_count(self) -> None:
        logger.info("%s prompt learner: %s trainable parameters", self.method.upper(), f"{self.num_trainable_parameters():,}")

    def batch_visual_prompts(self, visual: list[torch.Tensor] | None, batch_size: int) -> list[torch.Tensor] | None:
        """Broadcast each layer's (M, D) prompts to (B, M, D) and apply prompt dropout per sample."""
        if visual is None:
            return None
        return [self.visual_dropout(layer.unsqueeze(0).expand(batch_size, -1, -1)) for layer in visual]


def init_visual_prompts(n_layers: int, n_tokens: int, width: int, patch_size: tuple[int, int]) -> torch.Tensor:
    """Visual prompt tokens (n_layers, n_tokens, width) drawn as VPT does.

    VPT (Jia et al. 2022) draws prompts from U(-a, a) with
    a = sqrt(6 / (3 * patch_h * patch_w + width)), the Xavier bound of the
    patch embedding's fan-in and the token width.
    """
    bound = (6.0 / float(3 * patch_size[0] * patch_size[1] + width)) ** 0.5
    return torch.empty(n_layers, n_tokens, width).uniform_(-bound, bound)
