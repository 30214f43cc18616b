from __future__ import annotations

import pytest
import torch

from mvlpt.averaging import average_checkpoints
from mvlpt.checkpoints import CheckpointError, load_prompt_checkpoint, save_prompt_checkpoint
from mvlpt.cli import main

BACKBONE = {
    "model": "mvlpt:tiny-vit",
    "pretrained": None,
    "text_width": 64,
    "vision_width": 64,
    "vision_layers": 3,
    "embed_dim": 64,
}
COOP_SETTINGS = {"n_ctx": 4, "ctx_init": "", "class_specific": False, "class_token_position": "middle"}


def save(directory, state, method="coop", backbone=None, settings=None, classnames=("cat", "dog"), extra=None):
    metadata = {
        "method": method,
        "prompt_config": dict(COOP_SETTINGS if settings is None else settings),
        "backbone": dict(BACKBONE if backbone is None else backbone),
        "classnames": list(classnames),
        "tasks": ["pets"],
        "extra": dict(extra or {}),
    }
    return save_prompt_checkpoint(directory, state, metadata)


def seeded_state(seed, shape=(4, 64)):
    generator = torch.Generator().manual_seed(seed)
    return {"ctx": torch.randn(shape, generator=generator), "scale": torch.randn(3, generator=generator)}


def test_average_equals_hand_mean(tmp_path):
    states = [seeded_state(seed) for seed in (1, 2, 3)]
    paths = [save(tmp_path / f"seed{index}", state, extra={"seed": index}) for index, state in enumerate(states)]

    output = average_checkpoints(paths, tmp_path / "average")
    averaged = load_prompt_checkpoint(output)

    for name in ("ctx", "scale"):
        expected = (states[0][name].double() + states[1][name].double() + states[2][name].double()) / 3
        assert averaged.state_dict[name].dtype == torch.float32
        assert torch.allclose(averaged.state_dict[name].double(), expected, atol=1e-7)
    assert averaged.metadata["extra"]["averaged_from"] == [str(path) for path in paths]
    assert averaged.metadata["extra"]["seed"] == 0
    assert averaged.metadata["method"] == "coop"
    assert averaged.metadata["tasks"] == ["pets"]


def test_average_keeps_stored_dtype(tmp_path):
    first = save(tmp_path / "a", {"ctx": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)})
    second = save(tmp_path / "b", {"ctx": torch.tensor([2.0, 5.0], dtype=torch.bfloat16)})
    averaged = load_prompt_checkpoint(average_checkpoints([first, second], tmp_path / "average"))
    assert averaged.state_dict["ctx"].dtype == torch.bfloat16
    assert averaged.state_dict["ctx"].tolist() == [1.5, 3.5]


def test_average_accepts_file_paths(tmp_path):
    first = save(tmp_path / "a", {"ctx": torch.zeros(2)})
    second = save(tmp_path / "b", {"ctx": torch.ones(2)})
    averaged = load_prompt_checkpoint(average_checkpoints([first / "prompt.json", second], tmp_path / "average"))
    assert averaged.state_dict["ctx"].tolist() == [0.5, 0.5]
    assert averaged.metadata["extra"]["averaged_from"] == [str(first), str(second)]


def test_average_rejects_one_checkpoint(tmp_path):
    only = save(tmp_path / "a", seeded_state(1))
    with pytest.raises(CheckpointError, match="at least two") as error:
        average_checkpoints([only], tmp_path / "average")
    assert str(only) in str(error.value)
    assert not (tmp_path / "average").exists()


def test_average_rejects_other_method(tmp_path):
    first = save(tmp_path / "a", seeded_state(1))
    second = save(tmp_path / "b", seeded_state(2), method="vpt")
    with pytest.raises(CheckpointError, match="different methods") as error:
        average_checkpoints([first, second], tmp_path / "average")
    message = str(error.value)
    assert f"'coop' in {first}" in message
    assert f"'vpt' in {second}" in message


def test_average_rejects_other_names(tmp_path):
    first = save(tmp_path / "a", {"ctx": torch.zeros(4), "deep": torch.zeros(2)})
    second = save(tmp_path / "b", {"ctx": torch.zeros(4), "shallow": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="parameter names") as error:
        average_checkpoints([first, second], tmp_path / "average")
    message = str(error.value)
    assert f"{second} lacks deep" in message
    assert f"{second} has the extra shallow" in message


def test_average_lists_every_shape_mismatch(tmp_path):
    first = save(tmp_path / "a", {"ctx": torch.zeros(4, 64), "scale": torch.zeros(3)})
    second = save(tmp_path / "b", {"ctx": torch.zeros(4, 64), "scale": torch.zeros(3)})
    third = save(tmp_path / "c", {"ctx": torch.zeros(2, 64), "scale": torch.zeros(5)})
    with pytest.raises(CheckpointError, match="2 problem") as error:
        average_checkpoints([first, second, third], tmp_path / "average")
    message = str(error.value)
    assert f"ctx: shape (4, 64) in {first} vs (2, 64) in {third}" in message
    assert f"scale: shape (3,) in {first} vs (5,) in {third}" in message
    assert str(second) not in message.split("problem(s)")[1]


def test_average_rejects_other_dtype(tmp_path):
    first = save(tmp_path / "a", {"ctx": torch.zeros(2)})
    second = save(tmp_path / "b", {"ctx": torch.zeros(2, dtype=torch.float16)})
    with pytest.raises(CheckpointError, match="dtype torch.float32") as error:
        average_checkpoints([first, second], tmp_path / "average")
    assert "torch.float16" in str(error.value)


def test_average_rejects_other_backbone(tmp_path):
    wider = {**BACKBONE, "model": "mvlpt:mini-vit-32", "vision_width": 128, "vision_layers": 4}
    first = save(tmp_path / "a", seeded_state(1))
    second = save(tmp_path / "b", seeded_state(2), backbone=wider)
    with pytest.raises(CheckpointError, match="different backbones") as error:
        average_checkpoints([first, second], tmp_path / "average")
    message = str(error.value)
    assert "backbone model: 'mvlpt:tiny-vit'" in message
    assert "backbone vision_width: 64" in message
    assert f"128 in {second}" in message
    assert "backbone vision_layers: 3" in message
    assert "text_width" not in message


def test_average_rejects_other_weights(tmp_path):
    first = save(tmp_path / "a", seeded_state(1))
    second = save(tmp_path / "b", seeded_state(2), backbone={**BACKBONE, "pretrained": "openai"})
    with pytest.raises(CheckpointError, match="backbone pretrained: None"):
        average_checkpoints([first, second], tmp_path / "average")


def test_average_rejects_other_settings(tmp_path):
    first = save(tmp_path / "a", seeded_state(1))
    second = save(tmp_path / "b", seeded_state(2), settings={**COOP_SETTINGS, "class_token_position": "end"})
    with pytest.raises(CheckpointError, match="class_token_position: 'middle'"):
        average_checkpoints([first, second], tmp_path / "average")


def test_average_ignores_initialisation_settings(tmp_path):
    first = save(tmp_path / "a", seeded_state(1))
    second = save(tmp_path / "b", seeded_state(2), settings={**COOP_SETTINGS, "ctx_init": "a photo of a"})
    assert average_checkpoints([first, second], tmp_path / "average").is_dir()


def test_average_rejects_class_specific_other_classes(tmp_path):
    settings = {**COOP_SETTINGS, "class_specific": True}
    first = save(tmp_path / "a", {"ctx": torch.zeros(2, 4, 64)}, settings=settings)
    second = save(tmp_path / "b", {"ctx": torch.zeros(2, 4, 64)}, settings=settings, classnames=("cat", "fox"))
    with pytest.raises(CheckpointError, match="class-specific") as error:
        average_checkpoints([first, second], tmp_path / "average")
    assert "'fox' at index 1" in str(error.value)


def test_average_shared_context_other_classes(tmp_path):
    first = save(tmp_path / "a", seeded_state(1))
    second = save(tmp_path / "b", seeded_state(2), classnames=("cat", "fox"))
    averaged = load_prompt_checkpoint(average_checkpoints([first, second], tmp_path / "average"))
    assert averaged.classnames == ["cat", "dog"]


def test_cli_average(tmp_path, capsys):
    first = save(tmp_path / "a", {"ctx": torch.zeros(2)})
    second = save(tmp_path / "b", {"ctx": torch.full((2,), 4.0)})
    output = tmp_path / "average"
    assert main(["average", str(first), str(second), "--output", str(output)]) == 0
    assert f"averaged 2 prompt checkpoints into {output}" in capsys.readouterr().out
    assert load_prompt_checkpoint(output).state_dict["ctx"].tolist() == [2.0, 2.0]


def test_cli_average_error(tmp_path, capsys):
    first = save(tmp_path / "a", {"ctx": torch.zeros(2)})
    assert main(["average", str(first), "--output", str(tmp_path / "average")]) == 2
    assert "at least two" in capsys.readouterr().err
