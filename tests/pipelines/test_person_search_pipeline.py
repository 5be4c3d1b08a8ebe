"""pipeline("person-search"): ranked matches equal a hand computation with the model; index reuse; bad input."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline

from hf_personsearch.pipelines import GalleryIndex, PersonSearchPipeline, faiss_available

sys.path.insert(0, str(Path(__file__).parent))
from tiny_search_model import save_tiny_model, write_gallery  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny saved model, a 3-image synthetic gallery, the pipeline, and the gallery embedded once
    (batch_size 2, threshold 0 so that the random model keeps detections)."""
    root = tmp_path_factory.mktemp("person_search")
    model_dir = save_tiny_model(root / "model")
    boxes = write_gallery(root / "gallery", count=3)
    search = pipeline("person-search", model=str(model_dir), device=-1)
    index = search.build_index(str(root / "gallery"), threshold=0.0, batch_size=2)
    gallery = sorted((root / "gallery").glob("*.png"))
    return root, model_dir, boxes, search, index, gallery


@pytest.fixture(scope="module")
def direct_matches(setup):
    """Query = person 0 of gallery image 1; gallery searched directly (batch_size 4, one pass)."""
    root, _, boxes, search, _, gallery = setup
    query_box = boxes[1][0].tolist()
    return query_box, search(
        str(gallery[1]), query_box=query_box, gallery=str(root / "gallery"), top_k=5, threshold=0.0
    )


def test_task_is_registered(setup):
    search = setup[3]
    assert isinstance(search, PersonSearchPipeline)
    assert search.image_processor.min_size == 128


def _hand_ranking(search, query_path, query_box, gallery_paths, threshold):
    """Model + processor without the pipeline: every gallery image alone, cosine of normalised embeddings."""
    model, processor = search.model, search.image_processor
    query = np.array(Image.open(query_path).convert("RGB"))
    inputs = processor([query], boxes=[np.array([query_box])])
    query_embedding = model.embed_boxes(inputs["pixel_values"], [inputs["boxes"][0]], inputs["image_sizes"])[0][0]
    rows = []
    for image_index, path in enumerate(gallery_paths):
        inputs = processor([np.array(Image.open(path).convert("RGB"))])
        with torch.no_grad():
            outputs = model(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        detections = processor.post_process_person_search(
            outputs, target_sizes=inputs["original_sizes"], image_sizes=inputs["image_sizes"], threshold=threshold
        )[0]
        for box, score, embedding in zip(detections["boxes"], detections["scores"], detections["embeddings"]):
            similarity = float(torch.nn.functional.normalize(embedding, dim=0) @ query_embedding)
            rows.append((similarity, image_index, box.tolist(), float(score)))
    return sorted(rows, key=lambda row: -row[0])


def test_search_equals_hand_computation(setup, direct_matches):
    _, _, _, search, _, gallery = setup
    query_box, matches = direct_matches
    expected = _hand_ranking(search, gallery[1], query_box, gallery, threshold=0.0)[:5]
    assert [m["rank"] for m in matches] == [1, 2, 3, 4, 5]
    assert [m["image"] for m in matches] == [str(gallery[row[1]]) for row in expected]
    np.testing.assert_allclose([m["similarity"] for m in matches], [row[0] for row in expected], atol=1e-4)
    np.testing.assert_allclose([m["box"] for m in matches], [row[2] for row in expected], atol=0.02)
    np.testing.assert_allclose([m["score"] for m in matches], [row[3] for row in expected], atol=1e-5)
    assert all(a["similarity"] >= b["similarity"] for a, b in zip(matches, matches[1:]))


def test_index_saved_once_searched_later_gives_the_same_matches(setup, direct_matches, tmp_path):
    _, _, _, search, index, gallery = setup
    query_box, direct = direct_matches
    assert index.images == [str(path) for path in gallery]
    assert index.embeddings.shape[1] == 256
    torch.testing.assert_close(index.embeddings.norm(dim=1), torch.ones(len(index)))
    index.save(tmp_path / "index")
    from_index = search(str(gallery[1]), query_box=query_box, index=GalleryIndex.load(tmp_path / "index"), top_k=5)
    assert [m["image"] for m in from_index] == [m["image"] for m in direct]
    np.testing.assert_allclose([m["box"] for m in from_index], [m["box"] for m in direct], atol=0.02)
    np.testing.assert_allclose([m["similarity"] for m in from_index], [m["similarity"] for m in direct], atol=1e-5)


def test_higher_threshold_filters_the_index_and_lower_is_refused(setup):
    _, _, boxes, search, index, gallery = setup
    cut = float(index.scores.median())
    matches = search(str(gallery[0]), query_box=boxes[0][0].tolist(), index=index, top_k=100, threshold=cut)
    assert len(matches) == int((index.scores >= cut).sum())
    assert min(m["score"] for m in matches) >= cut
    strict = dataclasses.replace(index, settings={**index.settings, "threshold": cut})
    with pytest.raises(ValueError, match="below the index's"):
        search(str(gallery[0]), query_box=boxes[0][0].tolist(), index=strict, threshold=0.0)


def test_index_of_another_model_or_size_is_refused(setup, tmp_path):
    _, model_dir, boxes, _, index, gallery = setup
    query = str(gallery[0])
    other = pipeline("person-search", model=str(save_tiny_model(tmp_path / "other", seed=1)), device=-1)
    with pytest.raises(ValueError, match="made with another model"):
        other(query, query_box=boxes[0][0].tolist(), index=index)
    resized = pipeline(
        "person-search",
        model=str(model_dir),
        image_processor=AutoImageProcessor.from_pretrained(model_dir, min_size=160),
        device=-1,
    )
    with pytest.raises(ValueError, match="min_size: index 128, now 160"):
        resized(query, query_box=boxes[0][0].tolist(), index=index)


def test_detection_mode_and_in_memory_gallery(setup):
    _, _, _, search, _, gallery = setup
    images = [Image.open(path).convert("RGB") for path in gallery[:2]]
    detections = search(images[0], threshold=0.0)
    assert detections and all(0.0 <= d["score"] <= 1.0 for d in detections)
    assert all(0 <= d["box"][0] < d["box"][2] <= 320 and 0 <= d["box"][1] < d["box"][3] <= 240 for d in detections)
    index = search.build_index(images, threshold=0.0)
    assert index.images == ["image_0", "image_1"]


def test_progress_bar_when_asked(setup, capsys):
    _, _, _, search, _, gallery = setup
    search.build_index([str(gallery[0])], threshold=0.0, progress=True)
    assert "embedding gallery" in capsys.readouterr().err


def test_bad_input_gives_clear_errors(setup, tmp_path):
    root, _, boxes, search, _, gallery = setup
    query = str(gallery[0])
    with pytest.raises(ValueError, match=r"query: box \[300.0, 10.0, 400.0, 100.0\] is not inside the 320x240 image"):
        search(query, query_box=[300, 10, 400, 100], gallery=str(root / "gallery"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        search(query, query_box=boxes[0][0].tolist(), gallery=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="the gallery is empty"):
        search(query, query_box=boxes[0][0].tolist(), gallery=[])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "truncated.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(OSError, match=r"gallery image 0 .*truncated.jpg\) cannot be read as an image"):
        search(query, query_box=boxes[0][0].tolist(), gallery=str(broken))
    with pytest.raises(FileNotFoundError, match="query image: image file .*missing.jpg does not exist"):
        search(str(tmp_path / "missing.jpg"), query_box=[0, 0, 10, 10], gallery=str(root / "gallery"))
    with pytest.raises(ValueError, match="either gallery .* or index"):
        search(query, query_box=boxes[0][0].tolist())


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (pip install 'hf-personsearch[faiss]')")
def test_faiss_backend_returns_the_torch_matches(setup, direct_matches):
    _, _, _, search, index, gallery = setup
    query_box, _ = direct_matches
    with_torch = search(str(gallery[1]), query_box=query_box, index=index, top_k=5, backend="torch")
    with_faiss = search(str(gallery[1]), query_box=query_box, index=index, top_k=5, backend="faiss")
    assert [(m["image"], m["box"]) for m in with_faiss] == [(m["image"], m["box"]) for m in with_torch]
    np.testing.assert_allclose([m["similarity"] for m in with_faiss], [m["similarity"] for m in with_torch], atol=1e-5)
