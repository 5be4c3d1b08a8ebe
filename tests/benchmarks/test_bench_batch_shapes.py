"""benchmarks/bench_batch_shapes.py: two interleaved streams of new batches, unpadded and padded to a divisor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_batch_shapes.py"


def run(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, str(SCRIPT), *arguments]
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)


def test_a_divisor_of_one_is_refused(tmp_path):
    result = run(tmp_path, "--size_divisor", "1", "--device", "cpu")
    assert result.returncode == 2 and "--size_divisor must be at least 2" in result.stderr


@pytest.mark.slow
def test_both_streams_are_timed(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text("model:\n  person_search: {backbone: test_resnet}\n")
    result = run(tmp_path, "--steps", "2", "--workers", "0", "--size_divisor", "64", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"padded to multiples of +(\d+): +(\d+) distinct view shapes", result.stdout)
    assert [int(divisor) for divisor, _ in rows] == [1, 64] and all(1 <= int(count) <= 4 for _, count in rows)
    assert re.search(r"step time padded / unpadded: \d+\.\d\d", result.stdout)
