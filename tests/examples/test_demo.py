"""examples/demo.py: the --quick smoke run goes through all four stages as subprocesses, its table and
summary.json hold the numbers of each fine-tuning's results.json, the pre-trained run really starts from the
pre-training export, and a failing stage or a foreign output folder stops the demo with a message naming it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "demo.py"


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _run_demo(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo") / "out"
    completed = _run_demo("--quick", "--output_dir", str(output_dir))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return output_dir, completed.stdout


@pytest.mark.slow
def test_quick_run_summary_matches_each_finetune_results(quick_run):
    output_dir, stdout = quick_run
    summary = json.loads((output_dir / "summary.json").read_text())
    assert [stage["name"] for stage in summary["stages"]] == [
        "pretrain",
        "data",
        "finetune_pretrained",
        "finetune_scratch",
    ]
    assert summary["quick"] is True and summary["threads"] == 1
    assert all(stage["wall_s"] > 0 for stage in summary["stages"])
    assert summary["total_wall_s"] >= sum(stage["wall_s"] for stage in summary["stages"]) - 1
    rows = {row["init"]: row for row in summary["results"]}
    assert set(rows) == {"pre-trained", "scratch"}
    for init, folder in (("pre-trained", "finetune_pretrained"), ("scratch", "finetune_scratch")):
        final = json.loads((output_dir / folder / "results.json").read_text())["final"]
        for key in ("mAP", "top1", "detection_ap", "detection_recall"):
            assert rows[init][key] == final[key], (init, key)
        assert final["step"] == 2 and rows[init]["num_queries"] == 3  # --quick: 2 steps, 3 test identities
        assert (output_dir / f"{folder}.log").stat().st_size > 0
    # the table printed at the end carries the same numbers
    table = stdout[stdout.rindex("init ") :]
    for row in summary["results"]:
        line = next(line for line in table.splitlines() if line.startswith(row["init"]))
        assert f"{row['mAP']:.2%}" in line and f"{row['top1']:.2%}" in line
        assert f"{row['detection_recall']:.2%}" in line


@pytest.mark.slow
def test_quick_run_finetunes_the_exported_pretrained_model_on_one_shared_dataset(quick_run):
    output_dir, _ = quick_run
    pretrained = yaml.safe_load((output_dir / "finetune_pretrained" / "resolved_config.yaml").read_text())
    scratch = yaml.safe_load((output_dir / "finetune_scratch" / "resolved_config.yaml").read_text())
    exported = output_dir / "pretrain" / "person_search_model"
    assert pretrained["init"] == {"from": "pretrained", "path": str(exported)}
    assert scratch["init"]["from"] == "scratch"
    # the initialisation is the only difference between the two fine-tunings
    for config in (pretrained, scratch):
        config.pop("init")
        config["training"].pop("output_dir")
    assert pretrained == scratch
    assert pretrained["data"]["data_dir"] == str(output_dir / "data" / "prw")
    # BatchNorm counts its forward passes: the pre-training export saw 3 steps x 2 views, the pre-trained
    # fine-tuning continued that count by its 2 steps, the scratch one started from zero
    key = "backbone.body.bn1.num_batches_tracked"
    assert load_file(exported / "model.safetensors")[key].item() == 6
    assert load_file(output_dir / "finetune_pretrained" / "model.safetensors")[key].item() == 6 + 2
    assert load_file(output_dir / "finetune_scratch" / "model.safetensors")[key].item() == 2


def test_format_table_aligns_percentages_and_seconds():
    rows = [
        {
            "init": "pre-trained",
            "mAP": 0.5,
            "top1": 0.25,
            "detection_ap": 0.125,
            "detection_recall": 1.0,
            "wall_s": 61.4,
        },
        {"init": "scratch", "mAP": 0.0, "top1": 0.0, "detection_ap": 0.03125, "detection_recall": 0.5, "wall_s": 9.6},
    ]
    assert demo.format_table(rows).splitlines() == [
        "init            mAP   top-1  det AP  det recall  fine-tune s",
        "-----------  ------  ------  ------  ----------  -----------",
        "pre-trained  50.00%  25.00%  12.50%     100.00%           61",
        "scratch       0.00%   0.00%   3.12%      50.00%           10",
    ]


def test_failing_stage_stops_the_demo_naming_the_stage_and_its_log(tmp_path, capsys):
    command = [sys.executable, "-c", "import os, sys; print('threads', os.environ['OMP_NUM_THREADS']); sys.exit(3)"]
    with pytest.raises(SystemExit, match=r"stage 'pretrain' failed with exit code 3 after \d+ s; see .*pretrain.log"):
        demo.run_stage("pretrain", command, tmp_path / "pretrain.log", threads=1)
    assert (tmp_path / "pretrain.log").read_text() == "threads 1\n"  # the stage's output is kept...
    assert "threads 1" in capsys.readouterr().out  # ...and streamed


def test_stage_output_streams_and_wall_time_is_measured(tmp_path, capsys):
    command = [sys.executable, "-c", "import time; print('step 1', flush=True); time.sleep(0.3); print('step 2')"]
    wall = demo.run_stage("finetune_scratch", command, tmp_path / "finetune_scratch.log", threads=2)
    assert wall >= 0.3
    assert (tmp_path / "finetune_scratch.log").read_text() == "step 1\nstep 2\n"
    out = capsys.readouterr().out
    assert out.index("step 1") < out.index("step 2") < out.index("finetune_scratch: done in")


def test_refuses_an_output_folder_it_did_not_write(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not written by the demo"):
        demo.prepare_output_dir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_rerun_clears_only_its_stage_folders(tmp_path):
    demo.prepare_output_dir(tmp_path)
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "loss_log.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    demo.prepare_output_dir(tmp_path)
    assert not (tmp_path / "pretrain").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_several_finetune_seeds_run_each_init_per_seed_and_print_mean_and_std(tmp_path, monkeypatch, capsys):
    """Stages and aggregation with --finetune_seeds 0 1 (run_stage replaced: it writes a results.json whose
    mAP depends on the init and the seed, read back from the stage's command)."""
    commands = {}

    def fake_run_stage(name, command, log_path, threads):
        commands[name] = command
        overrides = dict(item.split("=", 1) for item in command if "=" in item and not item.startswith("--"))
        if name.startswith("finetune_"):
            seed = int(overrides["training.seed"])
            pretrained = overrides["init.from"] == "pretrained"
            final = {"mAP": 0.2 + 0.1 * seed + (0.1 if pretrained else 0.0), "top1": 0.5, "step": 7}
            final.update(detection_ap=0.25, detection_recall=0.75, num_queries=40)
            folder = Path(overrides["training.output_dir"])
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps({"final": final}))
        return 10.0 + seed if name.startswith("finetune_") else 1.0

    monkeypatch.setattr(demo, "run_stage", fake_run_stage)
    summary = demo.main(["--output_dir", str(tmp_path / "out"), "--finetune_seeds", "0", "1"])
    assert list(commands) == [
        "pretrain",
        "data",
        "finetune_pretrained_seed0",
        "finetune_scratch_seed0",
        "finetune_pretrained_seed1",
        "finetune_scratch_seed1",
    ]
    assert "training.seed=1" in commands["finetune_scratch_seed1"]
    assert summary["finetune_seeds"] == [0, 1] and len(summary["runs"]) == 4
    rows = {row["init"]: row for row in summary["results"]}
    # pre-trained: mAP 0.3 and 0.4 -> mean 0.35, std 0.05; scratch: 0.2 and 0.3 -> 0.25, 0.05
    assert rows["pre-trained"]["mAP"] == pytest.approx(0.35) and rows["pre-trained"]["mAP_std"] == pytest.approx(0.05)
    assert rows["scratch"]["mAP"] == pytest.approx(0.25) and rows["scratch"]["top1_std"] == pytest.approx(0.0)
    assert rows["scratch"]["seeds"] == [0, 1] and rows["scratch"]["wall_s"] == pytest.approx(10.5)
    out = capsys.readouterr().out
    assert "mean +- std over fine-tuning seeds [0, 1]" in out
    assert "35.00% +- 5.0" in next(line for line in out.splitlines() if line.startswith("pre-trained"))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["results"] == summary["results"]


def test_repeated_finetune_seed_is_refused(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--finetune_seeds", "1", "1"])
    assert "repeated seed" in capsys.readouterr().err


def test_rerun_clears_the_seeded_finetune_folders(tmp_path):
    demo.prepare_output_dir(tmp_path)
    (tmp_path / "finetune_scratch_seed3").mkdir()
    demo.prepare_output_dir(tmp_path)
    assert not (tmp_path / "finetune_scratch_seed3").exists()
