"""Atomic checkpoints: exact round trip, keep-last pruning, fallback from corrupt/partial folders, and a
process killed with SIGKILL while saving."""

from __future__ import annotations

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
    checkpoint_problem,
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
    # keep_last counts complete checkpoints only; broken ones stay for inspection
    complete = [p.name for p in list_checkpoints(tmp_path) if checkpoint_problem(p) is None]
    assert complete == ["checkpoint-00000002", "checkpoint-00000004"]
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume_path("latest", tmp_path / "empty")


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
