"""Diagnostic: does the IAMs' gradient reversal change the features at the CPU benchmark's lambda?

Three first-stage pre-trainings of ``bench_pretraining.py`` on one seed's synthetic sub-task data, identical but for
the adversarial signal: lambda 0.1 with reversal (the benchmark's recipe), the reversal off
(``model.gradient_reversal_weight=0``: the domain classifiers learn, the features get nothing from them) and lambda
1.0. Prints, per 100-step window, the mean of each domain-classification loss (steps whose batch had no image of
that task left out) next to chance (a classifier that cannot tell the domains apart), and the held-out accuracy of a
fresh linear probe of the source domain on the final models' pooled encoder features and on a random-init model's
(``bench_pretraining.domain_probe``):

    python benchmarks/diagnose_iam_reversal.py --output_dir outputs/iam_diagnosis [--seed 0] [--steps 400]

Writes ``summary.json`` there (``docs/figures/iam_reversal_diagnostic.json`` is a run of it). Not a benchmark
condition: the measurement behind the README's account of the IAMs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretraining as bench  # noqa: E402  (the benchmark's data, configs, runner and probe)

from hf_personsearch.data.synthetic.benchmark import BENCHMARK_SIZES  # noqa: E402

RUNS = {
    "lambda_0.1": [],
    "reversal_off": ["model.gradient_reversal_weight=0.0"],
    "lambda_1.0": ["model.adversarial_loss_weight=1.0"],
}
"""Overrides of each run on top of ``bench_pretrain_cpu.yaml`` (whose lambda is 0.1)."""
LOSSES = ("adv_det_img", "adv_det_ins", "adv_reid_img", "adv_reid_ins", "reid_oim", "det_classification")
WINDOW = 100
"""Steps per averaging window (one batch is noisy)."""


def window_means(loss_log: Path, window: int) -> dict[str, list[float | None]]:
    """Mean of each loss of :data:`LOSSES` per ``window`` steps, leaving out steps where it is exactly 0 (no image
    of that task in the batch); None for a window without any."""
    rows = [json.loads(line) for line in loss_log.read_text().splitlines() if line.strip()]
    means = {}
    for name in LOSSES:
        means[name] = []
        for start in range(0, len(rows), window):
            values = [row[name] for row in rows[start : start + window] if row.get(name, 0.0) != 0.0]
            means[name].append(round(float(np.mean(values)), 3) if values else None)
    return means


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400, help="first-stage steps of each run (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny data and a few steps: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seed_dir = args.output_dir / f"seed{args.seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    sizes = bench.QUICK_SIZES if args.quick else BENCHMARK_SIZES
    bench.job_data(str(seed_dir), args.seed, {name: sizes[name] for name in (*bench.SOURCES, "prw")})
    data_dir = seed_dir / "data"
    sources = bench.sources_override(data_dir, bench.PRETRAIN_CONFIG)
    steps = 3 if args.quick else args.steps
    window = 1 if args.quick else WINDOW
    images = bench.probe_images(data_dir, args.seed)
    summary = {
        "seed": args.seed,
        "steps": steps,
        "window": window,
        "chance": {"detection": math.log(2), "reid": math.log(3)},
        "losses": {},
        "probe_accuracy": {},
    }
    for name, overrides in RUNS.items():
        folder = seed_dir / name
        argv_run = ["--config", str(bench.PRETRAIN_CONFIG), sources, f"training.seed={args.seed}"]
        argv_run += [f"training.max_steps={steps}", "--output_dir", str(folder), *overrides]
        bench.job_pretrain(argv_run, str(folder) + ".log")
        summary["losses"][name] = window_means(folder / "loss_log.jsonl", window)
        model, processor = bench._load_model(folder / "person_search_model", str(bench.FINETUNE_CONFIG))
        summary["probe_accuracy"][name] = bench.domain_probe(
            bench.pooled_features(model, processor, images), args.seed
        )
    torch.manual_seed(args.seed)
    fresh = type(model)(model.config).eval()  # the runs' architecture, random weights
    summary["probe_accuracy"]["random_init"] = bench.domain_probe(
        bench.pooled_features(fresh, processor, images), args.seed
    )
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"seed {args.seed}, {steps} steps, windows of {window}; chance: detection ln 2 = 0.693, re-ID ln 3 = 1.099")
    for loss in LOSSES:
        print(loss)
        for name in RUNS:
            values = " ".join("-" if value is None else f"{value:.3f}" for value in summary["losses"][name][loss])
            print(f"  {name:<14}{values}")
    print("fresh linear probe, held-out accuracy (detection / re-ID sources):")
    for name, probe in summary["probe_accuracy"].items():
        print(f"  {name:<14}{probe['detection']['accuracy']:.3f} / {probe['reid']['accuracy']:.3f}")
    return summary


if __name__ == "__main__":
    main()
