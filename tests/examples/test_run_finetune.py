"""examples/run_finetune.py: short CPU runs on generated PRW, outputs checked; bad input stops before compute
(exit 2); the model is saved before the final evaluation; kill -9 then --resume_from_checkpoint latest gives
the uninterrupted run's weights bit for bit."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hf_personsearch import PersonSearchModel
from hf_personsearch.data.search_dataset import load_target_records
from hf_personsearch.hub.model_card import model_index_metrics
from hf_personsearch.training.config import FINETUNE_DEFAULTS, load_config

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
    """Fine-tune (2 optimiser steps on the writer's default PRW: a few seconds); the final results.json entry."""
    status = run_finetune.main(
        ["--config", str(DEMO_CONFIG), f"training.output_dir={output_dir}", "training.max_steps=2", *overrides]
    )
    assert status == 0
    return json.loads((output_dir / "results.json").read_text())["final"]


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
    assert results["final"] == final
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
    # the card's training record says how it was trained, precision included (float32: accelerate's "no")
    assert json.loads((output_dir / "training_info.json").read_text())["hardware"].endswith("mixed precision no")


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
    if init == "pretrained_backbone":  # one of the two trains under bf16 autocast: the record must say so
        overrides.append("training.mixed_precision=bf16")
    final = _run(output_dir, *overrides, "training.max_steps=1")
    info = json.loads((output_dir / "training_info.json").read_text())
    precision = "bf16" if init == "pretrained_backbone" else "no"
    assert info["hardware"].startswith("1 x cpu") and info["hardware"].endswith(f"mixed precision {precision}")
    assert info["training images"].startswith("3 of 6") and info["initialisation"].startswith(init)
    assert info["initialisation"].endswith("normalised layers at a fresh model's weight norms")
    assert info["synthetic_data"] is True  # the generated folder passed as data_dir still says what it is
    assert 0.0 <= final["mAP"] <= 1.0 and final["step"] == 1


def test_full_initialisation_starts_from_the_checkpoint_weights(scratch_run):
    checkpoint, _ = scratch_run
    overrides = ["init.from=pretrained", f"init.path={checkpoint}", "init.match_fresh_weight_norms=false"]
    config = load_config(str(DEMO_CONFIG), overrides, FINETUNE_DEFAULTS)
    saved = PersonSearchModel.from_pretrained(checkpoint, dtype=torch.float32).state_dict()
    for init, same_heads in (("pretrained", True), ("pretrained_backbone", False)):
        config["init"]["from"] = init
        state = run_finetune.build_model(config, num_identities=4).state_dict()
        assert all(torch.equal(state[k], saved[k]) for k in saved if k.startswith("backbone."))
        head = "search_head.embedding_head.projections.0.weight"
        assert torch.equal(state[head], saved[head]) == same_heads, init


def test_pretrained_init_gets_a_fresh_models_weight_norms_by_default(scratch_run):
    checkpoint, _ = scratch_run
    config = load_config(str(DEMO_CONFIG), ["init.from=pretrained", f"init.path={checkpoint}"], FINETUNE_DEFAULTS)
    assert config["init"]["match_fresh_weight_norms"] is True
    saved = PersonSearchModel.from_pretrained(checkpoint, dtype=torch.float32)
    model = run_finetune.build_model(config, num_identities=4)
    torch.manual_seed(config["training"]["seed"])
    fresh = PersonSearchModel(model.config).state_dict()
    state, saved_state = model.state_dict(), saved.state_dict()
    head = "search_head.embedding_head.projections.0.weight"
    torch.testing.assert_close(state[head].norm(), fresh[head].norm())
    assert not torch.equal(state[head], saved_state[head])
    # the direction is the checkpoint's: only the scale changed
    torch.testing.assert_close(state[head] / state[head].norm(), saved_state[head] / saved_state[head].norm())
    assert torch.equal(state["rpn.head.cls_logits.weight"], saved_state["rpn.head.cls_logits.weight"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.dataset=msmt17", "unknown target dataset 'msmt17'"),
        ("data.data_dir=/nonexistent/prw", "data.data_dir '/nonexistent/prw' is not a folder"),
        ("init.from=imagenet", "needs init.path"),
        ("init.from=pretrained_backbone", "needs init.path"),
        ("data.train_fraction=0", "train_fraction must be in"),
        ("init.match_fresh_weight_norms=2", "init.match_fresh_weight_norms must be true or false"),
        ("evaluation.gallery_size=100", "only CUHK-SYSU has gallery sizes"),
        ("training.learning_rate=1", "unknown key 'training.learning_rate'"),
        ("data.train_min_sizes=[400, 2000]", "data.train_min_sizes / data.train_max_size"),
        ("data.train_max_size=[667, 1000]", "one per min_sizes entry"),
        ("data.size_divisor=0", "data.size_divisor must be an integer from 1 to 0.4 x the smallest training size"),
        ("data.size_divisor=64", "(128: at most 51), got 64"),  # the demo trains at 128
        # the demo config's sizes are PRW's: another synthetic dataset needs its own
        ("data.dataset=custom", "custom: unknown synthetic size(s) ['num_test_frames', 'num_train_frames']"),
    ],
)
def test_bad_input_fails_before_any_compute(tmp_path, capsys, override, message):
    status = run_finetune.main(["--config", str(DEMO_CONFIG), "--output_dir", str(tmp_path / "out"), override])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("run_finetune: configuration error: ") and message in error and "\n" not in error
    assert not (tmp_path / "out" / "data").exists()  # nothing generated, nothing trained


def test_training_batches_are_padded_to_the_size_divisor(tmp_path, monkeypatch):
    seen = []
    run_training = run_finetune.run_training

    def run_training_collating_two_items(accelerator, model, optimizer, scheduler, data, *args, **kwargs):
        seen.append(data.collate([data.dataset[(0, 0)], data.dataset[(0, 1)]]))
        return run_training(accelerator, model, optimizer, scheduler, data, *args, **kwargs)

    monkeypatch.setattr(run_finetune, "run_training", run_training_collating_two_items)
    sizes = "data.synthetic_sizes={num_train_frames: 4, num_test_frames: 2, num_train_identities: 2, num_test_identities: 2}"
    _run(tmp_path / "out", sizes, "data.size_divisor=48", "training.max_steps=1")
    batch = seen[0]
    assert all(side % 48 == 0 for side in batch["pixel_values"].shape[-2:])
    assert batch["pixel_values"].shape[-2:] != tuple(batch["image_sizes"].max(dim=0).values.tolist())


def test_unwritable_output_dir_and_missing_checkpoint_are_reported(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert run_finetune.main(["--config", str(DEMO_CONFIG), "--output_dir", str(blocker / "out")]) == 2
    assert "is not writable" in capsys.readouterr().err
    args = ["--config", str(DEMO_CONFIG), "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest"]
    assert run_finetune.main(args) == 2
    assert "no complete checkpoint in" in capsys.readouterr().err


def test_resuming_from_a_checkpoint_with_a_damaged_rng_file_names_the_file(scratch_run, tmp_path, capsys):
    import shutil

    output_dir, _ = scratch_run
    damaged = tmp_path / "out" / "checkpoint-00000002"
    shutil.copytree(output_dir / "checkpoint-00000002", damaged)
    rng_file = damaged / "random_states_0.pkl"
    data = bytearray(rng_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    rng_file.write_bytes(bytes(data))
    args = ["--config", str(DEMO_CONFIG), "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint"]
    assert run_finetune.main([*args, str(damaged)]) == 2
    assert "random_states_0.pkl does not match its sha256" in capsys.readouterr().err
    assert run_finetune.main([*args, "latest"]) == 2  # the only checkpoint is damaged: nothing to fall back to
    assert "no complete checkpoint in" in capsys.readouterr().err


def test_overrides_positional_and_with_o_are_one_syntax():
    positional = run_finetune.parse_args(["data.min_size=96", "--config", str(DEMO_CONFIG), "training.seed=3"])
    with_o = run_finetune.parse_args(["--config", str(DEMO_CONFIG), "-o", "data.min_size=96", "-o", "training.seed=3"])
    resolved = run_finetune.config_from_args(positional, FINETUNE_DEFAULTS)
    assert resolved == run_finetune.config_from_args(with_o, FINETUNE_DEFAULTS)
    assert (resolved["data"]["min_size"], resolved["training"]["seed"]) == (96, 3)
    flags = run_finetune.parse_args(["training.seed=3", "--seed", "4", "--max_steps", "7", "--output_dir", "x"])
    resolved = run_finetune.config_from_args(flags, FINETUNE_DEFAULTS)
    assert (resolved["training"]["seed"], resolved["training"]["max_steps"], resolved["training"]["output_dir"]) == (
        4,
        7,
        "x",
    )  # the flags win over the overrides


def test_model_is_saved_before_the_final_evaluation(tmp_path, monkeypatch):
    def broken_evaluation(*args, **kwargs):
        raise OSError("cannot identify image file 'frames/c1s1_000001.jpg'")

    monkeypatch.setattr(run_finetune, "evaluate", broken_evaluation)
    output_dir = tmp_path / "out"
    with pytest.raises(OSError, match="cannot identify image file"):
        run_finetune.main(["--config", str(DEMO_CONFIG), f"training.output_dir={output_dir}", "training.max_steps=1"])
    model = PersonSearchModel.from_pretrained(output_dir, dtype=torch.float32)  # the trained model survived
    checkpoint = load_file(output_dir / "checkpoint-00000001" / "model.safetensors")
    assert all(torch.equal(value, checkpoint[key]) for key, value in model.state_dict().items())
    assert (output_dir / "preprocessor_config.json").is_file()
    assert not (output_dir / "results.json").exists() and not (output_dir / "README.md").exists()
    # once the test image is fixed, resuming from the last checkpoint trains nothing more and evaluates
    monkeypatch.undo()
    args = ["--config", str(DEMO_CONFIG), f"training.output_dir={output_dir}", "training.max_steps=1"]
    assert run_finetune.main([*args, "--resume_from_checkpoint", "latest"]) == 0
    assert json.loads((output_dir / "results.json").read_text())["final"]["step"] == 1
    assert len((output_dir / "loss_log.jsonl").read_text().splitlines()) == 1
    resaved = PersonSearchModel.from_pretrained(output_dir, dtype=torch.float32).state_dict()
    assert all(torch.equal(value, resaved[key]) for key, value in model.state_dict().items())


TINY_RESUME = [
    "--config",
    str(DEMO_CONFIG),
    "--max_steps",
    "8",
    "checkpointing.every=2",
    "training.batch_size=2",
    "data.synthetic_sizes={num_train_frames: 6, num_test_frames: 3, num_train_identities: 4, num_test_identities: 2}",
]
"""8 steps of 2 images over 6 frames (so the resumed run crosses an epoch boundary), a checkpoint every 2."""


def _finetune_process(output_dir: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        str(ROOT / "examples" / "run_finetune.py"),
        *TINY_RESUME,
        "--output_dir",
        str(output_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([*command, *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _logged_steps(output_dir: Path) -> list[dict]:
    path = output_dir / "loss_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights_bit_for_bit(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    process = _finetune_process(straight)
    assert process.wait(timeout=300) == 0, process.stdout.read().decode()[-4000:]

    process = _finetune_process(interrupted)
    try:  # kill -9 in the middle of step 4-5: after checkpoint 2 (and maybe 4), with steps done after it
        deadline = time.time() + 240
        while len(_logged_steps(interrupted)) < 5 and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    killed_at = len(_logged_steps(interrupted))
    assert 5 <= killed_at < 8 and not (interrupted / "model.safetensors").exists()
    process = _finetune_process(interrupted, "--resume_from_checkpoint", "latest")
    assert process.wait(timeout=300) == 0, process.stdout.read().decode()[-4000:]

    # every step logged once, with the uninterrupted run's losses and learning rates, bit for bit
    assert _logged_steps(interrupted) == _logged_steps(straight)
    assert [r["step"] for r in _logged_steps(straight)] == list(range(1, 9))
    weights_a = load_file(straight / "model.safetensors")
    weights_b = load_file(interrupted / "model.safetensors")
    assert weights_a.keys() == weights_b.keys() and len(weights_a) > 100
    assert (
        "search_head.oim.lut" in weights_a and weights_a["search_head.oim.lut"].abs().sum() > 0
    )  # the OIM table was trained
    unequal = [key for key in weights_a if not torch.equal(weights_a[key], weights_b[key])]
    assert unequal == []
    earlier = load_file(interrupted / "checkpoint-00000004" / "model.safetensors")
    assert not torch.equal(
        earlier["search_head.oim.lut"], weights_a["search_head.oim.lut"]
    )  # steps 5-8 did change the model
    results = [json.loads((folder / "results.json").read_text())["final"] for folder in (straight, interrupted)]
    assert results[0] == results[1]
    print(f"kill -9 after {killed_at} logged steps of 8; {len(weights_a)} tensors compared, all equal")


@pytest.mark.slow
def test_two_processes_agree_and_evaluate_sharded_with_the_one_process_result(tmp_path):
    """2 CPU processes: the data agreement and the OIM check pass, the periodic and final evaluations run
    sharded over both, and the final metrics equal a one-process evaluation of the saved model exactly."""
    import socket

    from hf_personsearch import PersonSearchImageProcessor
    from hf_personsearch.evaluation.model_inference import evaluate_on_target

    output_dir = tmp_path / "ddp"
    with socket.socket() as probe:  # a free port for the rendezvous (torchrun's port 0 does not work here)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += [
        str(ROOT / "examples" / "run_finetune.py"),
        "--config",
        str(DEMO_CONFIG),
        "--output_dir",
        str(output_dir),
    ]
    command += [
        "data.synthetic_sizes={num_train_frames: 6, num_test_frames: 7, num_train_identities: 4, num_test_identities: 3}",
        "training.batch_size=2",  # 2 x 2 processes: 2 steps per epoch over the 6 frames
        "training.num_epochs=2",
        "evaluation.every_epochs=1",
        "evaluation.det_thresh=0.0",
        "evaluation.batch_size=3",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((output_dir / "results.json").read_text())
    assert [entry["step"] for entry in results["history"]] == [2, 4]  # periodic (epoch 1) and final

    model = PersonSearchModel.from_pretrained(output_dir, dtype=torch.float32).eval()
    processor = PersonSearchImageProcessor.from_pretrained(output_dir)
    expected, _ = evaluate_on_target(
        model, processor, "prw", str(output_dir / "data" / "prw"), det_thresh=0.0, batch_size=3, progress=False
    )
    for key in ("mAP", "top1", "top5", "top10", "detection_ap", "detection_recall", "num_queries"):
        assert results["final"][key] == expected[key], key
