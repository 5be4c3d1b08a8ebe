"""examples/run_finetune.py with model.type=align_ps: a short CPU run on generated PRW writes an AlignPS model
the Auto classes load; AlignPS starts from the backbone of a saved NAE model (heads left); a whole NAE checkpoint
or an unknown model type is refused before any compute."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import AutoModel

from hf_personsearch import AlignPSModel, PersonSearchConfig, PersonSearchModel
from hf_personsearch.training.config import FINETUNE_DEFAULTS, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "configs" / "bench_finetune_alignps_cpu.yaml"
SIZES = (
    "data.synthetic_sizes={num_train_frames: 6, num_test_frames: 8, num_train_identities: 4, num_test_identities: 4}"
)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_finetune = _load_script("run_finetune")


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def nae_checkpoint(tmp_path_factory):
    """A saved NAE model with the benchmark's tiny backbone (stands in for our pre-trained checkpoint)."""
    folder = tmp_path_factory.mktemp("nae")
    torch.manual_seed(3)
    PersonSearchModel(
        PersonSearchConfig(backbone="test_resnet", freeze_batchnorm=False, num_person_ids=4, oim_queue_size=4)
    ).save_pretrained(folder)
    return folder


def test_align_ps_fine_tuning_run_saves_an_align_ps_model(tmp_path):
    output_dir = tmp_path / "out"
    argv = ["--config", str(CONFIG), f"training.output_dir={output_dir}", "training.max_steps=2", SIZES]
    assert run_finetune.main([*argv, "evaluation.det_thresh=0.0"]) == 0
    final = json.loads((output_dir / "results.json").read_text())["final"]
    assert final["step"] == 2 and 0.0 <= final["mAP"] <= 1.0 and 0.0 <= final["detection_ap"] <= 1.0
    model = AutoModel.from_pretrained(output_dir, dtype=torch.float32)
    assert type(model) is AlignPSModel and model.config.num_person_ids == 4
    losses = [json.loads(line) for line in (output_dir / "loss_log.jsonl").read_text().splitlines()]
    assert {"det_classification", "det_box", "det_centerness", "reid_oim", "reid_triplet"} <= set(losses[-1])


def test_align_ps_starts_from_the_backbone_of_a_saved_nae_model(nae_checkpoint, caplog):
    config = load_config(
        str(CONFIG), ["init.from=pretrained_backbone", f"init.path={nae_checkpoint}"], FINETUNE_DEFAULTS
    )
    caplog.set_level("INFO")
    model = run_finetune.build_model(config, num_identities=5)
    saved = PersonSearchModel.from_pretrained(nae_checkpoint, dtype=torch.float32).state_dict()
    assert isinstance(model, AlignPSModel) and model.search_head.oim.lut.shape[0] == 5
    for key, value in model.state_dict().items():
        if key.startswith("backbone.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(value, saved[key]), key
    assert "took" in caplog.text and "'rpn':" in caplog.text and "'search_head':" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.type=detr", "model.type must be one of ('person_search', 'align_ps'), got 'detr'"),
        ("init.from=pretrained", "needs a saved AlignPS model"),
    ],
)
def test_bad_model_type_or_init_fails_before_any_compute(nae_checkpoint, tmp_path, capsys, override, message):
    argv = ["--config", str(CONFIG), "--output_dir", str(tmp_path / "out"), f"init.path={nae_checkpoint}", override]
    assert run_finetune.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("run_finetune: configuration error: ") and message in error
    assert not (tmp_path / "out" / "data").exists()


@pytest.mark.parametrize("name", ["finetune_alignps_prw", "finetune_alignps_cuhk_sysu"])
def test_published_recipes_resolve_with_multi_scale_training_and_doubled_bias_lr(name, tmp_path, monkeypatch):
    """The shipped AlignPS recipes: every key known, the check passes, and a model of the recipe gets its six
    (shortest, longest) training sizes and biases at twice the lr."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the recipes' ImageNet tag is fetched online
    config = load_config(
        ROOT / "examples" / "configs" / f"{name}.yaml", [f"data.data_dir={tmp_path}"], FINETUNE_DEFAULTS
    )
    run_finetune.check_config(config)
    data = config["data"]
    assert data["train_min_sizes"] == [400, 600, 800, 900, 1000, 1200]
    assert data["train_max_size"] == [667, 1000, 1333, 1500, 1666, 2000]
    assert (data["min_size"], data["max_size"]) == (900, 1500)
    assert config["optimizer"]["bias_lr_factor"] == 2.0 and config["model"]["type"] == "align_ps"
