"""PersonSearchModel cost on CPU, as ratios against baselines measured in the same run.

1. Train step (forward + backward) and inference of the full model vs the backbone alone (forward +
   backward of the whole timm feature network on the same batch), for test_resnet and resnet50.
2. OIM step (loss + update) time and table memory at 10k, 100k and 1M identities, vs 10k.

Usage: python benchmarks/bench_model.py [--size 512x384] [--batch 2] [--repeats 3] [--skip-resnet50]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hf_personsearch import PersonSearchConfig, PersonSearchModel
from hf_personsearch.oim import OIMLoss


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def model_figures(backbone: str, height: int, width: int, batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = PersonSearchModel(PersonSearchConfig(backbone=backbone, num_person_ids=1000, freeze_batchnorm=True))
    pixel_values = torch.randn(batch, 3, height, width)
    labels = [
        {
            "boxes": torch.tensor([[40.0, 30.0, 140.0, 330.0], [200.0, 60.0, 300.0, 360.0]]),
            "person_ids": torch.tensor([1, -1]),
        }
        for _ in range(batch)
    ]

    def backbone_step():
        features = model.backbone.body(pixel_values)
        sum(f.float().mean() for f in features).backward()

    def train_step():
        model.train()
        model(pixel_values, labels=labels).loss.backward()

    def inference():
        model.eval()
        with torch.no_grad():
            model(pixel_values)

    def backbone_inference():
        with torch.no_grad():
            model.backbone.body(pixel_values)

    base_train = best_time(backbone_step, repeats)
    full_train = best_time(train_step, repeats)
    base_infer = best_time(backbone_inference, repeats)
    full_infer = best_time(inference, repeats)
    print(
        f"{backbone:12s} {batch}x{height}x{width}: train step {full_train * 1000:8.1f} ms "
        f"(backbone fwd+bwd {base_train * 1000:8.1f} ms, ratio {full_train / base_train:5.2f}) | "
        f"inference {full_infer * 1000:8.1f} ms (backbone fwd {base_infer * 1000:8.1f} ms, ratio {full_infer / base_infer:5.2f})"
    )


def oim_figures(repeats: int) -> None:
    batch_features = F.normalize(torch.randn(256, 256), dim=1)  # 5 images x ~50 persons, 256-d
    results = {}
    for size in (10_000, 100_000, 1_000_000):
        oim = OIMLoss(256, size, queue_size=5000).train()
        oim.lut.copy_(F.normalize(torch.randn(size, 256), dim=1))
        ids = torch.randint(0, size, (256,))
        ids[::4] = -1
        features = batch_features.clone().requires_grad_()

        def step(oim=oim, ids=ids, features=features):
            oim(features, ids).backward()

        seconds = best_time(step, repeats)
        megabytes = (oim.lut.numel() + oim.queue.numel()) * 4 / 2**20
        results[size] = (seconds, megabytes)
    base = results[10_000][0]
    for size, (seconds, megabytes) in results.items():
        print(
            f"OIM {size:>9,d} ids: step {seconds * 1000:8.1f} ms (x{seconds / base:6.1f} vs 10k), "
            f"tables {megabytes:8.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512x384", help="input HEIGHTxWIDTH (default 512x384: CPU-sized)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    for backbone in ["test_resnet"] + ([] if args.skip_resnet50 else ["resnet50"]):
        model_figures(backbone, height, width, args.batch, args.repeats)
    oim_figures(args.repeats)


if __name__ == "__main__":
    main()
