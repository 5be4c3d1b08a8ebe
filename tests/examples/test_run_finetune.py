"""examples/run_finetune.py: short CPU runs on generated PRW, outputs checked; bad input stops before compute."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from huggingface_hub import ModelCard

from hf_personsearch import PersonSearchModel
from hf_personsearch.data.search_dataset import load_target_records
from hf_personsearch.hub.model_card import model_index_metrics

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "configs" / "finetune_demo_cpu.yaml"


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


def _run(output_dir: Path, *overrides: str) -> dict:
    # The writer's default PRW (6 train frames, 8 test frames) and 2 optimiser steps: a few seconds.
    return run_finetune.main(
        ["--config", str(DEMO_CONFIG), f"training.output_dir={output_dir}", "training.max_steps=2", *overrides]
    )


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    AcceleratorState._reset_state(reset_partial_state=True)
    output_dir = tmp_path_factory.mktemp("finetune") / "scratch"
    sizes = "data.synthetic_sizes={num_train_frames: 6, num_test_frames: 8, num_train_identities: 4, num_test_identities: 4}"
    final = _run(output_dir, sizes, "evaluation.det_thresh=0.0")
    return output_dir, final


def test_scratch_run_writes_results_model_and_card(scratch_run):
    output_dir, final = scratch_run
    results = json.loads((output_dir / "results.json").read_text())
    assert results["final"] == json.loads(json.dumps(final))
    for key in ("mAP", "top1", "top5", "top10", "detection_ap", "detection_recall"):
        assert 0.0 <= results["final"][key] <= 1.0, key
    assert results["final"]["step"] == 2 and results["final"]["dataset"] == "PRW"
    card = ModelCard.load(output_dir / "README.md")
    metrics = model_index_metrics(card)
    assert metrics[("PRW", "map")] == round(100 * final["mAP"], 2)
    assert metrics[("PRW", "top1")] == round(100 * final["top1"], 2)
    train_ids = sorted(
        {
            int(i)
            for r in load_target_records("prw", output_dir / "data" / "prw", "train")
            for i in r["person_ids"]
            if i >= 0
        }
    )
    assert json.loads((output_dir / "identity_map.json").read_text())["person_ids"] == train_ids
    model = PersonSearchModel.from_pretrained(output_dir, dtype=torch.float32)
    assert model.config.num_person_ids == len(train_ids) and model.config.backbone == "test_resnet"
    assert (output_dir / "resolved_config.yaml").is_file() and (output_dir / "preprocessor_config.json").is_file()


@pytest.mark.parametrize("init", ["pretrained", "pretrained_backbone"])
def test_initialisation_from_a_checkpoint_and_train_fraction(scratch_run, tmp_path, init):
    checkpoint, _ = scratch_run
    output_dir = tmp_path / init
    data_dir = checkpoint / "data" / "prw"
    overrides = [
        f"init.from={init}",
        f"init.path={checkpoint}",
        f"data.data_dir={data_dir}",
        "data.train_fraction=0.5",
    ]
    final = _run(output_dir, *overrides, "training.max_steps=1")
    info = json.loads((output_dir / "training_info.json").read_text())
    assert info["training images"].startswith("3 of 6") and info["initialisation"].startswith(init)
    assert 0.0 <= final["mAP"] <= 1.0 and final["step"] == 1


def test_full_initialisation_starts_from_the_checkpoint_weights(scratch_run):
    checkpoint, _ = scratch_run
    config = run_finetune.load_config(
        str(DEMO_CONFIG), ["init.from=pretrained", f"init.path={checkpoint}"], run_finetune.FINETUNE_DEFAULTS
    )
    saved = PersonSearchModel.from_pretrained(checkpoint, dtype=torch.float32).state_dict()
    for init, same_heads in (("pretrained", True), ("pretrained_backbone", False)):
        config["init"]["from"] = init
        state = run_finetune.build_model(config, num_identities=4).state_dict()
        assert all(torch.equal(state[k], saved[k]) for k in saved if k.startswith("backbone."))
        head = "embedding_head.projections.0.weight"
        assert torch.equal(state[head], saved[head]) == same_heads, init


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.dataset=msmt17", "unknown target dataset 'msmt17'"),
        ("data.data_dir=/nonexistent/prw", "data.data_dir '/nonexistent/prw' is not a folder"),
        ("init.from=imagenet", "needs init.path"),
        ("init.from=pretrained_backbone", "needs init.path"),
        ("data.train_fraction=0", "train_fraction must be in"),
        ("evaluation.gallery_size=100", "only CUHK-SYSU has gallery sizes"),
        ("training.learning_rate=1", "unknown key 'training.learning_rate'"),
    ],
)
def test_bad_input_fails_before_any_compute(tmp_path, override, message):
    with pytest.raises(run_finetune.ConfigError, match=message):
        _run(tmp_path / "out", override)
    assert not (tmp_path / "out" / "data").exists()  # nothing generated, nothing trained


def test_unwritable_output_dir_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(run_finetune.ConfigError, match="is not writable"):
        _run(blocker / "out")
