"""Images per second of the whole pre-training DataLoader, next to the model's consumption on this machine.

    .venv/bin/python benchmarks/bench_dataloader.py [--batches 12] [--workers 0 1 2] [--model_steps 2]

Data: the five sub-task datasets of the paper's recipe written by ``hf_personsearch.data.synthetic`` in their
real raw formats (CrowdHuman scenes 1200 x 800, EuroCity Persons 1920 x 1024, MSMT17 / CUHK03 / LUPerson
crops) and read back by the real parsers. The loader is the training loop's own: HybridSampler with equal
mixing weights, per-sample seeds (SeededSampleStream), collate_pretrain, the two-view augmentation with its
photometric half left to the step, as ``examples/run_pretrain.py`` runs it.

Rows: the DataLoader with 0, 1 and 2 workers (persistent workers; pinned memory when a GPU is present),
images per second (an image is its two views) over ``--batches`` batches after the first one (worker
start-up excluded); then the step's photometric half run on this CPU on the same batches (what a CPU-only
run adds to the step); then the model's consumption: train steps (forward, backward, SGD) of the
pre-training model of ``--config`` (default: the paper's ResNet-50 recipe, random weights) on the first
``--model_batch_size`` images of this loader's batches, images per second.

Everything runs on one thread per process (torch.set_num_threads(1), as DataLoader workers do), so each
figure is per core: the main process's rows (0 workers, the photometric step, the model step) use one
core, a loader with k workers k cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import datasets
import torch
import yaml
from torch.utils.data import DataLoader

from hf_personsearch.data.augmentation import TwoViewAugmentation
from hf_personsearch.data.collate import HybridPretrainDataset, collate_pretrain
from hf_personsearch.data.formats import get_spec
from hf_personsearch.data.identity import IdentitySpace
from hf_personsearch.data.loading import load_person_search_dataset
from hf_personsearch.data.sampler import HybridSampler
from hf_personsearch.data.synthetic import generate
from hf_personsearch.modeling_person_search_pretrain import PersonSearchPretrainModel
from hf_personsearch.training.loop import SeededSampleDataset, SeededSampleStream, with_sample_keys
from hf_personsearch.training.pretraining import build_pretrain_model_config

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "crowdhuman": {"num_train": 24, "num_val": 1, "width": 1200, "height": 800},
    "ecp": {"num_per_subset": 6, "width": 1920, "height": 1024},
    "msmt17": {"num_train_ids": 12, "num_test_ids": 2},
    "cuhk03": {},
    "luperson": {"num_crops": 40},
}
"""Scene sizes of the real datasets (CrowdHuman's typical photo, ECP's 1920 x 1024 frames); crops as written."""


def load_sources(folder: Path) -> list[tuple[str, str, object]]:
    sources = []
    for name, sizes in SIZES.items():
        generate(name, folder / name, seed=0, **sizes)
        data = load_person_search_dataset(name, data_dir=folder / name, split="train", cache_dir=folder / ".cache")
        sources.append((name, get_spec(name).task, data))
    return sources


def loader_for(dataset, sampler, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        SeededSampleDataset(dataset),
        batch_size=batch_size,
        sampler=SeededSampleStream(sampler, seed=0),
        collate_fn=with_sample_keys(collate_pretrain),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
    )


def _first_images(batch: dict, count: int) -> dict:
    """The first ``count`` images of a collated pre-training batch (both views, labels and flags)."""
    return {key: value[:count] for key, value in batch.items()}


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
        default=2,
        help="images per model step (2: a CPU step on 5 images of ~1 megapixel needs ~13 GB for the activations)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()

    with tempfile.TemporaryDirectory() as tmp:
        sources = load_sources(Path(tmp))
        space = IdentitySpace.from_person_ids([(name, task, data["person_ids"]) for name, task, data in sources])
        augmentation = TwoViewAugmentation(photometric_in_step=True)
        dataset = HybridPretrainDataset(sources, identity_space=space, augmentation=augmentation)
        sampler = HybridSampler(dataset.source_sizes, [1.0] * len(sources), seed=0)
        print(f"sources: {', '.join(f'{name} {len(data)}' for name, _, data in sources)}")
        print(f"batches of {args.batch_size} images (two views each); pinned memory: {torch.cuda.is_available()}")
        print(f"{'data loader':<34}{'img/s':>10}")
        batches = []
        for workers in args.workers:
            iterator = iter(loader_for(dataset, sampler, args.batch_size, workers))
            next(iterator)
            start = time.perf_counter()
            loaded = [next(iterator) for _ in range(args.batches)]
            rate = args.batches * args.batch_size / (time.perf_counter() - start)
            label = f"{workers} worker(s)" + (", persistent" if workers else " (main process)")
            print(f"{label:<34}{rate:>10.1f}")
            batches = batches or loaded
            del iterator

        start = time.perf_counter()
        stepped = [augmentation.photometric(batch) for batch in batches]
        rate = len(batches) * args.batch_size / (time.perf_counter() - start)
        print(f"{'photometric step on the CPU':<34}{rate:>10.1f}")

        model_section = yaml.safe_load(args.config.read_text())["model"]
        model = PersonSearchPretrainModel(build_pretrain_model_config(model_section, space)).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def train_step(batch: dict) -> None:
            inputs = {key: value for key, value in batch.items() if key not in ("sources", "sample_keys")}
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        model_batches = [_first_images(batch, args.model_batch_size) for batch in stepped[: 1 + args.model_steps]]
        train_step(model_batches[0])
        start = time.perf_counter()
        for batch in model_batches[1:]:
            train_step(batch)
        rate = args.model_steps * args.model_batch_size / (time.perf_counter() - start)
        backbone = (model_section.get("person_search") or {}).get("backbone", "resnet50")
        print(f"{'model train step (' + backbone + ', CPU)':<34}{rate:>10.3f}")


if __name__ == "__main__":
    main()
