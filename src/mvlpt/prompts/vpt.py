"""Visual prompts (VPT, Jia et al. 2022, "Visual Prompt Tuning").

M learned tokens are inserted right after the class token, after the
pre-transformer layer norm. Shallow prompts enter at the input only. Deep
prompts also replace the prompt tokens coming out of each layer with the
next layer's own learned set. The text side is the frozen encoder applied to
hand-written templates.
"""

from __future__ import annotations

from torch import nn

from ..backbone import FrozenCLIP
from .base import PromptLearner, PromptTensors, init_visual_prompts

REFERENCE_TEMPLATES = ("a photo of a {}.",)


class VPTPromptLearner(PromptLearner):
    """Learned visual prompt tokens (VPT); class text features are computed once."""

    method = "vpt"
    text_depends_on_prompt = False
    image_depends_on_prompt = True

    def __init__(self, backbone: FrozenCLIP, n_tokens: int = 16, deep: bool = True, dropout: float = 0.0):
        super().__init__()
        backbone.require_vit("VPT prompts")
        width = backbone.vision_width
        patch_size = backbone.patch_size

        self.deep = deep
        self.n_tokens = n_tokens
        self.visual_dropout = nn.Dropout(dropout)
        # Shapes follow the MVLPT reference: (1, M, D) for the input layer, (L - 1, M, D) for the deep ones.
        self.tokens = nn.Parameter(init_visual_prompts(1, n_tokens, width, patch_size))
        if deep:
            self.deep_tokens = nn.Parameter(init_visual_prompts(backbone.vision_layers - 1, n_tokens, width, patch_size))
        else:
            self.register_parameter("deep_tokens", None)

    def forward(self) -> PromptTensors:
        layers = [self.tokens[0]]
        if self.deep_tokens is not None:
            layers.extend(self.deep_tokens.unbind(0))
        return PromptTensors(visual=layers)
