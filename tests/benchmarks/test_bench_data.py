"""benchmarks/bench_data.py: every stage of the pre-training data path runs, for re-ID crops painted in the workers
and in the step, the ceiling and the CPU-only ratios are printed, and the last line is the worker's ratio."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_data.py"


def test_bench_data_prints_the_stages_and_ends_with_the_ratio_line(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["bench_data.py", "--scenes", "2", "--crops", "3", "--repeats", "1"])
    module.main()
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: [float(value) for value in line.split()[1:]] for line in lines[2:5]}
    assert set(rows) == {"crowdhuman", "msmt17", "msmt17/step"}
    for name, (baseline, decode, unify, worker, bound, full, ratio, cpu_only) in rows.items():
        # Each stage adds work to the one before: the rates can only fall (timing noise aside, by far).
        assert decode > worker > full > 0 and unify > worker
        # The bound (decode + the two view resizes; decode alone when the step paints) is a part of the worker's work.
        assert bound > worker and (decode > bound or name == "msmt17/step")
        assert abs(ratio - worker / baseline) < 0.01 and abs(cpu_only - full / baseline) < 0.01
    ceiling = re.fullmatch(r"ceiling of the worker ratio \(.*\): scenes (\d+\.\d\d), crops (\d+\.\d\d)", lines[-4])
    assert ceiling and float(ceiling[1]) > rows["crowdhuman"][-2] and float(ceiling[2]) > rows["msmt17"][-2]
    cpu = re.fullmatch(
        r"on CPU cores alone \(.*\): scenes (\d+\.\d\d), crops (\d+\.\d\d), crops painted in the step (\d+\.\d\d)",
        lines[-3],
    )
    assert cpu and [float(value) for value in cpu.groups()] == [rows[name][-1] for name in rows]
    workers = re.fullmatch(r"crops painted in the workers \(.*\): (\d+\.\d\d)", lines[-2])
    assert workers and float(workers[1]) == rows["msmt17"][-2]
    match = re.fullmatch(r"ratio to the decode floor: scenes (\d+\.\d\d), crops (\d+\.\d\d)", lines[-1])
    assert match and float(match[1]) == rows["crowdhuman"][-2] and float(match[2]) == rows["msmt17/step"][-2]


def test_best_rates_warm_up_once_then_keep_the_fastest_interleaved_pass():
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []
    durations = {"a": [0.2, 0.12, 0.04, 0.08], "b": [0.2, 0.08, 0.16, 0.08]}

    def timed(name):
        def run():
            calls.append(name)
            time.sleep(durations[name][calls.count(name) - 1])
            return 4

        return run

    rates = module.best_rates({"a": timed("a"), "b": timed("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one untimed run each, then round-robin
    # The fastest pass of each (sleep overshoots on a busy machine, never undershoots).
    assert 4 / 0.04 / 2 < rates["a"] <= 4 / 0.04 and 4 / 0.08 / 2 < rates["b"] <= 4 / 0.08
