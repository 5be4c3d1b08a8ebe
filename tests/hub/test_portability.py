"""A saved model carries its weights: the file its backbone started from is neither recorded as a path nor
read again, so the model loads on a machine that never had that file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from hf_personsearch import PersonSearchConfig, PersonSearchModel
from hf_personsearch.hub import load_backbone_weights

REPO_ROOT = Path(__file__).resolve().parents[2]

# Loads the saved model in a fresh interpreter (no state shared with the test process) and writes its weights.
LOAD_ELSEWHERE = """
import sys, torch
from safetensors.torch import save_file
from hf_personsearch import PersonSearchModel
model = PersonSearchModel.from_pretrained(sys.argv[1], dtype=torch.float32)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
"""


def _config() -> PersonSearchConfig:
    return PersonSearchConfig(backbone="test_resnet", num_person_ids=4, oim_queue_size=4)


@pytest.mark.slow
def test_model_started_from_a_local_file_loads_where_the_file_is_gone(tmp_path):
    torch.manual_seed(123)
    start = timm.create_model("test_resnet", features_only=True)  # stands in for an ImageNet weights file
    weights = tmp_path / "imagenet" / "test_resnet-in1k.pth"
    weights.parent.mkdir()
    torch.save(start.state_dict(), weights)
    torch.manual_seed(0)
    model = PersonSearchModel(_config())
    load_backbone_weights(model, weights)
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(value, start.state_dict()[key]), key
    model.save_pretrained(tmp_path / "saved")
    weights.unlink()
    weights.parent.rmdir()

    text = (tmp_path / "saved" / "config.json").read_text()
    assert str(tmp_path) not in text and "imagenet" not in text
    saved_config = json.loads(text)
    assert "backbone_weights_path" not in saved_config
    assert saved_config["backbone_init"] == "test_resnet-in1k.pth"  # provenance: the file name only

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_ELSEWHERE, str(tmp_path / "saved"), str(tmp_path / "loaded.safetensors")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_file(str(tmp_path / "loaded.safetensors"))
    expected = model.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_old_config_with_a_weights_path_loads_without_reading_it(tmp_path, caplog):
    torch.manual_seed(0)
    model = PersonSearchModel(_config())
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["backbone_weights_path"] = str(tmp_path / "elsewhere" / "resnet50-imagenet.pth")  # never existed here
    config_path.write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        loaded = PersonSearchModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert "ignoring backbone_weights_path" in caplog.text
    assert not hasattr(loaded.config, "backbone_weights_path")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_building_and_loading_never_fetch_backbone_weights(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a model build asked timm for pretrained weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)
    config = PersonSearchConfig(backbone="resnet18", num_person_ids=4, oim_queue_size=4, backbone_init="x.pth")
    model = PersonSearchModel(config)
    model.save_pretrained(tmp_path)
    PersonSearchModel.from_pretrained(tmp_path, dtype=torch.float32)
