"""An AlignPS model goes through the toolkit unchanged: the evaluation (both protocols), the person-search
pipeline (its ranking equals a hand computation with the model), the gallery index and the CLI."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import hf_personsearch_cli as cli
from hf_personsearch import AlignPSConfig, AlignPSModel, PersonSearchImageProcessor, search_similarity
from hf_personsearch.data.search_dataset import load_target_queries, load_target_records
from hf_personsearch.data.synthetic import generate
from hf_personsearch.evaluation import evaluate_detection, evaluate_search
from hf_personsearch.evaluation.model_inference import run_search_inference
from hf_personsearch.hub import load_search_model
from hf_personsearch.pipelines import GalleryIndex

sys.path.insert(0, str(Path(__file__).parent))
from tiny_search_model import write_gallery  # noqa: E402


def _tiny_align_ps(use_roi_head: bool = False) -> AlignPSModel:
    torch.manual_seed(0)
    config = AlignPSConfig(
        backbone="test_resnet",
        freeze_batchnorm=False,
        fpn_channels=32,
        head_norm_groups=8,
        head_num_convs=2,
        num_person_ids=8,
        oim_queue_size=16,
        score_thresh=0.0,  # a random model scores ~0.01: keep its detections
        detections_per_img=20,
        use_roi_head=use_roi_head,
        roi_head={"roi_output_size": 8, "embedding_dim": 32, "box_detections_per_img": 20},
    )
    return AlignPSModel(config).eval()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_ps")
    _tiny_align_ps().save_pretrained(root / "model")
    PersonSearchImageProcessor(min_size=128, max_size=256).save_pretrained(root / "model")
    boxes = write_gallery(root / "gallery", count=3)
    return root, root / "model", boxes


@pytest.mark.parametrize("use_roi_head", [False, True], ids=["align_ps", "roi_align_ps"])
def test_evaluation_protocols_take_align_ps_outputs(tmp_path, use_roi_head):
    generate("prw", tmp_path / "prw", seed=1)
    model, processor = _tiny_align_ps(use_roi_head), PersonSearchImageProcessor(min_size=128, max_size=256)
    records = load_target_records("prw", tmp_path / "prw", "test")
    inputs = run_search_inference(
        model, processor, records, load_target_queries("prw", tmp_path / "prw"), progress=False
    )
    assert sum(len(d["boxes"]) for d in inputs.detections) > 0
    for record, detections in zip(records, inputs.detections):
        assert detections["boxes"][:, 2].max() <= record["width"] + 1e-3  # mapped back to original pixels
        np.testing.assert_allclose(np.linalg.norm(detections["embeddings"], axis=1), detections["scores"], rtol=1e-4)
    search = evaluate_search(inputs.gallery, inputs.detections, inputs.queries, "prw", det_thresh=0.0)
    detection = evaluate_detection(inputs.gallery, inputs.detections)
    assert 0.0 <= search["mAP"] <= 1.0 and 0.0 <= detection["recall"] <= 1.0
    for query in inputs.queries:
        assert abs(np.linalg.norm(query["embedding"]) - 1.0) < 1e-4


def test_pipeline_ranks_as_the_hand_computation_and_its_index_reloads(workspace, tmp_path):
    root, model_dir, boxes = workspace
    search = pipeline("person-search", model=str(model_dir), device=-1)
    assert isinstance(search.model, AlignPSModel)
    gallery = sorted((root / "gallery").glob("*.png"))
    query_box = boxes[1][0].tolist()
    matches = search(str(gallery[1]), query_box=query_box, gallery=str(root / "gallery"), top_k=5, threshold=0.0)

    model, processor = search.model, search.image_processor
    inputs = processor([np.array(Image.open(gallery[1]).convert("RGB"))], boxes=[np.array([query_box])])
    query = model.embed_boxes(inputs["pixel_values"], [inputs["boxes"][0]], inputs["image_sizes"])[0][0]
    rows = []
    for image_index, path in enumerate(gallery):
        inputs = processor([np.array(Image.open(path).convert("RGB"))])
        with torch.no_grad():
            outputs = model(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        found = processor.post_process_person_search(
            outputs, target_sizes=inputs["original_sizes"], image_sizes=inputs["image_sizes"], threshold=0.0
        )[0]
        for similarity in search_similarity(query, found["embeddings"]).tolist():
            rows.append((similarity, image_index))
    expected = sorted(rows, key=lambda row: -row[0])[:5]
    assert [m["image"] for m in matches] == [str(gallery[i]) for _, i in expected]
    np.testing.assert_allclose([m["similarity"] for m in matches], [s for s, _ in expected], atol=1e-4)

    index = search.build_index(str(root / "gallery"), threshold=0.0)
    assert index.embeddings.shape[1] == 32
    index.save(tmp_path / "index")
    again = search(str(gallery[1]), query_box=query_box, index=GalleryIndex.load(tmp_path / "index"), top_k=5)
    assert [m["image"] for m in again] == [m["image"] for m in matches]


def test_cli_indexes_and_searches_with_an_align_ps_model(workspace, tmp_path, capsys):
    root, model_dir, boxes = workspace
    common = ["--model", str(model_dir), "--threshold", "0", "--device", "cpu"]
    assert cli.main(["index", *common, "--gallery", str(root / "gallery"), "--out", str(tmp_path / "index")]) == 0
    assert "in 3 images" in capsys.readouterr().out
    query = sorted((root / "gallery").glob("*.png"))[2]
    box = ",".join(str(v) for v in boxes[2][0].tolist())
    arguments = ["--query", str(query), "--box", box, "--top-k", "3", "--json", str(tmp_path / "m.json")]
    assert cli.main(["search", *common, "--index", str(tmp_path / "index"), *arguments]) == 0
    assert [m["rank"] for m in json.loads((tmp_path / "m.json").read_text())] == [1, 2, 3]
    assert capsys.readouterr().out.splitlines()[0].split()[:2] == ["rank", "similarity"]


def test_run_eval_evaluates_a_saved_align_ps_model(workspace, tmp_path):
    """examples/run_eval.py loads the model through hub.load_search_model: an AlignPS folder is evaluated as
    itself (it used to be read as a PersonSearchModel and fail on every key)."""
    import importlib.util

    from accelerate.state import AcceleratorState

    spec = importlib.util.spec_from_file_location("run_eval", Path(__file__).parents[2] / "examples" / "run_eval.py")
    run_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_eval)
    _, model_dir, _ = workspace
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        summary = run_eval.main(
            [
                "--model",
                str(model_dir),
                "--dataset",
                "prw",
                "--output_dir",
                str(tmp_path),
                "--cpu",
                "--det_thresh",
                "0",
            ]
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert summary["num_queries"] > 0 and 0.0 <= summary["mAP"] <= 1.0
    model, notes = load_search_model(str(model_dir))
    assert isinstance(model, AlignPSModel) and not model.training and notes == []
    with pytest.raises(ValueError, match=r"^.*nothing: no such folder$"):
        load_search_model(str(tmp_path / "nothing"))
