from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
import torch
from torch import nn

from mvlpt.checkpoints import (
    CheckpointError,
    PromptCheckpoint,
    check_compatible,
    load_prompt_checkpoint,
    load_state_strict,
    save_prompt_checkpoint,
)

BACKBONE = {
    "model": "ViT-B-16",
    "pretrained": "openai",
    "text_width": 512,
    "vision_width": 768,
    "vision_layers": 12,
    "embed_dim": 512,
}


def _metadata(**changes) -> dict:
    metadata = {
        "method": "coop",
        "prompt_config": {"n_ctx": 4, "ctx_init": "", "class_specific": False, "class_token_position": "middle"},
        "backbone": dict(BACKBONE),
        "classnames": ["cat", "dog", "bird"],
        "task": "pets",
        "extra": {"epoch": 7, "val_accuracy": 0.5},
    }
    metadata.update(changes)
    return metadata


def _state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "ctx": torch.randn(4, 512, generator=generator),
        "deep.tokens": torch.randn(11, 2, 768, generator=generator).to(torch.bfloat16),
        "step": torch.tensor([3], dtype=torch.int64),
    }


class PromptModule(nn.Module):
    def __init__(self, n_ctx: int = 4):
        super().__init__()
        self.ctx = nn.Parameter(torch.zeros(n_ctx, 8))
        self.head = nn.Linear(8, 2)


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# --- save and load ---------------------------------------------------------------------


def test_round_trip_tensors_bitwise(tmp_path):
    state = _state_dict()

    save_prompt_checkpoint(tmp_path / "ckpt", state, _metadata())
    loaded = load_prompt_checkpoint(tmp_path / "ckpt")

    assert set(loaded.state_dict) == set(state)
    for name, tensor in state.items():
        assert loaded.state_dict[name].dtype == tensor.dtype, name
        assert torch.equal(loaded.state_dict[name], tensor), name


def test_round_trip_metadata(tmp_path):
    metadata = _metadata()

    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), metadata)
    loaded = load_prompt_checkpoint(tmp_path / "ckpt")

    for key, value in metadata.items():
        assert loaded.metadata[key] == value, key
    assert loaded.metadata["format"] == "mvlpt-prompt"
    assert loaded.metadata["format_version"] == 1
    assert loaded.metadata["mvlpt_version"] == "0.1.0"


def test_properties(tmp_path):
    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata())

    loaded = load_prompt_checkpoint(tmp_path / "ckpt")

    assert loaded.method == "coop"
    assert loaded.classnames == ["cat", "dog", "bird"]
    assert loaded.backbone == BACKBONE
    assert loaded.directory == tmp_path / "ckpt"


def test_save_returns_directory(tmp_path):
    path = save_prompt_checkpoint(tmp_path / "a" / "b", _state_dict(), _metadata())

    assert path == tmp_path / "a" / "b"
    assert sorted(os.listdir(path)) == ["prompt.json", "prompt.safetensors"]


@pytest.mark.parametrize("name", ["prompt.json", "prompt.safetensors"])
def test_load_from_file_path(tmp_path, name):
    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata())

    loaded = load_prompt_checkpoint(tmp_path / "ckpt" / name)

    assert loaded.directory == tmp_path / "ckpt"


def test_save_detaches_and_copies(tmp_path):
    parameter = nn.Parameter(torch.arange(12.0).reshape(3, 4))
    state = {"ctx": parameter.t(), "alias": parameter}

    save_prompt_checkpoint(tmp_path / "ckpt", state, _metadata())
    loaded = load_prompt_checkpoint(tmp_path / "ckpt")

    assert torch.equal(loaded.state_dict["ctx"], parameter.detach().t())
    assert torch.equal(loaded.state_dict["alias"], parameter.detach())
    assert loaded.state_dict["ctx"].requires_grad is False


def test_save_replaces_existing(tmp_path):
    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata(task="old"))
    new_state = {"ctx": torch.ones(4, 512)}

    save_prompt_checkpoint(tmp_path / "ckpt", new_state, _metadata(task="new"))
    loaded = load_prompt_checkpoint(tmp_path / "ckpt")

    assert loaded.metadata["task"] == "new"
    assert set(loaded.state_dict) == {"ctx"}
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["prompt.json", "prompt.safetensors"]


def test_resave_loaded_metadata(tmp_path):
    save_prompt_checkpoint(tmp_path / "first", _state_dict(), _metadata())
    first = load_prompt_checkpoint(tmp_path / "first")

    save_prompt_checkpoint(tmp_path / "second", {"ctx": torch.zeros(4, 512)}, first.metadata)
    second = load_prompt_checkpoint(tmp_path / "second")

    assert second.metadata["classnames"] == first.metadata["classnames"]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"method": ""}, "method"),
        ({"backbone": "ViT-B-16"}, "backbone"),
        ({"backbone": {"model": "ViT-B-16"}}, "text_width"),
        ({"backbone": dict(BACKBONE, embed_dim="512")}, "embed_dim"),
        ({"classnames": "cat"}, "classnames"),
        ({"extra": {"when": object()}}, "JSON"),
    ],
)
def test_save_rejects_invalid_metadata(tmp_path, changes, key):
    with pytest.raises(CheckpointError, match=key):
        save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata(**changes))

    assert not (tmp_path / "ckpt" / "prompt.json").exists()


def test_save_accepts_missing_vision_shapes(tmp_path):
    backbone = dict(BACKBONE, model="RN50", vision_width=None, vision_layers=None)

    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata(backbone=backbone))
    loaded = load_prompt_checkpoint(tmp_path / "ckpt")

    assert loaded.backbone["vision_layers"] is None
    check_compatible(loaded, method="coop", backbone=backbone, classnames=None)


def test_save_rejects_non_tensor(tmp_path):
    with pytest.raises(CheckpointError, match="'ctx'"):
        save_prompt_checkpoint(tmp_path / "ckpt", {"ctx": [1.0, 2.0]}, _metadata())


def test_save_to_file_path_rejected(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")

    with pytest.raises(CheckpointError, match="it is a file"):
        save_prompt_checkpoint(path, _state_dict(), _metadata())


# --- atomic writes ---------------------------------------------------------------------


def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    old_state = _state_dict()
    save_prompt_checkpoint(directory, old_state, _metadata(task="old"))
    real_save_file = safetensors.torch.save_file

    def save_half_then_fail(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_prompt_checkpoint(directory, {"ctx": torch.ones(4, 512)}, _metadata(task="new"))
    monkeypatch.undo()

    loaded = load_prompt_checkpoint(directory)
    assert loaded.metadata["task"] == "old"
    for name, tensor in old_state.items():
        assert torch.equal(loaded.state_dict[name], tensor), name
    assert sorted(os.listdir(directory)) == ["prompt.json", "prompt.safetensors"]


def test_failed_first_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    def fail(tensors, filename, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError):
        save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata())
    monkeypatch.undo()

    assert os.listdir(tmp_path / "ckpt") == []
    with pytest.raises(CheckpointError, match="not a complete prompt checkpoint"):
        load_prompt_checkpoint(tmp_path / "ckpt")


def test_mismatched_tensor_file_detected(tmp_path):
    save_prompt_checkpoint(tmp_path / "a", _state_dict(), _metadata())
    save_prompt_checkpoint(tmp_path / "b", {"ctx": torch.ones(4, 512)}, _metadata())
    os.replace(tmp_path / "b" / "prompt.safetensors", tmp_path / "a" / "prompt.safetensors")

    with pytest.raises(CheckpointError, match="SHA-256"):
        load_prompt_checkpoint(tmp_path / "a")


# --- loading what is not a checkpoint --------------------------------------------------


def test_load_missing_directory(tmp_path):
    path = tmp_path / "absent"

    with pytest.raises(CheckpointError) as info:
        load_prompt_checkpoint(path)

    assert str(path) in str(info.value)
    assert "prompt.safetensors and prompt.json" in str(info.value)


def test_load_directory_without_files(tmp_path):
    (tmp_path / "run").mkdir()

    with pytest.raises(CheckpointError) as info:
        load_prompt_checkpoint(tmp_path / "run")

    assert "prompt.safetensors, prompt.json not found" in str(info.value)


def test_load_missing_tensor_file(tmp_path):
    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata())
    (tmp_path / "ckpt" / "prompt.safetensors").unlink()

    with pytest.raises(CheckpointError, match="prompt.safetensors not found"):
        load_prompt_checkpoint(tmp_path / "ckpt")


def test_load_foreign_json(tmp_path):
    directory = tmp_path / "other"
    directory.mkdir()
    (directory / "prompt.json").write_text(json.dumps({"model": "something else"}))
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(directory / "prompt.safetensors"))

    with pytest.raises(CheckpointError, match="not an mvlpt prompt checkpoint"):
        load_prompt_checkpoint(directory)


def test_load_invalid_json(tmp_path):
    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata())
    (tmp_path / "ckpt" / "prompt.json").write_text("{not json")

    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_prompt_checkpoint(tmp_path / "ckpt")


def test_load_newer_format_version(tmp_path):
    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata())
    path = tmp_path / "ckpt" / "prompt.json"
    document = json.loads(path.read_text())
    document["format_version"] = 2
    path.write_text(json.dumps(document))

    with pytest.raises(CheckpointError, match="format_version 2"):
        load_prompt_checkpoint(tmp_path / "ckpt")


def test_load_other_file_rejected(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00")

    with pytest.raises(CheckpointError, match="is not a prompt checkpoint"):
        load_prompt_checkpoint(path)


# --- check_compatible ------------------------------------------------------------------


def _checkpoint(**changes) -> PromptCheckpoint:
    return PromptCheckpoint(state_dict=_state_dict(), metadata=_metadata(**changes))


def test_compatible_passes():
    check_compatible(_checkpoint(), method="coop", backbone=BACKBONE, classnames=["cat", "dog", "bird"])


def test_compatible_method_differs(tmp_path):
    save_prompt_checkpoint(tmp_path / "ckpt", _state_dict(), _metadata(method="vpt"))
    checkpoint = load_prompt_checkpoint(tmp_path / "ckpt")

    with pytest.raises(CheckpointError) as info:
        check_compatible(checkpoint, method="coop", backbone=BACKBONE, classnames=None)

    message = str(info.value)
    assert str(tmp_path / "ckpt") in message
    assert "contains VPT prompts, but this run uses CoOp" in message
    assert "prompt.method=vpt" in message


def test_compatible_width_differs():
    run_backbone = dict(BACKBONE, model="ViT-L-14", vision_width=1024, embed_dim=768)

    with pytest.raises(CheckpointError) as info:
        check_compatible(_checkpoint(), method="coop", backbone=run_backbone, classnames=None)

    message = str(info.value)
    assert "vision_width 768 in the checkpoint vs 1024 in this run" in message
    assert "embed_dim 512 in the checkpoint vs 768 in this run" in message
    assert "text_width" not in message
    assert "ViT-B-16" in message
    assert "ViT-L-14" in message


def test_compatible_layers_differ():
    run_backbone = dict(BACKBONE, vision_layers=24)

    with pytest.raises(CheckpointError, match="vision_layers 12 in the checkpoint vs 24 in this run"):
        check_compatible(_checkpoint(), method="coop", backbone=run_backbone, classnames=None)


def test_compatible_other_weights_warns(caplog):
    run_backbone = dict(BACKBONE, pretrained="laion2b_s34b_b88k")

    with caplog.at_level("WARNING", logger="mvlpt.checkpoints"):
        check_compatible(_checkpoint(), method="coop", backbone=run_backbone, classnames=None)

    assert "laion2b_s34b_b88k" in caplog.text


def test_compatible_backbone_without_shapes():
    with pytest.raises(ValueError, match="embed_dim"):
        check_compatible(_checkpoint(), method="coop", backbone={"model": "ViT-B-16"}, classnames=None)


def test_compatible_classnames_missing_and_extra():
    with pytest.raises(CheckpointError) as info:
        check_compatible(_checkpoint(), method="coop", backbone=BACKBONE, classnames=["cat", "dog", "fish", "frog"])

    message = str(info.value)
    assert "trained on 3 classes, but this run has 4 classes" in message
    assert "missing from this run: 'bird'" in message
    assert "not in the checkpoint: 'fish', 'frog'" in message


def test_compatible_classnames_order():
    with pytest.raises(CheckpointError) as info:
        check_compatible(_checkpoint(), method="coop", backbone=BACKBONE, classnames=["dog", "cat", "bird"])

    message = str(info.value)
    assert "different order" in message
    assert "index 0: 'cat' in the checkpoint vs 'dog' in this run" in message


def test_compatible_classnames_preview_is_short():
    many = [f"class{index}" for index in range(20)]

    with pytest.raises(CheckpointError) as info:
        check_compatible(_checkpoint(), method="coop", backbone=BACKBONE, classnames=many)

    assert "and 15 more" in str(info.value)


def test_compatible_classnames_none_skips_check():
    check_compatible(_checkpoint(), method="coop", backbone=BACKBONE, classnames=None)


def test_compatible_class_specific_rejected():
    config = {"n_ctx": 4, "ctx_init": "", "class_specific": True, "class_token_position": "middle"}

    with pytest.raises(CheckpointError, match="class-specific"):
        check_compatible(
            _checkpoint(prompt_config=config), method="coop", backbone=BACKBONE, classnames=None, class_specific_ok=False
        )


def test_compatible_class_specific_allowed_by_default():
    config = {"n_ctx": 4, "ctx_init": "", "class_specific": True, "class_token_position": "middle"}

    check_compatible(_checkpoint(prompt_config=config), method="coop", backbone=BACKBONE, classnames=["cat", "dog", "bird"])


# --- load_state_strict -----------------------------------------------------------------


def test_strict_load_copies_values():
    source = PromptModule()
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    target = PromptModule()

    load_state_strict(target, dict(source.named_parameters()), "source.ckpt")

    for name, parameter in target.named_parameters():
        assert torch.equal(parameter, dict(source.named_parameters())[name]), name


def test_strict_load_casts_dtype():
    target = PromptModule()
    state = {name: torch.ones_like(value, dtype=torch.bfloat16) for name, value in target.named_parameters()}

    load_state_strict(target, state, "bf16.ckpt")

    assert target.ctx.dtype == torch.float32
    assert torch.equal(target.ctx, torch.ones(4, 8))


def test_strict_load_missing_key():
    target = PromptModule()
    before = _module_state(target)
    state = {"ctx": torch.ones(4, 8), "head.weight": torch.ones(2, 8)}

    with pytest.raises(CheckpointError) as info:
        load_state_strict(target, state, "runs/a")

    message = str(info.value)
    assert "runs/a" in message
    assert "missing head.bias: expected shape (2,)" in message
    for name, value in _module_state(target).items():
        assert torch.equal(value, before[name]), name


def test_strict_load_unexpected_key():
    target = PromptModule()
    before = _module_state(target)
    state = {name: torch.ones_like(value) for name, value in target.named_parameters()}
    state["deep_tokens"] = torch.ones(3, 2)

    with pytest.raises(CheckpointError) as info:
        load_state_strict(target, state, "runs/b")

    assert "unexpected deep_tokens: found (3, 2)" in str(info.value)
    for name, value in _module_state(target).items():
        assert torch.equal(value, before[name]), name


def test_strict_load_shape_mismatch():
    target = PromptModule(n_ctx=4)
    before = _module_state(target)
    state = {name: torch.ones_like(value) for name, value in PromptModule(n_ctx=16).named_parameters()}

    with pytest.raises(CheckpointError) as info:
        load_state_strict(target, state, "runs/c")

    assert "shape mismatch ctx: expected (4, 8), found (16, 8)" in str(info.value)
    for name, value in _module_state(target).items():
        assert torch.equal(value, before[name]), name


def test_strict_load_lists_every_problem():
    target = PromptModule(n_ctx=4)
    state = {"ctx": torch.ones(16, 8), "extra": torch.ones(1)}

    with pytest.raises(CheckpointError) as info:
        load_state_strict(target, state, "runs/d")

    message = str(info.value)
    assert "4 problem(s)" in message
    assert "shape mismatch ctx" in message
    assert "unexpected extra" in message
    assert "missing head.weight" in message
    assert "missing head.bias" in message


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)
