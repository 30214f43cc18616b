"""The frozen CLIP backbone that prompts are inserted into.

The backbone wraps an open_clip model and exposes the two paths prompt tuning
needs: text from token embeddings to the projected end-of-text feature, and
images from patch tokens through each vision transformer layer to the pooled
projection. It never changes a weight or buffer of the wrapped model.
"""

from __future__ import annotations

import difflib
import json
import logging
from importlib import resources
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2
import torch
from open_clip.transformer import TextTransformer, VisionTransformer, text_global_pool
from torch import nn

logger = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """The backbone could not be built, or does not support a requested prompt."""


BUNDLED_PREFIX = "mvlpt:"
RANDOM_WEIGHTS_SEED = 0


def bundled_configs() -> list[str]:
    """Names of the small model configurations shipped with mvlpt, usable as ``mvlpt:NAME``."""
    folder = resources.files("mvlpt") / "configs"
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def _bundled_config_path(model: str) -> Path:
    name = model[len(BUNDLED_PREFIX) :]
    if name not in bundled_configs():
        raise BackboneError(
            f"{model!r} is not a bundled model configuration; bundled ones are "
            f"{', '.join(BUNDLED_PREFIX + item for item in bundled_configs())}"
        )
    return Path(str(resources.files("mvlpt") / "configs" / f"{name}.json"))


# The offline CLIP that `mvlpt pretrain` writes for the bundled mvlpt:mini-vit-32 configuration.
OFFLINE_TAG = "offline"
OFFLINE_MODEL = "mvlpt:mini-vit-32"


def offline_checkpoint() -> Path:
    """Weights file of the offline CLIP: <data root>/models/offline-clip/open_clip_model.safetensors."""
    from .builtin import data_root

    return data_root() / "models" / "offline-clip" / "open_clip_model.safetensors"


def _resolve_pretrained(model: str, pretrained: str | None) -> str | None:
    """Map the tag "offline" of mvlpt:mini-vit-32 to the weights file that `mvlpt pretrain` writes."""
    if pretrained != OFFLINE_TAG or not model.startswith(BUNDLED_PREFIX):
        return pretrained
    if model != OFFLINE_MODEL:
        raise BackboneError(
            f"the pretrained tag {OFFLINE_TAG!r} exists only for {OFFLINE_MODEL}, not {model!r}; "
            f"use backbone.model={OFFLINE_MODEL} or a checkpoint file"
        )
    path = offline_checkpoint()
    if not path.is_file():
        raise BackboneError(
            f"the offline CLIP weights {path} are missing; create them with `make pretrained` "
            f"(or `mvlpt pretrain`), which takes about 15 minutes on two CPU cores"
        )
    return str(path)


def _is_json_config(model: str) -> bool:
    return model.endswith(".json") and not model.startswith(("hf-hub:", "local-dir:"))


def _read_json_config(path: Path) -> tuple[dict, dict]:
    """Return (model_cfg, preprocess_cfg) from an open_clip model configuration file."""
    if not path.is_file():
        raise BackboneError(
            f"model configuration file {str(path)!r} not found; pass an open_clip model name "
            f"(for example ViT-B-16) or the path of an existing JSON configuration"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BackboneError(f"model configuration {str(path)!r} is not valid JSON: {error}") from error

    # Both the bare open_clip layout and the hub layout ({"model_cfg": ..., "preprocess_cfg": ...}) are accepted.
    model_cfg = data.get("model_cfg", data)
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
    if missing:
        raise BackboneError(
            f"model configuration {str(path)!r} lacks {', '.join(missing)}; an open_clip CLIP configuration "
            f"has embed_dim, vision_cfg and text_cfg"
        )
    return dict(model_cfg), dict(data.get("preprocess_cfg", {}))


def _build_from_json(path: Path, pretrained: str | None) -> tuple[nn.Module, Any, Any, Callable]:
    model_cfg, preprocess_overrides = _read_json_config(path)
    if model_cfg.get("custom_text") or "hf_model_name" in model_cfg.get("text_cfg", {}):
        raise BackboneError(
            f"model configuration {str(path)!r} uses a custom or Hugging Face text tower; "
            f"mvlpt needs open_clip's own text transformer"
        )
    model = open_clip.CLIP(**model_cfg)

    if pretrained is not None:
        checkpoint = Path(pretrained)
        if not checkpoint.is_file():
            raise BackboneError(
                f"checkpoint {pretrained!r} for model configuration {str(path)!r} not found; "
                f"pass the path of an existing .safetensors, .bin or .pt file, or backbone.pretrained=null for random weights"
            )
        try:
            open_clip.load_checkpoint(model, str(checkpoint), strict=True)
        except Exception as error:  # unreadable files and mismatched weights surface as many exception types
            # Keep the first line only: torch's unpickling errors go on to suggest unsafe loading.
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BackboneError(
                f"checkpoint {pretrained!r} could not be loaded into model configuration {str(path)!r} "
                f"({type(error).__name__}: {reason[:300]}); pass a weights file saved from this configuration"
            ) from error

    text_cfg = model_cfg["text_cfg"]
    vision_cfg = model_cfg["vision_cfg"]
    if "hf_tokenizer_name" in text_cfg:
        tokenizer = open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77)
        )
    else:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))

    preprocess_cfg = asdict(PreprocessCfg(size=vision_cfg.get("image_size", 224)))
    preprocess_cfg.update(preprocess_overrides)
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    return model, tokenizer, preprocess, preprocess_cfg


def _unknown_model_message(name: str) -> str:
    known = open_clip.list_models()
    close = difflib.get_close_matches(name, known, n=5)
    hint = f" Close names: {', '.join(close)}." if close else ""
    return (
        f"open_clip does not know the model {name!r}.{hint} Pass a name from open_clip.list_models(), "
        f"an hf-hub:ORG/REPO or local-dir:PATH id, or the path of a JSON model configuration."
    )


def _build_by_name(name: str, pretrained: str | None, cache_dir: str | None) -> tuple[nn.Module, Any, Any, dict]:
    has_schema = name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and name not in open_clip.list_models():
        raise BackboneError(_unknown_model_message(name))

    is_file = pretrained is not None and Path(pretrained).suffix in {".safetensors", ".bin", ".pt", ".pth"}
    if is_file and not Path(pretrained).is_file():
        raise BackboneError(f"checkpoint file {pretrained!r} for model {name!r} not found; check the path")
    if not has_schema and pretrained is not None and not is_file:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise BackboneError(
                f"model {name!r} has no pretrained tag {pretrained!r}; known tags: {', '.join(tags) or 'none'}. "
                f"Pass one of them, the path of a checkpoint file, or backbone.pretrained=null for random weights."
            )

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None if has_schema else pretrained, cache_dir=cache_dir
        )
    except Exception as error:  # download and hub failures come in many exception types
        source = name if has_schema else f"{name} ({pretrained})"
        raise BackboneError(
            f"could not load the weights of {source}: {error}. Without internet access, download the checkpoint "
            f"on another machine (open_clip.create_model_and_transforms or huggingface-cli download), then pass "
            f"backbone.pretrained=/path/to/checkpoint.safetensors, or point backbone.cache_dir at a folder that "
            f"already holds it."
        ) from error

    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return model, tokenizer, preprocess, preprocess_cfg


class FrozenCLIP(nn.Module):
    """A frozen open_clip CLIP with entry points for text and visual prompts.

    All parameters have ``requires_grad=False`` and the module stays in eval
    mode even when a parent module calls ``train()``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable,
        preprocess: Callable,
        identity: dict[str, Any],
        preprocess_cfg: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.preprocess_cfg = dict(preprocess_cfg or {})
        self._identity = dict(identity)

        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()

        self._text = self._text_tower()

    # Construction ---------------------------------------------------------------------------

    @classmethod
    def load(cls, model: str, pretrained: str | None = None, cache_dir: str | None = None) -> "FrozenCLIP":
        """Build the backbone from an open_clip name, a hub or local-dir id, a JSON configuration, or ``mvlpt:NAME``.

        ``mvlpt:NAME`` names a small configuration bundled with the package
        (see ``bundled_configs``), for tests and offline runs.

        ``pretrained`` is an open_clip pretrained tag or a checkpoint file; None keeps random weights.
        """
        # Random weights come from a fixed seed, so train, evaluate and zero-shot all build
        # the same random backbone. The caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            if model.startswith(BUNDLED_PREFIX):
                weights = _resolve_pretrained(model, pretrained)
                clip, tokenizer, preprocess, preprocess_cfg = _build_from_json(_bundled_config_path(model), weights)
            elif _is_json_config(model):
                clip, tokenizer, preprocess, preprocess_cfg = _build_from_json(Path(model), pretrained)
            else:
                clip, tokenizer, preprocess, preprocess_cfg = _build_by_name(model, pretrained, cache_dir)

        if pretrained is None and not model.startswith(("hf-hub:", "local-dir:")):
            logger.warning("backbone %s has random weights (backbone.pretrained is null)", model)

        identity = {"model": model, "pretrained": pretrained}
        backbone = cls(clip, tokenizer, preprocess, identity, preprocess_cfg)
        logger.info(
            "loaded backbone %s: text width %d, vision width %s, %s vision layers, embedding %d",
            model,
            backbone.text_width,
            backbone.vision_width if backbone.is_vit else "n/a",
            backbone.vision_layers if backbone.is_vit else "n/a",
            backbone.embed_dim,
        )
        return backbone

    def _text_tower(self) -> nn.Module | None:
        """Return the module that owns the text transformer's parts, or None if unsupported."""
        model = self.model
        if hasattr(model, "token_embedding") and hasattr(model, "ln_final"):
            return model
        text = getattr(model, "text", None)
        if isinstance(text, TextTransformer) and text.cls_emb is None and not text.use_pad_mask:
            return text
        return None

    def train(self, mode: bool = True) -> "FrozenCLIP":
        # The backbone is frozen: dropout and other train-time behaviour stay off.
        super().train(False)
        return self

    # Identity and shapes ----------------------------------------------------------------------

    @property
    def identity(self) -> dict[str, Any]:
        """Model name, weights and the widths that prompt checkpoints must match."""
        info = dict(self._identity)
        info.update(
            text_width=self.text_width,
            vision_width=self.vision_width if self.is_vit else None,
            vision_layers=self.vision_layers if self.is_vit else None,
            embed_dim=self.embed_dim,
        )
        return info

    @property
    def is_vit(self) -> bool:
        return isinstance(self.model.visual, VisionTransformer)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def text_width(self) -> int:
        self.require_text_tower("text prompts")
        return int(self._text.ln_final.weight.shape[0])

    @property
    def vision_width(self) -> int:
        self.require_vit("visual prompts")
        return int(self.model.visual.conv1.out_channels)

    @property
    def vision_layers(self) -> int:
        self.require_vit("visual prompts")
        return len(self.model.visual.transformer.resblocks)

    @property
    def patch_size(self) -> tuple[int, int]:
        self.require_vit("visual prompts")
        return tuple(self.model.visual.conv1.kernel_size)

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, already exponentiated."""
        return self.model.logit_scale.exp()

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def require_vit(self, feature: str) -> None:
        if not self.is_vit:
            raise BackboneError(
                f"{feature} need a vision transformer, but backbone {self._identity['model']!r} has a "
                f"{type(self.model.visual).__name__} image tower; use a ViT model or text prompts (prompt.method=coop)"
            )

    def require_text_tower(self, feature: str) -> None:
        if self._text is None:
            raise BackboneError(
                f"{feature} need open_clip's own text transformer, but backbone {self._identity['model']!r} uses "
                f"{type(getattr(self.model, 'text', None)).__name__}; choose a CLIP model with a standard text tower"
            )

    # Text path ------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of shape (N, context_length), padded with zeros."""
        return self.tokenizer(list(texts))

    def trim_token_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Drop padding columns after the longest sequence when the text transformer is causal.

        With a causal mask no position attends to a later one, so the
        end-of-text feature is the same with or without the trailing padding.
        """
        if getattr(self._text, "attn_mask", None) is None:
            return token_ids
        used = (token_ids != 0).any(dim=0).nonzero()
        length = int(used.max()) + 1 if len(used) else 1
        return token_ids[:, :length]

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` without the start and end tokens."""
        encode = getattr(self.tokenizer, "encode", None)
        if callable(encode):
            return len(encode(text))
        token_ids = self.tokenize([text])[0]
        return int((token_ids != 0).nonzero().max()) - 1

    @torch.no_grad()
    def token_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Input token embeddings of shape (N, L, text_width), without positional embeddings."""
        self.require_text_tower("text prompts")
        return self._text.token_embedding(token_ids.to(self.device))

    def encode_text_embeddings(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Run token embeddings (N, L, D) through the text transformer; return projected features (N, E).

        ``token_ids`` (N, L) locate the pooled end-of-text position exactly as
        open_clip's ``encode_text`` does. L may be shorter than the context length.
        """
        self.require_text_tower("text prompts")
        text = self._text
        length = embeddings.shape[1]
        cast_dtype = text.transformer.get_cast_dtype()

        x = embeddings.to(cast_dtype) + text.positional_embedding[:length].to(cast_dtype)
        attn_mask = getattr(text, "attn_mask", None)
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length]
        x = text.transformer(x, attn_mask=attn_mask)
        x = text.ln_final(x)

        pool_type = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", "argmax")
        eos_id = getattr(text, "text_eos_id", None) or getattr(text, "eos_id", None)
        pooled = text_global_pool(x, token_ids.to(x.device), pool_type, eos_token_id=eos_id)

        projection = text.text_projection
        if projection is None:
            return pooled
        if isinstance(projection, nn.Linear):
            return projection(pooled)
        return pooled @ projection

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised features of plain texts, through the same path as prompted text."""
        token_ids = self.tokenize(texts)
        cut = [text for text, last in zip(texts, token_ids[:, -1].tolist()) if last != 0]
        if cut:
            logger.warning(
                "%d text(s) are longer than the text context of %d tokens and were cut, for example %r",
                len(cut), token_ids.shape[1], cut[0][:80],
            )
        token_ids = self.trim_token_ids(token_ids).to(self.device)
        return self.encode_text_embeddings(self.token_embeddings(token_ids), token_ids)

    # Image path -----------------------------------------------------------------------------

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Class token and patch tokens after the pre-transformer layer norm, shape (B, 1 + P, D)."""
        self.require_vit("visual prompts")
        return self.model.visual._embeds(images)

    def encode_image(
        self, images: torch.Tensor, layer_prompts: Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """Unnormalised image features (B, E), with optional visual prompt tokens.

        ``layer_prompts[0]`` (B, M, D) is inserted right after the class token
        before the first layer. For ``i >= 1`` a tensor ``layer_prompts[i]``
        replaces the M prompt tokens coming out of layer ``i - 1`` before layer
        ``i`` runs; None keeps them. The prompt tokens are removed before pooling.
        """
        if not layer_prompts:
            return self.model.encode_image(images)

        self.require_vit("visual prompts")
        visual = self.model.visual
        blocks = visual.transformer.resblocks
        if len(layer_prompts) > len(blocks):
            raise BackboneError(
                f"{len(layer_prompts)} sets of visual prompts given, but the vision transformer has {len(blocks)} layers"
            )

        x = visual._embeds(images)
        first = layer_prompts[0].to(x.dtype)
        n_prompts = first.shape[1]
        x = torch.cat([x[:, :1], first, x[:, 1:]], dim=1)

        batch_first = getattr(visual.transformer, "batch_first", True)
        for index, block in enumerate(blocks):
            prompts = layer_prompts[index] if 0 < index < len(layer_prompts) else None
            if prompts is not None:
                x = torch.cat([x[:, :1], prompts.to(x.dtype), x[:, 1 + n_prompts :]], dim=1)
            if batch_first:
                x = block(x)
            else:
                x = block(x.transpose(0, 1)).transpose(0, 1)

        x = torch.cat([x[:, :1], x[:, 1 + n_prompts :]], dim=1)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled


def load_backbone(model: str, pretrained: str | None = None, cache_dir: str | None = None) -> FrozenCLIP:
    """Load a frozen backbone; see ``FrozenCLIP.load``."""
    return FrozenCLIP.load(model, pretrained=pretrained, cache_dir=cache_dir)
