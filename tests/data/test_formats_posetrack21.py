"""PoseTrack21 person search: synthetic json -> parser round trip, ignore polygons, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from format_checks import assert_same

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import posetrack21
from hf_personsearch.data.synthetic import generate


def test_round_trip_records_and_queries(tmp_path):
    truth = generate("posetrack21", tmp_path, seed=4)
    parsed = list(posetrack21.parse(tmp_path, "train")) + list(posetrack21.parse(tmp_path, "val"))
    assert_same(parsed, truth["records"])
    assert_same(posetrack21.load_queries(tmp_path), truth["queries"])
    val_ids = {int(i) for r in parsed if r["split"] == "val" for i in r["person_ids"]}
    assert {q["person_id"] for q in truth["queries"]} == val_ids
    # each query person is also seen by another camera (video) of the val gallery
    for query in truth["queries"]:
        cameras = {r["camera_id"] for r in parsed if r["split"] == "val" and query["person_id"] in r["person_ids"]}
        assert len(cameras - {query["camera_id"]}) >= 1


def _edit(path, change):
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_ignore_polygons_become_their_bounding_boxes(tmp_path):
    generate("posetrack21", tmp_path, seed=4)
    path = tmp_path / "posetrack_person_search/train.json"

    def two_polygons(document):
        document["images"][0]["ignore_regions_x"] = [[10, 40, 25], [-5, 8]]
        document["images"][0]["ignore_regions_y"] = [[50, 60, 90], [3, 400]]

    _edit(path, two_polygons)
    record = next(iter(posetrack21.parse(tmp_path, "train")))
    assert np.array_equal(record["ignore_regions"], np.array([[10, 50, 40, 90], [0, 3, 8, 128]], np.float32))


def test_bad_boxes_missing_images_and_truncated_json(tmp_path):
    truth = generate("posetrack21", tmp_path, seed=4)
    path = tmp_path / "posetrack_person_search/train.json"
    first_image = truth["records"][0]

    def break_it(document):
        image_id = document["images"][0]["id"]
        annotations = [a for a in document["annotations"] if a["image_id"] == image_id]
        annotations[0]["bbox"] = [10, 10, -3, 20]
        annotations[1]["bbox"] = [10, float("nan"), 3, 20]
        document["images"][1]["file_name"] = "images/train/missing.jpg"

    _edit(path, break_it)
    skips = SkipCounter()
    records = list(posetrack21.parse(tmp_path, "train", skips=skips))
    assert len(records) == len([r for r in truth["records"] if r["split"] == "train"]) - 1
    assert np.array_equal(records[0]["boxes"], first_image["boxes"][2:])
    assert skips.counts == {
        "box has width or height <= 0": 1,
        "box has NaN or infinite coordinates": 1,
        "image file missing": 1,
    }
    with pytest.raises(DataFormatError, match=r"train.json annotations\[\d+\] \(image images/train/"):
        list(posetrack21.parse(tmp_path, "train", strict=True))
    path.write_text(path.read_text()[:200])
    with pytest.raises(DataFormatError, match="train.json:1: invalid JSON"):
        list(posetrack21.parse(tmp_path, "train"))
    with pytest.raises(FileNotFoundError, match="anDoer/PoseTrack21"):
        list(posetrack21.parse(tmp_path / "missing", "val"))
