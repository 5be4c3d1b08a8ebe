"""What a new batch shape costs the pre-training step, and what ``data.size_divisor`` saves (run it on a GPU).

    python benchmarks/bench_batch_shapes.py [--steps 60] [--size_divisor 128] [--config CONFIG] [--device cuda]

On a GPU a convolution input of a shape not seen before costs cuDNN's set-up on the host, and every pre-training
batch has its own padded shape unless it is rounded up (``data.size_divisor``). The DataLoader of
``benchmarks/bench_dataloader.py`` (the paper's five sub-task datasets written by ``hf_personsearch.data.synthetic``,
equal mixing, batches of 5 images, two views each) gives two streams of ``--steps`` batches never seen by the model,
from two sampler seeds: one collated as the default does (padded to the batch's largest image only), one with the
collate's ``size_divisor=--size_divisor``, as ``run_pretrain.py`` pads. The model of ``--config`` (default: the
paper's ResNet-50 recipe, random weights, its ``training.mixed_precision``) trains on both, interleaved step by step
so that both meet the same conditions. Printed per stream: the distinct view shapes it met and
its mean step time over the first and second half of the steps (a stream whose shapes repeat gets faster as it
meets them again), then the ratio of the two. Three warm-up steps on other batches come first.

Measured on one NVIDIA H200 (torch 2.11 + cu130, bf16, 60 steps a stream, the sources read as the parsers' record
lists; a draft of this script that padded the second stream on the GPU after the step's augmentation): unpadded, 97 distinct view shapes, 530 then 537 ms a step; padded to 128, 34 shapes, 433 then 375 ms
(0.76x overall, 0.70x over the second half). The same batches run a second time take 301-337 ms a step.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
import yaml
from bench_dataloader import ROOT, load_sources, loader_for

from hf_personsearch.data.augmentation import TwoViewAugmentation
from hf_personsearch.data.collate import HybridPretrainDataset
from hf_personsearch.data.sampler import HybridSampler
from hf_personsearch.modeling_person_search_pretrain import PersonSearchPretrainModel
from hf_personsearch.training.config import PRETRAIN_DEFAULTS
from hf_personsearch.training.loop import move_to_device
from hf_personsearch.training.pretraining import build_pretrain_model_config, photometric_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="steps of each stream (batches never seen before)")
    parser.add_argument("--size_divisor", type=int, default=128, help="the padded stream's divisor")
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "configs" / "pretrain_r50.yaml")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers producing the batches")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.size_divisor < 2 or args.steps < 2:
        parser.error("--size_divisor must be at least 2 (1 is the other stream) and --steps at least 2")
    device = torch.device(args.device)
    config = yaml.safe_load(args.config.read_text())
    precision = (config.get("training") or {}).get("mixed_precision", "no") if device.type == "cuda" else "no"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with tempfile.TemporaryDirectory() as tmp:
        sources = load_sources(Path(tmp))
        augmentation = TwoViewAugmentation(**photometric_options(PRETRAIN_DEFAULTS["data"]), photometric_in_step=True)
        dataset = HybridPretrainDataset(sources, augmentation=augmentation, canvas_in_step=True)
        streams = {}
        for seed, divisor in enumerate((1, args.size_divisor)):
            sampler = HybridSampler(dataset.source_sizes, [1.0] * len(sources), seed=seed)
            iterator = iter(loader_for(dataset, sampler, 5, args.workers, divisor))
            streams[divisor] = [next(iterator) for _ in range(args.steps + (3 if divisor == 1 else 0))]
            del iterator
    warm_up, streams[1] = streams[1][:3], streams[1][3:]
    model = PersonSearchPretrainModel(build_pretrain_model_config(config["model"], dataset.identity_space))
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(batch: dict) -> None:
        batch = augmentation.in_step(move_to_device(batch, device))
        inputs = {key: value for key, value in batch.items() if key not in ("sources", "sample_keys")}
        autocast = (
            torch.autocast(device.type, dtype=dtypes[precision]) if precision in dtypes else contextlib.nullcontext()
        )
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in warm_up:
        step(batch)
    seconds = {divisor: [] for divisor in streams}
    for index in range(args.steps):
        for divisor, stream in streams.items():
            synchronise()
            start = time.perf_counter()
            step(stream[index])
            synchronise()
            seconds[divisor].append(time.perf_counter() - start)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{config['model'].get('person_search', {}).get('backbone', 'resnet50')} on {name}, {precision}")
    half = args.steps // 2
    for divisor, times in seconds.items():
        shapes = {tuple(b[key].shape[-2:]) for b in streams[divisor] for key in ("pixel_values", "pixel_values_2")}
        print(
            f"padded to multiples of {divisor:>4}: {len(shapes):>4} distinct view shapes, ms a step: first half "
            f"{1e3 * sum(times[:half]) / max(half, 1):6.0f}, second half {1e3 * sum(times[half:]) / (args.steps - half):6.0f}"
        )
    ratio = sum(seconds[args.size_divisor]) / sum(seconds[1])
    print(f"step time padded / unpadded: {ratio:.2f}")


if __name__ == "__main__":
    main()
