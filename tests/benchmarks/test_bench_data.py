"""benchmarks/bench_data.py: every stage of the pre-training data path runs, the ceiling and the CPU-only ratio
are printed, and the last line is the worker's ratio."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_data.py"


def test_bench_data_prints_the_stages_and_ends_with_the_ratio_line(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["bench_data.py", "--scenes", "2", "--crops", "3", "--repeats", "1"])
    module.main()
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: [float(value) for value in line.split()[1:]] for line in lines[2:4]}
    assert set(rows) == {"crowdhuman", "msmt17"}
    for baseline, decode, unify, worker, bound, full, ratio, cpu_only in rows.values():
        # Each stage adds work to the one before: the rates can only fall (timing noise aside, by far).
        assert decode > worker > full > 0 and unify > worker
        # The bound (decode + the two view resizes) is a part of the worker's work.
        assert decode > bound > worker
        assert abs(ratio - worker / baseline) < 0.01 and abs(cpu_only - full / baseline) < 0.01
    ceiling = re.fullmatch(r"ceiling of the worker ratio \(.*\): scenes (\d+\.\d\d), crops (\d+\.\d\d)", lines[-3])
    assert ceiling and float(ceiling[1]) > rows["crowdhuman"][-2] and float(ceiling[2]) > rows["msmt17"][-2]
    cpu = re.fullmatch(r"on CPU cores alone \(.*\): scenes (\d+\.\d\d), crops (\d+\.\d\d)", lines[-2])
    assert cpu and float(cpu[1]) == rows["crowdhuman"][-1] and float(cpu[2]) == rows["msmt17"][-1]
    match = re.fullmatch(r"ratio to the decode floor: scenes (\d+\.\d\d), crops (\d+\.\d\d)", lines[-1])
    assert match and float(match[1]) == rows["crowdhuman"][-2] and float(match[2]) == rows["msmt17"][-2]
