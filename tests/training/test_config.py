"""YAML config + overrides: merge order, YAML-typed values, unknown keys named, resolved config round trip."""

from __future__ import annotations

import re

import pytest
import yaml

from hf_personsearch.training.config import (
    FINETUNE_DEFAULTS,
    PRETRAIN_DEFAULTS,
    ConfigError,
    check_training_section,
    flatten_config,
    load_config,
    parse_override,
    save_resolved_config,
)


def test_override_values_are_parsed_as_yaml():
    assert parse_override("training.max_steps=20") == {"training": {"max_steps": 20}}
    assert parse_override("model.use_reid_iam=false") == {"model": {"use_reid_iam": False}}
    assert parse_override("data.min_sizes=[128, 160]") == {"data": {"min_sizes": [128, 160]}}
    assert parse_override("hub.hub_model_id=org/name") == {"hub": {"hub_model_id": "org/name"}}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("training.max_steps")


def test_file_then_overrides_win_and_defaults_fill_the_rest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  max_steps: 7\n  batch_size: 2\nmodel:\n  person_search: {backbone: test_resnet}\n")
    config = load_config(path, ["training.max_steps=9", "model.person_search.embedding_dim=32"])
    assert config["training"]["max_steps"] == 9  # override beats file
    assert config["training"]["batch_size"] == 2  # file beats default
    assert config["training"]["seed"] == PRETRAIN_DEFAULTS["training"]["seed"]  # default kept
    assert config["model"]["person_search"] == {"backbone": "test_resnet", "embedding_dim": 32}
    assert PRETRAIN_DEFAULTS["training"]["max_steps"] == 1000  # defaults are not mutated


def test_unknown_keys_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  max_step: 7\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'training.max_step'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'optimiser.lr=1': unknown key 'optimiser'"):
        load_config(None, ["optimiser.lr=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["training.max_steps=3", "data.min_sizes=[96]"])
    path = save_resolved_config(config, tmp_path)
    assert yaml.safe_load(path.read_text()) == config
    assert load_config(path) == config


def test_flatten_gives_tracker_friendly_scalars():
    flat = flatten_config({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "a.d": "None", "e": "x"}


@pytest.mark.parametrize("name", ["pretrain_r50", "pretrain_r18", "pretrain_shufflenet", "pretrain_demo_cpu"])
def test_shipped_configs_load_and_validate(name, monkeypatch):
    from pathlib import Path

    from huggingface_hub import constants

    from hf_personsearch.hub.export import is_timm_tag
    from hf_personsearch.training.pretraining import validate_pretrain_config

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: None)  # nothing cached

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / f"{name}.yaml"
    config = load_config(path)
    if name != "pretrain_demo_cpu":  # the recipes name the real datasets' folders, absent here
        with pytest.raises(ConfigError, match=r"data.sources\[0\] \(crowdhuman\): data_dir 'data/CrowdHuman'"):
            validate_pretrain_config(config)
        for source in config["data"]["sources"]:
            source["data_dir"] = None
    weights = config["model_init"]["backbone_weights"]
    if weights is not None and is_timm_tag(weights):  # the recipes start from ImageNet weights, fetched by timm
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
            validate_pretrain_config(config)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    validate_pretrain_config(config)
    assert [s["name"] for s in config["data"]["sources"]] == ["crowdhuman", "ecp", "msmt17", "cuhk03", "luperson"]


@pytest.mark.parametrize("name", ["finetune_prw", "finetune_cuhk_sysu", "finetune_posetrack21", "finetune_demo_cpu"])
def test_shipped_finetune_configs_load_over_the_finetune_defaults(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / f"{name}.yaml"
    config = load_config(path, defaults=FINETUNE_DEFAULTS)
    check_training_section(config)
    assert set(config) == set(FINETUNE_DEFAULTS)
    assert config["checkpointing"] == FINETUNE_DEFAULTS["checkpointing"]


def test_exponent_numbers_without_a_dot_are_floats(tmp_path):
    # PyYAML's YAML 1.1 reads 1e-4 as a string; a config means the number.
    path = tmp_path / "config.yaml"
    path.write_text("optimizer:\n  lr: 1e-4\n  weight_decay: 5E-4\ntraining:\n  output_dir: run_1e5\n")
    config = load_config(path, ["optimizer.eps=-2e+3", "optimizer.betas=[0.9, 99e-2]"], FINETUNE_DEFAULTS)
    assert config["optimizer"]["lr"] == 1e-4 and isinstance(config["optimizer"]["lr"], float)
    assert config["optimizer"]["weight_decay"] == 5e-4 and config["optimizer"]["eps"] == -2e3
    assert config["optimizer"]["betas"] == [0.9, 0.99] and config["training"]["output_dir"] == "run_1e5"
    assert load_config(None, ["training.seed=12"], FINETUNE_DEFAULTS)["training"]["seed"] == 12


def test_mixed_precision_no_unquoted_means_no_autocast(tmp_path):
    # YAML 1.1 reads an unquoted "no" as false; the loop hands the value to Accelerate as a string.
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  mixed_precision: no\n")
    for defaults in (PRETRAIN_DEFAULTS, FINETUNE_DEFAULTS):
        for config in (
            load_config(path, defaults=defaults),
            load_config(None, ["training.mixed_precision=bf16", "training.mixed_precision=no"], defaults),
        ):
            check_training_section(config)
            assert config["training"]["mixed_precision"] == "no"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("checkpointing.every=0", "checkpointing.every must be an integer >= 1, got 0"),
        ("checkpointing.keep_last=-1", "checkpointing.keep_last must be an integer >= 0, got -1"),
        ("training.batch_size=2.5", "training.batch_size must be an integer >= 1, got 2.5"),
        ("training.mixed_precision=fp8", "training.mixed_precision must be 'no', 'bf16' or 'fp16', got 'fp8'"),
        ("optimizer.lr=abc", "optimizer.lr must be a number in (0, inf), got 'abc'"),
        ("optimizer.lr=0", "optimizer.lr must be a number in (0, inf), got 0"),
        ("optimizer.name=adam", "optimizer.name must be one of ('sgd', 'adamw'), got 'adam'"),
        ("optimizer.momentum=1.0", "optimizer.momentum must be a number in [0, 1), got 1.0"),
        ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay must be a number in [0, inf), got -0.0001"),
        ("optimizer.betas=[0.9]", "optimizer.betas must be two numbers in [0, 1), got [0.9]"),
        ("schedule.name=linear", "schedule.name must be one of ('step', 'cosine', 'constant'), got 'linear'"),
        ("schedule.warmup_steps=-5", "schedule.warmup_steps must be an integer >= 0, got -5"),
        ("schedule.warmup_factor=0", "schedule.warmup_factor must be a number in (0, 1], got 0"),
        ("schedule.min_lr_ratio=2", "schedule.min_lr_ratio must be a number in [0, 1], got 2"),
        ("schedule.milestones=0.75", "schedule.milestones must be a list of numbers"),
    ],
)
def test_loop_settings_are_checked_for_both_scripts(override, message):
    for defaults in (PRETRAIN_DEFAULTS, FINETUNE_DEFAULTS):
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_training_section(load_config(None, [override], defaults))


def test_exit_status_turns_data_errors_into_one_line_and_status_2(capsys):
    from hf_personsearch.data.errors import DataFormatError
    from hf_personsearch.hub.export import WeightsUnavailableError
    from hf_personsearch.training.config import exit_status

    def failing(error):
        def main():
            raise error

        return main

    assert exit_status(failing(FileNotFoundError("prw: expected file 'x.mat' is missing")), "run_x") == 2
    assert capsys.readouterr().err == "run_x: data error: prw: expected file 'x.mat' is missing\n"
    assert exit_status(failing(DataFormatError("a.odgt:3: bad box")), "run_x") == 2
    capsys.readouterr()
    assert exit_status(failing(WeightsUnavailableError("could not fetch 'resnet50.tv_in1k'")), "run_x") == 2
    assert capsys.readouterr().err == "run_x: weights error: could not fetch 'resnet50.tv_in1k'\n"
    assert exit_status(lambda: 3, "run_x") == 3 and exit_status(lambda: {"mAP": 0.5}, "run_x") == 0
    with pytest.raises(KeyError):  # anything else keeps its traceback
        exit_status(failing(KeyError("bug")), "run_x")
