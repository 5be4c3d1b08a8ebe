"""run_finetune's init.from=imagenet: init.path is a local weights file or a timm tag, loaded after the model
is built (never written into its config)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch

from hf_personsearch.training.config import FINETUNE_DEFAULTS, load_config

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_finetune = _load_script("run_finetune")
TINY_MODEL = {"backbone": "test_resnet", "oim_queue_size": 4}


def test_imagenet_init_from_a_local_file_loads_the_backbone(tmp_path):
    torch.manual_seed(5)
    start = timm.create_model("test_resnet", features_only=True)
    torch.save(start.state_dict(), tmp_path / "test_resnet-in1k.pth")
    config = {"init": {"from": "imagenet", "path": str(tmp_path / "test_resnet-in1k.pth")}, "model": TINY_MODEL}
    model = run_finetune.build_model(config, num_identities=3)
    loaded = model.backbone.body.state_dict()  # frozen BatchNorms (the default) have no num_batches_tracked
    assert set(loaded) == {k for k in start.state_dict() if not k.endswith("num_batches_tracked")}
    for key, value in loaded.items():
        assert torch.equal(value, start.state_dict()[key]), key
    assert model.config.backbone_init == "test_resnet-in1k.pth"
    assert "backbone_weights_path" not in model.config.to_dict()


def test_imagenet_init_accepts_a_timm_tag_and_names_what_is_wrong(tmp_path, monkeypatch):
    from huggingface_hub import constants

    config = load_config(
        None,
        [f"training.output_dir={tmp_path / 'out'}", "init.from=imagenet", "init.path=resnet50.tv_in1k"],
        defaults=FINETUNE_DEFAULTS,
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    run_finetune.check_config(config)  # online, a tag passes the checks (fetched when the model is built)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(run_finetune.ConfigError, match="init.path: HF_HUB_OFFLINE is set and timm's weights"):
        run_finetune.check_config(config)  # offline and not in the cache: refused before any compute
    cached = {("timm/resnet50.tv_in1k", "pytorch_model.bin"): str(tmp_path / "cached.bin")}
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: cached.get((repo, name)))
    run_finetune.check_config(config)  # offline, from the cache
    config["init"]["path"] = str(tmp_path / "missing.pth")
    with pytest.raises(run_finetune.ConfigError, match="is neither a file nor a timm tag"):
        run_finetune.check_config(config)
    wrong = {"init": {"from": "imagenet", "path": "resnet50.tv_in1k"}, "model": TINY_MODEL}
    with pytest.raises(ValueError, match="for architecture 'resnet50' but the backbone is 'test_resnet'"):
        run_finetune.build_model(wrong, num_identities=3)
