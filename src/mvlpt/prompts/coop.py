"""Text prompts (CoOp, Zhou et al. 2022, "Learning to Prompt for Vision-Language Models").

M learned context vectors are placed in the token sequence of each class
prompt, around the tokens of the class name. The sequence for class c is
built from "[SOT] X ... X <class name>. [EOT]": the M placeholder positions
receive the context, and the class-name tokens are moved to the end, the
middle or the front of the context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..backbone import FrozenCLIP
from .base import PromptLearner, PromptTensors

logger = logging.getLogger(__name__)

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class ClassPromptLayout(nn.Module):
    """Token embeddings of the class prompts and where the context goes in each.

    Contains, as frozen buffers, the token embeddings of "X ... X <name>." for
    every class and an index that gives, for every output position, the
    token or the context vector that fills it. ``build`` assembles all class
    prompts with one gather, with no Python loop over classes.
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        classnames: Sequence[str],
        n_ctx: int,
        class_token_position: str = "end",
    ):
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"class_token_position {class_token_position!r} is invalid; use one of {', '.join(CLASS_TOKEN_POSITIONS)}"
            )
        self.n_ctx = n_ctx
        self.class_token_position = class_token_position
        self.classnames = [name.replace("_", " ") for name in classnames]

        placeholder = " ".join(["X"] * n_ctx)
        texts = [f"{placeholder} {name}." for name in self.classnames]
        token_ids = backbone.tokenize(texts)
        name_lengths = torch.tensor([backbone.count_tokens(name) for name in self.classnames])
        self._check_fits(token_ids, name_lengths, n_ctx)
        token_ids = backbone.trim_token_ids(token_ids)

        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("token_embeddings", backbone.token_embeddings(token_ids).float(), persistent=False)
        self.register_buffer("name_lengths", name_lengths, persistent=False)
        self.register_buffer("source_index", self._source_index(token_ids.shape[1], name_lengths), persistent=False)

    def _check_fits(self, token_ids: torch.Tensor, name_lengths: torch.Tensor, n_ctx: int) -> None:
        # A prompt cut by the tokenizer has no padding in its last column. Besides the context and
        # the name, a prompt needs the start token, the final "." and the end token.
        context_length = token_ids.shape[1]
        too_long = [index for index, token in enumerate(token_ids[:, -1].tolist()) if token != 0]
        if not too_long:
            return
        longest = int(name_lengths.max())
        max_ctx = context_length - longest - 3
        name = self.classnames[too_long[0]]
        fix = f"use at most {max_ctx} context vectors" if max_ctx >= 1 else "shorten the class names"
        raise ValueError(
            f"{len(too_long)} class prompt(s) with {n_ctx} context vectors do not fit the text context of "
            f"{context_length} tokens, for example class {name[:60]!r} ({int(name_lengths[too_long[0]])} tokens); {fix}"
        )

    def _source_index(self, length: int, name_lengths: torch.Tensor) -> torch.Tensor:
        """Index (C, L) into [token embeddings (L) ++ context (M)] for every output position."""
        n_ctx = self.n_ctx
        positions = torch.arange(length).unsqueeze(0)  # (1, L)
        names = name_lengths.unsqueeze(1)  # (C, 1)
        context = lambda j: length + j  # noqa: E731 - position of context vector j in the joint source

        # Tokenised layout: 0 = SOT, 1..M = placeholders, M+1..M+n = class name, then ".", EOT, padding.
        if self.class_token_position == "end":
            index = torch.where((positions >= 1) & (positions <= n_ctx), context(positions - 1), positions)
            return index.expand(len(name_lengths), -1).contiguous()

        if self.class_token_position == "middle":
            half = n_ctx // 2
            first_half = (positions >= 1) & (positions <= half)
            name = (positions > half) & (positions <= half + names)
            second_half = (positions > half + names) & (positions <= n_ctx + names)
            index = positions.expand(len(name_lengths), -1)
            index = torch.where(first_half, context(positions - 1), index)
            index = torch.where(name, positions + (n_ctx - half), index)
            index = torch.where(second_half, context(positions - names - 1), index)
            return index

        # front: SOT, class name, context, then the rest.
        name = (positions >= 1) & (positions <= names)
        ctx = (positions > names) & (positions <= names + n_ctx)
        index = positions.expand(len(name_lengths), -1)
        index = torch.where(name, positions + n_ctx, index)
        index = torch.where(ctx, context(positions - names - 1), index)
        return index

    def build(self, context: torch.Tensor, class_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings (C, L, D) from a context of shape (M, D) or (C_all, M, D)."""
        embeddings = self.token_embeddings
        index = self.source_index
        if class_indices is not None:
            embeddings = embeddings[class_indices]
            index = index[class_indices]
            if context.dim() == 3:
                context = context[class_indices]

        n_classes = embeddings.shape[0]
        if context.dim() == 2:
            context = context.unsqueeze(0).expand(n_classes, -1, -1)
        source = torch.cat([embeddings.to(context.dtype), context], dim=1)
        gather_index = index.unsqueeze(-1).expand(-1, -1, source.shape[-1])
        return torch.gather(source, 1, gather_index)

    def selected_token_ids(self, class_indices: torch.Tensor | None = None) -> torch.Tensor:
        return self.token_ids if class_indices is None else self.token_ids[class_indices]


def context_from_words(backbone: FrozenCLIP, words: str) -> torch.Tensor:
    """Token embeddings (M, D) of ``words``; M is their number of tokens."""
    words = words.replace("_", " ").strip()
    token_ids = backbone.tokenize([words])[0]
    n_tokens = backbone.count_tokens(words)
    if n_tokens < 1:
        raise ValueError(f"ctx_init {words!r} has no tokens; give words such as 'a photo of a'")
    return backbone.token_embeddings(token_ids[1 : 1 + n_tokens].unsqueeze(0))[0].float().clone()


class CoOpPromptLearner(PromptLearner):
    """Learned text context (CoOp); the image side is the frozen encoder."""

    method = "coop"
    text_depends_on_prompt = True
    image_depends_on_prompt = False

    def __init__(
        self,
        backbone: FrozenCLIP,
        classnames: Sequence[str],
        n_ctx: int = 16,
        ctx_init: str = "",
        class_specific: bool = False,
        class_token_position: str = "middle",
    ):
        super().__init__()
        backbone.require_text_tower("CoOp prompts")
        if ctx_init and class_specific:
            raise ValueError("ctx_init cannot be combined with class-specific contexts; drop one of them")

        if ctx_init:
            context = context_from_words(backbone, ctx_init)
            n_ctx = context.shape[0]
        elif class_specific:
            context = torch.empty(len(classnames), n_ctx, backbone.text_width).normal_(std=0.02)
        else:
            context = torch.empty(n_ctx, backbone.text_width).normal_(std=0.02)

        self.class_specific = class_specific
        self.ctx = nn.Parameter(context)
        self.layout = ClassPromptLayout(backbone, classnames, n_ctx, class_token_position)

    def forward(self) -> PromptTensors:
        return PromptTensors(text_context=self.ctx)
