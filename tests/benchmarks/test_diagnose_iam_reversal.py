"""benchmarks/diagnose_iam_reversal.py: the three runs differ only in the adversarial signal, the window means
leave out batches without the task, and the summary holds every loss and probe."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnose_iam_reversal.py"


def load_script():
    spec = importlib.util.spec_from_file_location("diagnose_iam_reversal", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_window_means_leave_out_steps_without_the_task(tmp_path):
    script = load_script()
    rows = [dict.fromkeys(script.LOSSES, 0.0) for _ in range(5)]
    rows[0]["adv_det_img"], rows[1]["adv_det_img"], rows[4]["adv_det_img"] = 0.5, 0.7, 0.9
    (tmp_path / "loss_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    means = script.window_means(tmp_path / "loss_log.jsonl", window=2)
    assert means["adv_det_img"] == [0.6, None, 0.9]  # steps 3-4 had no detection image: no mean, not 0
    assert means["reid_oim"] == [None, None, None]


@pytest.mark.slow
def test_quick_run_differs_only_in_the_adversarial_signal(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    script = load_script()
    summary = script.main(["--quick", "--output_dir", str(tmp_path)])
    # the saved models' own configs (the resolved config lists only the keys a run set)
    configs = {
        name: json.loads((tmp_path / "seed0" / name / "pretrain_model" / "config.json").read_text())
        for name in script.RUNS
    }
    signal = {name: (c["adversarial_loss_weight"], c["gradient_reversal_weight"]) for name, c in configs.items()}
    assert signal == {"lambda_0.1": (0.1, 1.0), "reversal_off": (0.1, 0.0), "lambda_1.0": (1.0, 1.0)}
    for config in configs.values():
        for key in ("adversarial_loss_weight", "gradient_reversal_weight"):
            config.pop(key)
    assert configs["lambda_0.1"] == configs["reversal_off"] == configs["lambda_1.0"]
    assert set(summary["losses"]) == set(script.RUNS)
    assert all(len(values) == summary["steps"] for run in summary["losses"].values() for values in run.values())
    assert set(summary["probe_accuracy"]) == {*script.RUNS, "random_init"}
    for probe in summary["probe_accuracy"].values():
        assert 0.0 <= probe["detection"]["accuracy"] <= 1.0 and 0.0 <= probe["reid"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
