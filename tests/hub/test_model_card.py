"""Model cards render offline, their model-index YAML parses back with the same metrics, and the usage
snippet runs.

The snippet test renders the card of a saved tiny model folder with the Hub id "org/prtps-tiny", then
executes the card's ```python blocks with that id replaced by the local folder path (nothing is downloaded:
HF_HUB_OFFLINE=1), in a folder holding the snippet's query.jpg and gallery/.
"""

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from hf_personsearch.data.synthetic.render import render_scene
from hf_personsearch.hub import eval_results_to_model_index, model_index_metrics, refresh_model_card, render_model_card

sys.path.insert(0, str(Path(__file__).parents[1] / "pipelines"))
from tiny_search_model import save_tiny_model, tiny_config, write_gallery  # noqa: E402

RESULTS = [
    {"dataset": "PRW", "mAP": 0.4708, "top1": 0.84, "protocol": "prw", "settings": {"gallery": "all"}},
    {"dataset": "CUHK-SYSU", "mAP": 0.9321, "top1": 0.9412, "top5": 0.97, "settings": {"gallery_size": 100}},
]


@pytest.mark.parametrize("kind", ["pretrained", "finetuned"])
def test_card_renders_and_yaml_parses_back_with_the_same_metrics(kind):
    card = render_model_card(
        tiny_config(),
        kind=kind,
        repo_id="org/prtps-r18",
        eval_results=RESULTS,
        training={"data": "CrowdHuman, ECP, MSMT17, CUHK03, LUPerson-30k", "steps": 1000, "hardware": "8x V100"},
    )
    parsed = ModelCard(str(card))  # from the text alone, as the Hub reads README.md
    assert model_index_metrics(parsed) == {
        ("PRW", "map"): 47.08,
        ("PRW", "top1"): 84.0,
        ("CUHK-SYSU", "map"): 93.21,
        ("CUHK-SYSU", "top1"): 94.12,
        ("CUHK-SYSU", "top5"): 97.0,
    }
    by_dataset = {r.dataset_name: r for r in parsed.data.eval_results}
    assert by_dataset["CUHK-SYSU"].dataset_args == {"gallery_size": 100}
    assert by_dataset["PRW"].dataset_args == {"protocol": "prw", "gallery": "all"}
    assert parsed.data.license == "apache-2.0" and kind in parsed.data.tags
    text = parsed.content
    for section in ("## Training", "## How to use", "## Evaluation", "## Limitations", "## Ethical considerations"):
        assert section in text, section
    assert "@inproceedings{tian2024divide" in text and "consent" in text.lower()
    assert "| PRW | protocol=prw, gallery=all | 47.08 | 84.00 | - |" in text
    assert "| CUHK-SYSU | gallery_size=100 | 93.21 | 94.12 | 97.00 |" in text
    assert "- **steps**: 1000" in text and "`loss_weight_det_box` = 10.0" in text
    assert 'AutoModel.from_pretrained("org/prtps-r18"' in text


def test_bad_results_are_named():
    with pytest.raises(ValueError, match="eval result 0: missing 'dataset'"):
        eval_results_to_model_index([{"mAP": 0.4}])
    with pytest.raises(ValueError, match=r"eval result 1 \(PRW\) mAP: metric value 47.0 is not a fraction"):
        eval_results_to_model_index([RESULTS[0], {"dataset": "PRW", "mAP": 47.0}])
    with pytest.raises(ValueError, match="no metric"):
        eval_results_to_model_index([{"dataset": "PRW", "recall": 0.9}])
    with pytest.raises(ValueError, match="card kind must be one of"):
        render_model_card(tiny_config(), kind="distilled", repo_id="a/b")


def test_refresh_from_folder_and_the_usage_snippet_runs(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "prtps-tiny")
    (folder / "eval_results.json").write_text(json.dumps(RESULTS[:1]))
    (folder / "training_info.json").write_text(json.dumps({"kind": "pretrained", "steps": 10}))
    path = refresh_model_card(folder, repo_id="org/prtps-tiny")
    card = ModelCard.load(path)
    assert model_index_metrics(card) == {("PRW", "map"): 47.08, ("PRW", "top1"): 84.0}
    assert "pretrained" in card.data.tags and "- **steps**: 10" in card.content

    # The snippet's inputs: query.jpg holding the box [100, 50, 180, 250] and a gallery folder.
    work = tmp_path / "user"
    write_gallery(work / "gallery", count=2)
    query, _ = render_scene([1], width=320, height=300, domain=0, rng=np.random.default_rng(3), min_person_height=200)
    query.save(work / "query.jpg")
    monkeypatch.chdir(work)
    blocks = re.findall(r"```python\n(.*?)```", card.content, flags=re.S)
    assert len(blocks) == 2 and all("org/prtps-tiny" in block for block in blocks)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(block.replace("org/prtps-tiny", str(folder)), namespace)  # noqa: S102 (our own template)
    assert type(namespace["model"]).__name__ == "PersonSearchModel" and not namespace["model"].training
    assert namespace["processor"].min_size == 128
    matches = namespace["matches"]
    assert isinstance(matches, list) and len(matches) <= 5
    assert len(printed.getvalue().splitlines()) == len(matches)


def test_refresh_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved model folder"):
        refresh_model_card(tmp_path)
    folder = save_tiny_model(tmp_path / "m")
    (folder / "eval_results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"eval_results.json: not valid JSON"):
        refresh_model_card(folder)


def test_templates_dir_replaces_the_packaged_templates(tmp_path):
    (tmp_path / "finetuned.md").write_text(
        "---\n{{ card_data }}\n---\n# In-house {{ model_name }} for {{ target_datasets }}\n"
    )
    card = render_model_card(
        tiny_config(), kind="finetuned", repo_id="org/m", eval_results=RESULTS, templates_dir=tmp_path
    )
    assert card.content.strip().endswith("# In-house m for CUHK-SYSU and PRW")
    assert model_index_metrics(ModelCard(str(card)))[("PRW", "map")] == 47.08
    with pytest.raises(FileNotFoundError, match=f"model card template pretrained.md does not exist in {tmp_path}"):
        render_model_card(tiny_config(), kind="pretrained", repo_id="org/m", templates_dir=tmp_path)
