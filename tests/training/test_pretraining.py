"""Seeded source subsets (the paper's LUPerson30k) and the checks of the pre-training config's model_init."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from hf_personsearch.data.augmentation import PRETRAIN_MIN_SIZES
from hf_personsearch.data.synthetic import generate
from hf_personsearch.training.config import PRETRAIN_DEFAULTS, ConfigError, load_config
from hf_personsearch.training.pretraining import load_sources, select_subset, validate_pretrain_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def luperson_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("luperson")
    generate("luperson", folder, seed=0, num_crops=12)
    return folder


def image_ids(loaded) -> list[str]:
    return list(loaded[0][2]["image_id"])


def test_subset_is_seeded_ordered_and_the_same_on_every_call(luperson_dir):
    source = {"name": "luperson", "data_dir": str(luperson_dir), "split": "train"}
    everything = image_ids(load_sources([source], None))
    first = image_ids(load_sources([{**source, "max_images": 5, "subset_seed": 3}], None))
    again = image_ids(load_sources([{**source, "max_images": 5, "subset_seed": 3}], None))
    other_seed = image_ids(load_sources([{**source, "max_images": 5, "subset_seed": 4}], None))
    assert len(everything) == 12 and len(first) == 5
    assert first == again
    # The draw is numpy's permutation of the parsed order with subset_seed, kept in the parsed order.
    expected = [everything[i] for i in sorted(np.random.default_rng(3).permutation(12)[:5])]
    assert first == expected
    assert other_seed != first
    assert image_ids(load_sources([{**source, "max_images": 12}], None)) == everything


def test_subset_larger_than_the_source_keeps_everything():
    import datasets

    data = datasets.Dataset.from_dict({"image_id": ["a", "b", "c"]})
    assert select_subset(data, 10, 0)["image_id"] == ["a", "b", "c"]
    assert select_subset(data, None, 0)["image_id"] == ["a", "b", "c"]
    assert select_subset(data, 2, 0)["image_id"] == [
        ["a", "b", "c"][i] for i in sorted(np.random.default_rng(0).permutation(3)[:2])
    ]


def config_with(**source_keys) -> dict:
    config = copy.deepcopy(PRETRAIN_DEFAULTS)
    config["data"]["sources"][-1].update(source_keys)
    return config


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"max_images": 0}, "max_images must be an integer >= 1"),
        ({"max_images": "30k"}, "max_images must be an integer >= 1"),
        ({"max_images": 10, "subset_seed": -1}, "subset_seed must be an integer >= 0"),
        ({"subset_seed": 1.5}, "subset_seed must be an integer >= 0"),
    ],
)
def test_bad_subset_keys_name_the_source(keys, message):
    with pytest.raises(ConfigError, match=r"data\.sources\[4\] \(luperson\): " + message):
        validate_pretrain_config(config_with(**keys))


def test_paper_recipes_pretrain_on_luperson30k():
    for recipe in ("pretrain_r50", "pretrain_r18", "pretrain_shufflenet"):
        sources = yaml.safe_load((ROOT / "examples" / "configs" / f"{recipe}.yaml").read_text())["data"]["sources"]
        luperson = next(source for source in sources if source["name"] == "luperson")
        assert luperson["max_images"] == 30000 and luperson["subset_seed"] == 0, recipe


def test_gpu_recipes_paint_reid_canvases_in_the_step_and_the_cpu_default_in_the_workers():
    for recipe in ("pretrain_r50", "pretrain_r18", "pretrain_shufflenet"):
        data = yaml.safe_load((ROOT / "examples" / "configs" / f"{recipe}.yaml").read_text())["data"]
        assert data["canvas_in_step"] is True, recipe
    assert PRETRAIN_DEFAULTS["data"]["canvas_in_step"] is False


def test_gpu_recipes_pad_batches_to_128_and_the_cpu_default_not():
    for recipe in ("pretrain_r50", "pretrain_r18", "pretrain_shufflenet"):
        config = load_config(ROOT / "examples" / "configs" / f"{recipe}.yaml", [], PRETRAIN_DEFAULTS)
        assert config["data"]["size_divisor"] == 128, recipe
        smallest = min(config["data"]["min_sizes"] or PRETRAIN_MIN_SIZES)
        assert 128 <= 0.4 * smallest, recipe  # within the bound validate_pretrain_config enforces
    assert PRETRAIN_DEFAULTS["data"]["size_divisor"] == 1


def test_gpu_finetuning_recipes_pad_batches_as_the_published_code_and_the_cpu_default_not():
    from hf_personsearch.training.config import FINETUNE_DEFAULTS

    for recipe in ("prw", "cuhk_sysu", "posetrack21", "alignps_prw", "alignps_cuhk_sysu"):
        config = load_config(ROOT / "examples" / "configs" / f"finetune_{recipe}.yaml", [], FINETUNE_DEFAULTS)
        assert config["data"]["size_divisor"] == 32, recipe  # SeqNet's torchvision transform, AlignPS's mmdetection
    assert FINETUNE_DEFAULTS["data"]["size_divisor"] == 1


@pytest.mark.parametrize("divisor", [0, -32, 1.5, True, "32", 193])
def test_a_size_divisor_that_is_no_integer_or_too_large_is_refused(divisor):
    config = copy.deepcopy(PRETRAIN_DEFAULTS)
    config["data"]["size_divisor"] = divisor  # 193 > 0.4 x 480, the smallest default min_size
    with pytest.raises(ConfigError, match=r"data.size_divisor must be an integer from 1 to .* \(480: at most 192\)"):
        validate_pretrain_config(config)
    config["data"]["size_divisor"] = 192
    validate_pretrain_config(config)
    config["data"]["min_sizes"] = [112, 128]
    with pytest.raises(ConfigError, match=r"\(112: at most 44\), got 192"):
        validate_pretrain_config(config)


def test_the_largest_allowed_padding_keeps_the_inferred_feature_stride():
    """RoIAlign infers the stride from the batch's largest image (torchvision's rule); the validated bound on
    data.size_divisor keeps the padded feature map within a factor sqrt(2) of it, for every height it allows, on
    the encoder map of the default backbone split (stride 16, every recipe)."""
    from hf_personsearch.roi_align import infer_spatial_scale

    def accepted(divisor: int, smallest: int) -> bool:
        config = copy.deepcopy(PRETRAIN_DEFAULTS)
        config["data"].update(size_divisor=divisor, min_sizes=[smallest, 2 * smallest])
        try:
            validate_pretrain_config(config)
        except ConfigError:
            return False
        return True

    for smallest in (112, 480, 800):
        divisor = next(d for d in range(smallest, 0, -1) if accepted(d, smallest))  # the largest one accepted
        for height in range(smallest, 4 * smallest):
            padded = -(-height // divisor) * divisor
            assert infer_spatial_scale(-(-padded // 16), [(height, height)]) == 1 / 16, (height, divisor)


def test_pretrained_model_must_be_a_saved_folder_and_excludes_backbone_weights(tmp_path):
    config = copy.deepcopy(PRETRAIN_DEFAULTS)
    config["model_init"]["pretrained_model"] = str(tmp_path)
    with pytest.raises(ConfigError, match=r"model_init.pretrained_model .* \(no config.json"):
        validate_pretrain_config(config)
    (tmp_path / "config.json").write_text("{}")
    config["model_init"]["backbone_weights"] = "resnet18.tv_in1k"
    with pytest.raises(ConfigError, match="backbone_weights or pretrained_model, not both"):
        validate_pretrain_config(config)


def test_pretraining_warmup_must_be_a_step_count():
    # Fine-tuning reads a null warm-up as one epoch; pre-training has no epochs.
    config = copy.deepcopy(PRETRAIN_DEFAULTS)
    config["schedule"]["warmup_steps"] = None
    with pytest.raises(ConfigError, match=r"schedule.warmup_steps must be an integer >= 0 \(null, one epoch"):
        validate_pretrain_config(config)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"crowdhumann": {"num_train": 3}}, "data.synthetic_sizes: 'crowdhumann' is not one of the sources"),
        ({"crowdhuman": {"num_images": 3}}, "data.synthetic_sizes.crowdhuman: crowdhuman: unknown synthetic size(s)"),
    ],
)
def test_synthetic_sizes_must_name_sources_and_their_writers_arguments(sizes, message):
    config = copy.deepcopy(PRETRAIN_DEFAULTS)
    config["data"]["synthetic_sizes"] = sizes
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_pretrain_config(config)
    config["data"]["synthetic_sizes"] = {"crowdhuman": {"num_train": 3, "width": 160}}
    validate_pretrain_config(config)


def test_timm_tag_offline_and_not_cached_is_refused_before_training(monkeypatch):
    from huggingface_hub import constants

    config = copy.deepcopy(PRETRAIN_DEFAULTS)
    config["model_init"]["backbone_weights"] = "resnet18.tv_in1k"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(ConfigError, match=r"model_init.backbone_weights: HF_HUB_OFFLINE is set .* not in the Hugging"):
        validate_pretrain_config(config)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    validate_pretrain_config(config)  # online: only the download tells
