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

from hf_personsearch import PersonSearchConfig, PersonSearchPretrainConfig, PersonSearchPretrainModel
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

    namespace = _run_usage_snippets(card, "org/prtps-tiny", folder, tmp_path / "user", monkeypatch)
    assert namespace["processor"].min_size == 128


def _run_usage_snippets(card: ModelCard, repo_id: str, folder: Path, work: Path, monkeypatch) -> dict:
    """Execute the card's ```python blocks with ``repo_id`` replaced by ``folder``, in ``work`` holding the
    snippet's inputs (query.jpg with the box [100, 50, 180, 250] and a gallery folder); return their names."""
    write_gallery(work / "gallery", count=2)
    query, _ = render_scene([1], width=320, height=300, domain=0, rng=np.random.default_rng(3), min_person_height=200)
    query.save(work / "query.jpg")
    monkeypatch.chdir(work)
    blocks = re.findall(r"```python\n(.*?)```", card.content, flags=re.S)
    assert len(blocks) == 2 and repo_id in blocks[0]
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(block.replace(repo_id, str(folder)), namespace)  # noqa: S102 (our own template)
    assert type(namespace["model"]).__name__ == "PersonSearchModel" and not namespace["model"].training
    matches = namespace["matches"]
    assert isinstance(matches, list) and len(matches) <= 5
    assert len(printed.getvalue().splitlines()) == len(matches)
    return namespace


def test_card_of_a_pretraining_checkpoint_folder(tmp_path, monkeypatch):
    """A bare PersonSearchPretrainModel folder: no training record, no image processor saved. Its card is a
    pre-trained card (that claims no training) whose snippets load it as a PersonSearchModel with the default
    processor, and run."""
    folder = tmp_path / "pretrain_model"
    PersonSearchPretrainModel(PersonSearchPretrainConfig(person_search=tiny_config())).save_pretrained(folder)
    card = ModelCard.load(refresh_model_card(folder, repo_id="org/prtps-pre"))
    assert "pretrained" in card.data.tags and "built for the hybrid pre-training" in card.content
    assert "AutoImageProcessor" not in card.content and "PersonSearchImageProcessor()" in card.content
    namespace = _run_usage_snippets(card, "org/prtps-pre", folder, tmp_path / "user", monkeypatch)
    assert namespace["processor"].min_size == 900


def test_card_says_what_the_model_was_trained_on(tmp_path):
    folder = save_tiny_model(tmp_path / "demo")
    training = {
        "kind": "finetuned",
        "synthetic_data": True,
        "data": "synthetic prw (generated)",
        "initialisation": "pretrained (/home/alice/runs/2026-11-27/person_search_model)",
    }
    (folder / "training_info.json").write_text(json.dumps(training))
    text = refresh_model_card(folder, repo_id="org/demo").read_text()
    assert "**Trained on synthetic data only.**" in text and "not meaningful" in text
    assert "street, campus" not in text
    assert "- **initialisation**: pretrained (person_search_model)" in text and "/home/alice" not in text
    assert "(initialised from pretrained (person_search_model))" in text
    assert "synthetic_data" not in text  # the flag is said in words, not listed as a training setting
    (folder / "training_info.json").write_text(json.dumps({**training, "synthetic_data": False}))
    text = refresh_model_card(folder, repo_id="org/demo").read_text()
    assert "synthetic data only" not in text and "learnt from the training data listed above" in text
    (folder / "training_info.json").write_text(json.dumps({**training, "synthetic_data": "yes"}))
    with pytest.raises(ValueError, match="'synthetic_data' must be true or false, got 'yes'"):
        refresh_model_card(folder)


@pytest.mark.parametrize("kind", ["pretrained", "finetuned"])
def test_card_without_training_record_or_results_claims_no_training(kind):
    config = PersonSearchPretrainConfig(person_search=tiny_config()) if kind == "pretrained" else tiny_config()
    bare = render_model_card(config, kind=kind, repo_id="org/untrained").content
    assert "No training record and no evaluation come with this model" in bare
    assert "fine-tuned on" not in bare and "pre-trained with the hybrid" not in bare
    for recorded in ({"training": {"data": "PRW"}}, {"eval_results": RESULTS[:1]}):
        text = render_model_card(config, kind=kind, repo_id="org/trained", **recorded).content
        assert "No training record and no evaluation" not in text
        assert ("fine-tuned on" if kind == "finetuned" else "pre-trained with the hybrid") in text


def test_results_on_own_data_are_not_presented_as_a_benchmark():
    own = {"dataset": "custom", "mAP": 0.61, "top1": 0.7, "protocol": "posetrack21", "settings": {"det_thresh": 0.5}}
    card = render_model_card(tiny_config(), kind="finetuned", repo_id="org/m", eval_results=[own, RESULTS[0]])
    text = card.content
    assert "| own data (custom format) | protocol=posetrack21, det_thresh=0.5 | 61.00 | 70.00 |" in text
    assert (
        "not comparable with\npublished benchmarks" in text and "| PRW | protocol=prw, gallery=all | 47.08 |" in text
    )
    assert "fine-tuned on\nPRW and the user's own data (custom format)\nwith the toolkit" in text
    assert card.data.datasets == ["prw"]  # "custom" is no Hub dataset


def test_refresh_keeps_an_existing_card_unless_asked(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    (folder / "README.md").write_text("written by hand")
    with pytest.raises(FileExistsError, match="README.md exists: pass --force"):
        refresh_model_card(folder, overwrite=False)
    assert (folder / "README.md").read_text() == "written by hand"
    refresh_model_card(folder)
    assert "## How to use" in (folder / "README.md").read_text()


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


def test_pretrained_card_advertises_only_exports_that_work_for_its_backbone():
    tiny = render_model_card(tiny_config(), kind="pretrained", repo_id="org/tiny").text
    assert "--format torchvision" not in tiny and "--format timm" in tiny  # test_resnet has no torchvision twin
    resnet = render_model_card(
        PersonSearchConfig(backbone="resnet18", num_person_ids=4), kind="pretrained", repo_id="org/r18"
    ).text
    assert "--format torchvision" in resnet and "torchvision.models.resnet18(); backbone.fc" in resnet
    v1 = PersonSearchConfig(backbone="shufflenet_v1_g3_x1_0", backbone_library="builtin", num_person_ids=4)
    assert "export-backbone" not in render_model_card(v1, kind="pretrained", repo_id="org/v1").text


@pytest.mark.parametrize(
    ("detection_score", "said"),
    [("norm", "the embedding's norm (NAE)"), ("linear", "a linear classifier on the box head map")],
)
def test_card_says_which_detection_score_the_model_uses(detection_score, said):
    card = render_model_card(tiny_config(detection_score=detection_score), kind="finetuned", repo_id="org/tiny")
    assert f"- **detection score**: {said}" in str(card)
