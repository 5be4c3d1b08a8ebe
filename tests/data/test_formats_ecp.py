"""EuroCity Persons JSON trees: round trip, recursion, day/night, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from format_checks import generated_dataset

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import ecp, record_differences
from hf_personsearch.data.synthetic import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generated_dataset(tmp_path_factory, "ecp", seed=0)


def test_round_trip_reproduces_generator_truth(dataset):
    root, truth = dataset
    records = [r for split in ecp.SPLITS for r in ecp.parse(root, split, strict=True)]
    assert record_differences(truth["records"], records) == []
    assert len(records) == 8
    assert {r["image_id"].split("/")[0] for r in records} == {"day", "night"}
    assert all(len(r["ignore_regions"]) == 3 for r in records)  # rider, depiction, group


def test_night_only_and_data_dir_may_be_the_ecp_folder(dataset):
    root, truth = dataset
    night = list(ecp.parse(root / "ECP", "val", times=("night",), strict=True))
    expected = [r for r in truth["records"] if r["split"] == "val" and r["image_id"].startswith("night/")]
    assert record_differences(expected, night) == []


def test_riders_as_persons_moves_the_rider_to_the_boxes(dataset):
    root, truth = dataset
    (record, *_) = ecp.parse(root, "train", riders_as_persons=True, strict=True)
    expected = truth["records"][0]
    rider = expected["ignore_regions"][0]
    np.testing.assert_allclose(record["boxes"], np.concatenate([expected["boxes"], rider[None]]), atol=1e-3)
    np.testing.assert_allclose(record["ignore_regions"], expected["ignore_regions"][1:], atol=1e-3)


def test_recursion_finds_nested_pedestrians(dataset, tmp_path):
    generate("ecp", tmp_path, seed=3, num_per_subset=1)
    label = next((tmp_path / "ECP/day/labels/train").rglob("*.json"))
    tree = json.loads(label.read_text())
    nested = {"identity": "pedestrian", "x0": 5, "y0": 6, "x1": 25, "y1": 70, "tags": [], "children": []}
    tree["children"] = [
        {
            "identity": "bicycle-group",
            "x0": 0,
            "y0": 0,
            "x1": 1,
            "y1": 1,
            "children": [
                {"identity": "rider", "x0": 1, "y0": 1, "x1": 30, "y1": 80, "tags": [], "children": [nested]}
            ],
        }
    ]
    label.write_text(json.dumps(tree))
    (record,) = ecp.parse(tmp_path, "train", times=("day",), strict=True)
    assert record["boxes"].tolist() == [[5, 6, 25, 70]]
    assert record["ignore_regions"].tolist() == [[1, 1, 30, 80]]


def _set_first_pedestrian(tmp_path, **changes):
    generate("ecp", tmp_path, seed=2, num_per_subset=1)
    label = next((tmp_path / "ECP/day/labels/train").rglob("*.json"))
    tree = json.loads(label.read_text())
    tree["children"][0].update(changes)
    label.write_text(json.dumps(tree))
    return label


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"x1": 3.0, "x0": 3.0}, "box with width or height <= 0"),
        ({"y0": float("nan")}, "box with NaN or infinite coordinates"),
        ({"x0": -50.0, "x1": -10.0}, "box entirely outside the image"),
        ({"x0": None}, "malformed annotation line"),
    ],
)
def test_bad_boxes(tmp_path, changes, reason):
    label = _set_first_pedestrian(tmp_path, **changes)
    skips = SkipCounter()
    records = list(ecp.parse(tmp_path, "train", times=("day",), skips=skips))
    assert len(records) == 1 and skips.counts == {reason: 1}
    with pytest.raises(DataFormatError, match=rf"{label.name} children\[0\]: {reason}"):
        list(ecp.parse(tmp_path, "train", times=("day",), strict=True))


def test_truncated_json_file(tmp_path):
    label = _set_first_pedestrian(tmp_path)
    label.write_text(label.read_text()[:100])
    skips = SkipCounter()
    assert list(ecp.parse(tmp_path, "train", times=("day",), skips=skips)) == []
    assert skips.counts == {"malformed annotation line": 1}
    with pytest.raises(DataFormatError, match=f"{label.name}: malformed annotation line"):
        list(ecp.parse(tmp_path, "train", times=("day",), strict=True))


@pytest.mark.parametrize(
    ("damage", "reason"), [("delete", "missing image"), ("truncate", "corrupt or truncated image")]
)
def test_missing_or_corrupt_image(tmp_path, damage, reason):
    _set_first_pedestrian(tmp_path)
    image = next((tmp_path / "ECP/day/img/train").rglob("*.png"))
    if damage == "delete":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:200])
    skips = SkipCounter()
    assert list(ecp.parse(tmp_path, "train", times=("day",), skips=skips)) == []
    assert skips.counts == {reason: 1}
    with pytest.raises(DataFormatError, match=reason):
        list(ecp.parse(tmp_path, "train", times=("day",), strict=True))


def test_missing_data_dir_says_where_to_obtain(tmp_path):
    with pytest.raises(FileNotFoundError, match="eurocity-dataset.tudelft.nl"):
        list(ecp.parse(tmp_path / "absent", "train"))


def test_null_children_are_counted_not_a_crash(tmp_path):
    generate("ecp", tmp_path, seed=3)
    labels = sorted((tmp_path / "ECP" / "day" / "labels" / "train").rglob("*.json"))
    tree = json.loads(labels[0].read_text())
    labels[0].write_text(json.dumps(dict(tree, children=None)))
    tree = json.loads(labels[1].read_text())
    tree["children"][0]["children"] = 5
    labels[1].write_text(json.dumps(tree))
    skips = SkipCounter()
    records = list(ecp.parse(tmp_path, "train", times=("day",), skips=skips))
    assert len(records) == len(labels) - 1
    assert skips.counts == {"malformed annotation line": 2}
    with pytest.raises(DataFormatError, match=f"{labels[0].name}: malformed annotation line .*'children'"):
        list(ecp.parse(tmp_path, "train", times=("day",), strict=True))
