"""Does gradient reversal make the ENCODER features less domain-separable for a fresh probe?

Trains PersonSearchPretrainModel exactly as tests/models/test_alignment_learning.py does (two colour-cast
domains, L_ps + lambda L_adv with the detection IAM, batches of 8 images of 64x64), same seed and batches
for every variant, then fits fresh probes on the frozen encoder features of held-out images (80 to fit,
80 to score):
- linear / head: domain probes (logistic regression on pooled features; a head shaped like the IAM's
  image branch on the maps): near 1.0 = the features carry the domain, near 0.5 = they do not;
- count: a logistic regression predicting the number of persons (1 or 2) from the same pooled features,
  a check that the features still describe the scene.
Also printed: the IAM's own image / instance accuracy (mean of the last 100 steps), the share of the IAM
image branch's units whose pre-activation is positive on the probe images (0 = a dead classifier), and
L_ps (mean of the last 100 steps).

Variants (the test's recipe is "sgd"):
- sgd-rev0: reversal weight 0 (the IAM learns; the features are left alone);
- sgd: reversal on, SGD + momentum + clipping, LeakyReLU IAM (the test's setting);
- relu: the same with a ReLU IAM (iam_negative_slope 0);
- adam: the same with Adam (lr 1e-3) instead of SGD;
- clip-all: the same with the domain classifiers clipped together with the rest of the model.

    .venv/bin/python benchmarks/bench_alignment.py                       # the five variants, seed 0 (~7 min)
    .venv/bin/python benchmarks/bench_alignment.py --variants sgd --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
import test_alignment_learning as setup  # noqa: E402  (the test's data, model, training loop and probes)

VARIANTS = {
    # name: (reversal weight, IAM negative slope, optimizer, clip the domain classifiers too)
    "sgd-rev0": (0.0, 0.2, "sgd", False),
    "sgd": (setup.REVERSAL_ON, 0.2, "sgd", False),
    "relu": (setup.REVERSAL_ON, 0.0, "sgd", False),
    "adam": (setup.REVERSAL_ON, 0.2, "adam", False),
    "clip-all": (setup.REVERSAL_ON, 0.2, "sgd", True),
}


def person_count_probe(model, seed: int) -> float:
    """Held-out accuracy of a fresh logistic regression predicting 1 vs 2 persons from pooled features."""
    pixels, boxes, _ = setup.two_domain_images(setup.PROBE_IMAGES, seed=100 + seed)
    counts = torch.tensor([len(image_boxes) - 1 for image_boxes in boxes])
    half = setup.PROBE_IMAGES // 2
    model.eval()
    with torch.no_grad():
        pooled = model.person_search.encode(pixels).mean(dim=(2, 3))
    model.train()
    return setup.linear_probe(pooled[:half], counts[:half], pooled[half:], counts[half:])


def live_units(model, seed: int) -> float:
    """Share of positive pre-activations of the IAM image branch's first layer on the probe images."""
    pixels, _, _ = setup.two_domain_images(setup.PROBE_IMAGES, seed=100 + seed)
    with torch.no_grad():
        maps = model.person_search.encode(pixels)
        return (model.detection_alignment.image_convs[0](maps) > 0).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=setup.STEPS)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.steps} steps of batch {setup.BATCH}; accuracies: 0.5 = chance")
    print(
        f"{'variant':<9} {'seed':>4} {'IAM img':>7} {'IAM ins':>7} {'live':>5} {'L_ps':>6} "
        f"{'probe lin':>9} {'probe head':>10} {'count':>6} {'time':>6}"
    )
    for seed in args.seeds:
        for name in args.variants:
            reversal, slope, optimizer_name, clip_all = VARIANTS[name]
            start = time.perf_counter()
            model = setup.build(reversal, seed, negative_slope=slope)
            trained = setup.train(
                model, seed, steps=args.steps, optimizer_name=optimizer_name, clip_domain_classifiers=clip_all
            )
            probes = setup.fresh_probes(model, seed)
            print(
                f"{name:<9} {seed:>4} {trained['image']:>7.2f} {trained['instance']:>7.2f} "
                f"{live_units(model, seed):>5.2f} {trained['ps']:>6.2f} {probes['linear']:>9.2f} "
                f"{probes['head']:>10.2f} {person_count_probe(model, seed):>6.2f} "
                f"{time.perf_counter() - start:>5.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
