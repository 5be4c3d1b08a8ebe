"""Atomic, verified, resumable checkpoints around ``accelerator.save_state`` / ``load_state``.

A checkpoint is the folder ``<output_dir>/checkpoint-<step, 8 digits>`` holding accelerate's state (model
with its persistent OIM buffers, optimiser, scheduler, every process's RNG states), ``trainer_state.json``
(step, samples drawn per process, skip counts) and, written last, ``checkpoint_complete.json``: the
manifest, listing every file with its size and sha256.

Writing is atomic: everything goes into ``.tmp-checkpoint-<step>`` first; only when all processes have
written and the manifest is on disk does the main process rename the folder to its final name
(``os.replace``, atomic on one file system). A process killed (even with SIGKILL) at any moment therefore
leaves either a ``.tmp-*`` folder, which the next save removes, or a complete checkpoint. A write that fails
(a full disk: ENOSPC, which ``torch.save`` reports only as ``enforce fail at inline_container.cc``) stops the
run with :class:`CheckpointSaveError` naming the folder, the file and the free space; the temporary folder
is removed and the previous checkpoint is left as it was.

Resuming verifies every file against the manifest's sha256 (sizes alone miss a flipped byte: a damaged RNG
file is then skipped by accelerate with an INFO line and the run goes on, no longer exact). ``latest``
falls back past a checkpoint that fails the check, with a warning naming the file; an explicit path that
fails it is an error. After each save, the main process deletes final-named folders without a valid
manifest (left by older code or by hand) and all but the newest ``keep_last`` complete checkpoints; the
newest complete checkpoint is never deleted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .config import ConfigError, check_output_dir
from .loop import gather_objects

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TEMP_PREFIX = ".tmp-checkpoint-"
MANIFEST_FILE = "checkpoint_complete.json"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_STATE_FILE = "random_states_{process_index}.pkl"
"""accelerate's per-process RNG file name (``accelerate.utils.RNG_STATE_NAME`` + ``_<rank>.pkl``)."""
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_HASH_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for."""


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed; the previous checkpoints are left as they were."""


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Final-named checkpoint folders of ``output_dir``, oldest (smallest step) first; complete or not."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_problem(folder: str | Path, verify_checksums: bool = True) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is.

    Args:
        verify_checksums: also compare every file's sha256 with the manifest (reads every byte; what a
            resume does). False checks presence and sizes only (what the clean-up after each save does,
            so that a save does not re-read every kept checkpoint).
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        return f"{manifest_path.name} is missing (the save did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in manifest["files"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        return f"{manifest_path.name} is unreadable or has no sha256 per file ({type(error).__name__}: {error})"
    if TRAINER_STATE_FILE not in files:
        return f"{TRAINER_STATE_FILE} is not in the checkpoint"
    for relative, (size, sha256) in files.items():
        path = folder / relative
        if not path.is_file():
            return f"{relative} listed in {MANIFEST_FILE} is missing"
        if path.stat().st_size != size:
            return f"{relative} has {path.stat().st_size} bytes, {MANIFEST_FILE} says {size} (truncated or replaced)"
        if verify_checksums and file_sha256(path) != sha256:
            return f"{relative} does not match its sha256 in {MANIFEST_FILE} (the file is damaged)"
    return None


def find_resumable_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``output_dir`` whose files match their checksums (None when none).

    Newer ones that fail the check are skipped with a warning that names them and says what is wrong.
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


def is_disk_full(error: BaseException) -> bool:
    """Whether a write failed for lack of space: ``OSError`` ENOSPC, safetensors' ``StorageFull``, or
    ``torch.save``'s ``enforce fail at inline_container.cc`` (torch drops the errno; a write that fails
    there, after the file was opened, is in practice a full disk or quota)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "StorageFull" in text or "inline_container" in text


def _newest_file(folder: Path) -> Path | None:
    """The file written last in ``folder`` (the one a failed save was writing), if any."""
    files = [path for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
    return max(files, key=lambda path: path.stat().st_mtime_ns, default=None)


def describe_save_failure(error: BaseException, temp: Path) -> str:
    """What went wrong writing ``temp``, naming the file being written and the free space."""
    newest = _newest_file(temp)
    where = f"{temp}" + (f" (last file written: {newest.relative_to(temp)})" if newest is not None else "")
    try:
        free = f"{shutil.disk_usage(temp if temp.exists() else temp.parent).free / 2**20:.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    if is_disk_full(error):
        return f"the disk is full (ENOSPC) writing {where}, {free} [{type(error).__name__}: {error}]"
    return f"writing {where} failed, {free} [{type(error).__name__}: {error}]"


def _failures_everywhere(accelerator, failure: str | None) -> list[str]:
    """Every process's failure message of the phase just run (a collective: all processes call it, so a
    process that failed never leaves the others waiting at a barrier)."""
    if accelerator.num_processes == 1:
        return [failure] if failure else []
    gathered = gather_objects(accelerator, failure)
    return [f"process {rank}: {message}" for rank, message in enumerate(gathered) if message]


def _finish_phase(accelerator, failure: str | None, temp: Path, step: int) -> None:
    """Raise :class:`CheckpointSaveError` on every process when any process failed; the main process first
    removes the temporary folder (the space it holds is what a full disk needs back)."""
    failures = _failures_everywhere(accelerator, failure)
    if not failures:
        return
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
    complete = [p for p in list_checkpoints(temp.parent) if checkpoint_problem(p, verify_checksums=False) is None]
    previous = complete[-1] if complete else None
    kept = f"the previous checkpoint {previous} is intact" if previous is not None else "no earlier checkpoint exists"
    raise CheckpointSaveError(
        f"checkpoint of step {step} not saved: {'; '.join(failures)}. The partial folder was removed and {kept}; "
        f"free disk space (or set training.output_dir elsewhere), then resume with --resume_from_checkpoint latest"
    )


def clean_up_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete final-named folders without a valid manifest and all but the newest ``keep_last`` (0: all)
    complete checkpoints; the newest complete checkpoint is never deleted."""
    complete = []
    for folder in list_checkpoints(output_dir):
        problem = checkpoint_problem(folder, verify_checksums=False)
        if problem is None:
            complete.append(folder)
        else:
            logger.warning("deleting incomplete checkpoint %s: %s", folder, problem)
            shutil.rmtree(folder, ignore_errors=True)
    if keep_last > 0:
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, trainer_state: dict, keep_last: int = 3) -> Path:
    """Save the full training state atomically (module docstring); call on EVERY process.

    Args:
        accelerator: the run's ``accelerate.Accelerator`` (model, optimiser, scheduler prepared with it).
        step: optimiser steps done; names the folder.
        trainer_state: JSON-serialisable loop state (at least ``{"step": step}``), saved by the main process.
        keep_last: complete checkpoints kept (older ones deleted after this one is in place); 0 keeps all.
    Returns:
        the final checkpoint folder.
    Raises:
        CheckpointSaveError: on every process, when any process could not write its part (e.g. a full disk).
    """
    output_dir = Path(output_dir)
    temp = output_dir / f"{TEMP_PREFIX}{step:08d}"
    final = output_dir / checkpoint_name(step)
    failure = None
    if accelerator.is_main_process:
        try:
            for stale in output_dir.glob(f"{TEMP_PREFIX}*"):  # left by a process killed while saving
                shutil.rmtree(stale, ignore_errors=True)
            temp.mkdir(parents=True)
        except OSError as error:
            failure = describe_save_failure(error, temp)
    _finish_phase(accelerator, failure, temp, step)
    try:
        accelerator.save_state(str(temp))
    except Exception as error:  # noqa: BLE001  (torch, safetensors and the OS each raise their own type)
        failure = describe_save_failure(error, temp)
    _finish_phase(accelerator, failure, temp, step)
    if accelerator.is_main_process:
        try:
            _write_json_durably(temp / TRAINER_STATE_FILE, trainer_state)
            files = {
                str(path.relative_to(temp)): {"size": path.stat().st_size, "sha256": file_sha256(path)}
                for path in sorted(temp.rglob("*"))
                if path.is_file() and path.name != MANIFEST_FILE
            }
            _write_json_durably(temp / MANIFEST_FILE, {"step": step, "files": files})
            if final.exists():  # an older, incomplete run's folder of the same step
                shutil.rmtree(final)
            os.replace(temp, final)
        except OSError as error:
            failure = describe_save_failure(error, temp)
    _finish_phase(accelerator, failure, temp, step)
    if accelerator.is_main_process:
        clean_up_checkpoints(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def check_rng_restored(folder: Path, process_index: int) -> None:
    """Raise unless torch's CPU RNG now holds this process's saved state: accelerate's ``load_state``
    only logs "Could not load random states" (INFO, main process only) and goes on when it cannot."""
    path = folder / RNG_STATE_FILE.format(process_index=process_index)
    try:
        saved = torch.load(path, weights_only=False)["torch_manual_seed"]
    except Exception as error:  # noqa: BLE001  (unpickling damaged data raises many types)
        raise CheckpointError(f"{path}: cannot read the RNG state of process {process_index} ({error})") from error
    if not torch.equal(torch.get_rng_state(), saved):
        raise CheckpointError(f"{path}: the RNG state was not restored (accelerate could not load it)")


def load_checkpoint(accelerator, folder: str | Path) -> dict:
    """Restore model, optimiser, scheduler and RNG states from ``folder`` (checked against its manifest's
    checksums first); return its trainer state.

    Raises:
        CheckpointError: the folder fails its manifest, was written by another number of processes (the
            per-process sample streams and RNG states would not continue exactly), or an RNG state was not
            restored.
    """
    folder = Path(folder)
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"{folder}: not a complete checkpoint: {problem}")
    state = json.loads((folder / TRAINER_STATE_FILE).read_text())
    written_by = state.get("num_processes", accelerator.num_processes)
    if written_by != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {written_by} processes, this run has {accelerator.num_processes}: the "
            "per-process sample streams and RNG states would not continue exactly"
        )
    accelerator.load_state(str(folder))
    check_rng_restored(folder, accelerator.process_index)
    return state


def prepare_run(script: str, build_config, validate, resume_from: str | None) -> tuple[dict, Path, Path | None] | None:
    """The checks a training script runs before any compute: ``config = build_config()``, ``validate(config)``,
    a writable ``training.output_dir`` and the checkpoint to resume from. Returns ``(config, output_dir,
    resume_path)``, or None after printing the one-line configuration error (the script then exits 2)."""
    import sys

    try:
        config = build_config()
        validate(config)
        output_dir = check_output_dir(config["training"]["output_dir"])
        resume_path = resolve_resume_path(resume_from, output_dir) if resume_from else None
    except (ConfigError, CheckpointError) as error:
        print(f"{script}: configuration error: {error}", file=sys.stderr)
        return None
    return config, output_dir, resume_path
