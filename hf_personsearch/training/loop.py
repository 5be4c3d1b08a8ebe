"""The Accelerate training loop shared by pre-training and fine-tuning, and its pieces.

Both ``examples/run_pretrain.py`` and ``examples/run_finetune.py`` build their data, model, optimiser and
schedule, then call :func:`run_training`, which owns everything else::

    accelerator = build_accelerator(config["training"], output_dir)       # DDP kwargs, trackers, precision
    data = TrainingData(dataset, sampler, collate)     # sampler: endless, state = samples drawn (HybridSampler)
                                                       # on_device=...: a batch step on the device (photometric)
    outcome = run_training(accelerator, model, optimizer, scheduler, data,
                           LoopSettings.from_config(config, max_steps), output_dir, resume_from=..., ...)
    if outcome.finished:
        ...  # export, evaluation: the script's own

:func:`run_training` checks that every process built the same training data (``agreed_facts``: identity
space, sampler sizes; :func:`check_processes_agree`), runs the step loop with gradient accumulation
(:func:`train_step`, the one NaN/inf guard :class:`NonFiniteGuard`), logs (tqdm, accelerate trackers,
``loss_log.jsonl``), writes atomic, checksummed checkpoints (:mod:`.checkpoints`, last K kept), resumes exactly
from one and stops early at ``stop_after_steps``. The scripts compare the OIM tables across processes at the
end (:func:`oim_table_facts`).

The data loader is deliberately not prepared by accelerate: the sampler
(:class:`~hf_personsearch.data.sampler.HybridSampler`) already shards by rank, and its state is one number
(samples drawn), so resuming is exact without accelerate's dataloader wrappers. Augmentation randomness is
seeded per sample from ``(seed, rank, sample position)`` (:class:`SeededSampleStream`), so it does not depend
on DataLoader workers or on what happened before a restart; the model's own randomness (RPN / RoI sampling)
uses the global torch RNG that ``accelerator.save_state`` saves and ``load_state`` restores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)


def hardware_description(accelerator) -> str:
    """ "2 x cpu (gloo)", "8 x NVIDIA H100 80GB HBM3 (nccl)" ...: for the model card."""
    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type} ({platform.processor() or platform.machine()})"
    backend = ""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = f", {torch.distributed.get_backend()}"
    return f"{accelerator.num_processes} x {name}{backend}, mixed precision {accelerator.mixed_precision}"


def build_accelerator(training: Mapping, output_dir):
    """The run's Accelerator.

    DDP gets ``broadcast_buffers=False`` (the OIM lookup table, up to a million rows, is kept identical on
    every rank by the OIM's own all_gather update; broadcasting it every step would dominate the step) and
    ``find_unused_parameters=True`` (a batch without images of some task, or an ablation, leaves that task's
    parameters without gradient). The scheduler is stepped once per optimiser step by the loop
    (``step_scheduler_with_optimizer=False``: accelerate would otherwise step it once per process).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration

    report_to = list(training.get("report_to") or [])
    return Accelerator(
        cpu=bool(training.get("cpu", False)),
        mixed_precision=str(training.get("mixed_precision", "no")),
        log_with=report_to or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir) + "/logs"),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=True)],
        step_scheduler_with_optimizer=False,
    )


def gather_objects(accelerator, value) -> list:
    """``value`` of every process, by process index, on every process (a collective: all must call it)."""
    if accelerator.num_processes == 1:
        return [value]
    gathered: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, value)
    return gathered


class ProcessDisagreementError(RuntimeError):
    """The processes of one run hold different values of something that must be identical on all."""


def describe_disagreement(facts_by_process: Sequence[Mapping[str, object]]) -> list[str]:
    """One line per fact whose value is not the same in every process's ``facts``, naming each value."""
    names = list(dict.fromkeys(name for facts in facts_by_process for name in facts))
    lines = []
    for name in names:
        values = [facts.get(name, "<missing>") for facts in facts_by_process]
        if any(value != values[0] for value in values):
            per_process = ", ".join(f"process {rank} has {value}" for rank, value in enumerate(values))
            lines.append(f"{name!r}: {per_process}")
    return lines


def check_processes_agree(accelerator, facts: Mapping[str, object], what: str) -> None:
    """Raise :class:`ProcessDisagreementError` on every process (none waits forever) unless every process
    passed equal ``facts``; ``what`` names them in the message."""
    lines = describe_disagreement(gather_objects(accelerator, dict(facts)))
    if lines:
        raise ProcessDisagreementError(
            f"the {accelerator.num_processes} processes disagree on {what}: " + "; ".join(lines)
        )


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def oim_table_facts(oim: torch.nn.Module) -> dict[str, str]:
    """sha256 of an OIM loss's lookup table and circular queue (and the queue's write position): equal on
    every process after every step, since each process applies every process's update (all_gather)."""
    return {
        "OIM lookup table sha256": tensor_sha256(oim.lut),
        "OIM queue sha256": tensor_sha256(oim.queue),
        "OIM queue head": str(int(oim.queue_head)),
    }


def sample_seed(seed: int, rank: int, position: int) -> int:
    """The augmentation seed of the ``position``-th sample drawn by process ``rank`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, rank, position]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SeededSampleStream(Sampler):
    """Wraps a sampler of keys (e.g. HybridSampler's ``(source, index)``) into ``(key, seed)`` pairs.

    ``position`` counts the keys drawn; :meth:`skip_to` restarts the wrapped sampler at a sample count (its
    ``load_state_dict({"position": ...})``), so a resumed run draws the same keys AND seeds.
    """

    def __init__(self, sampler: Sampler, seed: int, rank: int = 0):
        self.sampler = sampler
        self.seed = int(seed)
        self.rank = int(rank)
        self.start = 0

    def skip_to(self, position: int) -> None:
        self.start = int(position)
        self.sampler.load_state_dict({"position": self.start})

    def __iter__(self) -> Iterator[tuple]:
        for offset, key in enumerate(self.sampler):
            yield key, sample_seed(self.seed, self.rank, self.start + offset)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededSampleDataset(Dataset):
    """Runs ``dataset[key]`` with torch's CPU generator seeded by the pair's seed (the global RNG is left
    untouched) and records the key in the item as ``"sample_key"``.

    Only the CPU generator, the one the augmentation draws from and ``fork_rng(devices=[])`` restores, is
    seeded: ``torch.manual_seed`` would also reseed every CUDA generator, which ``fork_rng`` does not restore, so
    with ``num_workers=0`` each sample would reset the training step's CUDA draws (the RPN's and the RoI head's
    box sampling) to a seed of the data.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pair):
        key, seed = pair
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            item = self.dataset[key]
        if item is not None:
            item["sample_key"] = tuple(int(k) for k in key) if isinstance(key, (tuple, list)) else int(key)
        return item


def with_sample_keys(collate: Callable[[Sequence[dict]], dict]) -> Callable[[Sequence[dict]], dict]:
    """A collate function that also returns ``"sample_keys"``: the keys of the batch's items, in order."""

    def collate_with_keys(batch: Sequence[dict]) -> dict:
        out = collate(batch)
        out["sample_keys"] = [item["sample_key"] for item in batch if item is not None]
        return out

    return collate_with_keys


def move_to_device(batch, device: torch.device):
    """Tensors of a (nested dict/list) batch moved to ``device``; everything else left as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list):
        return [move_to_device(value, device) for value in batch]
    return batch


class NonFiniteLossError(RuntimeError):
    """The loss was NaN/inf for too many consecutive steps."""


@dataclass
class NonFiniteGuard:
    """Counts optimiser steps skipped because a loss was NaN or infinite, by source dataset.

    Args:
        max_consecutive: consecutive skipped steps after which the run stops with
            :class:`NonFiniteLossError` (5: one bad batch is noise, five in a row is divergence or broken
            data, and continuing would waste the rest of the run).
    """

    max_consecutive: int = 5
    skipped_steps: int = 0
    consecutive: int = 0
    by_source: Counter = field(default_factory=Counter)

    def record(self, finite: bool, sources: Sequence[str] = ()) -> None:
        """Record one step; raise when ``max_consecutive`` steps in a row were not finite."""
        if finite:
            self.consecutive = 0
            return
        self.skipped_steps += 1
        self.consecutive += 1
        self.by_source.update(sorted(set(sources)))
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"the loss was NaN or infinite for {self.consecutive} consecutive steps ({self.skipped_steps} "
                f"skipped in all; batches by source: {dict(self.by_source)}). Lower optimizer.lr, raise "
                f"schedule.warmup_steps, set training.max_grad_norm, or check the data of those sources."
            )

    def state_dict(self) -> dict:
        return {
            "skipped_steps": self.skipped_steps,
            "consecutive": self.consecutive,
            "by_source": dict(self.by_source),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive = int(state.get("consecutive", 0))
        self.by_source = Counter(state.get("by_source", {}))


@dataclass
class StepResult:
    """What :func:`train_step` did: ``skipped`` when a loss was not finite (no update), the mean loss terms
    over the micro-batches (floats, local to this process), the gradient norm before clipping (None when
    not clipped or skipped) and the images this process used."""

    skipped: bool
    loss_terms: dict[str, float]
    grad_norm: float | None
    num_images: int


def train_step(
    accelerator,
    model,
    optimizer,
    scheduler,
    micro_batches: Sequence[dict],
    guard: NonFiniteGuard,
    max_grad_norm: float | None = None,
    forward: Callable | None = None,
    clipped: Sequence[torch.nn.Parameter] | None = None,
) -> StepResult:
    """One optimiser step over ``micro_batches`` (gradient accumulation), skipping it on a NaN/inf loss.

    Every micro-batch runs forward (so the data stream and the OIM tables advance the same way in every
    case); gradients are synchronised across processes only on the last micro-batch. Whether a loss was
    non-finite is agreed across processes, so all of them skip the same steps and stay in lockstep. A
    skipped step drops its whole accumulation window: no update, gradients zeroed, scheduler not stepped.

    Args:
        forward: ``forward(model, batch) -> (loss, loss_dict)``; default: ``model(**batch)`` without the
            ``sources`` / ``sample_keys`` keys, returning ``(output.loss, output.loss_dict)``.
        clipped: the parameters ``max_grad_norm`` applies to; default: :func:`clipped_parameters`, listed again at
            every call (unwrapping the model and walking its modules: 1-2 ms a step for the CPU benchmark's model,
            so :func:`run_training` lists them once).
    """
    forward = forward or default_forward
    clean = True
    sums: dict[str, float] = {}
    sources: list[str] = []
    num_images = 0
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        sources.extend(batch.get("sources") or [])
        num_images += int(batch["pixel_values"].shape[0])
        with accelerator.no_sync(model) if not last else contextlib.nullcontext():
            with accelerator.autocast():
                loss, loss_dict = forward(model, batch)
            finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=accelerator.device)
            clean = clean and bool(accelerator.gather(finite).min().item() > 0)
            for name, value in loss_dict.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            if clean:
                accelerator.backward(loss / len(micro_batches))
    guard.record(clean, sources)
    grad_norm = None
    if clean:
        if max_grad_norm:
            if clipped is None:
                clipped = clipped_parameters(accelerator, model)
            grad_norm = float(accelerator.clip_grad_norm_(clipped, max_grad_norm))
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    terms = {name: value / len(micro_batches) for name, value in sums.items()}
    return StepResult(skipped=not clean, loss_terms=terms, grad_norm=grad_norm, num_images=num_images)


def clipped_parameters(accelerator, model) -> list[torch.nn.Parameter]:
    """The parameters gradient clipping applies to: all but the model's domain classifiers, if it has
    any (``domain_classifier_parameters``: they must keep up with the features they judge)."""
    unwrapped = accelerator.unwrap_model(model)
    excluded = getattr(unwrapped, "domain_classifier_parameters", None)
    excluded_ids = {id(parameter) for parameter in excluded()} if excluded else set()
    return [parameter for parameter in model.parameters() if id(parameter) not in excluded_ids]


def default_forward(model, batch: Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``model(**batch)`` without the logging-only keys; returns ``(loss, loss_dict)``."""
    inputs = {key: value for key, value in batch.items() if key not in ("sources", "sample_keys")}
    output = model(**inputs)
    return output.loss, output.loss_dict


class ThroughputMeter:
    """Images per second over the steps since the last :meth:`rate` call (excludes start-up time)."""

    def __init__(self):
        self.images = 0
        self.start = time.perf_counter()

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        rate = self.images / elapsed if elapsed > 0 else math.nan
        self.images, self.start = 0, time.perf_counter()
        return rate


def progress_postfix(terms: Mapping[str, float], images_per_second: float, lr: float) -> dict[str, str]:
    """tqdm postfix: every loss term with 3 significant digits, images/s and the learning rate."""
    postfix = {name: f"{value:.3g}" for name, value in terms.items()}
    postfix["img/s"] = f"{images_per_second:.2f}"
    postfix["lr"] = f"{lr:.2e}"
    return postfix


class SingleSourceDataset(Dataset):
    """Indexes ``dataset`` with the ``(0, index)`` keys of a one-source
    :class:`~hf_personsearch.data.sampler.HybridSampler`.

    Fine-tuning has one source, and HybridSampler over one source is a seeded epoch permutation (every
    image once per epoch, a new order each epoch, ranks taking turns) whose state is the number of samples
    drawn: the resumable data order :func:`run_training` needs.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        source, index = key
        if source != 0:
            raise KeyError(f"SingleSourceDataset: key {key!r} names source {source}, only source 0 exists")
        return self.dataset[index]


@dataclass
class TrainingData:
    """The script-specific data of a run.

    Args:
        dataset: indexed by the sampler's keys; items for ``collate``.
        sampler: endless sampler of keys, sharded by rank, whose ``load_state_dict({"position": n})`` restarts
            it after ``n`` samples drawn by this rank (HybridSampler).
        collate: list of items -> batch for the model's forward.
        on_device: batch -> batch, run on each micro-batch once it is on the training device, before the
            forward (e.g. the photometric augmentation,
            :class:`~hf_personsearch.data.photometric.PhotometricAugmentation`, whose parameters the items
            carry: it must be deterministic given the batch for resuming to stay exact); None: nothing.
    """

    dataset: Dataset
    sampler: Sampler
    collate: Callable[[Sequence[dict]], dict]
    on_device: Callable[[dict], dict] | None = None


RESUME_NEUTRAL_KEYS = frozenset(
    {
        "training.output_dir",
        "training.log_every",
        "training.report_to",
        "checkpointing.every",
        "checkpointing.keep_last",
        "hub.push_to_hub",
        "hub.hub_model_id",
        "hub.private",
        "training.hub_model_id",
    }
)
"""Config keys that may change on resume without a warning: where and how often the run logs, saves and pushes,
not what it computes."""


KEYS_ADDED_SINCE = {"data.canvas_in_step": False, "data.size_divisor": 1}
"""Config keys added after checkpoints began to save their config, each with the value the runs before it computed
with: a checkpoint that lacks such a key was made at that value (no warning when a resume keeps it)."""


def config_changes(saved: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    """``"key: saved -> current"`` for each flattened config key whose value differs (a key only one side has
    counts as ``missing``, unless it is in :data:`KEYS_ADDED_SINCE`), :data:`RESUME_NEUTRAL_KEYS` left out, in key
    order."""
    saved = {**{key: value for key, value in KEYS_ADDED_SINCE.items() if key in current}, **saved}
    missing = "missing"
    return [
        f"{key}: {saved.get(key, missing)} -> {current.get(key, missing)}"
        for key in sorted(set(saved) | set(current))
        if key not in RESUME_NEUTRAL_KEYS and saved.get(key, missing) != current.get(key, missing)
    ]


@dataclass
class LoopSettings:
    """What :func:`run_training` needs from the config; :meth:`from_config` reads the ``training``,
    ``checkpointing`` and ``data`` sections (defaults and their reasons: ``training/config.py``)."""

    max_steps: int
    batch_size: int
    seed: int
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    max_consecutive_nonfinite: int = 5
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    num_workers: int = 0
    report_to: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping, max_steps: int) -> LoopSettings:
        """``max_steps`` is passed in: fine-tuning derives it from epochs, pre-training reads it."""
        training, checkpointing = config["training"], config["checkpointing"]
        return cls(
            max_steps=int(max_steps),
            batch_size=int(training["batch_size"]),
            seed=int(training["seed"]),
            gradient_accumulation_steps=int(training["gradient_accumulation_steps"]),
            max_grad_norm=float(training["max_grad_norm"]) if training["max_grad_norm"] else None,
            max_consecutive_nonfinite=int(training["max_consecutive_nonfinite"]),
            log_every=int(training["log_every"]),
            checkpoint_every=int(checkpointing["every"]),
            keep_last=int(checkpointing["keep_last"]),
            num_workers=int(config["data"]["num_workers"]),
            report_to=tuple(training["report_to"] or ()),
        )


@dataclass
class TrainingOutcome:
    """What :func:`run_training` did: the prepared model (``accelerator.unwrap_model`` it to save), the
    optimiser steps done in all, whether that is ``max_steps`` (False after ``stop_after_steps``) and the
    non-finite step counts."""

    model: torch.nn.Module
    step: int
    finished: bool
    guard: NonFiniteGuard


LOSS_LOG_FILE = "loss_log.jsonl"


def keep_log_until(path: Path, step: int) -> None:
    """Drop the lines of a JSON-lines step log written after ``step`` (a killed run's steps that the resumed
    run repeats; a fresh run, ``step`` 0, starts the log anew), so every step is logged once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except json.JSONDecodeError:  # the last line of a process killed while writing it
            continue
    path.write_text("".join(line + "\n" for line in kept))


def run_training(
    accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    data: TrainingData,
    settings: LoopSettings,
    output_dir: str | Path,
    *,
    name: str,
    resume_from: str | Path | None = None,
    stop_after_steps: int | None = None,
    tracker_config: Mapping | None = None,
    script_state: dict | None = None,
    before_step: Callable[[Sequence[dict]], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    forward: Callable | None = None,
    agreed_facts: Mapping[str, object] | None = None,
) -> TrainingOutcome:
    """Train ``model`` for ``settings.max_steps`` optimiser steps (or until ``stop_after_steps``); call on
    every process.

    Prepares model, optimiser and scheduler with ``accelerator``; restores them, the RNG states, the
    non-finite counts and ``script_state`` from ``resume_from`` (a checkpoint folder; see
    :func:`~.checkpoints.resolve_resume_path` for ``"latest"``), restarts the sampler at the samples it had
    drawn, then runs :func:`train_step` per step. Every step's loss terms go to ``loss_log.jsonl`` (main
    process), every ``log_every`` steps to the tqdm bar and the trackers; a checkpoint is written every
    ``checkpoint_every`` steps and at the last step of this session.

    Args:
        name: the tracker project and the progress bar's label ("pretrain", "finetune").
        tracker_config: the resolved config, logged as hyper-parameters when trackers are on and saved in
            every checkpoint: a resume with other values (but those of :data:`RESUME_NEUTRAL_KEYS`) says which,
            in a warning, since the run then no longer continues as it would have.
        script_state: the script's own JSON-serialisable state (e.g. the history of periodic evaluations),
            saved in every checkpoint and updated in place on resume.
        before_step: called with the step's micro-batches before the forward passes (e.g. to record keys).
        after_step: called with the step number after each optimiser step, before its checkpoint (e.g. a
            periodic evaluation; it must leave the model in training mode).
        forward: ``forward(model, batch) -> (loss, loss_dict)`` (default :func:`default_forward`).
        agreed_facts: what every process must hold identically before the first step, by name (the
            identity space's counts, the sampler's source sizes, ...): each process builds them from the
            data it reads, and a node-local copy or stale cache with one image fewer would otherwise train
            OIM tables whose rows mean different persons, silently.

    Raises:
        ProcessDisagreementError: ``agreed_facts`` differ between processes (raised on every process,
            naming each differing fact and every process's value).
        CheckpointError: ``resume_from`` fails its checksums, was written by another number of processes or
            its RNG state could not be restored (:func:`~.checkpoints.load_checkpoint`); a checkpoint could not
            be written (:class:`~.checkpoints.CheckpointSaveError`, e.g. a full disk).
        NonFiniteLossError: ``max_consecutive_nonfinite`` steps in a row had a NaN/inf loss.
    """
    from tqdm.auto import tqdm

    from .checkpoints import load_checkpoint, save_checkpoint
    from .config import flatten_config

    output_dir = Path(output_dir)
    script_state = {} if script_state is None else script_state
    check_processes_agree(accelerator, agreed_facts or {}, "the training data, before the first step")
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    guard = NonFiniteGuard(settings.max_consecutive_nonfinite)
    start_step = 0
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        start_step = int(state["step"])
        guard.load_state_dict(state.get("nonfinite", {}))
        script_state.update(state.get("script_state", {}))
        logger.info("resumed from %s at step %d", resume_from, start_step)
        if tracker_config is not None and "config" in state:
            changed = config_changes(state["config"], flatten_config(tracker_config))
            if changed and accelerator.is_main_process:
                logger.warning(
                    "resuming %s with settings other than the checkpoint's run: %s; training goes on with the new "
                    "ones, no longer as the interrupted run would have",
                    resume_from,
                    "; ".join(changed),
                )

    accumulation = settings.gradient_accumulation_steps
    samples_per_step = settings.batch_size * accumulation
    stream = SeededSampleStream(data.sampler, settings.seed, accelerator.process_index)
    stream.skip_to(start_step * samples_per_step)
    loader = DataLoader(
        SeededSampleDataset(data.dataset),
        batch_size=settings.batch_size,
        sampler=stream,
        collate_fn=with_sample_keys(data.collate),
        num_workers=settings.num_workers,
        # Page-locked batches let move_to_device's non_blocking copies overlap the step on a GPU.
        pin_memory=accelerator.device.type == "cuda",
        # The workers' base seed comes from this generator, not from the global RNG (the model's).
        generator=torch.Generator().manual_seed(settings.seed),
    )
    batches = iter(loader)

    loss_log = output_dir / LOSS_LOG_FILE
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        keep_log_until(loss_log, start_step)
    if settings.report_to:
        accelerator.init_trackers(name, config=flatten_config(tracker_config or {}))
    stop_at = settings.max_steps if stop_after_steps is None else min(settings.max_steps, stop_after_steps)
    meter = ThroughputMeter()
    progress = tqdm(
        total=settings.max_steps, initial=start_step, disable=not accelerator.is_local_main_process, desc=name
    )
    step = start_step
    clipped = clipped_parameters(accelerator, model)
    while step < stop_at:
        micro_batches = [move_to_device(next(batches), accelerator.device) for _ in range(accumulation)]
        if data.on_device is not None:
            micro_batches = [data.on_device(batch) for batch in micro_batches]
        if before_step is not None:
            before_step(micro_batches)
        result = train_step(
            accelerator, model, optimizer, scheduler, micro_batches, guard, settings.max_grad_norm, forward, clipped
        )
        step += 1
        meter.add(result.num_images * accelerator.num_processes)
        lr = optimizer.param_groups[0]["lr"]
        if accelerator.is_main_process:
            with open(loss_log, "a") as file:
                file.write(json.dumps({"step": step, "skipped": result.skipped, "lr": lr, **result.loss_terms}) + "\n")
        if step % settings.log_every == 0 or step == stop_at:
            rate = meter.rate()
            progress.set_postfix(progress_postfix(result.loss_terms, rate, lr))
            if settings.report_to:
                metrics = {f"train/{key}": value for key, value in result.loss_terms.items()}
                metrics.update(
                    {"train/lr": lr, "train/images_per_second": rate, "train/skipped_steps": guard.skipped_steps}
                )
                accelerator.log(metrics, step=step)
        progress.update(1)
        if after_step is not None:
            after_step(step)
        if step % settings.checkpoint_every == 0 or step == stop_at:
            trainer_state = {
                "step": step,
                "samples_per_process": step * samples_per_step,
                "num_processes": accelerator.num_processes,
                "nonfinite": guard.state_dict(),
                "script_state": script_state,
            }
            if tracker_config is not None:
                trainer_state["config"] = flatten_config(tracker_config)
            save_checkpoint(accelerator, output_dir, step, trainer_state, keep_last=settings.keep_last)
    progress.close()
    if step < settings.max_steps:
        logger.info(
            "stopped after step %d of %d; continue with --resume_from_checkpoint latest", step, settings.max_steps
        )
    return TrainingOutcome(model=model, step=step, finished=step >= settings.max_steps, guard=guard)
