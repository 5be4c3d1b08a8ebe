"""RoIAlign on CPU: hf_personsearch.roi_align (a sparse sampling matrix) against torchvision's kernel, forward and
backward, in the same run, one thread.

    .venv/bin/python benchmarks/bench_roi_align.py [--repeats 5] [--quick]

Cases (random map and boxes of the sizes the models meet):
- ``benchmark``: the CPU pre-training benchmark's test_resnet model: 48 sampled boxes, 192 channels, 8 x 15 map
  (a 128 x 228 image at stride 16), 8 x 8 output.
- ``resnet50``: ResNet-50's C4 at 900 x 1500 (57 x 94, 1024 channels), 300 proposals, 14 x 14 output
  (``--quick`` leaves it out).

Each line gives the median time of ``--repeats`` runs for both implementations, the time ratio (ours /
torchvision's) and the largest difference of the values and of the map's gradient.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.ops import roi_align as torchvision_roi_align

from hf_personsearch.roi_align import roi_align

CASES = {
    # name: (boxes, channels, map height, map width, output size)
    "benchmark": (48, 192, 8, 15, 8),
    "resnet50": (300, 1024, 57, 94, 14),
}


def make_case(boxes: int, channels: int, height: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(1, channels, height, width, generator=generator)
    image_height, image_width = height * 16, width * 16
    x1 = torch.rand(boxes, generator=generator) * image_width * 0.8
    y1 = torch.rand(boxes, generator=generator) * image_height * 0.6
    w = torch.rand(boxes, generator=generator) * image_width * 0.2 + 8
    h = torch.rand(boxes, generator=generator) * image_height * 0.4 + 16
    return features, [torch.stack([x1, y1, x1 + w, y1 + h], 1)]


def time_one(function, features, boxes, output_size, upstream, repeats: int) -> tuple[float, float, tuple]:
    """Median forward and backward times (ms), and (the output, the map's gradient) of the last run."""
    forward, backward = [], []
    for _ in range(repeats):
        leaf = features.clone().requires_grad_(True)
        started = time.perf_counter()
        pooled = function(leaf, boxes, output_size)
        middle = time.perf_counter()
        pooled.backward(upstream)
        ended = time.perf_counter()
        forward.append((middle - started) * 1e3)
        backward.append((ended - middle) * 1e3)
    return statistics.median(forward), statistics.median(backward), (pooled.detach(), leaf.grad)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="the benchmark case alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    implementations = {
        "torchvision": lambda f, b, s: torchvision_roi_align(f, b, s, 1.0 / 16, 2, aligned=False),
        "ours": lambda f, b, s: roi_align(f, b, s, 1.0 / 16, 2),
    }
    rows = []
    print(f"{'case':<10} {'impl':<12} {'forward ms':>10} {'backward ms':>11}")
    for name, (boxes, channels, height, width, output_size) in CASES.items():
        if args.quick and name != "benchmark":
            continue
        features, box_list = make_case(boxes, channels, height, width)
        upstream = torch.randn(boxes, channels, output_size, output_size, generator=torch.Generator().manual_seed(1))
        timings = {}
        for label, function in implementations.items():
            timings[label] = time_one(function, features, box_list, output_size, upstream, args.repeats)
            print(f"{name:<10} {label:<12} {timings[label][0]:>10.2f} {timings[label][1]:>11.2f}")
        (ours_pooled, ours_grad), (reference_pooled, reference_grad) = timings["ours"][2], timings["torchvision"][2]
        row = {
            "case": name,
            "forward_ratio": timings["ours"][0] / timings["torchvision"][0],
            "backward_ratio": timings["ours"][1] / timings["torchvision"][1],
            "max_value_difference": float((ours_pooled - reference_pooled).abs().max()),
            "max_gradient_difference": float((ours_grad - reference_grad).abs().max()),
        }
        rows.append(row)
        print(
            f"{name}: time ours / torchvision: forward {row['forward_ratio']:.2f}, backward "
            f"{row['backward_ratio']:.2f}; largest difference: values {row['max_value_difference']:.1e}, "
            f"gradient {row['max_gradient_difference']:.1e}"
        )
    return rows


if __name__ == "__main__":
    main()
