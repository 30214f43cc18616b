"""Unified prompts (UPT, Zang et al. 2022, "Unified Vision and Language Prompt Learning").

One small set of vectors serves both encoders: a text context (M vectors in
the text width) and visual prompts (M tokens per prompted layer in the vision
width). Before each forward pass all of them are projected to a shared width,
passed through a one-layer, one-head transformer block, projected back, and
split into the text context and each layer's visual prompts.

Attention modes:

- ``per_token`` (default) reproduces the MVLPT reference. There the block
  receives a (1, T, W) tensor but reads its input as (length, batch, width).
  So each of the T prompt tokens is a sequence of length one, the softmax
  over one key is 1, and attention reduces to the value and output
  projections. No prompt token sees another.
- ``joint`` runs true self-attention across all T prompt tokens, the design
  the unified-prompt paper describes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn

from ..backbone import FrozenCLIP
from .base import PromptLearner, PromptTensors, init_visual_prompts
from .coop import ClassPromptLayout, context_from_words

ATTENTION_MODES = ("per_token", "joint")


def _projection(in_width: int, out_width: int) -> nn.Module:
    # As in the reference, no projection is learned when the widths already agree.
    return nn.Identity() if in_width == out_width else nn.Linear(in_width, out_width)


class UPTPromptLearner(PromptLearner):
    """Text context and visual prompts generated jointly by a shared transformer block."""

    method = "upt"
    text_depends_on_prompt = True
    image_depends_on_prompt = True

    def __init__(
        self,
        backbone: FrozenCLIP,
        classnames: Sequence[str],
        n_ctx: int = 4,
        n_tokens: int = 4,
        width: int = 128,
        deep: bool = True,
        dropout: float = 0.0,
        ctx_init: str = "",
        class_token_position: str = "middle",
        attention: str = "per_token",
    ):
        super().__init__()
        backbone.require_text_tower("UPT prompts")
        backbone.require_vit("UPT prompts")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention {attention!r} is invalid; use one of {', '.join(ATTENTION_MODES)}")
        if n_ctx < 1 or n_tokens < 1:
            raise ValueError(f"UPT needs n_ctx >= 1 and n_tokens >= 1, got n_ctx={n_ctx}, n_tokens={n_tokens}")

        text_width = backbone.text_width
        vision_width = backbone.vision_width
        patch_size = backbone.patch_size

        if ctx_init:
            text_ctx = context_from_words(backbone, ctx_init)
            n_ctx = text_ctx.shape[0]
        else:
            text_ctx = torch.empty(n_ctx, text_width).normal_(std=0.02)

        self.deep = deep
        self.n_ctx = n_ctx
        self.n_tokens = n_tokens
        self.attention = attention
        self.visual_dropout = nn.Dropout(dropout)

        self.text_ctx = nn.Parameter(text_ctx)
        self.visual_tokens = nn.Parameter(init_visual_prompts(1, n_tokens, vision_width, patch_size))
        if deep:
            self.deep_visual_tokens = nn.Parameter(
                init_visual_prompts(backbone.vision_layers - 1, n_tokens, vision_width, patch_size)
            )
        else:
            self.register_parameter("deep_visual_tokens", None)

        self.text_in = _projection(text_width, width)
        self.visual_in = _projection(vision_width, width)
        self.block = ResidualAttentionBlock(width, n_head=1, act_layer=QuickGELU, batch_first=True)
        self.text_out = _projection(width, text_width)
        self.visual_out = _projection(width, vision_width)

        self.layout = ClassPromptLayout(backbone, classnames, n_ctx, class_token_position)

    def forward(self) -> PromptTensors:
        visual = self.visual_tokens
        if self.deep_visual_tokens is not None:
            visual = torch.cat([visual, self.deep_visual_tokens], dim=0)
        n_layers, n_tokens, vision_width = visual.shape

        shared = torch.cat(
            [self.text_in(self.text_ctx), self.visual_in(visual.reshape(n_layers * n_tokens, vision_width))], dim=0
        )
        if self.attention == "per_token":
            # T sequences of one token each: no token attends to another.
            shared = self.block(shared.unsqueeze(1)).squeeze(1)
        else:
            shared = self.block(shared.unsqueeze(0)).squeeze(0)

        text_ctx = self.text_out(shared[: self.n_ctx])
        visual = self.visual_out(shared[self.n_ctx :]).reshape(n_layers, n_tokens, vision_width)
        return PromptTensors(text_context=text_ctx, visual=list(visual.unbind(0)))
