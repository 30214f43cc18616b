from __future__ import annotations

import pytest
import torch

from mvlpt.backbone import BackboneError, load_backbone


def test_text_features_equal_open_clip(backbone):
    texts = ["a photo of a cat.", "dog", "a much longer sentence about a small bird on a branch"]
    expected = backbone.model.encode_text(backbone.tokenize(texts))
    ours = backbone.encode_text(texts)
    assert (ours - expected).abs().max() <= 1e-5


def test_prompted_text_path_equals_open_clip(backbone):
    token_ids = backbone.tokenize(["a photo of a cat."])
    embeddings = backbone.token_embeddings(token_ids)
    ours = backbone.encode_text_embeddings(embeddings, token_ids)
    expected = backbone.model.encode_text(token_ids)
    assert (ours - expected).abs().max() <= 1e-5


def test_image_features_equal_open_clip(backbone, images):
    expected = backbone.model.encode_image(images)
    no_prompts = backbone.encode_image(images)
    empty_prompts = backbone.encode_image(images, [torch.zeros(3, 0, backbone.vision_width)])
    assert (no_prompts - expected).abs().max() <= 1e-5
    assert (empty_prompts - expected).abs().max() <= 1e-5


def test_deep_prompts_replace_tokens_per_layer(backbone, images):
    width = backbone.vision_width
    first = torch.randn(3, 2, width)
    shallow = backbone.encode_image(images, [first])
    deep = backbone.encode_image(images, [first, torch.randn(3, 2, width), torch.randn(3, 2, width)])
    assert shallow.shape == (3, backbone.embed_dim)
    assert not torch.allclose(shallow, deep)


def test_backbone_is_frozen(backbone):
    assert all(not parameter.requires_grad for parameter in backbone.parameters())
    backbone.train()
    assert not backbone.model.training


def test_too_many_prompt_layers_rejected(backbone, images):
    prompts = [torch.zeros(3, 1, backbone.vision_width)] * (backbone.vision_layers + 1)
    with pytest.raises(BackboneError, match="layers"):
        backbone.encode_image(images, prompts)


def test_identity_reports_widths(backbone):
    identity = backbone.identity
    assert identity["text_width"] == 64
    assert identity["vision_width"] == 64
    assert identity["vision_layers"] == 3
    assert identity["embed_dim"] == 64


def test_unknown_model_name_suggests_close(tmp_path):
    with pytest.raises(BackboneError, match="ViT-B-16"):
        load_backbone("ViT-B-61", pretrained=None)


def test_unknown_pretrained_tag_lists_tags():
    with pytest.raises(BackboneError, match="openai"):
        load_backbone("ViT-B-16", pretrained="no-such-tag")


def test_missing_checkpoint_file_named(tiny_config_path, tmp_path):
    missing = tmp_path / "weights.safetensors"
    with pytest.raises(BackboneError, match="weights.safetensors"):
        load_backbone(tiny_config_path, pretrained=str(missing))


def test_missing_config_file_named(tmp_path):
    with pytest.raises(BackboneError, match="nothing.json"):
        load_backbone(str(tmp_path / "nothing.json"))


def test_local_checkpoint_round_trip(tiny_config_path, tmp_path, images):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    first = load_backbone(tiny_config_path)
    path = tmp_path / "tiny.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in first.model.state_dict().items()}, str(path))
    torch.manual_seed(4)
    second = load_backbone(tiny_config_path, pretrained=str(path))
    assert torch.equal(first.encode_image(images), second.encode_image(images))


def test_download_failure_explains_offline_fix(monkeypatch):
    import open_clip

    def fail(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fail)
    with pytest.raises(BackboneError, match="backbone.pretrained=/path/to/checkpoint"):
        load_backbone("ViT-B-16", pretrained="openai")
