"""A frozen CLIP with a prompt learner: class logits for images."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import FrozenCLIP
from .prompts import CoOpPromptLearner, PromptLearner, PromptTensors, UPTPromptLearner, VPTPromptLearner

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_class_templates(
    backbone: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Normalised class features (C, E): the mean of each class's normalised template features, renormalised.

    This is CLIP's zero-shot prompt ensemble; with one template it is that
    template's normalised feature.
    """
    if not templates:
        raise ValueError("at least one prompt template is needed to encode class names")
    texts = [template.format(name.replace("_", " ")) for name in classnames for template in templates]
    features = []
    for start in range(0, len(texts), batch_size):
        features.append(F.normalize(backbone.encode_text(texts[start : start + batch_size]).float(), dim=-1))
    features = torch.cat(features).reshape(len(classnames), len(templates), -1)
    return F.normalize(features.mean(dim=1), dim=-1)


class PromptedCLIP(nn.Module):
    """Logits of a frozen CLIP whose text or image path carries learned prompts.

    The text side of VPT does not depend on the prompt: its class features
    are encoded once from ``templates`` and kept. The image side of CoOp
    does not depend on the prompt either, so callers may pass precomputed
    ``image_features`` to ``forward``.
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        learner: PromptLearner,
        classnames: Sequence[str],
        templates: Sequence[str] = ("a photo of a {}.",),
    ):
        super().__init__()
        self.backbone = backbone
        self.learner = learner
        self.classnames = list(classnames)
        self.templates = list(templates)
        self._fixed_text_features: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def fixed_text_features(self) -> torch.Tensor:
        """Class features from the templates, encoded on first use and then reused."""
        device = self.backbone.device
        if self._fixed_text_features is None or self._fixed_text_features.device != device:
            self._fixed_text_features = encode_class_templates(self.backbone, self.classnames, self.templates)
        return self._fixed_text_features

    def text_features(self, prompts: PromptTensors, class_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class features (C, E), for all classes or only ``class_indices``."""
        if prompts.text_context is None:
            features = self.fixed_text_features()
            return features if class_indices is None else features[class_indices]

        layout = self.learner.layout
        embeddings = layout.build(prompts.text_context, class_indices)
        token_ids = layout.selected_token_ids(class_indices)
        return F.normalize(self.backbone.encode_text_embeddings(embeddings, token_ids), dim=-1)

    def image_features(self, images: torch.Tensor, prompts: PromptTensors) -> torch.Tensor:
        """Normalised image features (B, E), with the prompts' visual tokens if any."""
        layer_prompts = self.learner.batch_visual_prompts(prompts.visual, images.shape[0])
        return F.normalize(self.backbone.encode_image(images, layer_prompts), dim=-1)

    def forward(
        self,
        images: torch.Tensor | None = None,
        *,
        image_features: torch.Tensor | None = None,
        class_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, C): temperature times the cosine similarity of image and class features."""
        prompts = self.learner()
        if image_features is None:
            if images is None:
                raise ValueError("forward needs images or precomputed image_features")
            image_features = self.image_features(images, prompts)
        elif self.learner.image_depends_on_prompt:
            raise ValueError(
                f"{self.learner.method} prompts change the image features, so precomputed image_features cannot be used"
            )

        text_features = self.text_features(prompts, class_indices)
        return self.backbone.logit_scale * image_features @ text_features.to(image_features.dtype).t()


def build_prompt_learner(prompt_config, backbone: FrozenCLIP, classnames: Sequence[str]) -> PromptLearner:
    """Create the learner named by ``prompt_config.method`` from its sub-config."""
    method = prompt_config.method
    if method == "coop":
        config = prompt_config.coop
        learner = CoOpPromptLearner(
            backbone,
            classnames,
            n_ctx=config.n_ctx,
            ctx_init=config.ctx_init,
            class_specific=config.class_specific,
            class_token_position=config.class_token_position,
        )
    elif method == "vpt":
        config = prompt_config.vpt
        learner = VPTPromptLearner(backbone, n_tokens=config.n_tokens, deep=config.deep, dropout=config.dropout)
    elif method == "upt":
        config = prompt_config.upt
        learner = UPTPromptLearner(
            backbone,
            classnames,
            n_ctx=config.n_ctx,
            n_tokens=config.n_tokens,
            width=config.width,
            deep=config.deep,
            dropout=config.dropout,
            ctx_init=config.ctx_init,
            class_token_position=config.class_token_position,
            attention=config.attention,
        )
    else:
        raise ValueError(f"prompt.method {method!r} is invalid; use coop, vpt or upt")
    return learner.to(backbone.device)


def vpt_templates(prompt_config, task_templates: Sequence[str]) -> list[str]:
    """Return the VPT text-side templates: the configured list, or the task's own for ["task"]."""
    templates = list(prompt_config.vpt.templates)
    if templates == ["task"]:
        return list(task_templates)
    return templates
