"""Pieces of the Accelerate training loop shared by pre-training and fine-tuning.

How a script uses them (``examples/run_pretrain.py`` is the complete example)::

    accelerator = build_accelerator(config["training"], output_dir)       # DDP kwargs, trackers, precision
    stream = SeededSampleStream(sampler, seed)                             # per-sample seeds: exact resume
    loader = DataLoader(SeededSampleDataset(dataset), batch_size=..., sampler=stream,
                        collate_fn=with_sample_keys(collate_pretrain), num_workers=...)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)   # NOT the loader
    guard = NonFiniteGuard(max_consecutive=5)
    for step in range(start, max_steps):
        micro_batches = [move_to_device(next(batches), accelerator.device) for _ in range(accumulation)]
        result = train_step(accelerator, model, optimizer, scheduler, micro_batches, guard, max_grad_norm)

The data loader is deliberately not prepared by accelerate: :class:`~hf_personsearch.data.sampler.HybridSampler`
already shards by rank, and its state is one number (samples drawn), so resuming is exact without
accelerate's dataloader wrappers. Augmentation randomness is seeded per sample from ``(seed, rank, sample
position)`` (:class:`SeededSampleStream`), so it does not depend on DataLoader workers or on what happened
before a restart; the model's own randomness (RPN / RoI sampling) uses the global torch RNG that
``accelerator.save_state`` saves and ``load_state`` restores.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def build_accelerator(training: Mapping, output_dir, *, gradient_accumulation_steps: int = 1):
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
    """Runs ``dataset[key]`` with torch's RNG seeded by the pair's seed (the global RNG is left untouched)
    and records the key in the item as ``"sample_key"``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pair):
        key, seed = pair
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
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
) -> StepResult:
    """One optimiser step over ``micro_batches`` (gradient accumulation), skipping it on a NaN/inf loss.

    Every micro-batch runs forward (so the data stream and the OIM tables advance the same way in every
    case); gradients are synchronised across processes only on the last micro-batch. Whether a loss was
    non-finite is agreed across processes, so all of them skip the same steps and stay in lockstep. A
    skipped step drops its whole accumulation window: no update, gradients zeroed, scheduler not stepped.

    Args:
        forward: ``forward(model, batch) -> (loss, loss_dict)``; default: ``model(**batch)`` without the
            ``sources`` / ``sample_keys`` keys, returning ``(output.loss, output.loss_dict)``.
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
            grad_norm = float(accelerator.clip_grad_norm_(clipped_parameters(accelerator, model), max_grad_norm))
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
