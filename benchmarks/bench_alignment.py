"""Does gradient reversal make the ENCODER features less domain-separable for a fresh probe?

Trains PersonSearchPretrainModel exactly as tests/models/test_alignment_learning.py does (two colour-cast
domains, L_ps + lambda L_adv with the detection IAM, Adam, the IAM at 10x learning rate), once with
reversal weight 0 and once with ``--reversal``, same seed, and then trains two fresh probes on the
frozen encoder features (eval mode) of held-out images (80 to fit, 80 to score):
- linear: L2-regularised logistic regression on standardised average-pooled features (LBFGS);
- head: the IAM image-branch architecture (3x3 conv, ReLU, 1x1 conv; 16 channels), per location,
  150 Adam steps at 1e-3.
Prints the IAM accuracies during training and both probes' held-out accuracies for every run.

    .venv/bin/python benchmarks/bench_alignment.py                       # 60 steps (the test's budget)
    .venv/bin/python benchmarks/bench_alignment.py --steps 300 --reversal 10 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
import test_alignment_learning as setup  # noqa: E402  (the test's data, model and training loop)


def linear_probe(train_x, train_y, test_x, test_y) -> float:
    """Held-out accuracy of logistic regression (weight decay 1e-2, LBFGS 300 iterations)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], 2, requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + 1e-2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((test_x @ weight + bias).argmax(1) == test_y).float().mean().item()


def head_probe(train_maps, train_y, test_maps, test_y, channels: int = 16, steps: int = 150) -> float:
    """Held-out per-location accuracy of a fresh IAM-like image head on frozen maps."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(
        torch.nn.Conv2d(train_maps.shape[1], channels, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(channels, 2, 1)
    )
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        logits = head(train_maps)
        loss = F.cross_entropy(logits, train_y[:, None, None].expand(-1, *logits.shape[2:]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (head(test_maps).argmax(1) == test_y[:, None, None]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=setup.STEPS)
    parser.add_argument("--reversal", type=float, nargs="+", default=[setup.REVERSAL_ON])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    setup.STEPS = args.steps
    probe_pixels, _, probe_domains = setup.two_domain_images(160, seed=100 + args.seed)
    for reversal in [0.0, *args.reversal]:
        start = time.perf_counter()
        model, accuracy = setup.train(reversal, args.seed, return_model=True)
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            maps = model.eval().person_search.encode(probe_pixels)
        linear = linear_probe(maps[:80].mean((2, 3)), probe_domains[:80], maps[80:].mean((2, 3)), probe_domains[80:])
        head = head_probe(maps[:80], probe_domains[:80], maps[80:], probe_domains[80:])
        print(
            f"reversal {reversal:5.1f}  steps {args.steps}  IAM image acc {accuracy['image']:.2f} "
            f"(last {accuracy['image_last']:.2f})  IAM instance acc {accuracy['instance']:.2f}  "
            f"L_ps {accuracy['ps']:.2f}  fresh probes: linear {linear:.2f}  head {head:.2f}  ({elapsed:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
