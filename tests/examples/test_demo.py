"""examples/demo.py: a short, paired run of benchmarks/bench_pretraining.py. The --quick run goes through every
stage and returns the benchmark's summary; the demo clears only folders it wrote."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "demo.py"


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.mark.slow
def test_quick_demo_runs_the_paired_comparison(tmp_path):
    output_dir = tmp_path / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output_dir", str(output_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((output_dir / "benchmark" / "summary.json").read_text())
    assert list(summary["conditions"]) == list(demo.DEMO_CONDITIONS) and summary["quick"] is True
    assert set(summary["probe"]) == {"full"}  # only the variant the conditions start from
    for name in demo.DEMO_CONDITIONS:
        final = json.loads((output_dir / "benchmark" / "seed0" / f"finetune_{name}" / "results.json").read_text())
        assert summary["conditions"][name]["0"]["mAP"] == final["final"]["mAP"]
    assert "Validity gates:" in completed.stdout  # the table is printed to the user
    assert (output_dir / demo.DEMO_MARKER).is_file()


def test_command_runs_the_benchmark_on_the_demo_conditions(tmp_path):
    args = demo.parse_args(["--output_dir", str(tmp_path), "--seeds", "1", "2", "--quick"])
    command = demo.benchmark_command(args, tmp_path)
    assert command[:2] == [sys.executable, str(ROOT / "benchmarks" / "bench_pretraining.py")]
    assert command[command.index("--output_dir") + 1] == str(tmp_path / "benchmark")
    start = command.index("--conditions") + 1
    assert command[start : start + 4] == ["scratch_100", "scratch_25", "full_100", "full_25"]
    assert command[command.index("--seeds") + 1 : command.index("--seeds") + 3] == ["1", "2"]
    assert command[-1] == "--quick"


def test_refuses_an_output_folder_it_did_not_write(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not written by the demo"):
        demo.prepare_output_dir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_rerun_clears_only_its_benchmark_folder(tmp_path):
    demo.prepare_output_dir(tmp_path)
    (tmp_path / "benchmark" / "seed0").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    demo.prepare_output_dir(tmp_path)
    assert not (tmp_path / "benchmark").exists() and (tmp_path / "notes.txt").read_text() == "mine"
