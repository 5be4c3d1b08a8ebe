"""pipeline("person-search"): ranked matches equal a hand computation with the model; index reuse; real-folder
robustness (broken files, subfolders, other working folders, RGBA / grayscale arrays); bad input."""

import dataclasses
import logging
import os
import shutil
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
    """Model + processor without the pipeline: every gallery image alone, similarity = detection score x cosine
    (NAE's ranking), computed from the unit direction of each embedding and the score."""
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
            cosine = float(torch.nn.functional.normalize(embedding, dim=0) @ query_embedding)
            similarity = float(score) * cosine
            rows.append((similarity, image_index, box.tolist(), float(score)))
    return sorted(rows, key=lambda row: -row[0])


def test_search_equals_hand_computation(setup, direct_matches):
    _, _, _, search, _, gallery = setup
    query_box, matches = direct_matches
    expected = _hand_ranking(search, gallery[1], query_box, gallery, threshold=0.0)[:5]
    assert [m["rank"] for m in matches] == [1, 2, 3, 4, 5]
    assert [m["image"] for m in matches] == [str(gallery[row[1]]) for row in expected]
    np.testing.assert_allclose([m["similarity"] for m in matches], [row[0] for row in expected], atol=1e-4)
    assert all(m["similarity"] <= m["score"] + 1e-6 for m in matches)  # score x cosine never exceeds the score
    np.testing.assert_allclose([m["box"] for m in matches], [row[2] for row in expected], atol=0.02)
    np.testing.assert_allclose([m["score"] for m in matches], [row[3] for row in expected], atol=1e-5)
    assert all(a["similarity"] >= b["similarity"] for a, b in zip(matches, matches[1:]))


def test_index_saved_once_searched_later_gives_the_same_matches(setup, direct_matches, tmp_path):
    _, _, _, search, index, gallery = setup
    query_box, direct = direct_matches
    assert index.images == [str(path.absolute()) for path in gallery]
    assert index.embeddings.shape[1] == 256
    torch.testing.assert_close(index.embeddings.norm(dim=1), index.scores)  # norm-aware: norm = detection score
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


def test_progress_bar_when_asked_and_by_default_from_four_images(setup, capsys):
    _, _, _, search, _, gallery = setup
    search.build_index([str(gallery[0])], threshold=0.0, progress=True)
    assert "embedding gallery" in capsys.readouterr().err
    search.build_index([str(gallery[0])] * 3, threshold=0.0)
    assert "embedding gallery" not in capsys.readouterr().err
    search.build_index([str(gallery[0])] * 4, threshold=0.0, batch_size=3)
    bar = capsys.readouterr().err
    assert "4/4" in bar and ("image/s" in bar or "s/image" in bar)  # counted in images, with a rate for the ETA


def _copy_of(gallery: list[Path], folder: Path) -> Path:
    """``folder`` holding a copy of the gallery's images (a photo folder a test may change)."""
    folder.mkdir()
    for path in gallery:
        shutil.copy(path, folder / path.name)
    return folder


def test_unreadable_gallery_files_are_skipped_named_and_counted(setup, tmp_path, caplog):
    _, _, boxes, search, index, gallery = setup
    folder = _copy_of(gallery, tmp_path / "photos")
    (folder / "scene_001.png").write_bytes((folder / "scene_001.png").read_bytes()[:200])  # truncated
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "moved.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a dangling link is counted, not dropped unseen
    with caplog.at_level(logging.WARNING):
        partial = search.build_index(str(folder), threshold=0.0, batch_size=2)
    unreadable = ["empty.jpg", "moved.jpg", "scene_001.png"]
    assert [item["image"] for item in partial.skipped] == [str(folder / name) for name in unreadable]
    assert all(name in caplog.text for name in unreadable) and caplog.text.count("skipped gallery image") == 3
    assert partial.images == [str(folder / "scene_000.png"), str(folder / "scene_002.png")]
    # the readable images give exactly the detections they give in the full index
    for position, name in ((0, "scene_000.png"), (1, "scene_002.png")):
        full_position = [Path(p).name for p in index.images].index(name)
        torch.testing.assert_close(
            partial.boxes[partial.image_index == position], index.boxes[index.image_index == full_position]
        )
    matches = search(str(gallery[0]), query_box=boxes[0][0].tolist(), gallery=str(folder), threshold=0.0, top_k=50)
    assert {Path(m["image"]).name for m in matches} == {"scene_000.png", "scene_002.png"}


def test_recursive_gallery_and_non_image_files_reported_once(setup, tmp_path, caplog):
    _, _, _, search, _, gallery = setup
    folder = tmp_path / "nested"
    (folder / "day2").mkdir(parents=True)
    shutil.copy(gallery[0], folder / "a.png")
    shutil.copy(gallery[1], folder / "day2" / "b.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "day2" / "list.csv").write_text("x")
    with caplog.at_level(logging.WARNING):
        flat = search.build_index(str(folder), threshold=0.0)
    assert flat.images == [str(folder / "a.png")]
    assert "ignored 1 non-image files: notes.txt" in caplog.text and "subfolders" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        nested = search.build_index(str(folder), threshold=0.0, recursive=True)
    assert nested.images == [str(folder / "a.png"), str(folder / "day2" / "b.png")]
    assert caplog.text.count("non-image") == 1 and "day2/list.csv, notes.txt" in caplog.text


def test_saved_index_works_from_another_working_folder_and_a_moved_gallery_is_named(setup, tmp_path, monkeypatch):
    _, _, boxes, search, _, gallery = setup
    work = tmp_path / "work"
    (work / "gallery").mkdir(parents=True)
    for path in gallery[:2]:
        shutil.copy(path, work / "gallery" / path.name)
    monkeypatch.chdir(work)
    search.build_index("gallery", threshold=0.0).save("index")  # relative paths, as a user types them
    monkeypatch.chdir(tmp_path)
    index = GalleryIndex.load(work / "index")
    assert index.images == [str(work / "gallery" / path.name) for path in gallery[:2]]
    assert index.image_file(1) == work / "gallery" / gallery[1].name
    matches = search(str(gallery[0]), query_box=boxes[0][0].tolist(), index=index, threshold=0.0)
    assert {m["image"] for m in matches} <= set(index.images)
    (work / "gallery").rename(work / "moved")
    with pytest.raises(FileNotFoundError, match="scene_000.png .*does not exist: the gallery was moved or deleted"):
        index.image_file(0)


def test_rgba_and_grayscale_arrays_are_searched_as_the_processor_reads_them(setup):
    _, _, boxes, search, _, gallery = setup
    rgb = Image.open(gallery[0]).convert("RGB")
    rgba = np.array(rgb.convert("RGBA"))
    rgba[..., 3] = 7  # any alpha: dropped, as PIL's convert("RGB") drops it
    expected = search(rgb, threshold=0.0)
    assert search(rgba, threshold=0.0) == expected
    assert search(np.array(rgb) / 255.0, threshold=0.0) == expected  # float in [0, 1]
    gray = rgb.convert("L")
    assert search(np.array(gray), threshold=0.0) == search(gray, threshold=0.0)
    assert search(np.array(gray)[:, :, None], threshold=0.0) == search(gray.convert("RGB"), threshold=0.0)
    box = boxes[0][0].tolist()
    torch.testing.assert_close(search.embed_query(rgba, box), search.embed_query(rgb, box))
    with pytest.raises(ValueError, match=r"query image: expected an \(H, W\), .* array, got \(240, 320, 2\)"):
        search.embed_query(np.zeros((240, 320, 2), np.uint8), box)
    with pytest.raises(ValueError, match=r"float array must hold values in \[0, 1\]"):
        search(np.full((40, 40, 3), 3.0))


def test_best_per_image_keeps_the_best_match_of_each_image(setup):
    _, _, boxes, search, index, gallery = setup
    query, box = str(gallery[1]), boxes[1][0].tolist()
    every = search(query, query_box=box, index=index, top_k=len(index))
    best = search(query, query_box=box, index=index, top_k=10, best_per_image=True)
    first_of_each = []
    for match in every:
        if match["image"] not in [m["image"] for m in first_of_each]:
            first_of_each.append(match)
    assert len(best) == len(gallery) and [m["rank"] for m in best] == [1, 2, 3]
    assert [(m["image"], m["box"], m["similarity"]) for m in best] == [
        (m["image"], m["box"], m["similarity"]) for m in first_of_each
    ]


def test_readme_snippet_ranks_like_the_pipeline(setup, tmp_path, monkeypatch):
    """The README's "Use a model" snippet (read from README.md) runs and ranks the gallery
    persons as the pipeline does: both score with search_similarity."""
    _, model_dir, boxes, search, _, gallery = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gallery").mkdir()
    for name, path in (("query.jpg", gallery[1]), ("gallery/0001.jpg", gallery[0]), ("gallery/0002.jpg", gallery[2])):
        Image.open(path).convert("RGB").save(tmp_path / name, quality=95)
    query_box = [round(v) for v in boxes[1][0].tolist()]
    code = README_SNIPPET.replace('"path/or/org-name"', repr(str(model_dir)))
    code = code.replace("[100, 50, 180, 250]", str(query_box)).replace("threshold=0.5", "threshold=0.0")
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 (our own snippet)
    matches = search(
        "query.jpg", query_box=query_box, gallery=["gallery/0001.jpg", "gallery/0002.jpg"], threshold=0.0, top_k=5
    )
    exec(README_PIPELINE_SNIPPET.replace("threshold=0.5", "threshold=0.0"), namespace)  # noqa: S102
    from_readme_index = namespace["matches"]
    assert [m["image"] for m in from_readme_index] == [
        m["image"] for m in namespace["search"]("query.jpg", query_box=query_box, gallery="gallery/", top_k=10)
    ]
    ranked = namespace["ranked"][:5]
    assert [os.path.basename(m["image"]) for m in matches] == [f"000{image + 1}.jpg" for _, image, _ in ranked]
    np.testing.assert_allclose([m["similarity"] for m in matches], [row[0] for row in ranked], atol=1e-5)


def _readme_snippets() -> list[str]:
    """The python blocks of the README's "Use a model" section: the model snippet, then the pipeline's."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Use a model", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


README_SNIPPET, README_PIPELINE_SNIPPET = _readme_snippets()


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
    with pytest.raises(
        ValueError,
        match=r"none of the 1 gallery images could be read: gallery image 0 .*truncated.jpg\): cannot be read",
    ):
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


def _assert_same_index(updated: GalleryIndex, full: GalleryIndex) -> None:
    assert updated.images == full.images and updated.skipped == full.skipped
    assert updated.image_files == full.image_files and updated.settings == full.settings
    assert torch.equal(updated.image_index, full.image_index)
    for name in ("embeddings", "boxes", "scores"):
        torch.testing.assert_close(getattr(updated, name), getattr(full, name))


def test_update_embeds_only_new_changed_and_retried_files_and_equals_a_full_build(setup, tmp_path, monkeypatch):
    _, _, _, search, _, gallery = setup
    folder = _copy_of(gallery, tmp_path / "photos")
    (folder / "late.png").write_bytes(gallery[0].read_bytes()[:300])  # still being copied: skipped
    first = search.build_index(str(folder), threshold=0.0, batch_size=2)
    assert [Path(p).name for p in first.images] == ["scene_000.png", "scene_001.png", "scene_002.png"]
    # Since then: one image changed (other content, later time), one deleted, one added, the late one complete.
    shutil.copy(gallery[0], folder / "scene_001.png")
    os.utime(folder / "scene_001.png", ns=(first.image_files[str(folder / "scene_001.png")][1] + 10**9,) * 2)
    (folder / "scene_002.png").unlink()
    shutil.copy(gallery[2], folder / "new.png")
    shutil.copy(gallery[1], folder / "late.png")

    embedded = []
    detect = PersonSearchPipeline.detect

    def counting_detect(self, images, threshold=0.5):
        embedded.extend(image.size for image in images)
        return detect(self, images, threshold=threshold)

    monkeypatch.setattr(PersonSearchPipeline, "detect", counting_detect)
    updated = search.build_index(str(folder), threshold=0.0, batch_size=2, update=first)
    assert len(embedded) == 3  # late.png, new.png, scene_001.png; scene_000.png taken from the index
    assert first.same_files(updated) == [str(folder / "scene_000.png")]
    embedded.clear()
    full = search.build_index(str(folder), threshold=0.0, batch_size=2)
    assert len(embedded) == 4
    _assert_same_index(updated, full)
    assert [Path(p).name for p in updated.images] == ["late.png", "new.png", "scene_000.png", "scene_001.png"]

    # Saved and loaded, the file records survive; an index without them (saved before updates) embeds everything.
    updated.save(tmp_path / "index")
    assert GalleryIndex.load(tmp_path / "index").image_files == updated.image_files
    embedded.clear()
    old_style = dataclasses.replace(updated, image_files={})
    _assert_same_index(search.build_index(str(folder), threshold=0.0, batch_size=2, update=old_style), full)
    assert len(embedded) == 4


def test_update_refuses_another_threshold_or_model(setup, tmp_path):
    root, _, _, search, index, _ = setup
    with pytest.raises(ValueError, match="made at detection threshold 0.0, not 0.5"):
        search.build_index(str(root / "gallery"), threshold=0.5, update=index)
    other = dataclasses.replace(index, model_fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="made with another model"):
        search.build_index(str(root / "gallery"), threshold=0.0, update=other)
