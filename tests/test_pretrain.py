from __future__ import annotations

import json
import os

import pytest
import torch

from mvlpt.backbone import BackboneError, load_backbone
from mvlpt.pretrain import CONFIG_FILE, WEIGHTS_FILE, PretrainConfig, contrastive_loss, pretrain


def digits_installed() -> bool:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


def test_contrastive_loss_treats_same_class_as_positive():
    features = torch.eye(3)
    class_ids = torch.tensor([0, 0, 1])
    loss = contrastive_loss(features, features, class_ids, 10.0)
    logits = 10.0 * features @ features.t()
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected_image = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    expected_text = -(targets * torch.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    assert torch.allclose(loss, 0.5 * (expected_image + expected_text))


def test_pretrain_config_rejects_bad_warmup():
    with pytest.raises(ValueError, match="warmup_steps"):
        PretrainConfig(steps=10, warmup_steps=10)


@pytest.mark.skipif(not digits_installed() and not os.environ.get("CI"), reason="scikit-learn is not installed")
def test_pretrained_folder_loads_through_user_paths(tmp_path):
    output = tmp_path / "clip"
    config = PretrainConfig(tasks=["digits"], steps=2, batch_size=8, warmup_steps=1, output=str(output))
    folder = pretrain(config)
    assert (folder / CONFIG_FILE).is_file()
    assert (folder / WEIGHTS_FILE).is_file()
    report = json.loads((folder / "pretrain.json").read_text())
    assert report["tasks"] == ["digits"]

    images = torch.randn(2, 3, 32, 32)
    from_file = load_backbone(str(folder / CONFIG_FILE), pretrained=str(folder / WEIGHTS_FILE))
    from_dir = load_backbone(f"local-dir:{folder}")
    random = load_backbone("mvlpt:mini-vit-32", pretrained=None)
    assert torch.equal(from_file.encode_image(images), from_dir.encode_image(images))
    assert not torch.equal(from_file.encode_image(images), random.encode_image(images))


def test_offline_tag_missing_names_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("MVLPT_DATA_ROOT", str(tmp_path))
    with pytest.raises(BackboneError, match="make pretrained"):
        load_backbone("mvlpt:mini-vit-32", pretrained="offline")


def test_offline_tag_only_for_mini_vit(tmp_path, monkeypatch):
    monkeypatch.setenv("MVLPT_DATA_ROOT", str(tmp_path))
    with pytest.raises(BackboneError, match="mini-vit-32"):
        load_backbone("mvlpt:tiny-vit", pretrained="offline")
