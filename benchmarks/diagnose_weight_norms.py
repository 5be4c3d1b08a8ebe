"""Diagnostic of a finished ``bench_pretraining.py`` run: how far pre-training grew the weights, and how far
fine-tuning moved them.

For each seed and each part of the model (backbone stages, RPN head, the search head's layers), prints the weight
norm of a fresh model (drawn with the seed), of the pre-trained model (``pretrain_full/person_search_model``), the
growth between the two, and the distance fine-tuning moved the weights relative to the start's norm, for
scratch_100 (from a fresh model) and full_100 (from the pre-trained one, as fine-tuning started it: with
``init.match_fresh_weight_norms`` the normalised layers at a fresh model's norms):

    python benchmarks/diagnose_weight_norms.py --bench_dir outputs/bench --seeds 0 1 2

A weight that feeds a training-mode BatchNorm (marked ``*``) is scale-invariant: its effective learning rate
falls with its norm, so a grown norm shows as a small relative move (see ``hf_personsearch/training/transfer.py``).
Not a benchmark condition: the measurement behind ``init.match_fresh_weight_norms`` (see the README).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from hf_personsearch import PersonSearchModel
from hf_personsearch.training.transfer import match_fresh_weight_norms, normalized_layer_pairs


def part_of(key: str) -> str:
    """The reported part of a parameter: backbone stage, RPN layer or search head layer."""
    return ".".join(key.split(".")[:3])


def weight_norms(bench_dir: Path, seed: int) -> dict[str, dict[str, float]]:
    """Per part: fresh and pre-trained norms, their ratio, the relative move of both fine-tunings, and whether the
    part's layers are normalised (scale-invariant)."""
    seed_dir = bench_dir / f"seed{seed}"
    pretrained = PersonSearchModel.from_pretrained(
        str(seed_dir / "pretrain_full" / "person_search_model"), dtype=torch.float32
    )
    torch.manual_seed(seed)
    fresh = PersonSearchModel(pretrained.config).state_dict()
    normalised = {part_of(layer + ".weight") for layer, _ in normalized_layer_pairs(pretrained)}
    grown = {key: value.clone() for key, value in pretrained.state_dict().items()}
    finetune_start = pretrained
    finetune_info = (seed_dir / "finetune_full_100" / "training_info.json").read_text()
    if "fresh model's weight norms" in finetune_info:
        match_fresh_weight_norms(finetune_start, seed=seed)
    start = finetune_start.state_dict()
    scratch = load_file(seed_dir / "finetune_scratch_100" / "model.safetensors")
    full = load_file(seed_dir / "finetune_full_100" / "model.safetensors")
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0] * 6)
    for key, value in grown.items():
        if not value.is_floating_point() or "running" in key or key.endswith("oim.lut") or key.endswith("oim.queue"):
            continue
        if key not in scratch or scratch[key].shape != value.shape:
            continue  # the OIM tables are resized for the target
        row = sums[part_of(key)]
        row[0] += fresh[key].float().norm().item() ** 2
        row[1] += value.float().norm().item() ** 2
        row[2] += start[key].float().norm().item() ** 2
        row[3] += (scratch[key].float() - fresh[key].float()).norm().item() ** 2
        row[4] += (full[key].float() - start[key].float()).norm().item() ** 2
    return {
        part: {
            "fresh": row[0] ** 0.5,
            "pretrained": row[1] ** 0.5,
            "growth": (row[1] / row[0]) ** 0.5 if row[0] else float("nan"),
            "scratch_move": (row[3] / row[0]) ** 0.5 if row[0] else float("nan"),
            "full_move": (row[4] / row[2]) ** 0.5 if row[2] else float("nan"),
            "normalised": part in normalised,
        }
        for part, row in sums.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench_dir", type=Path, required=True, help="--output_dir of a bench_pretraining.py run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    for seed in args.seeds:
        print(f"seed {seed}: weight norms (fresh, pre-trained), growth, and fine-tuning's move relative to its start")
        print(f"  {'part':<46} {'fresh':>7} {'pre-tr.':>8} {'growth':>7} {'scratch move':>13} {'full move':>10}")
        for part, row in weight_norms(args.bench_dir, seed).items():
            mark = "*" if row["normalised"] else " "
            print(
                f"{mark} {part:<46} {row['fresh']:>7.2f} {row['pretrained']:>8.2f} {row['growth']:>6.1f}x "
                f"{row['scratch_move']:>12.2f}x {row['full_move']:>9.2f}x"
            )


if __name__ == "__main__":
    main()
