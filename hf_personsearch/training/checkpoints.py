"""Atomic, resumable checkpoints around ``accelerator.save_state`` / ``load_state``.

A checkpoint is the folder ``<output_dir>/checkpoint-<step, 8 digits>`` holding accelerate's state (model
with its persistent OIM buffers, optimiser, scheduler, every process's RNG states), ``trainer_state.json``
(step, samples drawn per process, skip counts) and, written last, ``checkpoint_complete.json``: the list
of every file with its size.

Writing is atomic: everything goes into ``.tmp-checkpoint-<step>`` first; only when all processes have
written and the manifest is on disk does the main process rename the folder to its final name
(``os.replace``, atomic on one file system). A process killed (even with SIGKILL) at any moment therefore
leaves either a ``.tmp-*`` folder, which is ignored and removed by the next save, or a complete
checkpoint. A final-named folder whose manifest is missing or whose files do not match it (copied by
hand, a disk that filled up, a truncated file) is reported with a warning and the previous one is used.
Only the last ``keep_last`` complete checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-checkpoint-"
MANIFEST_FILE = "checkpoint_complete.json"
TRAINER_STATE_FILE = "trainer_state.json"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for."""


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Final-named checkpoint folders of ``output_dir``, oldest (smallest step) first; complete or not."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        return f"{manifest_path.name} is missing (the save did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return f"{manifest_path.name} is unreadable ({error})"
    for relative, size in files.items():
        path = folder / relative
        if not path.is_file():
            return f"{relative} listed in {MANIFEST_FILE} is missing"
        if path.stat().st_size != size:
            return f"{relative} has {path.stat().st_size} bytes, {MANIFEST_FILE} says {size} (truncated or replaced)"
    if TRAINER_STATE_FILE not in files:
        return f"{TRAINER_STATE_FILE} is not in the checkpoint"
    return None


def find_resumable_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``output_dir`` (None when there is none).

    Newer incomplete ones are skipped with a warning that names them and says what is wrong.
    """
    for folder in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("checkpoint %s is incomplete or corrupt: %s; falling back to the previous one", folder, problem)
    return None


def resolve_resume_path(resume_from: str | Path, output_dir: str | Path) -> Path:
    """``"latest"`` -> the newest complete checkpoint of ``output_dir``; a path -> that checkpoint, checked."""
    if str(resume_from) == "latest":
        found = find_resumable_checkpoint(output_dir)
        if found is None:
            raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}")
        return found
    folder = Path(resume_from)
    if not folder.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {folder}: not a folder")
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"--resume_from_checkpoint {folder}: not a complete checkpoint: {problem}")
    return folder


def _write_json_durably(path: Path, value) -> None:
    with open(path, "w") as file:
        json.dump(value, file, indent=1)
        file.flush()
        os.fsync(file.fileno())


def save_checkpoint(accelerator, output_dir: str | Path, step: int, trainer_state: dict, keep_last: int = 3) -> Path:
    """Save the full training state atomically (module docstring); call on EVERY process.

    Args:
        accelerator: the run's ``accelerate.Accelerator`` (model, optimiser, scheduler prepared with it).
        step: optimiser steps done; names the folder.
        trainer_state: JSON-serialisable loop state (at least ``{"step": step}``), saved by the main process.
        keep_last: complete checkpoints kept (older ones deleted after this one is in place); 0 keeps all.
    Returns:
        the final checkpoint folder.
    """
    output_dir = Path(output_dir)
    temp = output_dir / f"{TEMP_PREFIX}{step:08d}"
    final = output_dir / checkpoint_name(step)
    if accelerator.is_main_process:
        for stale in output_dir.glob(f"{TEMP_PREFIX}*"):  # left by a process killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_durably(temp / TRAINER_STATE_FILE, trainer_state)
        files = {
            str(path.relative_to(temp)): path.stat().st_size
            for path in sorted(temp.rglob("*"))
            if path.is_file() and path.name != MANIFEST_FILE
        }
        _write_json_durably(temp / MANIFEST_FILE, {"step": step, "files": files})
        if final.exists():  # an older, incomplete run's folder of the same step
            shutil.rmtree(final)
        os.replace(temp, final)
        if keep_last > 0:
            complete = [p for p in list_checkpoints(output_dir) if checkpoint_problem(p) is None]
            for old in complete[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: str | Path) -> dict:
    """Restore model, optimiser, scheduler and RNG states from ``folder``; return its trainer state."""
    folder = Path(folder)
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"{folder}: not a complete checkpoint: {problem}")
    accelerator.load_state(str(folder))
    return json.loads((folder / TRAINER_STATE_FILE).read_text())
