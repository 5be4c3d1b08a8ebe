"""Model inference -> protocol inputs: boxes back in original pixels, query embeddings from the GT box."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hf_personsearch import PersonSearchImageProcessor, PersonSearchModel
from hf_personsearch.data.search_dataset import load_target_queries, load_target_records
from hf_personsearch.data.synthetic import generate
from hf_personsearch.evaluation import evaluate_detection, evaluate_search
from hf_personsearch.evaluation.model_inference import (
    evaluate_on_target,
    resolve_gallery_size,
    run_search_inference,
)
from hf_personsearch.modeling_person_search import PersonSearchOutput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
import tiny_search_model  # noqa: E402

RELATIVE_BOX = torch.tensor([0.1, 0.2, 0.5, 0.9])


class RelativeBoxModel(nn.Module):
    """A stand-in model with known outputs: one detection per image at RELATIVE_BOX of the INPUT size,
    embedding (input height, input width, 0...); embed_boxes returns each box divided by its input size."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen_sizes = []

    def forward(self, pixel_values, image_sizes):
        boxes, scores, embeddings = [], [], []
        for height, width in image_sizes.tolist():
            self.seen_sizes.append((height, width))
            boxes.append((RELATIVE_BOX * torch.tensor([width, height, width, height]))[None])
            scores.append(torch.tensor([0.9]))
            embeddings.append(torch.tensor([[float(height), float(width), 0.0]]))
        return PersonSearchOutput(boxes=boxes, scores=scores, embeddings=embeddings)

    def embed_boxes(self, pixel_values, boxes, image_sizes):
        return [b / torch.tensor([w, h, w, h]) for b, (h, w) in zip(boxes, image_sizes.tolist())]


@pytest.fixture(scope="module")
def prw_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prw")
    generate("prw", folder, seed=1)
    return folder


def test_progress_bars_count_images_and_queries_not_batches(prw_dir, capsys):
    records = load_target_records("prw", prw_dir, "test")
    queries = load_target_queries("prw", prw_dir)
    processor = PersonSearchImageProcessor(min_size=64, max_size=100)
    run_search_inference(RelativeBoxModel(), processor, records, queries, batch_size=3, progress=True)
    bars = capsys.readouterr().err
    assert "gallery: 100%" in bars and f"{len(records)}/{len(records)}" in bars
    assert f"{len(queries)}/{len(queries)}" in bars and len(queries) > 3
    assert ("image/s" in bars or "s/image" in bars) and ("query/s" in bars or "s/query" in bars)


def test_boxes_map_back_to_original_pixels_and_queries_use_the_gt_box(prw_dir):
    records = load_target_records("prw", prw_dir, "test")
    queries = load_target_queries("prw", prw_dir)
    model = RelativeBoxModel()
    processor = PersonSearchImageProcessor(min_size=64, max_size=100)
    inputs = run_search_inference(model, processor, records, queries, batch_size=3, progress=False)
    assert len(inputs.detections) == len(records) and len(model.seen_sizes) == len(records)
    for record, detection, item, (height, width) in zip(records, inputs.detections, inputs.gallery, model.seen_sizes):
        assert (height, width) != (record["height"], record["width"])  # the model saw resized images
        expected = RELATIVE_BOX.numpy() * np.array([record["width"], record["height"]] * 2)
        np.testing.assert_allclose(detection["boxes"][0], expected, rtol=1e-5)
        np.testing.assert_allclose(detection["embeddings"][0], [height, width, 0.0])
        assert item["image_id"] == record["image_id"] and item["camera_id"] == record["camera_id"]
        np.testing.assert_array_equal(item["person_ids"], record["person_ids"])
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in records}
    assert [q["image_id"] for q in inputs.queries] == [q["image_id"] for q in queries]
    for query in inputs.queries:
        width, height = sizes[query["image_id"]]
        # the processor scales boxes by the exact factor, the image side is rounded: half a pixel of ~56
        expected = np.asarray(query["box"]) / [width, height, width, height]
        np.testing.assert_allclose(query["embedding"], expected, atol=1e-2)


def test_query_image_missing_from_the_gallery_is_named(prw_dir):
    queries = load_target_queries("prw", prw_dir)
    records = [r for r in load_target_records("prw", prw_dir, "test") if r["image_id"] != queries[0]["image_id"]]
    with pytest.raises(ValueError, match=rf"queries\[0\]: query image '{queries[0]['image_id']}' is not among"):
        run_search_inference(RelativeBoxModel(), PersonSearchImageProcessor(), records, queries, progress=False)


def test_tiny_model_outputs_feed_both_protocols(prw_dir):
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_search_model.tiny_config()).eval()
    processor = PersonSearchImageProcessor(min_size=128, max_size=256)
    records = load_target_records("prw", prw_dir, "test")
    inputs = run_search_inference(model, processor, records, load_target_queries("prw", prw_dir), progress=False)
    search = evaluate_search(inputs.gallery, inputs.detections, inputs.queries, "prw", det_thresh=0.0)
    detection = evaluate_detection(inputs.gallery, inputs.detections)
    assert 0.0 <= search["mAP"] <= 1.0 and 0.0 <= search["top1"] <= search["top5"] <= search["top10"] <= 1.0
    assert 0.0 <= detection["recall"] <= 1.0
    for query in inputs.queries:  # embed_boxes gives L2-normalised embeddings
        assert abs(np.linalg.norm(query["embedding"]) - 1.0) < 1e-4
    summary, _ = evaluate_on_target(model, processor, "prw", str(prw_dir), det_thresh=2.0, progress=False)
    assert summary["mAP"] == 0.0 and summary["top1"] == 0.0  # nothing kept: every AP is 0 by the protocol
    assert summary["dataset"] == "PRW" and summary["settings"] == {"cross_camera": False, "det_thresh": 2.0}


def test_gallery_size_resolution():
    assert resolve_gallery_size("cuhk_sysu", None) == 100
    assert resolve_gallery_size("cuhk_sysu", "full") is None
    assert resolve_gallery_size("cuhk_sysu", 50) == 50
    assert resolve_gallery_size("prw", None) is None
    with pytest.raises(ValueError, match="only CUHK-SYSU has gallery sizes"):
        resolve_gallery_size("posetrack21", 100)
    with pytest.raises(ValueError, match="positive integer"):
        resolve_gallery_size("cuhk_sysu", 0)


def test_custom_data_is_evaluated_under_the_protocol_its_query_file_states(tmp_path):
    generate("custom", tmp_path, seed=0)
    query_path = tmp_path / "query.json"
    query_path.write_text(query_path.read_text().replace('"protocol": "posetrack21"', '"protocol": "prw"', 1))
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_search_model.tiny_config()).eval()
    processor = PersonSearchImageProcessor(min_size=128, max_size=256)
    summary, _ = evaluate_on_target(model, processor, "custom", str(tmp_path), det_thresh=2.0, progress=False)
    assert summary["protocol"] == summary["search"]["protocol"] == "prw"
    assert summary["dataset"] == "custom" and summary["split"] == "test"


def test_unreadable_images_are_skipped_and_counted_not_fatal(tmp_path, caplog):
    """One truncated gallery frame and one unreadable query frame: the evaluation finishes, the gallery image
    has no detection (its persons stay in the ground truth), the query is left out, both are reported."""
    folder = tmp_path / "prw"
    generate("prw", folder, seed=1)
    records = load_target_records("prw", folder, "test")
    queries = load_target_queries("prw", folder)
    query_frame = str(queries[0]["image_id"])
    gallery_frame = next(str(r["image_id"]) for r in records if str(r["image_id"]) != query_frame)
    paths = {str(r["image_id"]): Path(r["image"]) for r in records}
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_search_model.tiny_config()).eval()
    processor = PersonSearchImageProcessor(min_size=128, max_size=256)
    clean = run_search_inference(model, processor, records, queries, progress=False)
    for frame in (query_frame, gallery_frame):  # broken after loading: as if the disk went bad mid-run
        paths[frame].write_bytes(b"\xff\xd8 not a jpeg")
    inputs = run_search_inference(model, processor, records, queries, progress=False)
    assert inputs.unreadable_gallery == sorted({query_frame, gallery_frame}, key=list(paths).index)
    broken = {query_frame, gallery_frame}
    assert inputs.unreadable_queries == [str(q["image_id"]) for q in queries if str(q["image_id"]) in broken]
    assert len(inputs.queries) == len(queries) - len(inputs.unreadable_queries)
    assert f"skipped and counted: gallery image {gallery_frame}" in caplog.text
    for record, before, after in zip(records, clean.detections, inputs.detections):
        if str(record["image_id"]) in (query_frame, gallery_frame):
            assert after["boxes"].shape == (0, 4) and after["embeddings"].shape[0] == 0
        else:  # the other images are untouched by their batch neighbour's failure
            np.testing.assert_allclose(after["boxes"], before["boxes"], atol=1e-4)
    assert len(inputs.gallery) == len(records)  # the unreadable image's persons still count as missed


def test_a_model_in_training_mode_folds_its_batchnorms_once_per_evaluation(prw_dir, monkeypatch):
    """A model evaluated during training (train mode) stays in eval mode across the query batches: the
    backbone's BatchNorm-folded inference copy is built once for the gallery and reused by every query batch,
    not rebuilt per batch (embed_boxes alone restores train mode, which frees the copy), and the mode is
    restored after."""
    import hf_personsearch.backbone as backbone

    builds = []
    build = backbone.build_inference_parts
    monkeypatch.setattr(backbone, "build_inference_parts", lambda *args: builds.append(1) or build(*args))
    torch.manual_seed(0)
    model = PersonSearchModel(tiny_search_model.tiny_config()).train()
    processor = PersonSearchImageProcessor(min_size=128, max_size=256)
    records = load_target_records("prw", prw_dir, "test")
    queries = load_target_queries("prw", prw_dir)
    assert len(queries) > 2  # several query batches of 2
    run_search_inference(model, processor, records, queries, batch_size=2, progress=False)
    assert len(builds) == 1  # encoder and box head, once
    assert model.training
