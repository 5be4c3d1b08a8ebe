"""Images per second of the whole pre-training DataLoader, next to the model's consumption on this machine.

    .venv/bin/python benchmarks/bench_dataloader.py [--batches 12] [--workers 0 1 2] [--model_steps 2]

Data: the five sub-task datasets of the paper's recipe written by ``hf_personsearch.data.synthetic`` in their
real raw formats (CrowdHuman scenes 1200 x 800, EuroCity Persons 1920 x 1024, MSMT17 / CUHK03 / LUPerson
crops) and read back by the real parsers. The loader is the training loop's own: HybridSampler with equal
mixing weights, per-sample seeds (SeededSampleStream), collate_pretrain, the two-view augmentation with its
photometric half left to the step, as ``examples/run_pretrain.py`` runs it, and the re-ID canvases painted in the
step too when ``--config`` says ``data.canvas_in_step: true`` (the GPU recipes: the default config does), and each
view's batch padded to multiples of the config's ``data.size_divisor`` (128 in the GPU recipes).

Rows: the DataLoader with 0, 1 and 2 workers (persistent workers; pinned memory when a GPU is present),
images per second (an image is its two views) over ``--batches`` batches after the first one (worker
start-up excluded); then the step's augmentation (canvas painting, photometric half) run on this CPU on the same
batches (what a CPU-only run adds to the step); then the model's consumption: train steps (forward, backward, SGD) of the
pre-training model of ``--config`` (default: the paper's ResNet-50 recipe, random weights) on the first
``--model_batch_size`` images of this loader's batches, images per second.

On a GPU (``--device cuda``, the default when one is present) the model step is the training loop's: the
batch is moved to the GPU (``move_to_device``), the step's augmentation runs there, forward and backward run
under the config's ``training.mixed_precision`` autocast, and the whole batch (``--model_batch_size``
defaults to ``--batch_size`` there) is timed with the GPU synchronised; the peak GPU memory is printed, and
the last line says how many workers per GPU keep up: model img/s / the best per-worker loader rate. Every
batch has its own padded shape, and the first step on a new shape pays for the allocator's new blocks and
cuDNN's algorithm choice, so the same batches are then run again (shapes seen before, the steady state of a
long run) with the GPU synchronised after each part of the step, which splits the step's time.

Everything else runs on one thread per process (torch.set_num_threads(1), as DataLoader workers do), so
each figure is per core: the main process's rows (0 workers, the augmentation step, the CPU model step) use
one core, a loader with k workers k cores.

Without the ``datasets`` package (e.g. a bare GPU image) the sources are the parsers' record lists instead
of Arrow datasets (the same records, the same image decoding; the first line says which).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader

from hf_personsearch.data.augmentation import TwoViewAugmentation
from hf_personsearch.data.collate import HybridPretrainDataset, collate_pretrain
from hf_personsearch.data.formats import get_spec
from hf_personsearch.data.sampler import HybridSampler
from hf_personsearch.data.synthetic import generate
from hf_personsearch.modeling_person_search_pretrain import PersonSearchPretrainModel
from hf_personsearch.training.config import PRETRAIN_DEFAULTS
from hf_personsearch.training.loop import SeededSampleDataset, SeededSampleStream, move_to_device, with_sample_keys
from hf_personsearch.training.pretraining import build_pretrain_model_config, photometric_options

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "crowdhuman": {"num_train": 24, "num_val": 1, "width": 1200, "height": 800},
    "ecp": {"num_per_subset": 6, "width": 1920, "height": 1024},
    "msmt17": {"num_train_ids": 12, "num_test_ids": 2},
    "cuhk03": {},
    "luperson": {"num_crops": 40},
}
"""Scene sizes of the real datasets (CrowdHuman's typical photo, ECP's 1920 x 1024 frames); crops as written."""


try:
    import datasets

    from hf_personsearch.data.loading import load_person_search_dataset
except ImportError:  # a bare GPU image: read the parsers' records directly (module docstring)
    datasets = None


def load_sources(folder: Path) -> list[tuple[str, str, object]]:
    sources = []
    for name, sizes in SIZES.items():
        generate(name, folder / name, seed=0, **sizes)
        if datasets is None:
            data = list(get_spec(name).parse(folder / name, "train"))
        else:
            data = load_person_search_dataset(name, data_dir=folder / name, split="train", cache_dir=folder / ".cache")
        sources.append((name, get_spec(name).task, data))
    return sources


def loader_for(dataset, sampler, batch_size: int, workers: int, size_divisor: int = 1) -> DataLoader:
    return DataLoader(
        SeededSampleDataset(dataset),
        batch_size=batch_size,
        sampler=SeededSampleStream(sampler, seed=0),
        collate_fn=with_sample_keys(functools.partial(collate_pretrain, size_divisor=size_divisor)),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),  # as the training loop does on a GPU
        generator=torch.Generator().manual_seed(0),
    )


def _first_images(batch: dict, count: int) -> dict:
    """The first ``count`` images of a collated pre-training batch (both views, labels, flags and planned views)."""
    return {
        key: [entry for entry in value if entry[0] < count] if key.startswith("planned_views") else value[:count]
        for key, value in batch.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per loader (after the first)")
    parser.add_argument("--batch_size", type=int, default=5, help="images per batch (the paper's recipe: 5)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "configs" / "pretrain_r50.yaml")
    parser.add_argument("--model_steps", type=int, default=2, help="timed train steps (after one warm-up)")
    parser.add_argument(
        "--model_batch_size",
        type=int,
        default=None,
        help="images per model step (default: 2 on the CPU, where a step on 5 images of ~1 megapixel needs ~13 GB "
        "for the activations; --batch_size on a GPU)",
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the model step runs"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print torch.profiler's N costliest ops of one model step"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.model_batch_size is None:
        args.model_batch_size = args.batch_size if device.type == "cuda" else 2
    if args.model_steps + 1 > args.batches:
        parser.error(f"--model_steps {args.model_steps} needs --batches >= {args.model_steps + 1}")
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if datasets is not None:
        datasets.disable_progress_bars()

    config = yaml.safe_load(args.config.read_text())
    canvas_in_step = bool(
        (config.get("data") or {}).get("canvas_in_step", PRETRAIN_DEFAULTS["data"]["canvas_in_step"])
    )
    size_divisor = int((config.get("data") or {}).get("size_divisor", PRETRAIN_DEFAULTS["data"]["size_divisor"]))
    with tempfile.TemporaryDirectory() as tmp:
        sources = load_sources(Path(tmp))
        photometric = photometric_options(PRETRAIN_DEFAULTS["data"])  # what run_pretrain.py uses by default
        augmentation = TwoViewAugmentation(**photometric, photometric_in_step=True)
        dataset = HybridPretrainDataset(sources, augmentation=augmentation, canvas_in_step=canvas_in_step)
        space = dataset.identity_space
        sampler = HybridSampler(dataset.source_sizes, [1.0] * len(sources), seed=0)
        kind = "Arrow datasets" if datasets is not None else "parsed record lists (no `datasets` package)"
        print(f"sources ({kind}): {', '.join(f'{name} {len(data)}' for name, _, data in sources)}")
        print(f"batches of {args.batch_size} images (two views each); pinned memory: {torch.cuda.is_available()}")
        print(
            f"photometric probabilities: {photometric}; re-ID canvases painted in the step: {canvas_in_step}; "
            f"batches padded to multiples of {size_divisor}"
        )
        print(f"{'data loader':<34}{'img/s':>10}")
        batches = []
        best_rate_per_worker = 0.0
        for workers in args.workers:
            iterator = iter(loader_for(dataset, sampler, args.batch_size, workers, size_divisor))
            next(iterator)
            start = time.perf_counter()
            loaded = [next(iterator) for _ in range(args.batches)]
            rate = args.batches * args.batch_size / (time.perf_counter() - start)
            label = f"{workers} worker(s)" + (", persistent" if workers else " (main process)")
            print(f"{label:<34}{rate:>10.1f}")
            best_rate_per_worker = max(best_rate_per_worker, rate / max(workers, 1))
            batches = batches or loaded
            del iterator

        start = time.perf_counter()
        stepped = [augmentation.in_step(batch) for batch in batches]
        rate = len(batches) * args.batch_size / (time.perf_counter() - start)
        print(f"{'augmentation step on the CPU':<34}{rate:>10.1f}")

        model_section = config["model"]
        model = PersonSearchPretrainModel(build_pretrain_model_config(model_section, space)).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        precision = (config.get("training") or {}).get("mixed_precision", "no") if device.type == "cuda" else "no"
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}

        def autocast():
            if precision in dtypes:
                return torch.autocast(device.type, dtype=dtypes[precision])
            return contextlib.nullcontext()

        def synchronise() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def train_step(batch: dict, parts: dict | None = None) -> None:
            """One step; with ``parts``, the synchronised seconds of each part are added to it."""
            marks = [time.perf_counter()]

            def mark(name: str) -> None:
                if parts is not None:
                    synchronise()
                    marks.append(time.perf_counter())
                    parts[name] = parts.get(name, 0.0) + marks[-1] - marks[-2]

            if device.type == "cuda":  # the training loop's step: to the GPU, the step's augmentation there
                batch = move_to_device(batch, device)
                mark("copy to the GPU")
                batch = augmentation.in_step(batch)
                mark("augmentation step")
            inputs = {key: value for key, value in batch.items() if key not in ("sources", "sample_keys")}
            with autocast():
                loss = model(**inputs).loss
            mark("forward")
            loss.backward()
            mark("backward")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            mark("optimizer")

        if device.type == "cuda":  # the training loop does not limit a GPU process's threads
            torch.set_num_threads(default_threads)

        source = batches if device.type == "cuda" else stepped
        model_batches = [_first_images(batch, args.model_batch_size) for batch in source[: 1 + args.model_steps]]
        train_step(model_batches[0])
        synchronise()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for batch in model_batches[1:]:
            train_step(batch)
        synchronise()
        rate = args.model_steps * args.model_batch_size / (time.perf_counter() - start)
        backbone = (model_section.get("person_search") or {}).get("backbone", "resnet50")
        if device.type == "cuda":
            label = f"model train step ({backbone}, {torch.cuda.get_device_name(device)}, {precision})"
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            print(f"{label:<34}{rate:>10.1f}  ({args.model_batch_size} images a step, peak memory {peak:.1f} GiB)")
            parts = {}
            for batch in model_batches[1:]:
                train_step(batch, parts)
            total = sum(parts.values())
            steady = args.model_steps * args.model_batch_size / total
            print(
                f"  the same batches again (shapes seen before): {steady:.1f} img/s, "
                f"{1e3 * total / args.model_steps:.0f} ms a step, of which (synchronised after each part) "
                + ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in parts.items())
            )
            print(
                f"workers per GPU to keep up: {math.ceil(max(rate, steady) / best_rate_per_worker)} "
                f"(model {max(rate, steady):.1f} img/s / best loader rate per worker {best_rate_per_worker:.1f} img/s)"
            )
        else:
            print(f"{'model train step (' + backbone + ', CPU)':<34}{rate:>10.3f}")
        if args.profile:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=activities) as profiler:
                train_step(model_batches[-1])
                synchronise()
            sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            for key in dict.fromkeys(["self_cpu_time_total", sort_by]):
                print(f"one model step, the {args.profile} costliest ops by {key}:")
                print(profiler.key_averages().table(sort_by=key, row_limit=args.profile))


if __name__ == "__main__":
    main()
