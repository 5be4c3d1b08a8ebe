"""benchmarks/bench_dataloader.py: the whole pre-training DataLoader, the step's augmentation and a model step run, on
Arrow datasets and, without the ``datasets`` package (a bare GPU image), on the parsers' record lists, with the re-ID
canvases painted in the workers and in the step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_dataloader.py"
TINY_MODEL = "model:\n  person_search: {backbone: test_resnet}\ntraining: {mixed_precision: bf16}\n"

WITHOUT_DATASETS = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "datasets":
            raise ImportError("no datasets here")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("with_datasets", [True, False])
def test_every_row_is_printed(tmp_path, with_datasets):
    config = tmp_path / "model.yaml"
    canvas_in_step = not with_datasets  # each case covers one of the two places the canvases are painted
    config.write_text(TINY_MODEL + f"data: {{canvas_in_step: {str(canvas_in_step).lower()}}}\n")
    arguments = [str(SCRIPT), "--batches", "3", "--workers", "0", "1", "--model_steps", "1", "--config", str(config)]
    arguments += ["--device", "cpu", "--model_batch_size", "1"]
    command = [sys.executable, *arguments] if with_datasets else [sys.executable, "-c", WITHOUT_DATASETS, *arguments]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    kind = "Arrow datasets" if with_datasets else "parsed record lists"
    assert lines[0].startswith(f"sources ({kind}"), lines[0]
    assert "crowdhuman 24" in lines[0] and "luperson 40" in lines[0]
    assert "'color_jitter_p': 0.0" in result.stdout  # the pre-training default augmentation
    assert f"re-ID canvases painted in the step: {canvas_in_step}" in result.stdout
    rows = [line for line in lines if line[:1].isdigit() or line.startswith(("augmentation step", "model train step"))]
    rates = {label.strip(): float(rate) for label, rate in (line.rsplit(maxsplit=1) for line in rows)}
    assert set(rates) == {
        "0 worker(s) (main process)",
        "1 worker(s), persistent",
        "augmentation step on the CPU",
        "model train step (test_resnet, CPU)",
    }
    assert all(rate > 0 for rate in rates.values())
