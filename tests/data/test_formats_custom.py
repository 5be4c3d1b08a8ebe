"""The custom format (docs/custom_format.md): round trip, the documented example by hand, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from format_checks import assert_same
from PIL import Image

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import custom
from hf_personsearch.data.schema import NO_CAMERA, NO_IDENTITY
from hf_personsearch.data.synthetic import generate


def test_round_trip_records_and_queries(tmp_path):
    truth = generate("custom", tmp_path, seed=6)
    parsed = list(custom.parse(tmp_path, "train")) + list(custom.parse(tmp_path, "test"))
    assert_same(parsed, truth["records"])
    assert_same(custom.load_queries(tmp_path), truth["queries"])
    assert sum(len(r["ignore_regions"]) for r in parsed) == 2


def _documented_example(root):
    """The example of docs/custom_format.md, with a 1920x1080 image whose size the json does not give."""
    (root / "images/cam1").mkdir(parents=True)
    Image.new("RGB", (1920, 1080)).save(root / "images/cam1/0001.jpg")
    document = {
        "images": [{"id": 1, "file_name": "images/cam1/0001.jpg"}],
        "annotations": [
            {"image_id": 1, "bbox": [100, 200, 50, 120], "person_id": 7},
            {"image_id": 1, "bbox": [400, 210, 45, 110]},
            {"image_id": 1, "bbox": [900, 300, 200, 150], "ignore": 1},
        ],
    }
    (root / "test.json").write_text(json.dumps(document))
    return document


def test_documented_example_by_hand(tmp_path):
    document = _documented_example(tmp_path)
    (record,) = custom.parse(tmp_path, "test")
    assert (record["width"], record["height"], record["camera_id"]) == (1920, 1080, NO_CAMERA)
    assert np.array_equal(record["boxes"], np.array([[100, 200, 150, 320], [400, 210, 445, 320]], np.float32))
    assert record["person_ids"].tolist() == [7, NO_IDENTITY]
    assert np.array_equal(record["ignore_regions"], np.array([[900, 300, 1100, 450]], np.float32))
    document["annotations"] = document["annotations"][:1]
    (tmp_path / "query.json").write_text(json.dumps(document))
    (query,) = custom.load_queries(tmp_path)
    assert query["image_id"] == "images/cam1/0001.jpg" and query["person_id"] == 7
    assert np.array_equal(query["box"], np.array([100, 200, 150, 320], np.float32))


def test_bad_input_is_skipped_and_counted_or_raises(tmp_path):
    document = _documented_example(tmp_path)
    document["annotations"] += [
        {"image_id": 1, "bbox": [1900, 1000, 50, 120], "person_id": 8},  # overhangs: clipped
        {"image_id": 1, "bbox": [2000, 10, 50, 120], "person_id": 9},  # right of the image
        {"image_id": 1, "bbox": [10, 10, 50], "person_id": 9},  # three numbers
        {"image_id": 1, "bbox": [10, 10, 50, 50], "person_id": "nine"},
        {"bbox": [10, 10, 50, 50]},
    ]
    (tmp_path / "test.json").write_text(json.dumps(document))
    skips = SkipCounter()
    (record,) = custom.parse(tmp_path, "test", skips=skips)
    assert np.array_equal(record["boxes"][-1], np.array([1900, 1000, 1920, 1080], np.float32))
    assert record["person_ids"].tolist() == [7, NO_IDENTITY, 8]
    assert skips.counts == {
        "box outside image": 1,
        "box is not 4 numbers": 1,
        "invalid person_id": 1,
        "annotation without image_id": 1,
    }
    with pytest.raises(DataFormatError, match=r"test.json annotations\[7\]: annotation without image_id"):
        list(custom.parse(tmp_path, "test", strict=True))
    document["annotations"].pop()
    (tmp_path / "test.json").write_text(json.dumps(document))
    with pytest.raises(DataFormatError, match=r"annotations\[4\] \(image images/cam1/0001.jpg\): box outside"):
        list(custom.parse(tmp_path, "test", strict=True))
    query = {"images": [{"id": 5, "file_name": "images/elsewhere.jpg", "width": 10, "height": 10}],
             "annotations": [{"image_id": 5, "bbox": [1, 1, 5, 5], "person_id": 3}]}  # fmt: skip
    (tmp_path / "query.json").write_text(json.dumps(query))
    with pytest.raises(DataFormatError, match="query image not in the gallery split"):
        custom.load_queries(tmp_path, strict=True)
    with pytest.raises(FileNotFoundError, match=r"splits found: \['test'\]"):
        list(custom.parse(tmp_path, "train"))
    with pytest.raises(FileNotFoundError, match="docs/custom_format.md"):
        list(custom.parse(tmp_path / "missing", "train"))


def test_query_file_states_the_protocol_default_posetrack21(tmp_path):
    generate("custom", tmp_path, seed=0)
    query_path = tmp_path / "query.json"
    document = json.loads(query_path.read_text())
    assert document["protocol"] == custom.DEFAULT_PROTOCOL == "posetrack21"
    document["protocol"] = "prw"
    query_path.write_text(json.dumps(document))
    assert custom.read_protocol(tmp_path) == "prw"
    del document["protocol"]
    query_path.write_text(json.dumps(document))
    assert custom.read_protocol(tmp_path) == "posetrack21"


@pytest.mark.parametrize(
    "value, message",
    [("cuhk_sysu", "per-query gallery lists"), ("PRW", "got 'PRW'"), (["prw"], r"got \['prw'\]")],
)
def test_wrong_protocol_names_the_file_and_key(tmp_path, value, message):
    generate("custom", tmp_path, seed=0)
    query_path = tmp_path / "query.json"
    document = json.loads(query_path.read_text())
    query_path.write_text(json.dumps({**document, "protocol": value}))
    with pytest.raises(DataFormatError, match=rf"query.json: key 'protocol': expected one of .*{message}"):
        custom.read_protocol(tmp_path)


def _two_images(root, images, annotations):
    """Two real 64x48 jpegs under images/ and a test.json with the given entries."""
    (root / "images").mkdir(exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)  # noise: most bytes are the scan
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(pixels).save(root / "images" / name)
    (root / "test.json").write_text(json.dumps({"images": images, "annotations": annotations}))


def _parse_counted(root):
    skips = SkipCounter()
    return list(custom.parse(root, "test", skips=skips)), skips


def test_string_image_ids_unknown_images_and_duplicate_ids_are_counted(tmp_path):
    images = [{"id": "1", "file_name": "images/a.jpg"}, {"id": 2, "file_name": "images/b.jpg"}]
    annotations = [
        {"image_id": 1, "bbox": [1, 1, 10, 10], "person_id": 3},  # int 1, but the image id is the string "1"
        {"image_id": "1", "bbox": [2, 2, 10, 10], "person_id": 4},
        {"image_id": 7, "bbox": [1, 1, 10, 10], "person_id": 5},  # no image 7
    ]
    _two_images(tmp_path, images, annotations)
    records, skips = _parse_counted(tmp_path)
    assert [r["person_ids"].tolist() for r in records] == [[4], []]
    assert skips.counts == {"annotation refers to an unknown image_id": 2}
    assert "annotations[0]: annotation refers to an unknown image_id (image_id 1 (int; image ids: ['int', 'str'])" in (
        skips.summary()
    )
    with pytest.raises(DataFormatError, match=r"test.json annotations\[0\]: annotation refers to an unknown"):
        list(custom.parse(tmp_path, "test", strict=True))

    # two images with the same id: their boxes cannot be told apart, so both are dropped and counted
    images = [{"id": 1, "file_name": "images/a.jpg"}, {"id": 1, "file_name": "images/b.jpg"}]
    _two_images(tmp_path, images, [{"image_id": 1, "bbox": [1, 1, 10, 10], "person_id": 3}])
    records, skips = _parse_counted(tmp_path)
    assert records == []
    assert skips.counts == {"duplicate image id": 2, "annotation refers to a duplicated image id": 1}
    with pytest.raises(DataFormatError, match=r"test.json images\[1\]: duplicate image id"):
        list(custom.parse(tmp_path, "test", strict=True))

    # the same image listed twice under two ids: the first entry is kept
    images = [{"id": 1, "file_name": "images/a.jpg"}, {"id": 2, "file_name": "images/a.jpg"}]
    _two_images(tmp_path, images, [{"image_id": 1, "bbox": [1, 1, 10, 10], "person_id": 3}])
    records, skips = _parse_counted(tmp_path)
    assert [r["person_ids"].tolist() for r in records] == [[3]]
    assert skips.counts == {"duplicate file_name": 1}


def test_declared_size_must_match_the_file_and_numbers_fit_the_schema(tmp_path):
    images = [
        {"id": 1, "file_name": "images/a.jpg", "width": 640, "height": 480},  # the file is 64x48
        {"id": 2, "file_name": "images/b.jpg", "width": "wide", "height": 48},
    ]
    annotations = [{"image_id": 1, "bbox": [100, 100, 10, 10], "person_id": 3}]
    _two_images(tmp_path, images, annotations)
    records, skips = _parse_counted(tmp_path)
    assert records == []
    assert skips.counts == {"declared width/height differ from the image file": 1, "invalid width/height": 1}
    with pytest.raises(DataFormatError, match=r"image 1 \(images/a.jpg\): declared .* \(declared 640x480, file 64x48"):
        list(custom.parse(tmp_path, "test", strict=True))

    images = [{"id": 1, "file_name": "images/a.jpg", "width": 64, "height": 48, "camera_id": 1e20}]
    annotations = [
        {"image_id": 1, "bbox": [1, 1, 10, 10], "person_id": 1e20},
        {"image_id": 1, "bbox": [1, 1, 10, 10], "person_id": 2},
    ]
    _two_images(tmp_path, images, annotations)
    records, skips = _parse_counted(tmp_path)
    assert records == [] and skips.counts == {"invalid camera_id": 1}
    images[0]["camera_id"] = 3
    _two_images(tmp_path, images, annotations)
    records, skips = _parse_counted(tmp_path)
    assert [r["person_ids"].tolist() for r in records] == [[2]] and skips.counts == {"invalid person_id": 1}


def test_truncated_jpeg_is_found_at_load(tmp_path):
    images = [{"id": 1, "file_name": "images/a.jpg"}, {"id": 2, "file_name": "images/b.jpg"}]
    _two_images(tmp_path, images, [])
    jpeg = (tmp_path / "images/b.jpg").read_bytes()
    (tmp_path / "images/b.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])  # the header is intact
    records, skips = _parse_counted(tmp_path)
    assert [r["image_id"] for r in records] == ["images/a.jpg"]
    assert skips.counts == {"image file unreadable": 1}
    with pytest.raises(
        DataFormatError,
        match=r"images/b.jpg: image file unreadable \(no JPEG/PNG end marker, full decode: .*truncated",
    ):
        list(custom.parse(tmp_path, "test", strict=True))
