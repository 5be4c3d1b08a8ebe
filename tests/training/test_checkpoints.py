"""Atomic checkpoints: exact round trip, keep-last pruning and clean-up of partial folders, sha256 verification
with fallback, a full disk, an RNG state accelerate could not restore, and a process killed with SIGKILL while
saving."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from hf_personsearch.training.checkpoints import (
    MANIFEST_FILE,
    TEMP_PREFIX,
    CheckpointError,
    CheckpointSaveError,
    checkpoint_problem,
    file_sha256,
    find_resumable_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume_path,
    save_checkpoint,
)
from hf_personsearch.training.optim import build_optimizer, build_scheduler


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(4, 3)
    model.register_buffer("table", torch.zeros(5, 3))  # stands for the OIM LUT (a persistent buffer)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1, "momentum": 0.9})
    scheduler = build_scheduler(optimizer, {"name": "step", "warmup_steps": 2, "milestones": [3]}, 6)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer, scheduler


def train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(2, 4)).pow(2).sum()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        model.table += torch.rand(5, 3)


def test_round_trip_restores_model_buffers_optimizer_scheduler_and_rng(tmp_path):
    accelerator, model, optimizer, scheduler = make_run()
    train(model, optimizer, scheduler, 2)
    folder = save_checkpoint(accelerator, tmp_path, 2, {"step": 2, "position": 10})
    assert folder.name == "checkpoint-00000002" and (folder / MANIFEST_FILE).is_file()
    train(model, optimizer, scheduler, 2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_lr = scheduler.get_last_lr()

    accelerator, model, optimizer, scheduler = make_run(seed=123)  # different init and RNG
    state = load_checkpoint(accelerator, folder)
    assert state == {"step": 2, "position": 10}
    train(model, optimizer, scheduler, 2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert scheduler.get_last_lr() == expected_lr


def test_keep_last_and_fallback_from_corrupt_or_partial_checkpoints(tmp_path, caplog):
    accelerator, model, optimizer, scheduler = make_run()
    for step in (1, 2, 3):
        train(model, optimizer, scheduler, 1)
        save_checkpoint(accelerator, tmp_path, step, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002", "checkpoint-00000003"]
    # the newest one is truncated (e.g. copied by hand or a full disk): the previous one is used, with a warning
    model_file = tmp_path / "checkpoint-00000003" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert resolve_resume_path("latest", tmp_path).name == "checkpoint-00000002"
    assert "checkpoint-00000003 is incomplete or corrupt: model.safetensors has 100 bytes" in caplog.text
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume_path(tmp_path / "checkpoint-00000003", tmp_path)
    # a final-named folder without manifest and a leftover temporary folder are ignored too
    (tmp_path / "checkpoint-00000009").mkdir()
    (tmp_path / f"{TEMP_PREFIX}00000010").mkdir()
    assert find_resumable_checkpoint(tmp_path).name == "checkpoint-00000002"
    save_checkpoint(accelerator, tmp_path, 4, {"step": 4}, keep_last=2)
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))  # the stale temporary folder was removed
    # keep_last counts complete checkpoints only; the partial folders (3: truncated, 9: no manifest) are deleted
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002", "checkpoint-00000004"]
    assert all(checkpoint_problem(p) is None for p in list_checkpoints(tmp_path))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume_path("latest", tmp_path / "empty")


def flip_one_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_file_of_the_same_size_fails_its_checksum(tmp_path, caplog):
    accelerator, model, optimizer, scheduler = make_run()
    for step in (1, 2):
        train(model, optimizer, scheduler, 1)
        save_checkpoint(accelerator, tmp_path, step, {"step": step})
    manifest = json.loads((tmp_path / "checkpoint-00000002" / MANIFEST_FILE).read_text())
    assert set(manifest["files"]["random_states_0.pkl"]) == {"size", "sha256"}
    flip_one_byte(tmp_path / "checkpoint-00000002" / "random_states_0.pkl")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume_path("latest", tmp_path).name == "checkpoint-00000001"
    assert "random_states_0.pkl does not match its sha256" in caplog.text
    with pytest.raises(CheckpointError, match=r"checkpoint-00000002: not a complete checkpoint: random_states_0\.pkl"):
        resolve_resume_path(tmp_path / "checkpoint-00000002", tmp_path)
    with pytest.raises(CheckpointError, match="random_states_0.pkl does not match its sha256"):
        load_checkpoint(accelerator, tmp_path / "checkpoint-00000002")
    flip_one_byte(tmp_path / "checkpoint-00000001" / "model.safetensors")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume_path("latest", tmp_path)


def test_an_rng_state_accelerate_cannot_restore_stops_the_load(tmp_path):
    """Damage written before the manifest (so its checksum matches): accelerate only logs "Could not load
    random states" at INFO and goes on; load_checkpoint must not."""
    accelerator, model, optimizer, scheduler = make_run()
    folder = save_checkpoint(accelerator, tmp_path, 1, {"step": 1})
    rng_file = folder / "random_states_0.pkl"
    rng_file.write_bytes(b"not a pickle")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"]["random_states_0.pkl"] = {"size": rng_file.stat().st_size, "sha256": file_sha256(rng_file)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"random_states_0\.pkl: cannot read the RNG state of process 0"):
        load_checkpoint(accelerator, folder)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: "
            "file write failed"
        ),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["torch-enforce-fail", "oserror-enospc"],
)
def test_a_full_disk_is_named_and_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, error):
    accelerator, model, optimizer, scheduler = make_run()
    train(model, optimizer, scheduler, 1)
    previous = save_checkpoint(accelerator, tmp_path, 1, {"step": 1})
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    real_save = torch.save

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.bin"):
            with open(f, "wb") as file:  # what torch.save leaves when the disk fills up mid-write
                file.write(b"PK\x03\x04 partial")
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    train(model, optimizer, scheduler, 1)
    with pytest.raises(CheckpointSaveError) as raised:
        save_checkpoint(accelerator, tmp_path, 2, {"step": 2})
    message = str(raised.value)
    assert "checkpoint of step 2 not saved: the disk is full (ENOSPC) writing " in message
    assert f"{TEMP_PREFIX}00000002 (last file written: optimizer.bin)" in message and "MiB free there" in message
    assert f"the previous checkpoint {previous} is intact" in message
    assert [p.name for p in tmp_path.iterdir()] == [previous.name]  # the partial folder is gone
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert resolve_resume_path("latest", tmp_path) == previous


SAVER = textwrap.dedent(
    """
    import sys, torch
    from accelerate import Accelerator
    from torch import nn
    from hf_personsearch.training.checkpoints import save_checkpoint
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(nn.Linear(1500, 1500))  # 9 MB: each save takes a while
    for step in range(1, 1000):
        with torch.no_grad():
            model.weight.fill_(float(step))
        save_checkpoint(accelerator, sys.argv[1], step, {"step": step}, keep_last=2)
    """
)


@pytest.mark.slow
def test_sigkill_while_saving_leaves_the_last_complete_checkpoint_usable(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        # wait until one checkpoint is complete and the next save is in progress, then kill -9
        while time.time() < deadline:
            if find_resumable_checkpoint(out) is not None and list(out.glob(f"{TEMP_PREFIX}*")):
                break
            time.sleep(0.005)
        else:
            pytest.fail("the saver never got to a second save")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    latest = resolve_resume_path("latest", out)
    step = int(latest.name.split("-")[1])
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(nn.Linear(1500, 1500))
    assert load_checkpoint(accelerator, latest) == {"step": step}
    assert torch.all(model.weight == float(step))


def test_a_checkpoint_of_another_process_count_is_refused_before_anything_is_loaded(tmp_path):
    accelerator, model, optimizer, scheduler = make_run()
    folder = save_checkpoint(accelerator, tmp_path, 1, {"step": 1, "num_processes": 2})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1"):
        load_checkpoint(accelerator, folder)
    assert all(torch.equal(v, changed[k]) for k, v in model.state_dict().items())  # nothing restored
    assert not torch.equal(before["weight"], changed["weight"])
