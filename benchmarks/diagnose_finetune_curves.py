"""Diagnostic of a finished ``bench_pretraining.py`` run: the pre-training gain along fine-tuning, at 25% and at
100% of the target's training frames.

    python benchmarks/diagnose_finetune_curves.py --bench_dir outputs/bench --seeds 6 7 8 --output_dir outputs/curves

Re-runs the fine-tunings of ``full_25``, ``scratch_25``, ``full_100`` and ``scratch_100`` with the benchmark's own
arguments (``bench_pretraining.finetune_argv``: its data, its pre-trained models, its recipe, seeds and training
precision, ``mixed_precision`` of its ``summary.json``), adding an
evaluation every ``1 / --points`` of the budget, in ``--workers`` single-thread processes. An evaluation draws no
random number and changes no weight, so each re-run must end on the benchmark's own final mAP: checked, and printed
per run (a mismatch is reported, not hidden).

Prints, at each evaluation step, the paired gain (full - scratch, mAP points) of every seed and its mean, at 25%
and at 100% of the frames, and the mean mAP of the four conditions; writes ``curves.json`` (every run's history)
in ``--output_dir``, beside the runs' folders and logs.

Why: the benchmark expects a larger gain from pre-training at 25% of the frames than at 100% (the paper's
data-efficiency claim), and at the end of its budget it does not find one. The budget (1280 steps) is set by
scratch_100's stability gate, which is 256 epochs of the 15 frames of the 25% conditions: this shows whether the
gain at 25% is larger earlier and is then caught up by scratch, or never larger.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretraining as bench  # noqa: E402  (the benchmark's conditions, arguments and job runner)

PAIRS = {"25%": ("full_25", "scratch_25"), "100%": ("full_100", "scratch_100")}
"""The paired comparisons traced: fraction of the frames -> (pre-trained condition, its scratch baseline)."""
TRACED = sorted({name for pair in PAIRS.values() for name in pair})
"""The conditions re-run."""


def benchmark_final(bench_dir: Path, seed: int, name: str) -> dict:
    """The final evaluation (``step``, ``epoch``, ``mAP``, ...) of the benchmark's run of ``name`` for ``seed``."""
    return json.loads((bench_dir / f"seed{seed}" / f"finetune_{name}" / "results.json").read_text())["final"]


def evaluation_epochs(final: dict, name: str, points: int) -> int:
    """``evaluation.every_epochs`` that evaluates a benchmark run of ``name`` every ``1 / points`` of its budget.

    Its steps per epoch come from the run's own final result (:func:`benchmark_final`: ``step / epoch``).

    Raises:
        SystemExit: the interval is not a whole number of that run's epochs.
    """
    steps, epochs = int(final["step"]), float(final["epoch"])
    steps_per_epoch = steps / epochs
    interval = steps / points
    every = interval / steps_per_epoch
    if not (steps_per_epoch.is_integer() and interval.is_integer() and every.is_integer()):
        raise SystemExit(
            f"diagnose: {steps} steps of {name} ({steps_per_epoch:g} steps per epoch) cannot be evaluated every "
            f"1/{points} of the budget in whole epochs: choose another --points"
        )
    return int(every)


def plan(
    bench_dir: Path, output_dir: Path, seeds: list[int], points: int, finetune_config: str, mixed_precision: str
) -> list:
    """One job per seed and condition: the benchmark's fine-tuning (in the run's ``mixed_precision``), evaluated
    ``points`` times."""
    jobs = []
    for seed in seeds:
        seed_dir = bench_dir / f"seed{seed}"
        for name in TRACED:
            folder = output_dir / f"seed{seed}" / f"finetune_{name}"
            folder.parent.mkdir(parents=True, exist_ok=True)
            final = benchmark_final(bench_dir, seed, name)
            argv = bench.finetune_argv(name, seed, seed_dir, folder, finetune_config, int(final["step"]))
            argv += bench.precision_overrides(mixed_precision)
            argv.append(f"evaluation.every_epochs={evaluation_epochs(final, name, points)}")
            arguments = (argv, f"{folder}.log", str(folder), str(seed_dir / "data" / "prw"), finetune_config)
            jobs.append(bench.Job(f"seed{seed}/finetune_{name}", bench.job_finetune, arguments))
    return jobs


def curves(results: dict, benchmark: dict, seeds: list[int]) -> dict:
    """Per fraction: the steps, every seed's paired gain at each step, the mean gain and the conditions' mean mAP;
    and whether each run ended on the benchmark's final mAP."""
    out: dict = {"same_final_as_benchmark": {}, "fractions": {}}
    for seed in seeds:
        for name in TRACED:
            final = results[f"seed{seed}/finetune_{name}"]["mAP"]
            out["same_final_as_benchmark"][f"seed{seed}/{name}"] = final == benchmark[name][str(seed)]["mAP"]
    for fraction, (pretrained, scratch) in PAIRS.items():
        histories = {
            name: {seed: results[f"seed{seed}/finetune_{name}"]["history"] for seed in seeds}
            for name in (pretrained, scratch)
        }
        steps = [entry["step"] for entry in histories[scratch][seeds[0]]]
        gains = {
            str(seed): [
                a["mAP"] - b["mAP"] for a, b in zip(histories[pretrained][seed], histories[scratch][seed], strict=True)
            ]
            for seed in seeds
        }
        out["fractions"][fraction] = {
            "steps": steps,
            "gain_per_seed": gains,
            "mean_gain": np.mean(list(gains.values()), axis=0).tolist(),
            "mean_map": {
                name: np.mean([[entry["mAP"] for entry in histories[name][seed]] for seed in seeds], axis=0).tolist()
                for name in (pretrained, scratch)
            },
        }
    return out


def format_curves(summary: dict, seeds: list[int]) -> str:
    lines = []
    for fraction, curve in summary["fractions"].items():
        pretrained, scratch = PAIRS[fraction]
        lines.append(f"\n{fraction} of the frames: {pretrained} - {scratch}, mAP points")
        header = f"{'step':>6} " + " ".join(f"{'seed ' + str(seed):>8}" for seed in seeds)
        lines.append(f"{header} {'mean':>8} {pretrained:>12} {scratch:>12}")
        for index, step in enumerate(curve["steps"]):
            gains = " ".join(f"{100 * curve['gain_per_seed'][str(seed)][index]:+8.1f}" for seed in seeds)
            means = curve["mean_map"]
            lines.append(
                f"{step:>6} {gains} {100 * curve['mean_gain'][index]:+8.1f} "
                f"{100 * means[pretrained][index]:>12.1f} {100 * means[scratch][index]:>12.1f}"
            )
    same = summary["same_final_as_benchmark"]
    differ = sorted(run for run, equal in same.items() if not equal)
    lines.append(
        f"\nfinal mAP equal to the benchmark's: {len(same) - len(differ)} of {len(same)} runs"
        + (f" (differ: {', '.join(differ)})" if differ else "")
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench_dir", type=Path, required=True, help="a finished bench_pretraining.py output_dir")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds of that run to trace")
    parser.add_argument("--output_dir", type=Path, required=True, help="where the re-runs and curves.json go")
    parser.add_argument("--points", type=int, default=8, help="evaluations along the budget (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    parser.add_argument(
        "--finetune_config", default=str(bench.FINETUNE_CONFIG), help="the benchmark run's run_finetune.py YAML"
    )
    args = parser.parse_args(argv)
    if args.points < 1 or args.workers < 1:
        parser.error("--points and --workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bench_dir, output_dir = args.bench_dir.resolve(), args.output_dir.resolve()
    run = json.loads((bench_dir / "summary.json").read_text())
    benchmark = run["conditions"]
    # the precision the run trained in; summaries written before --mixed_precision existed were float32 runs
    mixed_precision = run.get("mixed_precision", "no")
    missing = [
        f"{name} seed {seed}" for name in TRACED for seed in args.seeds if str(seed) not in benchmark.get(name, {})
    ]
    if missing:
        raise SystemExit(f"diagnose: {bench_dir / 'summary.json'} has no result for {', '.join(sorted(missing))}")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise SystemExit(f"diagnose: {output_dir} is not empty: choose a new --output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # inherited by the workers, as the benchmark's
    results, walls = bench.run_plan(
        plan(bench_dir, output_dir, args.seeds, args.points, args.finetune_config, mixed_precision), args.workers
    )
    summary = curves(results, benchmark, args.seeds)
    summary.update(
        bench_dir=str(bench_dir),
        seeds=args.seeds,
        points=args.points,
        mixed_precision=mixed_precision,
        job_wall_s=walls,
        histories={name: result["history"] for name, result in results.items()},
    )
    (output_dir / "curves.json").write_text(json.dumps(summary, indent=1))
    print(format_curves(summary, args.seeds))
    return summary


if __name__ == "__main__":
    main()
