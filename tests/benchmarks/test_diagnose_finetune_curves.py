"""benchmarks/diagnose_finetune_curves.py: evaluation intervals in whole epochs of each run, paired gains per step,
the check against the benchmark's final mAP, and a run on a quick benchmark (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script():
    spec = importlib.util.spec_from_file_location(
        "diagnose_finetune_curves", BENCHMARKS / "diagnose_finetune_curves.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def write_final(bench_dir: Path, seed: int, name: str, step: int, epoch: float) -> None:
    folder = bench_dir / f"seed{seed}" / f"finetune_{name}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"final": {"step": step, "epoch": epoch, "mAP": 0.5}}))


def test_evaluation_interval_is_whole_epochs_of_each_run(tmp_path):
    script = load_script()
    write_final(tmp_path, 0, "full_25", 1280, 256.0)  # 15 frames, 5 steps per epoch
    write_final(tmp_path, 0, "full_100", 1280, 64.0)  # 60 frames, 20 steps per epoch
    assert script.evaluation_epochs(script.benchmark_final(tmp_path, 0, "full_25"), "full_25", 8) == 32
    assert script.evaluation_epochs(script.benchmark_final(tmp_path, 0, "full_100"), "full_100", 8) == 8
    with pytest.raises(SystemExit, match="cannot be evaluated every 1/128 of the budget in whole epochs"):
        script.evaluation_epochs(script.benchmark_final(tmp_path, 0, "full_100"), "full_100", 128)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_reruns_train_in_the_precision_of_the_benchmark_run(tmp_path, mixed_precision):
    script = load_script()
    for name in script.TRACED:
        write_final(tmp_path, 0, name, 1280, 256.0 if name.endswith("_25") else 64.0)
    jobs = script.plan(tmp_path, tmp_path / "out", [0], 8, str(script.bench.FINETUNE_CONFIG), mixed_precision)
    assert len(jobs) == len(script.TRACED)
    for job in jobs:
        argv = job.arguments[0]
        assert ("training.mixed_precision=bf16" in argv) is (mixed_precision == "bf16")
        assert argv[: len(argv) - 1 - (mixed_precision == "bf16")] == script.bench.finetune_argv(
            job.name.split("finetune_")[1],
            0,
            tmp_path / "seed0",
            tmp_path / "out" / "seed0" / job.name.split("/")[1],
            str(script.bench.FINETUNE_CONFIG),
            1280,
        )


def history(*values):
    return [{"step": 10 * (i + 1), "mAP": value, "detection_ap": 0.9} for i, value in enumerate(values)]


def test_gains_are_paired_per_step_and_a_changed_final_is_reported():
    script = load_script()
    results = {
        "seed0/finetune_full_25": {"mAP": 0.5, "history": history(0.4, 0.5)},
        "seed0/finetune_scratch_25": {"mAP": 0.45, "history": history(0.1, 0.45)},
        "seed1/finetune_full_25": {"mAP": 0.6, "history": history(0.3, 0.6)},
        "seed1/finetune_scratch_25": {"mAP": 0.5, "history": history(0.2, 0.5)},
        "seed0/finetune_full_100": {"mAP": 0.7, "history": history(0.6, 0.7)},
        "seed0/finetune_scratch_100": {"mAP": 0.6, "history": history(0.5, 0.6)},
        "seed1/finetune_full_100": {"mAP": 0.8, "history": history(0.7, 0.8)},
        "seed1/finetune_scratch_100": {"mAP": 0.7, "history": history(0.6, 0.7)},
    }
    benchmark = {
        name: {str(seed): {"mAP": results[f"seed{seed}/finetune_{name}"]["mAP"]} for seed in (0, 1)}
        for name in ("full_25", "scratch_25", "full_100", "scratch_100")
    }
    benchmark["scratch_25"]["1"]["mAP"] = 0.51  # this run no longer ends where the benchmark's did
    summary = script.curves(results, benchmark, [0, 1])
    curve = summary["fractions"]["25%"]
    assert curve["steps"] == [10, 20]
    assert curve["gain_per_seed"]["0"] == pytest.approx([0.3, 0.05])
    assert curve["gain_per_seed"]["1"] == pytest.approx([0.1, 0.1])
    assert curve["mean_gain"] == pytest.approx([0.2, 0.075])
    assert curve["mean_map"]["scratch_25"] == pytest.approx([0.15, 0.475])
    assert summary["fractions"]["100%"]["mean_gain"] == pytest.approx([0.1, 0.1])
    assert [run for run, same in summary["same_final_as_benchmark"].items() if not same] == ["seed1/scratch_25"]
    assert "final mAP equal to the benchmark's: 7 of 8 runs (differ: seed1/scratch_25)" in script.format_curves(
        summary, [0, 1]
    )


@pytest.mark.slow
def test_a_quick_benchmark_is_traced_and_ends_on_its_own_final_values(tmp_path):
    bench_dir, output_dir = tmp_path / "bench", tmp_path / "curves"
    conditions = ["scratch_100", "scratch_25", "full_100", "full_25"]
    command = [sys.executable, str(BENCHMARKS / "bench_pretraining.py"), "--quick", "--seeds", "1"]
    subprocess.run([*command, "--conditions", *conditions, "--output_dir", str(bench_dir)], check=True)
    script = load_script()
    summary = script.main(
        ["--bench_dir", str(bench_dir), "--seeds", "1", "--points", "2", "--output_dir", str(output_dir)]
    )
    assert all(summary["same_final_as_benchmark"].values()) and len(summary["same_final_as_benchmark"]) == 4
    quick_steps = script.bench.QUICK_STEPS["finetune"]
    for fraction in ("25%", "100%"):
        assert summary["fractions"][fraction]["steps"] == [quick_steps // 2, quick_steps]
    assert json.loads((output_dir / "curves.json").read_text())["points"] == 2
