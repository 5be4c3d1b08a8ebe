"""hf-personsearch: subcommand registry, card, export-backbone, index + search (table, picture, JSON), errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from PIL import Image

from hf_personsearch import cli

sys.path.insert(0, str(Path(__file__).parent / "pipelines"))
from tiny_search_model import save_tiny_model, write_gallery  # noqa: E402


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
        assert line.endswith(match["image"])
    # the picture: query crop + 3 scenes of 320x240 shown 256 px high (341 px wide) + gaps
    width, height = Image.open(picture).size
    assert height == 18 + 256 and width > 3 * 341
    # searching the folder directly gives the same ranking as the saved index
    assert cli.main(["search", *common, "--gallery", str(root / "gallery"), *arguments[:-2]]) == 0
    direct = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:4]]
    assert direct == [m["image"] for m in matches]


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


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "hf-personsearch"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for name in ("card", "export-backbone", "index", "search"):
        assert name in result.stdout
