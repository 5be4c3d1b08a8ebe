"""Diagnostic of a finished ``bench_pretraining.py`` run: does the pre-trained re-ID embedding head hurt?

For each seed, fine-tunes the full pre-trained model (``pretrain_full/person_search_model``) with its embedding
head re-initialised (the projections and their BatchNorms; backbone, RPN, box regressor and detection score kept),
with the benchmark's own job, recipe and budget at 100% of the target's frames, and prints its metrics next to
the run's scratch_100 and full_100:

    python benchmarks/diagnose_reid_head.py --bench_dir outputs/bench --seeds 0 1 2

Not a benchmark condition: a measurement of where the pre-trained init loses (see the README).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import bench_pretraining as bench
import torch

from hf_personsearch import PersonSearchModel


def reset_embedding_head(pretrained: Path, out: Path, seed: int) -> None:
    """The pre-trained model with a fresh embedding head, drawn from ``seed`` (the result depends on the draw:
    two unseeded draws on seed 0 gave 34.2 and 31.4 mAP)."""
    model = PersonSearchModel.from_pretrained(str(pretrained), dtype=torch.float32)
    torch.manual_seed(seed)
    model.search_head.embedding_head.reset_parameters()
    model.save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench_dir", type=Path, required=True, help="--output_dir of a bench_pretraining.py run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    summary = json.loads((args.bench_dir / "summary.json").read_text())
    config = str(bench.FINETUNE_CONFIG)
    max_steps = bench.finetune_max_steps(bench.FINETUNE_CONFIG)
    print(f"{'seed':<5} {'condition':<28} {'mAP':>6} {'top-1':>6} {'det AP':>7} {'re-ID (gt)':>10}")
    for seed in args.seeds:
        seed_dir = args.bench_dir / f"seed{seed}"
        prw = str(seed_dir / "data" / "prw")
        init = seed_dir / "diagnose_reset_embedding_init"
        reset_embedding_head(seed_dir / "pretrain_full" / "person_search_model", init, seed)
        out = seed_dir / "finetune_full_100_reset_embedding"
        argv = ["--config", config, f"data.data_dir={prw}", f"training.output_dir={out}", f"training.seed={seed}"]
        argv += [f"data.fraction_seed={seed}", "data.train_fraction=1.0", "init.from=pretrained"]
        argv += [f"init.path={init}", f"training.max_steps={max_steps}"]
        rows = {name: summary["conditions"][name][str(seed)] for name in ("scratch_100", "full_100")}
        rows["full_100, embedding head reset"] = bench.job_finetune(argv, f"{out}.log", str(out), prw, config)
        for name, metrics in rows.items():
            values = [100 * metrics[key] for key in ("mAP", "top1", "det_ap", "reid_map")]
            print(f"{seed:<5} {name:<28} {values[0]:>6.1f} {values[1]:>6.1f} {values[2]:>7.1f} {values[3]:>10.1f}")


if __name__ == "__main__":
    main()
