"""examples/run_eval.py: evaluate a saved tiny model on generated data; JSON, picture, bad input."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "pipelines"))
import tiny_search_model  # noqa: E402

spec = importlib.util.spec_from_file_location("run_eval", ROOT / "examples" / "run_eval.py")
run_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_eval)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_search_model.save_tiny_model(tmp_path_factory.mktemp("model"))


def test_prw_evaluation_writes_json_and_a_marked_picture(model_dir, tmp_path, capsys):
    output_dir = tmp_path / "eval"
    args = ["--model", str(model_dir), "--dataset", "prw", "--output_dir", str(output_dir), "--cpu"]
    summary = run_eval.main([*args, "--det_thresh", "0.0", "--num_shown_queries", "2", "--top_k_shown", "3"])
    printed = capsys.readouterr().out
    assert "| prw " in printed and "| detection |" in printed
    saved = json.loads((output_dir / "eval_results.json").read_text())
    assert saved == [json.loads(json.dumps(summary))]
    for key in ("mAP", "top1", "top5", "top10", "detection_ap", "detection_recall"):
        assert 0.0 <= saved[0][key] <= 1.0, key
    per_query = json.loads((output_dir / "per_query.json").read_text())
    assert len(per_query) == saved[0]["num_queries"]
    with Image.open(output_dir / "search_examples.png") as picture:
        assert picture.format == "PNG"
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    shown = [match["correct"] for entry in per_query[:2] for match in entry["ranked"][:3]]
    for colour, expected in ((run_eval.CORRECT_COLOUR, any(shown)), (run_eval.WRONG_COLOUR, not all(shown))):
        assert bool((pixels == colour).all(axis=1).any()) == expected, colour


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_flag_runs_every_forward_under_bf16_autocast_and_only_then(model_dir, tmp_path, monkeypatch, bf16):
    precisions = []
    load_model = run_eval.load_model

    def spying_load_model(*args, **kwargs):
        model, processor = load_model(*args, **kwargs)
        forward = model.forward

        def recording_forward(*forward_args, **forward_kwargs):
            precisions.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return forward(*forward_args, **forward_kwargs)

        monkeypatch.setattr(model, "forward", recording_forward)
        return model, processor

    monkeypatch.setattr(run_eval, "load_model", spying_load_model)
    args = ["--model", str(model_dir), "--dataset", "prw", "--output_dir", str(tmp_path), "--cpu"]
    run_eval.main([*args, "--num_shown_queries", "0", *(["--bf16"] if bf16 else [])])
    assert precisions and set(precisions) == {torch.bfloat16 if bf16 else None}


def test_cuhk_sysu_gallery_size_is_applied(model_dir, tmp_path):
    output_dir = tmp_path / "eval"
    summary = run_eval.main(
        ["--model", str(model_dir), "--dataset", "cuhk_sysu", "--gallery_size", "10", "--output_dir", str(output_dir)]
        + ["--det_thresh", "0.0", "--num_shown_queries", "0", "--cpu"]
    )
    assert summary["settings"]["gallery_size"] == 10 and summary["dataset"] == "CUHK-SYSU"
    assert not (output_dir / "search_examples.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "crowdhuman"], "unknown target dataset 'crowdhuman'"),
        (["--dataset", "prw", "--data_dir", "/nonexistent"], "--data_dir '/nonexistent' is not a folder"),
        (["--dataset", "prw", "--gallery_size", "50"], "only CUHK-SYSU has gallery sizes"),
        (["--dataset", "cuhk_sysu", "--gallery_size", "many"], "positive integer or 'full'"),
    ],
)
def test_bad_input_fails_before_any_compute(model_dir, tmp_path, extra, message):
    with pytest.raises(run_eval.UsageError, match=message):
        run_eval.main(["--model", str(model_dir), "--output_dir", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out" / "data").exists()


def test_missing_model_and_unwritable_output_are_reported(model_dir, tmp_path):
    with pytest.raises(run_eval.UsageError, match="neither a saved model folder"):
        run_eval.main(["--model", str(tmp_path / "nothing"), "--dataset", "prw", "--output_dir", str(tmp_path)])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(run_eval.UsageError, match="is not writable"):
        run_eval.main(["--model", str(model_dir), "--dataset", "prw", "--output_dir", str(blocker / "out")])


def test_a_dataset_folder_of_another_format_is_one_line_with_status_2(model_dir, tmp_path, capsys):
    # The scripts' __main__ runs main through exit_status: a data error names the file, without a traceback.
    (tmp_path / "prw_folder").mkdir()
    args = ["--model", str(model_dir), "--dataset", "cuhk_sysu", "--data_dir", str(tmp_path / "prw_folder"), "--cpu"]
    status = run_eval.exit_status(lambda: run_eval.main([*args, "--output_dir", str(tmp_path / "eval")]), "run_eval")
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("run_eval: data error: cuhk_sysu: expected file") and "Images.mat" in error
