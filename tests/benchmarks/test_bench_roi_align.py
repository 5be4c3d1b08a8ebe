"""benchmarks/bench_roi_align.py: both implementations run on the benchmark case and agree to float rounding."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_roi_align.py"


def test_bench_roi_align_quick(capsys):
    spec = importlib.util.spec_from_file_location("bench_roi_align", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick", "--repeats", "1"])
    assert [row["case"] for row in rows] == ["benchmark"]
    assert rows[0]["max_value_difference"] < 1e-4 and rows[0]["max_gradient_difference"] < 1e-3
    assert rows[0]["forward_ratio"] > 0 and rows[0]["backward_ratio"] > 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("benchmark: time ours / torchvision: forward ")
