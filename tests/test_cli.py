"""hf-personsearch: subcommand registry, card, export-backbone, index + search (table, picture, JSON), real-folder
robustness (broken files, other working folders, pre-training checkpoints, bad --model), errors."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from PIL import Image

import hf_personsearch_cli as cli
from hf_personsearch import PersonSearchPretrainConfig, PersonSearchPretrainModel
from hf_personsearch.pipelines import GalleryIndex
from hf_personsearch.pipelines.visualization import CAPTION_HEIGHT, GAP

sys.path.insert(0, str(Path(__file__).parent / "pipelines"))
from tiny_search_model import save_tiny_model, tiny_config, write_gallery  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_model(root / "model")
    boxes = write_gallery(root / "gallery", count=3)
    return root, model, boxes


def test_registry_adds_subcommands_and_refuses_duplicates(capsys):
    def arguments(parser):
        parser.add_argument("--times", type=int, default=1)

    @cli.register_subcommand("echo-test", "print hello", arguments)
    def echo(args):
        print("hello " * args.times)
        return 3

    try:
        assert cli.main(["echo-test", "--times", "2"]) == 3
        assert capsys.readouterr().out.strip() == "hello hello"
        with pytest.raises(ValueError, match="'echo-test' is already registered"):
            cli.register_subcommand("echo-test", "again", arguments)(echo)
    finally:
        del cli.SUBCOMMANDS["echo-test"]
    assert {"card", "export-backbone", "index", "search"} <= set(cli.SUBCOMMANDS)


def test_card_subcommand(workspace, capsys):
    _, model, _ = workspace
    (model / "eval_results.json").write_text(json.dumps([{"dataset": "PRW", "mAP": 0.5, "top1": 0.75}]))
    assert cli.main(["card", str(model), "--repo-id", "org/tiny", "--kind", "finetuned"]) == 0
    text = (model / "README.md").read_text()
    assert "value: 50.0" in text and "value: 75.0" in text and 'from_pretrained("org/tiny"' in text
    # an existing card is not replaced without --force (it may hold text written by hand)
    (model / "README.md").write_text("hand-written notes")
    assert cli.main(["card", str(model), "--repo-id", "org/tiny"]) == 2
    assert "README.md exists: pass --force" in capsys.readouterr().err
    assert (model / "README.md").read_text() == "hand-written notes"
    assert cli.main(["card", str(model), "--repo-id", "org/tiny", "--force"]) == 0
    assert "value: 50.0" in (model / "README.md").read_text()
    (model / "README.md").unlink()


def test_export_backbone_subcommand(workspace, tmp_path, capsys):
    _, model, _ = workspace
    out = tmp_path / "tiny.safetensors"
    assert cli.main(["export-backbone", str(model), "--format", "timm", "--out", str(out)]) == 0
    from safetensors.torch import load_file

    timm.create_model("test_resnet", num_classes=0).load_state_dict(load_file(str(out)), strict=True)
    # test_resnet has no torchvision twin: a clear error, exit status 2
    assert cli.main(["export-backbone", str(model), "--format", "torchvision", "--out", str(tmp_path / "x.pth")]) == 2
    assert "not a torchvision classification model" in capsys.readouterr().err


def test_index_then_search_prints_table_writes_picture_and_json(workspace, tmp_path, capsys):
    root, model, boxes = workspace
    common = ["--model", str(model), "--threshold", "0", "--device", "cpu"]
    assert cli.main(["index", *common, "--gallery", str(root / "gallery"), "--out", str(tmp_path / "index")]) == 0
    assert "in 3 images" in capsys.readouterr().out
    query = sorted((root / "gallery").glob("*.png"))[2]
    box = ",".join(str(v) for v in boxes[2][0].tolist())
    picture, matches_json = tmp_path / "result.png", tmp_path / "result.json"
    arguments = [
        "--query",
        str(query),
        "--box",
        box,
        "--top-k",
        "3",
        "--out",
        str(picture),
        "--json",
        str(matches_json),
    ]
    assert cli.main(["search", *common, "--index", str(tmp_path / "index"), *arguments]) == 0
    lines = capsys.readouterr().out.splitlines()
    matches = json.loads(matches_json.read_text())
    assert [m["rank"] for m in matches] == [1, 2, 3]
    assert lines[0].split()[:3] == ["rank", "similarity", "det"]
    for line, match in zip(lines[1:4], matches):
        assert line.split()[0] == str(match["rank"]) and float(line.split()[1]) == pytest.approx(
            match["similarity"], abs=1e-4
        )
        assert Path(match["image"]).is_absolute() and match["image"].endswith(line.split()[-1])
    # the picture: one row of 4 tiles (query + 3 matches) of 320x240 with two caption lines
    assert Image.open(picture).size == (4 * (320 + GAP) - GAP, 240 + CAPTION_HEIGHT)
    # searching the folder directly gives the same ranking as the saved index
    assert cli.main(["search", *common, "--gallery", str(root / "gallery"), *arguments[:-2]]) == 0
    direct = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:4]]
    assert [str(Path(name).absolute()) for name in direct] == [m["image"] for m in matches]


def test_index_searched_from_another_folder_and_moved_gallery(workspace, tmp_path, monkeypatch, capsys):
    root, model, boxes = workspace
    (tmp_path / "gallery").mkdir()
    for path in sorted((root / "gallery").glob("*.png")):
        shutil.copy(path, tmp_path / "gallery" / path.name)
    common = ["--model", str(model), "--threshold", "0", "--device", "cpu"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["index", *common, "--gallery", "gallery", "--out", "index"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    query = ["--query", str(root / "gallery" / "scene_000.png"), "--box", ",".join(map(str, boxes[0][0].tolist()))]
    search = ["search", *common, "--index", str(tmp_path / "index"), *query, "--top-k", "2", "--out", "r.png"]
    assert cli.main(search) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "gallery") in out and (elsewhere / "r.png").is_file()
    (tmp_path / "gallery").rename(tmp_path / "moved")
    assert cli.main(search[:-2]) == 2  # even without a picture to draw
    captured = capsys.readouterr()
    assert "the gallery was moved or deleted after indexing" in captured.err and "rank" not in captured.out


def test_index_update_embeds_only_what_changed(workspace, tmp_path, capsys):
    root, model, _ = workspace
    shutil.copytree(root / "gallery", tmp_path / "photos")
    index = ["index", "--model", str(model), "--threshold", "0", "--device", "cpu", "--out", str(tmp_path / "i")]
    index += ["--gallery", str(tmp_path / "photos")]
    assert cli.main([*index, "--update"]) == 0  # no index yet: a full build
    captured = capsys.readouterr()
    assert "no gallery index in" in captured.err and "in 3 images" in captured.out
    (tmp_path / "photos" / "scene_000.png").unlink()
    shutil.copy(root / "gallery" / "scene_001.png", tmp_path / "photos" / "added.png")
    assert cli.main([*index, "--update"]) == 0
    assert "in 3 images -> " in (out := capsys.readouterr().out)
    assert "(2 taken from the index, 1 embedded, 1 gone from the gallery)" in out
    assert [Path(p).name for p in GalleryIndex.load(tmp_path / "i").images] == [
        "added.png",
        *["scene_001.png", "scene_002.png"],
    ]
    assert cli.main([*index, "--update", "--threshold", "0.5"]) == 2  # another threshold: refused, index kept
    assert "made at detection threshold 0.0, not 0.5" in capsys.readouterr().err
    metadata_file = tmp_path / "i" / "gallery_index.json"
    metadata = json.loads(metadata_file.read_text())
    metadata_file.write_text(json.dumps({key: value for key, value in metadata.items() if key != "image_files"}))
    assert cli.main([*index, "--update"]) == 0  # an index saved before file records: everything embedded again
    captured = capsys.readouterr()
    assert "predates updates" in captured.err and "(0 taken from the index, 3 embedded, 0 gone" in captured.out


def test_broken_files_are_skipped_and_reported(workspace, tmp_path, capsys):
    root, model, boxes = workspace
    shutil.copytree(root / "gallery", tmp_path / "photos")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "photos" / "readme.txt").write_text("not an image")
    common = ["--model", str(model), "--threshold", "0", "--device", "cpu"]
    query = ["--query", str(root / "gallery" / "scene_000.png"), "--box", ",".join(map(str, boxes[0][0].tolist()))]
    assert cli.main(["search", *common, "--gallery", str(tmp_path / "photos"), *query]) == 0
    captured = capsys.readouterr()
    assert "1 gallery file(s) could not be read and were skipped" in captured.err and "broken.jpg" in captured.err
    assert "broken.jpg" not in captured.out and "scene_002.png" in captured.out
    (tmp_path / "only_broken").mkdir()
    (tmp_path / "only_broken" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert cli.main(["search", *common, "--gallery", str(tmp_path / "only_broken"), *query]) == 2
    assert "none of the 1 gallery images could be read" in capsys.readouterr().err


def test_no_detection_above_threshold_says_why(workspace, tmp_path, capsys):
    root, model, boxes = workspace
    query = ["--query", str(root / "gallery" / "scene_000.png"), "--box", ",".join(map(str, boxes[0][0].tolist()))]
    arguments = ["search", "--model", str(model), "--device", "cpu", *query]
    assert cli.main([*arguments, "--gallery", str(root / "gallery"), "--threshold", "1.01"]) == 0
    out = capsys.readouterr().out
    assert "no match: no gallery person in the 3 gallery images has a detection score >= 1.01;" in out
    assert "lower --threshold" in out and "rank" not in out
    # an index kept weaker detections: the highest of them says how far off the threshold is
    index_arguments = ["--model", str(model), "--device", "cpu", "--threshold", "0", "--out", str(tmp_path / "i")]
    assert cli.main(["index", *index_arguments, "--gallery", str(root / "gallery")]) == 0
    capsys.readouterr()
    assert cli.main([*arguments, "--index", str(tmp_path / "i"), "--threshold", "1.0"]) == 0
    highest = float(GalleryIndex.load(tmp_path / "i").scores.max())
    assert f"has a detection score >= 1.0 (the highest is {highest:.3f})" in capsys.readouterr().out


def test_pretraining_checkpoint_searches_with_its_person_search_part(tmp_path, workspace, capsys):
    root, _, boxes = workspace
    folder = tmp_path / "pretrain_model"
    PersonSearchPretrainModel(PersonSearchPretrainConfig(person_search=tiny_config())).save_pretrained(folder)
    (folder / "training_info.json").write_text(json.dumps({"kind": "pretrained", "synthetic_data": True}))
    query = ["--query", str(root / "gallery" / "scene_000.png"), "--box", ",".join(map(str, boxes[0][0].tolist()))]
    arguments = ["--model", str(folder), "--device", "cpu", "--threshold", "0", "--min-size", "128"]
    assert cli.main(["search", *arguments, "--max-size", "256", "--gallery", str(root / "gallery"), *query]) == 0
    captured = capsys.readouterr()
    assert "is a pre-training checkpoint: searching with its person search part" in captured.err
    assert "has no saved image processor" in captured.err
    assert "trained on synthetic images only" in captured.err
    assert captured.out.splitlines()[0].split()[:2] == ["rank", "similarity"]


def test_bad_model_gives_one_line(tmp_path, workspace, capsys):
    root, _, boxes = workspace
    query = [
        "--query",
        str(root / "gallery" / "scene_000.png"),
        "--box",
        "1,1,5,5",
        "--gallery",
        str(root / "gallery"),
    ]
    assert cli.main(["search", "--model", str(tmp_path / "missing"), *query]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --model {tmp_path / 'missing'}: no such folder"
    (tmp_path / "not_a_model").mkdir()
    assert cli.main(["search", "--model", str(tmp_path / "not_a_model"), *query]) == 2
    assert "not a saved model folder" in capsys.readouterr().err
    (tmp_path / "other_model").mkdir()
    (tmp_path / "other_model" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert cli.main(["search", "--model", str(tmp_path / "other_model"), *query]) == 2
    assert "a 'bert' model, not a person search model" in capsys.readouterr().err
    no_weights = save_tiny_model(tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    assert cli.main(["search", "--model", str(no_weights), *query]) == 2
    assert "its weights cannot be loaded" in capsys.readouterr().err
    assert cli.main(["search", "--model", "no-such-org/no-such-model", *query]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "neither a saved model folder nor a loadable Hub model id" in err


def test_loading_the_processor_does_not_warn_about_backends(workspace, caplog):
    """transformers resolves the default backend (torchvision when installed) and warned "Falling back to pil
    backend" on every run while the processor was registered for the pil backend only."""
    import transformers
    from transformers import AutoImageProcessor

    _, model, _ = workspace
    logging.Logger.warning_once.cache_clear()  # the warning is emitted once per process
    transformers.utils.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            processor = AutoImageProcessor.from_pretrained(model)
    finally:
        transformers.utils.logging.disable_propagation()
    assert type(processor).__name__ == "PersonSearchImageProcessor"
    assert "backend" not in caplog.text


def test_search_errors(workspace, tmp_path, capsys):
    root, model, _ = workspace
    query = str(sorted((root / "gallery").glob("*.png"))[0])
    base = ["search", "--model", str(model), "--query", query, "--gallery", str(root / "gallery"), "--device", "cpu"]
    assert cli.main([*base, "--box", "0,0,500,100"]) == 2
    assert "is not inside the 320x240 image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, "--box", "1,2,3"])
    assert "expected x1,y1,x2,y2" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main([*base[:-4], "--gallery", str(tmp_path / "empty"), "--device", "cpu", "--box", "1,1,5,5"]) == 2
    assert "has no images" in capsys.readouterr().err
    assert cli.main([*base[:5], "--box", "1,1,5,5"]) == 2  # neither --gallery nor --index
    assert "give one of --gallery" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--json", "no_such_folder/m.json"],
            "--json no_such_folder/m.json: the folder no_such_folder does not exist",
        ),
        (["--out", "result.xyz"], "--out result.xyz: unknown picture format '.xyz'"),
        (["--device", "banana"], "--device 'banana': not a torch device"),
    ],
)
def test_search_refuses_what_would_fail_before_any_work(workspace, arguments, message, capsys, monkeypatch):
    root, model, _ = workspace
    monkeypatch.setattr("hf_personsearch.hub.load_search_model", lambda *a: pytest.fail("the model was loaded"))
    query = ["--query", str(root / "gallery" / "scene_000.png"), "--box", "1,1,5,5"]
    assert cli.main(["search", "--model", str(model), *query, "--gallery", str(root / "gallery"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_unavailable_gpu_and_counts_below_one_are_one_line_errors(workspace, capsys, monkeypatch):
    root, model, _ = workspace
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    base = ["search", "--model", str(model), "--query", str(root / "gallery" / "scene_000.png"), "--box", "1,1,5,5"]
    base += ["--gallery", str(root / "gallery")]
    assert cli.main([*base, "--device", "cuda"]) == 2
    assert "--device 'cuda': no CUDA GPU is available on this machine" in capsys.readouterr().err
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert cli.main([*base, "--device", "cuda:3"]) == 2
    assert "--device 'cuda:3': this machine has 1 CUDA GPU(s)" in capsys.readouterr().err
    for flag in ("--top-k", "--batch-size", "--columns"):
        with pytest.raises(SystemExit):
            cli.main([*base, flag, "0"])
        assert f"argument {flag}: '0': expected a whole number >= 1" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "hf-personsearch"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for name in ("card", "export-backbone", "index", "search"):
        assert name in result.stdout


def test_help_imports_neither_torch_nor_transformers():
    code = (
        "import sys, hf_personsearch_cli\n"
        "try:\n    hf_personsearch_cli.main(['search', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'hf_personsearch') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--gallery" in result.stdout and "HEAVY []" in result.stdout, result.stdout
