from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from mvlpt.config import (
    BackboneConfig,
    CoOpConfig,
    ConfigError,
    RunConfig,
    TrainConfig,
    UPTConfig,
    VPTConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    fields_help,
    format_fields_table,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults --------------------------------------------------------------------------


def test_defaults_construct():
    config = RunConfig()

    assert config.backbone.model == "ViT-B-16"
    assert config.backbone.pretrained == "openai"
    assert config.prompt.method == "coop"
    assert config.prompt.coop.class_token_position == "middle"
    assert config.prompt.vpt.deep is True
    assert config.prompt.vpt.templates == ["a photo of a {}."]
    assert config.prompt.upt.n_ctx == 4
    assert config.prompt.upt.width == 128
    assert config.prompt.upt.attention == "per_token"
    assert config.train.lr == 0.002
    assert config.train.momentum == 0.9
    assert config.train.weight_decay == 5e-4
    assert config.train.warmup_epochs == 1
    assert config.train.warmup_lr == 1e-5
    assert config.train.batch_size == 32
    assert config.train.epochs == 200


def test_defaults_not_shared_between_instances():
    first = RunConfig()
    second = RunConfig()

    first.prompt.vpt.templates.append("a {}.")

    assert second.prompt.vpt.templates == ["a photo of a {}."]


def test_active_returns_method_section():
    config = config_from_dict({"prompt": {"method": "upt"}})

    assert config.prompt.active() is config.prompt.upt


def test_every_field_has_help():
    for name, type_name, default, help_text in fields_help(RunConfig):
        assert help_text, name
        assert type_name, name
        assert default, name


# --- invalid values --------------------------------------------------------------------

INVALID_CASES = [
    ({"prompt": {"coop": {"n_ctx": -1}}}, "prompt.coop.n_ctx", "-1"),
    ({"prompt": {"coop": {"class_token_position": "start"}}}, "prompt.coop.class_token_position", "'start'"),
    ({"prompt": {"vpt": {"dropout": 1.5}}}, "prompt.vpt.dropout", "1.5"),
    ({"prompt": {"upt": {"dropout": -0.1}}}, "prompt.upt.dropout", "-0.1"),
    ({"prompt": {"method": "lora"}}, "prompt.method", "'lora'"),
    ({"train": {"epochs": 5, "warmup_epochs": 5}}, "train.warmup_epochs", "5"),
    ({"train": {"precision": "fp16"}}, "train.precision", "'fp16'"),
    ({"prompt": {"coop": {"ctx_init": "a photo of a", "class_specific": True}}}, "prompt.coop.class_specific", "'a photo of a'"),
    ({"prompt": {"vpt": {"templates": ["a photo of a"]}}}, "prompt.vpt.templates", "'a photo of a'"),
    ({"prompt": {"vpt": {"templates": ["a {} and a {}"]}}}, "prompt.vpt.templates", "'a {} and a {}'"),
    ({"prompt": {"vpt": {"templates": ["a {name}."]}}}, "prompt.vpt.templates", "'a {name}.'"),
    ({"prompt": {"vpt": {"templates": ["task", "a {}."]}}}, "prompt.vpt.templates", "'task'"),
    ({"prompt": {"vpt": {"templates": []}}}, "prompt.vpt.templates", "[]"),
    ({"prompt": {"vpt": {"n_tokens": 0}}}, "prompt.vpt.n_tokens", "0"),
    ({"prompt": {"upt": {"attention": "cross"}}}, "prompt.upt.attention", "'cross'"),
    ({"prompt": {"upt": {"width": 0}}}, "prompt.upt.width", "0"),
    ({"prompt": {"coop": {"ctx_init": "a photo of a {}."}}}, "prompt.coop.ctx_init", "'a photo of a {}.'"),
    ({"data": {"shots": 0}}, "data.shots", "0"),
    ({"data": {"num_workers": -2}}, "data.num_workers", "-2"),
    ({"train": {"lr": 0}}, "train.lr", "0"),
    ({"train": {"lr": float("nan")}}, "train.lr", "nan"),
    ({"train": {"momentum": 1.0}}, "train.momentum", "1.0"),
    ({"train": {"weight_decay": -1e-4}}, "train.weight_decay", "-0.0001"),
    ({"train": {"model_selection": "best"}}, "train.model_selection", "'best'"),
    ({"train": {"device": "gpu"}}, "train.device", "'gpu'"),
    ({"train": {"eval_every": 0}}, "train.eval_every", "0"),
    ({"backbone": {"pretrained": ""}}, "backbone.pretrained", "''"),
    ({"seed": -1}, "seed", "-1"),
    ({"train": {"epochs": "5"}}, "train.epochs", "'5'"),
    ({"train": {"epochs": True}}, "train.epochs", "True"),
    ({"prompt": {"vpt": {"deep": "yes"}}}, "prompt.vpt.deep", "'yes'"),
    ({"prompt": {"coop": {"ctx_init": True}}}, "prompt.coop.ctx_init", "True"),
    ({"train": 5}, "train", "5"),
]


@pytest.mark.parametrize(("data", "field_path", "value"), INVALID_CASES, ids=[case[1] for case in INVALID_CASES])
def test_invalid_value_rejected(data, field_path, value):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)

    message = str(info.value)
    assert field_path in message
    assert value in message


def test_direct_construction_names_dotted_path():
    with pytest.raises(ConfigError, match=r"prompt\.coop\.n_ctx=0"):
        CoOpConfig(n_ctx=0)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_int_accepted_for_float():
    config = config_from_dict({"train": {"lr": 1}})

    assert config.train.lr == 1.0
    assert isinstance(config.train.lr, float)


def test_none_accepted_for_optional():
    config = config_from_dict({"backbone": {"pretrained": None}, "init": None})

    assert config.backbone.pretrained is None
    assert config.init is None


def test_none_rejected_for_required():
    with pytest.raises(ConfigError, match=r"backbone\.model=None"):
        config_from_dict({"backbone": {"model": None}})


def test_single_string_becomes_list():
    config = config_from_dict({"data": {"tasks": "mnist"}, "prompt": {"vpt": {"templates": "a {}."}}})

    assert config.data.tasks == ["mnist"]
    assert config.prompt.vpt.templates == ["a {}."]


def test_repeated_task_rejected():
    with pytest.raises(ConfigError, match=r"data\.tasks"):
        config_from_dict({"data": {"tasks": ["mnist", "mnist"]}})


def test_tuple_templates_become_list():
    config = VPTConfig(templates=("a {}.", "the {}."))

    assert config.templates == ["a {}.", "the {}."]


def test_escaped_braces_template_accepted():
    config = VPTConfig(templates=["a {} with {{braces}}."])

    assert config.templates == ["a {} with {{braces}}."]


def test_task_templates_accepted():
    config = VPTConfig(templates=["task"])

    assert config.templates == ["task"]


def test_null_section_keeps_defaults():
    config = config_from_dict({"train": None})

    assert config.train == TrainConfig()


def test_wrong_type_message_names_expected_type():
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict({"train": {"epochs": 2.5}})


def test_warmup_zero_accepted():
    config = TrainConfig(epochs=1, warmup_epochs=0)

    assert config.warmup_epochs == 0


def test_cuda_index_device_accepted():
    assert TrainConfig(device="cuda:1").device == "cuda:1"


# --- unknown keys ----------------------------------------------------------------------


def test_unknown_key_suggests_close_key():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"prompt": {"coop": {"n_cxt": 4}}})

    message = str(info.value)
    assert "'prompt.coop.n_cxt'" in message
    assert "Did you mean 'prompt.coop.n_ctx'?" in message
    assert "class_token_position" in message


def test_unknown_key_suggests_other_section():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"epochs": 5})

    message = str(info.value)
    assert "'epochs'" in message
    assert "'train.epochs'" in message


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        config_from_dict({"trian": {"epochs": 5}})


# --- validate_for ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_validate_for_requires_task(command):
    with pytest.raises(ConfigError, match=r"data\.tasks"):
        RunConfig().validate_for(command)


def test_validate_for_accepts_task():
    config = config_from_dict({"data": {"tasks": ["eurosat"]}})

    config.validate_for("train")


def test_validate_for_other_command_skips_task():
    RunConfig().validate_for("summarize")


def test_validate_for_zero_shot_needs_task():
    with pytest.raises(ConfigError, match=r"data\.tasks"):
        RunConfig().validate_for("zero-shot")


def test_validate_for_rechecks_mutated_field():
    config = config_from_dict({"data": {"tasks": ["eurosat"]}})
    config.train.epochs = 0

    with pytest.raises(ConfigError, match=r"train\.epochs=0"):
        config.validate_for("train")


def test_validate_for_missing_init(tmp_path):
    config = config_from_dict({"data": {"tasks": ["eurosat"]}, "init": str(tmp_path / "absent")})

    with pytest.raises(ConfigError, match="init="):
        config.validate_for("train")


# --- YAML files and overrides ----------------------------------------------------------


def test_yaml_and_overrides_merge(tmp_path):
    path = _write(
        tmp_path / "run.yaml",
        "prompt:\n  method: vpt\n  vpt:\n    n_tokens: 8\ntrain:\n  epochs: 10\n  lr: 0.01\n",
    )

    config = load_config(path, ["train.epochs=5", "prompt.vpt.deep=false"])

    assert config.prompt.method == "vpt"
    assert config.prompt.vpt.n_tokens == 8
    assert config.prompt.vpt.deep is False
    assert config.train.epochs == 5
    assert config.train.lr == 0.01
    assert config.train.batch_size == 32


def test_later_override_wins():
    config = load_config(None, ["train.epochs=5", "train.epochs=7"])

    assert config.train.epochs == 7


def test_override_parses_bool():
    config = load_config(None, ["data.augment=true"])

    assert config.data.augment is True


def test_override_parses_null():
    config = load_config(None, ["backbone.pretrained=null"])

    assert config.backbone.pretrained is None


def test_override_parses_list():
    config = load_config(None, ['prompt.vpt.templates=["a {}.", "a photo of a {}."]'])

    assert config.prompt.vpt.templates == ["a {}.", "a photo of a {}."]


def test_override_parses_exponent_float():
    config = load_config(None, ["train.warmup_lr=1e-6"])

    assert config.train.warmup_lr == 1e-6


def test_override_keeps_text_for_string_field():
    config = load_config(None, ["output_dir=2024", "prompt.coop.ctx_init=yes"])

    assert config.output_dir == "2024"
    assert config.prompt.coop.ctx_init == "yes"


def test_override_empty_value_for_string_field():
    config = load_config(None, ["prompt.coop.ctx_init=a photo of a", "prompt.coop.ctx_init="])

    assert config.prompt.coop.ctx_init == ""


def test_override_mapping_merges_section():
    config = load_config(None, ["prompt.coop.n_ctx=8", "prompt.coop={class_token_position: end}"])

    assert config.prompt.coop.n_ctx == 8
    assert config.prompt.coop.class_token_position == "end"


def test_override_without_equals():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs"])

    message = str(info.value)
    assert "'train.epochs'" in message
    assert "train.epochs=5" in message


def test_override_empty_key():
    with pytest.raises(ConfigError, match="key before '='"):
        load_config(None, ["=5"])


def test_override_into_value():
    with pytest.raises(ConfigError, match="train.epochs is a value"):
        load_config(None, ["train.epochs=5", "train.epochs.max=3"])


def test_override_unknown_key():
    with pytest.raises(ConfigError, match="Did you mean 'train.epochs'"):
        load_config(None, ["train.epoch=5"])


def test_override_invalid_yaml():
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, ["prompt.vpt.templates=[a"])


def test_apply_overrides_to_config():
    base = config_from_dict({"prompt": {"method": "vpt"}, "train": {"epochs": 10}})

    config = apply_overrides(base, ["train.lr=0.01", "prompt.vpt.deep=false"])

    assert config.prompt.method == "vpt"
    assert config.train.epochs == 10
    assert config.train.lr == 0.01
    assert config.prompt.vpt.deep is False
    assert base.train.lr == 0.002


def test_apply_overrides_rejects_invalid():
    with pytest.raises(ConfigError, match=r"train\.epochs=0"):
        apply_overrides(RunConfig(), ["train.epochs=0"])


def test_overrides_as_one_string_rejected():
    with pytest.raises(TypeError):
        load_config(None, "train.epochs=5")


def test_missing_file_named(tmp_path):
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_invalid_yaml_file(tmp_path):
    path = _write(tmp_path / "bad.yaml", "train: [1,\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_non_mapping_file(tmp_path):
    path = _write(tmp_path / "list.yaml", "- 1\n- 2\n")

    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_empty_file_gives_defaults(tmp_path):
    path = _write(tmp_path / "empty.yaml", "# nothing set\n")

    assert load_config(path) == RunConfig()


def test_file_exponent_without_dot(tmp_path):
    path = _write(tmp_path / "run.yaml", "train:\n  warmup_lr: 1e-5\n  weight_decay: 5E-4\n")

    config = load_config(path)

    assert config.train.warmup_lr == 1e-5
    assert config.train.weight_decay == 5e-4


# --- dump ------------------------------------------------------------------------------


def test_dump_load_round_trip(tmp_path):
    config = load_config(
        None,
        [
            "prompt.method=vpt",
            'prompt.vpt.templates=["a {}.", "itap of a {}."]',
            "prompt.coop.ctx_init=a photo of a",
            "backbone.pretrained=null",
            "train.warmup_lr=3e-6",
            "data.tasks=eurosat",
            "init=runs/source",
        ],
    )
    path = tmp_path / "nested" / "config.yaml"

    dump_config(config, path)

    assert load_config(path) == config


def test_dump_is_plain_yaml(tmp_path):
    path = tmp_path / "config.yaml"

    dump_config(RunConfig(), path)

    assert yaml.safe_load(path.read_text()) == RunConfig().to_dict()


def test_dump_leaves_no_temporary_file(tmp_path):
    dump_config(RunConfig(), tmp_path / "config.yaml")

    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_dump_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    dump_config(RunConfig(), path)
    changed = config_from_dict({"train": {"epochs": 3}})

    def fail_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError):
        dump_config(changed, path)
    monkeypatch.undo()

    assert load_config(path) == RunConfig()
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_to_dict_is_plain():
    data = RunConfig().to_dict()

    assert data["prompt"]["coop"]["n_ctx"] == 16
    assert isinstance(data["backbone"], dict)
    assert config_from_dict(data) == RunConfig()


# --- example files and docs ------------------------------------------------------------


def _method_section(dotted: str) -> str | None:
    """Return "coop" for "prompt.coop.n_ctx", None for keys outside a method section."""
    parts = dotted.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "prompt" else None


@pytest.mark.parametrize("method", ["coop", "vpt", "upt"])
def test_example_config_loads(method):
    config = load_config(REPO / "configs" / f"{method}.yaml")

    assert config.prompt.method == method
    assert config.prompt.active() == {"coop": CoOpConfig(), "vpt": VPTConfig(), "upt": UPTConfig()}[method]


@pytest.mark.parametrize("method", ["coop", "vpt", "upt"])
def test_example_config_lists_every_field(method):
    data = yaml.safe_load((REPO / "configs" / f"{method}.yaml").read_text())
    other_methods = {"coop", "vpt", "upt"} - {method}
    expected = {name for name, *_ in fields_help(RunConfig) if _method_section(name) not in other_methods}

    found = set()

    def collect(node, prefix):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                collect(value, dotted)
            else:
                found.add(dotted)

    collect(data, "")
    assert found == expected


def test_example_config_defaults_except_output_dir():
    for method in ("coop", "vpt", "upt"):
        config = load_config(REPO / "configs" / f"{method}.yaml", ["prompt.method=coop", "output_dir=runs/run"])
        assert config == RunConfig(), method


def test_docs_table_matches_fields():
    docs = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")

    assert format_fields_table(RunConfig) in docs


def test_fields_help_names_are_override_keys():
    names = [name for name, *_ in fields_help(RunConfig)]

    assert "prompt.coop.n_ctx" in names
    assert "train.lr" in names
    assert "seed" in names
    assert len(names) == len(set(names))


def test_fields_help_relative_to_section():
    names = [name for name, *_ in fields_help(BackboneConfig)]

    assert names == ["model", "pretrained", "cache_dir"]


def test_fields_help_includes_unit():
    rows = {name: help_text for name, _, _, help_text in fields_help(RunConfig)}

    assert "Unit: epochs." in rows["train.epochs"]


def test_dataclass_fields_carry_help():
    for cls in (BackboneConfig, CoOpConfig, VPTConfig, UPTConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
