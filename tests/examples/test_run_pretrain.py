"""examples/run_pretrain.py on the synthetic default: exact resume, bad input caught before any compute,
2 CPU processes (identical OIM tables, different samples), and the export pushed to a fake hub."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hf_personsearch.data.unification import CanvasPlan
from tests.support.fake_hub import FakeHub

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "run_pretrain.py"
DEMO = ROOT / "examples" / "configs" / "pretrain_demo_cpu.yaml"
TINY = [
    "training.batch_size=2",
    "training.log_every=1",
    "data.synthetic_sizes.crowdhuman={num_train: 3, num_val: 1, width: 160, height: 128}",
    "data.synthetic_sizes.ecp={num_per_subset: 2, width: 200, height: 112}",
    "data.min_sizes=[112, 128]",
    "data.max_size=200",
    "data.canvas_size=[128, 128]",
]
"""Smaller than the demo: a step takes about a second on one CPU thread."""


def load_script():
    spec = importlib.util.spec_from_file_location("run_pretrain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def losses(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "loss_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("canvas_in_step", [False, True])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, monkeypatch, canvas_in_step):
    """Also with the re-ID canvases painted in the training step (the GPU recipes' data.canvas_in_step): the plans
    drawn in the workers and painted from their seeds in the step resume exactly too."""
    painted = []
    paint = CanvasPlan.paint
    monkeypatch.setattr(CanvasPlan, "paint", lambda plan, device=None: painted.append(device) or paint(plan, device))
    script = load_script()
    base = [
        "--config",
        str(DEMO),
        "--max_steps",
        "4",
        "-o",
        "checkpointing.every=2",
        "-o",
        f"data.canvas_in_step={str(canvas_in_step).lower()}",
        *sum((["-o", o] for o in TINY), []),
    ]
    assert script.main([*base, "--output_dir", str(tmp_path / "straight")]) == 0
    interrupted = tmp_path / "interrupted"
    assert script.main([*base, "--output_dir", str(interrupted), "--stop_after_steps", "2"]) == 0
    assert not (interrupted / "pretrain_model").exists()  # a stopped session exports nothing
    assert script.main([*base, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"]) == 0

    assert bool(painted) == canvas_in_step  # the step painted the canvases, or the workers did
    straight, resumed = losses(tmp_path / "straight"), losses(interrupted)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed == straight  # every loss term and lr, bit for bit
    assert len({r["loss"] for r in straight}) == 4  # the losses do change from step to step
    weights_a = load_file(tmp_path / "straight" / "pretrain_model" / "model.safetensors")
    weights_b = load_file(interrupted / "pretrain_model" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:  # parameters and the OIM lookup table / queue
        assert torch.equal(weights_a[key], weights_b[key]), key
    # the OIM table is sized by the identity space; the IAMs by the number of sources per task
    identity = json.loads((interrupted / "identity_space.json").read_text())
    config = json.loads((interrupted / "pretrain_model" / "config.json").read_text())
    assert config["person_search"]["num_person_ids"] == identity["num_identities"]
    assert weights_a["person_search.search_head.oim.lut"].shape[0] == identity["num_identities"]
    assert (config["num_detection_domains"], config["num_reid_domains"]) == (2, 3)
    # tensorboard got the loss terms and the learning rate
    assert list((interrupted / "logs").rglob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "straight" / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"train/lr", "train/reid_oim", "train/con", "train/adv", "train/loss"} <= set(events.Tags()["scalars"])


def test_data_workers_change_nothing(tmp_path):
    """Every sample is seeded by its position: 2 DataLoader workers give the losses of the main process bit for bit,
    here with the re-ID canvases painted in the step (their plans cross from the workers) and the batches padded to
    multiples of data.size_divisor (the collate's setting crosses to the workers too)."""
    script = load_script()
    shapes = []
    run_training = script.run_training

    def run_training_recording_shapes(*args, before_step, **kwargs):
        def record(micro_batches):
            shapes.extend(
                tuple(b["pixel_values"].shape[-2:]) + tuple(b["pixel_values_2"].shape[-2:]) for b in micro_batches
            )
            before_step(micro_batches)

        return run_training(*args, before_step=record, **kwargs)

    script.run_training = run_training_recording_shapes
    runs = {}
    for workers in (0, 2):
        output_dir = tmp_path / f"workers{workers}"
        overrides = [*TINY, "data.canvas_in_step=true", "data.size_divisor=32", f"data.num_workers={workers}"]
        args = ["--config", str(DEMO), "--max_steps", "3", "--output_dir", str(output_dir)]
        assert script.main([*args, *sum((["-o", o] for o in overrides), [])]) == 0
        runs[workers] = losses(output_dir)
    assert runs[0] == runs[2] and len({r["loss"] for r in runs[0]}) == 3
    assert len(shapes) == 6 and all(side % 32 == 0 for shape in shapes for side in shape)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.sources=[{name: crowdhumans}]"], "unknown dataset 'crowdhumans'"),
        (
            ["data.sources=[{name: ecp, data_dir: /nonexistent/ECP}, {name: msmt17, data_dir: /nonexistent/MSMT}]"],
            "data.sources[0] (ecp): data_dir '/nonexistent/ECP' is not a folder",
        ),
        (["model.num_reid_domains=2"], "model.num_reid_domains = 2 but data.sources has 3 reid source(s)"),
        ([], "is not writable"),
        (["model.person_search.backbone_name=resnet50"], "model.person_search: unknown keys ['backbone_name']"),
        (["model_init.backbone_weights=/nonexistent/r50.pth"], "is neither a file nor a timm tag"),
        (["data.grayscale_p=1.5"], "data.grayscale_p must be a probability in [0, 1], got 1.5"),
        (["data.canvas_in_step=gpu"], "data.canvas_in_step must be true or false, got 'gpu'"),
    ],
)
def test_bad_input_is_reported_before_any_compute(tmp_path, capsys, overrides, message):
    script = load_script()
    output = tmp_path / "out"
    if message == "is not writable":  # a regular file where a folder is needed: nothing can be written below it
        (tmp_path / "file").write_text("")
        output = tmp_path / "file" / "out"
    args = ["--config", str(DEMO), "--output_dir", str(output)]
    for override in overrides:
        args += ["-o", override]
    assert script.main(args) == 2
    assert message in capsys.readouterr().err
    assert not (output / "synthetic_data").exists()  # nothing generated, loaded or trained


def test_positional_overrides_are_the_same_as_o_overrides(tmp_path, capsys):
    script = load_script()
    positional = script.parse_args(["--config", str(DEMO), *TINY, "--max_steps", "4", "model.use_reid_iam=false"])
    with_o = script.parse_args(
        ["--config", str(DEMO), *sum((["-o", o] for o in TINY), []), "-o", "training.max_steps=4"]
    )
    with_o.override.append("model.use_reid_iam=false")
    resolved = script.resolve_config(positional)
    assert resolved == script.resolve_config(with_o)
    assert resolved["data"]["canvas_size"] == [128, 128] and resolved["training"]["max_steps"] == 4
    assert resolved["model"]["use_reid_iam"] is False
    # the photometric default keeps clothing colours (no colour jitter, no grayscale) and SimSiam's blur
    assert [resolved["data"][k] for k in ("color_jitter_p", "grayscale_p", "blur_p")] == [0.0, 0.0, 0.5]
    args = ["--config", str(DEMO), "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", "latest"]
    assert script.main(args) == 2  # nothing to resume from: a configuration error, before any compute
    assert "configuration error: --resume_from_checkpoint latest: no complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out" / "synthetic_data").exists()


def test_photometric_probabilities_reach_the_two_view_augmentation(tmp_path, monkeypatch):
    script = load_script()
    built = []

    def recording(*args, **kwargs):
        built.append(script_augmentation(*args, **kwargs))
        return built[-1]

    script_augmentation = script.TwoViewAugmentation
    monkeypatch.setattr(script, "TwoViewAugmentation", recording)
    overrides = ["data.color_jitter_p=0.3", "data.grayscale_p=0", "data.blur_p=1"]
    args = ["--config", str(DEMO), "--output_dir", str(tmp_path / "out"), "--max_steps", "1", *TINY, *overrides]
    assert script.main(args) == 0
    (augmentation,) = built
    photometric = augmentation.photometric
    assert (photometric.color_jitter_p, photometric.grayscale_p, photometric.blur_p) == (0.3, 0.0, 1.0)
    assert augmentation.photometric_in_step  # applied in the training step, on the device


def run(command: list[str], env: dict, timeout: int = 170) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_oim_tables_and_draw_different_samples(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    output = tmp_path / "ddp"
    with socket.socket() as probe:  # a free port for the rendezvous (torchrun's port 0 does not work here)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += [str(SCRIPT), "--config", str(DEMO), "--output_dir", str(output), "--max_steps", "3"]
    for override in TINY:
        command += ["-o", override]
    run(command, env)
    ranks = [json.loads((output / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [3, 3]
    assert ranks[0]["oim_lut_sha256"] == ranks[1]["oim_lut_sha256"]
    assert ranks[0]["oim_queue_sha256"] == ranks[1]["oim_queue_sha256"]
    keys = [[tuple(k) for k in r["sample_keys"]] for r in ranks]
    assert len(keys[0]) == len(keys[1]) == 6 and keys[0] != keys[1]
    # and the LUT saved by the main process is the one both ranks hold, updated by training
    lut = load_file(output / "pretrain_model" / "model.safetensors")["person_search.search_head.oim.lut"]
    assert lut.abs().sum() > 0


def test_export_and_push_to_fake_hub(tmp_path):
    output = tmp_path / "push"
    with FakeHub() as hub:
        env = {**os.environ, **hub.environment(), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, str(SCRIPT), "--config", str(DEMO), "--output_dir", str(output), "--max_steps", "1"]
        command += ["--push_to_hub", "--hub_model_id", "org/prtps-demo"]
        # Sources named without a data_dir key run on the synthetic data, up to the exported model's facts.
        names = ", ".join(f"{{name: {name}}}" for name in ("crowdhuman", "ecp", "msmt17", "cuhk03", "luperson"))
        for override in [*TINY, f"data.sources=[{names}]"]:
            command += ["-o", override]
        run(command, env)
        uploaded = hub.repos["org/prtps-demo"]
    folder = output / "person_search_model"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(uploaded)
    assert uploaded["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    card = ModelCard(uploaded["README.md"].decode())
    assert "pretrained" in card.data.tags and "org/prtps-demo" in card.text
    assert "**steps**: 1" in card.text and "lambda (adversarial_loss_weight)" in card.text
    for exported in (folder, output / "pretrain_model"):
        assert json.loads((exported / "training_info.json").read_text())["synthetic_data"] is True

    from transformers import AutoImageProcessor, AutoModel

    import hf_personsearch  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    identities = json.loads((output / "identity_space.json").read_text())["num_identities"]
    assert type(model).__name__ == "PersonSearchModel" and model.config.num_person_ids == identities
    assert AutoImageProcessor.from_pretrained(folder).min_size == 128
    # The pre-training folder carries the same processor: the search pipeline takes either folder.
    saved = AutoImageProcessor.from_pretrained(output / "pretrain_model").to_dict()
    assert saved == AutoImageProcessor.from_pretrained(folder).to_dict()
    from transformers import pipeline

    import hf_personsearch.pipelines  # noqa: F401  (registers pipeline("person-search"))

    search = pipeline("person-search", model=str(output / "pretrain_model"))
    assert type(search.model).__name__ == "PersonSearchModel" and search.image_processor.min_size == 128
    detections = search(np.full((96, 160, 3), 128, np.uint8), threshold=0.0)
    assert isinstance(detections, list) and all(set(d) >= {"box", "score"} for d in detections)


PROBE = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("run_pretrain", {script!r})
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
rank1 = os.environ["RANK"] == "1"
if {probe!r} == "one record fewer":  # e.g. a node-local copy missing one image: rank 1 reads one record fewer
    load_sources = script.load_sources

    def load_sources_on_this_node(sources, cache_dir):
        loaded = load_sources(sources, cache_dir)
        if rank1:
            name, task, data = loaded[0]
            loaded[0] = (name, task, data.select(range(len(data) - 1)))
        return loaded

    script.load_sources = load_sources_on_this_node
else:  # "OIM table drift": rank 1's lookup table ends the run different from rank 0's
    run_training = script.run_training

    def run_training_with_drift(*args, **kwargs):
        outcome = run_training(*args, **kwargs)
        if rank1:
            outcome.model.module.person_search.search_head.oim.lut[0, 0] += 1.0
        return outcome

    script.run_training = run_training_with_drift
sys.exit(script.main())
"""


def launch_two_processes(tmp_path, probe: str, output, max_steps: int) -> subprocess.CompletedProcess:
    wrapper = tmp_path / "probe.py"
    wrapper.write_text(PROBE.format(script=str(SCRIPT), probe=probe))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += [str(wrapper), "--config", str(DEMO), "--output_dir", str(output), "--max_steps", str(max_steps)]
    for override in TINY:
        command += ["-o", override]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=170, cwd=ROOT)


@pytest.mark.slow
def test_ranks_reading_different_data_stop_before_the_first_step(tmp_path):
    result = launch_two_processes(tmp_path, "one record fewer", tmp_path / "out", max_steps=2)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert log.count("ProcessDisagreementError: the 2 processes disagree on the training data") == 2  # both ranks
    first = "crowdhuman"  # the demo's first source, the one rank 1 read one record fewer of
    assert f"'{first}: records': process 0 has 3, process 1 has 2" in log
    assert f"'{first}: sampler size': process 0 has 3, process 1 has 2" in log
    assert not list((tmp_path / "out").glob("checkpoint-*"))  # no step was trained


@pytest.mark.slow
def test_oim_tables_that_differ_at_the_end_fail_the_run(tmp_path):
    result = launch_two_processes(tmp_path, "OIM table drift", tmp_path / "out", max_steps=1)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert log.count("ProcessDisagreementError: the 2 processes disagree on the OIM tables after step 1") == 2
    assert "'OIM lookup table sha256': process 0 has " in log
    assert not (tmp_path / "out" / "pretrain_model").exists()  # nothing exported


@pytest.mark.slow
def test_continuation_loads_the_first_stage_under_new_switches(tmp_path):
    """model_init.pretrained_model: the continuation starts from the first stage's weights (with lr 1e-12 every
    parameter stays where the first stage left it), without the IAM it switched off."""
    script = load_script()
    base = ["--config", str(DEMO), *sum((["-o", o] for o in TINY), [])]
    first = tmp_path / "stage1"
    assert script.main([*base, "--max_steps", "2", "--output_dir", str(first)]) == 0
    continued = tmp_path / "no_reid_iam"
    overrides = [
        "model.use_reid_iam=false",
        "optimizer.lr=1e-12",
        f"model_init.pretrained_model={first / 'pretrain_model'}",
    ]
    assert script.main([*base, "--max_steps", "1", "--output_dir", str(continued), *overrides]) == 0
    before = load_file(first / "pretrain_model" / "model.safetensors")
    after = load_file(continued / "pretrain_model" / "model.safetensors")
    assert any(key.startswith("reid_alignment") for key in before)
    assert not any(key.startswith("reid_alignment") for key in after)
    parameters = {
        name
        for name, _ in script.PersonSearchPretrainModel(
            script.PersonSearchPretrainModel.config_class.from_pretrained(continued / "pretrain_model")
        ).named_parameters()
    }
    assert parameters and parameters <= set(after)
    for name in parameters:  # an AdamW step moves a weight by about lr: 1e-12 here
        assert torch.allclose(before[name], after[name], rtol=0, atol=1e-9), name
    # ... while a fresh model of the same seed differs from the first stage (which trained 2 steps at 3e-3)
    fresh = script.PersonSearchPretrainModel(
        script.PersonSearchPretrainModel.config_class.from_pretrained(continued / "pretrain_model")
    ).state_dict()
    assert any(not torch.allclose(fresh[name], before[name], rtol=0, atol=1e-9) for name in parameters)
    info = json.loads((continued / "person_search_model" / "training_info.json").read_text())
    assert info["continued from"] == str(first / "pretrain_model")


def test_a_failed_push_keeps_the_saved_model_and_says_how_to_push_it(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    script = load_script()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_token")

    def unreachable(*args, **kwargs):
        raise ConnectionError("the Hub is unreachable")

    monkeypatch.setattr(script, "push_folder_to_hub", unreachable)
    output = tmp_path / "run"
    argv = ["--config", str(DEMO), "--max_steps", "1", "--output_dir", str(output)]
    argv += ["--push_to_hub", "--hub_model_id", "org/prtps-demo", *sum((["-o", o] for o in TINY), [])]
    with caplog.at_level(logging.ERROR):
        assert script.main(argv) == 1
    folder = output / "person_search_model"
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    assert "the push to org/prtps-demo failed (ConnectionError: the Hub is unreachable)" in caplog.text
    assert f"hf upload org/prtps-demo {folder} . --repo-type model" in caplog.text
