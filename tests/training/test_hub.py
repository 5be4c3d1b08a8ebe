"""Pushing at the end of pre-training: what makes the push fail for certain is refused before the run, and the
command said after a failed push uploads the saved folder (fake Hub server, no network)."""

import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hf_personsearch.training.config import PRETRAIN_DEFAULTS, ConfigError
from hf_personsearch.training.hub import check_push_possible, push_command
from hf_personsearch.training.pretraining import validate_pretrain_config

sys.path.insert(0, str(Path(__file__).parents[1]))
from support.fake_hub import FakeHub  # noqa: E402


def _pushing_config(repo_id="org/prtps") -> dict:
    config = copy.deepcopy(PRETRAIN_DEFAULTS)
    config["hub"].update(push_to_hub=True, hub_model_id=repo_id)
    return config


def test_a_push_that_must_fail_is_refused_before_training(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="hub.push_to_hub is on, but HF_HUB_OFFLINE is set"):
        validate_pretrain_config(_pushing_config())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ConfigError, match="no Hugging Face token"):
        validate_pretrain_config(_pushing_config())
    with pytest.raises(ConfigError, match="a Hub repository id must be 'org/name', got 'prtps'"):
        validate_pretrain_config(_pushing_config("prtps"))
    check_push_possible("org/prtps", token="hf_given")  # a token given directly is enough
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_from_login")
    validate_pretrain_config(_pushing_config())


def test_the_command_said_after_a_failed_push_uploads_the_folder(tmp_path):
    folder = tmp_path / "person search model"  # a space: the command must quote it
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    command = push_command(folder, "org/prtps", private=True)
    assert command.startswith("hf upload org/prtps ") and command.endswith(" --private")
    hf = Path(sys.executable).with_name("hf")
    with FakeHub() as hub:
        arguments = [str(hf), *shlex.split(command)[1:]]
        subprocess.run(arguments, env={**os.environ, **hub.environment()}, check=True, capture_output=True)
        uploaded = hub.repos["org/prtps"]
    assert uploaded["model.safetensors"] == b"weights" and uploaded["config.json"] == b"{}"
