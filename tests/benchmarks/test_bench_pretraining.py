"""benchmarks/bench_pretraining.py: the summary's numbers against hand computation (paired differences, gates,
targets), the comparison withheld when a gate fails, the domain probe on separable and identical features, the
half-budget evaluation, and the --quick smoke run through every stage (slow)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_pretraining.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_pretraining", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through the module's entry
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def fake_results(seeds, map_of, det_ap=0.6, zero_shot_det_ap=0.5, half_map=None) -> dict:
    """Job results as the workers return them; ``map_of(condition, seed)`` gives each final mAP."""
    results = {}
    for seed in seeds:
        for name in bench.CONDITIONS:
            value = map_of(name, seed)
            history = [{"step": 160, "mAP": value, "detection_ap": det_ap}]
            if name == "scratch_100":
                history.insert(0, {"step": 80, "mAP": value if half_map is None else half_map, "detection_ap": det_ap})
            results[f"seed{seed}/finetune_{name}"] = {
                "mAP": value,
                "top1": value,
                "det_ap": det_ap,
                "reid_map": value,
                "history": history,
            }
        probe = {
            "detection": {"accuracy": 0.5, "chance": 0.5, "num_test": 4},
            "reid": {"accuracy": 0.4, "chance": 1 / 3, "num_test": 6},
        }
        results[f"seed{seed}/probe"] = {
            variant: {
                "zero_shot": {"mAP": 0.1, "det_ap": zero_shot_det_ap, "reid_map": 0.2},
                "probe": probe,
                "tsne": {},
            }
            for variant in bench.VARIANTS
        }
    return results


def args_for(seeds, conditions=None) -> argparse.Namespace:
    return argparse.Namespace(
        seeds=seeds,
        quick=False,
        conditions=conditions or list(bench.CONDITIONS),
        pretrain_overrides=[],
        mixed_precision="no",
    )


BASE = {
    "scratch_100": 0.30,
    "scratch_25": 0.20,
    "full_100": 0.37,
    "full_25": 0.31,
    "backbone_25": 0.25,
    "alignps_scratch_25": 0.10,
    "alignps_backbone_25": 0.16,
}


def test_paired_differences_gates_and_targets_match_hand_computation():
    # seed 1 is 0.1 better everywhere: paired differences do not see it
    summary = bench.summarise(
        args_for([0, 1]), fake_results([0, 1], lambda name, seed: BASE.get(name, 0.22) + 0.1 * seed)
    )
    assert summary["conditions"]["full_25"]["1"]["mAP"] == pytest.approx(0.41)
    for seed in ("0", "1"):
        assert summary["differences"]["full_100 - scratch_100"][seed] == pytest.approx(0.07)
        assert summary["differences"]["full_25 - scratch_25"][seed] == pytest.approx(0.11)
        assert summary["differences"]["backbone_25 - scratch_25"][seed] == pytest.approx(0.05)
        assert summary["differences"]["no_iam_25 - scratch_25"][seed] == pytest.approx(0.02)
        assert summary["differences"]["alignps_backbone_25 - alignps_scratch_25"][seed] == pytest.approx(0.06)
    assert summary["gates_passed"] and all(gate["passed"] for gate in summary["gates"].values())
    assert summary["gates"]["scratch_100_map_half_vs_full"]["value"] == 0.0
    assert all(summary["targets"].values())
    table = bench.format_table(summary)
    assert "full_100 - scratch_100" in table and "+7.0 +- 0.0" in table
    assert "30.0 +- 0.0" not in table.split("Synthetic PRW")[1].splitlines()[3]  # scratch_100: 30 and 40 -> 35 +- 7.1
    assert "35.0 +- 7.1" in table
    assert "zero-shot det AP 50.0, re-ID mAP (gt) 20.0" in table


def test_pretrain_overrides_reach_every_pre_training_run_and_no_fine_tuning(tmp_path):
    overrides = ["data.color_jitter_p=0", "data.grayscale_p=0"]
    args = bench.parse_args(
        ["--output_dir", str(tmp_path), "--conditions", "full_25", "no_con_25", "--pretrain_overrides", *overrides]
    )
    jobs = bench.build_plan(args, tmp_path)
    pretraining = [job for job in jobs if "/pretrain_" in job.name]
    assert {job.name for job in pretraining} == {
        "seed0/pretrain_stage1",
        "seed0/pretrain_full",
        "seed0/pretrain_no_con",
    }
    for job in pretraining:
        argv = job.arguments[0]
        assert argv[argv.index(overrides[0]) : argv.index(overrides[0]) + 2] == overrides
        # a variant's own switch comes after the common overrides, so the variant wins where both set a key
        if job.name.endswith("no_con"):
            assert argv.index("model.contrastive_loss_weight=0") > argv.index(overrides[1])
    for job in jobs:
        if "/finetune_" in job.name:
            assert not set(overrides) & set(job.arguments[0])
    summary = bench.summarise(args, fake_results([0], lambda name, seed: BASE.get(name, 0.22)))
    assert summary["pretrain_overrides"] == overrides


def test_mixed_precision_reaches_every_training_run_and_float32_adds_nothing(tmp_path):
    default = bench.parse_args(["--output_dir", str(tmp_path), "--conditions", "full_25", "--mixed_precision", "no"])
    bf16 = bench.parse_args(["--output_dir", str(tmp_path), "--conditions", "full_25", "--mixed_precision", "bf16"])
    training_jobs = 0
    for plain, job in zip(bench.build_plan(default, tmp_path), bench.build_plan(bf16, tmp_path)):
        assert plain.name == job.name
        if "/pretrain_" in job.name or "/finetune_" in job.name:
            training_jobs += 1
            assert job.arguments[0].count("training.mixed_precision=bf16") == 1
            assert [
                argument for argument in job.arguments[0] if argument != "training.mixed_precision=bf16"
            ] == plain.arguments[0]
            assert not any(argument.startswith("training.mixed_precision") for argument in plain.arguments[0])
    assert training_jobs == 4  # stage 1, the full continuation, scratch_100 (always run), full_25
    results = fake_results([0], lambda name, seed: BASE.get(name, 0.22))
    assert bench.summarise(bf16, results)["mixed_precision"] == "bf16"
    assert bench.summarise(default, results)["mixed_precision"] == "no"
    with pytest.raises(SystemExit):
        bench.parse_args(["--output_dir", str(tmp_path), "--mixed_precision", "fp16"])
    with pytest.raises(ValueError, match="resolved"):
        bench.precision_overrides("auto")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_bf16_instructions(tmp_path, monkeypatch, native):
    monkeypatch.setattr(bench, "native_bf16", lambda: native)
    expected = "bf16" if native else "no"
    for argv in ([], ["--mixed_precision", "auto"]):
        args = bench.parse_args(["--output_dir", str(tmp_path), "--conditions", "full_25", *argv])
        assert args.mixed_precision == expected
        finetune = next(job for job in bench.build_plan(args, tmp_path) if job.name.endswith("finetune_full_25"))
        assert ("training.mixed_precision=bf16" in finetune.arguments[0]) is native
    # an explicit choice is kept whatever the CPU
    assert bench.parse_args(["--output_dir", str(tmp_path), "--mixed_precision", "no"]).mixed_precision == "no"
    assert bench.parse_args(["--output_dir", str(tmp_path), "--mixed_precision", "bf16"]).mixed_precision == "bf16"


def test_native_bf16_follows_torch_and_is_false_where_torch_cannot_tell(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert bench.native_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert bench.native_bf16() is False


def test_targets_fail_when_one_seed_gains_less_than_five_points():
    def map_of(name, seed):
        return BASE.get(name, 0.22) - (0.03 if name == "full_100" and seed == 1 else 0.0)

    summary = bench.summarise(args_for([0, 1]), fake_results([0, 1], map_of))
    assert summary["differences"]["full_100 - scratch_100"]["1"] == pytest.approx(0.04)
    assert not summary["targets"]["full_100 - scratch_100 >= 0.05 mAP on every seed"]


@pytest.mark.parametrize(
    "overrides, failed",
    [
        ({"zero_shot_det_ap": 0.39}, "zero_shot_det_ap"),
        ({"det_ap": 0.49}, "scratch_100_det_ap"),
        ({"half_map": 0.30 * 0.79}, "scratch_100_map_half_vs_full"),  # 21% below the final 0.30
    ],
)
def test_a_failed_gate_is_stored_and_withholds_the_comparison(overrides, failed):
    summary = bench.summarise(args_for([0]), fake_results([0], lambda name, seed: BASE.get(name, 0.22), **overrides))
    assert not summary["gates_passed"]
    assert [name for name, gate in summary["gates"].items() if not gate["passed"]] == [failed]
    table = bench.format_table(summary)
    assert "FAILED" in table and "comparison below is not reported" in table
    assert "Paired mAP differences" not in table


def test_stability_gate_fails_without_a_final_map():
    summary = bench.summarise(args_for([0]), fake_results([0], lambda name, seed: 0.0))
    gate = summary["gates"]["scratch_100_map_half_vs_full"]
    assert gate["value"] is None and not gate["passed"]
    json.dumps(summary, allow_nan=False)  # strict JSON: no inf/nan anywhere
    assert "n/a" in bench.format_table(summary)


def test_domain_probe_separates_distinct_domains_and_not_identical_ones():
    rng = np.random.default_rng(0)
    names = (*bench.DETECTION_SOURCES, *bench.REID_SOURCES)
    separated = {name: rng.normal(3.0 * index, 0.1, (40, 8)) for index, name in enumerate(names)}
    probe = bench.domain_probe(separated, seed=0)
    assert probe["detection"]["accuracy"] == 1.0 and probe["reid"]["accuracy"] == 1.0
    assert probe["reid"]["chance"] == pytest.approx(1 / 3) and probe["reid"]["num_test"] == 60
    same = {name: rng.normal(0.0, 1.0, (200, 8)) for name in names}
    probe = bench.domain_probe(same, seed=0)
    assert probe["detection"]["accuracy"] < 0.65 and probe["reid"]["accuracy"] < 0.5


def test_a_subset_of_conditions_pretrains_only_what_it_needs(tmp_path):
    args = bench.parse_args(
        ["--output_dir", str(tmp_path), "--seeds", "0", "1", "--conditions", "scratch_25", "no_iam_25"]
    )
    assert args.conditions == ["scratch_100", "scratch_25", "no_iam_25"]  # the gates need scratch_100
    jobs = bench.build_plan(args, tmp_path)
    names = {job.name for job in jobs if job.name.startswith("seed1/")}
    assert names == {
        "seed1/data",
        "seed1/pretrain_stage1",
        "seed1/pretrain_full",  # the zero-shot gate's model
        "seed1/pretrain_no_iam",
        "seed1/probe",
        "seed1/finetune_scratch_100",
        "seed1/finetune_scratch_25",
        "seed1/finetune_no_iam_25",
    }
    order = [job.name for job in jobs]  # every seed's pre-training starts before any fine-tuning
    assert order[:4] == ["seed0/data", "seed1/data", "seed0/pretrain_stage1", "seed1/pretrain_stage1"]
    assert max(order.index(name) for name in order if "pretrain" in name) < order.index("seed0/finetune_no_iam_25")
    finetune = next(job for job in jobs if job.name == "seed1/finetune_no_iam_25")
    assert finetune.needs == ["seed1/data", "seed1/pretrain_no_iam"]
    assert f"init.path={tmp_path / 'seed1' / 'pretrain_no_iam' / 'person_search_model'}" in finetune.arguments[0]
    summary = bench.summarise(args, fake_results([0, 1], lambda name, seed: BASE.get(name, 0.22)))
    assert set(summary["conditions"]) == set(args.conditions)
    assert list(summary["differences"]) == ["no_iam_25 - scratch_25"] and summary["targets"] == {}
    assert set(summary["probe"]) == {"full", "no_iam"}


def test_align_ps_conditions_fine_tune_the_second_family_from_scratch_and_from_the_pre_trained_backbone(tmp_path):
    args = bench.parse_args(
        ["--output_dir", str(tmp_path), "--seeds", "0", "--conditions", "alignps_scratch_25", "alignps_backbone_25"]
    )
    jobs = {job.name: job for job in bench.build_plan(args, tmp_path)}
    config = str(bench.ALIGN_PS_FINETUNE_CONFIG)
    scratch, backbone = jobs["seed0/finetune_alignps_scratch_25"], jobs["seed0/finetune_alignps_backbone_25"]
    for job in (scratch, backbone):
        argv = job.arguments[0]
        assert argv[:2] == ["--config", config] and job.arguments[-1] == config  # AlignPS recipe and processor
        assert (
            "data.train_fraction=0.25" in argv
            and f"training.max_steps={bench.finetune_max_steps(bench.FINETUNE_CONFIG)}" in argv
        )  # NAE's budget
    assert "init.from=scratch" in scratch.arguments[0] and scratch.needs == ["seed0/data"]
    assert "init.from=pretrained_backbone" in backbone.arguments[0]
    assert f"init.path={tmp_path / 'seed0' / 'pretrain_full' / 'person_search_model'}" in backbone.arguments[0]
    assert backbone.needs == ["seed0/data", "seed0/pretrain_full"]
    assert jobs["seed0/finetune_scratch_100"].arguments[0][1] == str(bench.FINETUNE_CONFIG)
    nae, align_ps = (yaml.safe_load(Path(path).read_text()) for path in (bench.FINETUNE_CONFIG, config))
    assert align_ps["model"]["type"] == "align_ps" and align_ps["model"]["backbone"] == nae["model"]["backbone"]
    for section in ("data", "optimizer", "schedule", "training"):  # the same recipe; only the model differs
        assert {k: v for k, v in align_ps[section].items() if k != "output_dir"} == {
            k: v for k, v in nae[section].items() if k != "output_dir"
        }, section


def test_half_budget_is_a_whole_number_of_epochs():
    config = ROOT / "examples" / "configs" / "bench_finetune_cpu.yaml"
    batch = yaml.safe_load(config.read_text())["training"]["batch_size"]
    assert batch == 3
    assert bench.half_budget_epochs(60, 160, config) == 4  # 20 steps per epoch, half of 160 = 80 = 4 epochs
    with pytest.raises(SystemExit, match="whole number of epochs"):
        bench.half_budget_epochs(60, 150, config)


@pytest.mark.slow
def test_quick_run_goes_through_every_stage(tmp_path):
    output_dir = tmp_path / "bench"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seeds", "3", "--output_dir", str(output_dir)]
        + ["--conditions", *bench.CONDITIONS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,  # 262 s measured with the two AlignPS conditions on the shared 2-core machine (load 8)
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert set(summary["conditions"]) == set(bench.CONDITIONS)
    assert summary["worker_allocator_environment"] == bench.ALLOCATOR_ENVIRONMENT  # as a worker saw it
    seed_dir = output_dir / "seed3"
    for name, condition in bench.CONDITIONS.items():
        metrics = summary["conditions"][name]["3"]
        assert set(metrics) == {"mAP", "top1", "det_ap", "reid_map"}
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
        final = json.loads((seed_dir / f"finetune_{name}" / "results.json").read_text())["final"]
        assert (metrics["mAP"], metrics["det_ap"]) == (final["mAP"], final["detection_ap"])
        resolved = yaml.safe_load((seed_dir / f"finetune_{name}" / "resolved_config.yaml").read_text())
        # paired: the same data, seed, recipe and budget; only the init and the fraction differ
        assert resolved["training"]["seed"] == 3 and resolved["data"]["fraction_seed"] == 3
        assert resolved["data"]["data_dir"] == str(seed_dir / "data" / "prw")
        assert resolved["training"]["max_steps"] == bench.QUICK_STEPS["finetune"] and final["step"] == 4
        assert resolved["data"]["train_fraction"] == condition.fraction
        assert resolved["init"]["from"] == condition.init
        assert resolved["model"].get("type", "person_search") == condition.model
        if condition.variant:
            assert resolved["init"]["path"] == str(seed_dir / f"pretrain_{condition.variant}" / "person_search_model")
    assert set(summary["gates"]) == set(bench.GATES)
    assert all(isinstance(gate["passed"], bool) for gate in summary["gates"].values())
    assert not summary["gates_passed"]  # 4 steps learn nothing: the gates say so
    for variant in bench.VARIANTS:
        resolved = yaml.safe_load((seed_dir / f"pretrain_{variant}" / "resolved_config.yaml").read_text())
        assert resolved["model_init"]["pretrained_model"] == str(seed_dir / "pretrain_stage1" / "pretrain_model")
        assert resolved["training"]["seed"] == 3 and resolved["schedule"]["name"] == "cosine"
        assert [s["data_dir"] for s in resolved["data"]["sources"]] == [
            str(seed_dir / "data" / n) for n in bench.SOURCES
        ]
        assert 0.0 <= summary["probe"][variant]["3"]["detection"]["accuracy"] <= 1.0
    no_iam = yaml.safe_load((seed_dir / "pretrain_no_iam" / "resolved_config.yaml").read_text())
    assert no_iam["model"]["use_detection_iam"] is False and no_iam["model"]["use_reid_iam"] is False
    paste = yaml.safe_load((seed_dir / "pretrain_random_paste" / "resolved_config.yaml").read_text())
    assert paste["data"]["reid_operation"] == "random_paste"
    for picture in ("pretraining_gain.png", "domain_tsne.png"):
        assert (output_dir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Validity gates:" in completed.stdout and "not reported" in completed.stdout
    assert (output_dir / "table.txt").read_text().strip() in completed.stdout
    # the weight-norm diagnostic reads the finished run: every part, the normalised ones marked
    diagnose = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "diagnose_weight_norms.py"), "--bench_dir", str(output_dir)]
        + ["--seeds", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert diagnose.returncode == 0, diagnose.stderr[-3000:]
    rows = [line.split() for line in diagnose.stdout.splitlines() if line.startswith(("*", "  backbone", "  rpn"))]
    marked = {row[1] for row in rows if row[0] == "*"}
    assert "search_head.embedding_head.projections" in marked and "rpn.head.conv" not in marked


def test_default_conditions_are_the_nae_ones_and_align_ps_is_opt_in(tmp_path):
    default = bench.parse_args(["--output_dir", str(tmp_path)]).conditions
    assert default == [name for name in bench.CONDITIONS if not name.startswith("alignps_") and name != "backbone_100"]
    assert "scratch_100" in default and "full_100" in default
    chosen = bench.parse_args(["--output_dir", str(tmp_path), "--conditions", "alignps_scratch_25"]).conditions
    assert chosen == ["scratch_100", "alignps_scratch_25"]  # scratch_100 always: the gates need it


def test_backbone_100_starts_from_the_pre_trained_backbone_on_every_frame_and_pairs_with_scratch_100(tmp_path):
    args = bench.parse_args(["--output_dir", str(tmp_path), "--conditions", "backbone_100"])
    assert args.conditions == ["scratch_100", "backbone_100"]
    (job,) = [job for job in bench.build_plan(args, tmp_path) if job.name == "seed0/finetune_backbone_100"]
    argv = job.arguments[0]
    assert "init.from=pretrained_backbone" in argv and "data.train_fraction=1.0" in argv
    assert f"init.path={tmp_path / 'seed0' / 'pretrain_full' / 'person_search_model'}" in argv
    summary = bench.summarise(args, fake_results([0], lambda name, seed: BASE.get(name, 0.22)))
    assert summary["differences"]["backbone_100 - scratch_100"]["0"] == pytest.approx(0.22 - 0.30)
