"""CrowdHuman .odgt: round trip from the synthetic writer, public-loader compatibility, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from format_checks import generated_dataset

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import crowdhuman, record_differences
from hf_personsearch.data.synthetic import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generated_dataset(tmp_path_factory, "crowdhuman", seed=0)


def _parse_all(root, **kwargs):
    return [r for split in crowdhuman.SPLITS for r in crowdhuman.parse(root, split, **kwargs)]


def test_round_trip_reproduces_generator_truth(dataset):
    root, truth = dataset
    records = _parse_all(root, strict=True)
    assert record_differences(truth["records"], records) == []
    assert {r["split"] for r in records} == {"train", "val"}
    # the writer cut one person by the left border: its fbox starts at x < 0 and is clipped to 0
    assert any(np.any(r["boxes"][:, 0] == 0) for r in records)
    assert all(len(r["ignore_regions"]) >= 2 for r in records)  # the "mask" region + the ignored person
    assert all(np.all(r["person_ids"] == -1) and r["task"] == "detection" for r in records)


def test_lines_are_what_public_loaders_read(dataset):
    root, _ = dataset
    for line in (root / "annotation_train.odgt").read_text().splitlines():
        entry = json.loads(line)
        assert (root / "Images" / f"{entry['ID']}.jpg").is_file()
        for gtbox in entry["gtboxes"]:
            assert set(gtbox) == {"tag", "hbox", "head_attr", "fbox", "vbox", "extra"}
            assert len(gtbox["fbox"]) == 4 and "box_id" in gtbox["extra"]
    cut = [
        g
        for line in (root / "annotation_train.odgt").read_text().splitlines()
        for g in json.loads(line)["gtboxes"]
        if g["fbox"][0] < 0
    ]
    assert cut and all(g["vbox"][0] == 0 for g in cut)


def test_vbox_option_uses_visible_boxes(dataset):
    root, truth = dataset
    records = list(crowdhuman.parse(root, "train", box_type="vbox", strict=True))
    assert record_differences([r for r in truth["records"] if r["split"] == "train"], records) == []


def _one_image_dataset(tmp_path, gtboxes, image_ok=True):
    """``(entry, good)``: the first image's line with ``gtboxes``, and a valid line of the second image."""
    generate("crowdhuman", tmp_path, seed=1, num_train=2, num_val=0)
    entry, other = (json.loads(line) for line in (tmp_path / "annotation_train.odgt").read_text().splitlines())
    if not image_ok:
        (tmp_path / "Images" / f"{entry['ID']}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    entry["gtboxes"] = gtboxes
    good = json.dumps({"ID": other["ID"], "gtboxes": [{"tag": "person", "fbox": [10, 10, 20, 50], "extra": {}}]})
    return entry, good


def _write(tmp_path, lines):
    (tmp_path / "annotation_train.odgt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("fbox", "reason"),
    [
        ([10, 10, 0, 40], "box with width or height <= 0"),
        ([10, 10, 20, -5], "box with width or height <= 0"),
        ([float("nan"), 10, 20, 40], "box with NaN or infinite coordinates"),
        ([5000, 10, 20, 40], "box entirely outside the image"),
    ],
)
def test_bad_boxes_are_skipped_and_counted_or_raise(tmp_path, fbox, reason):
    entry, good = _one_image_dataset(tmp_path, [])
    entry["gtboxes"] = [{"tag": "person", "fbox": fbox, "extra": {}}, {"tag": "person", "fbox": [1, 2, 3, 4]}]
    _write(tmp_path, [good, json.dumps(entry)])
    skips = SkipCounter()
    records = list(crowdhuman.parse(tmp_path, "train", skips=skips))
    assert len(records) == 2 and records[1]["boxes"].tolist() == [[1, 2, 4, 6]]
    assert skips.counts == {reason: 1}
    assert "annotation_train.odgt:2 gtboxes[0]" in skips.report("crowdhuman")
    with pytest.raises(DataFormatError, match=r"annotation_train.odgt:2 gtboxes\[0\]: " + reason):
        list(crowdhuman.parse(tmp_path, "train", strict=True))


def test_truncated_line_is_skipped_or_raises_with_line_number(tmp_path):
    entry, good = _one_image_dataset(tmp_path, [])
    _write(tmp_path, [good, good[: len(good) // 2], json.dumps(entry)])
    skips = SkipCounter()
    assert len(list(crowdhuman.parse(tmp_path, "train", skips=skips))) == 2
    assert skips.counts == {"malformed annotation line": 1}
    with pytest.raises(DataFormatError, match="annotation_train.odgt:2: malformed annotation line"):
        list(crowdhuman.parse(tmp_path, "train", strict=True))


def test_unknown_tag_is_skipped(tmp_path):
    entry, good = _one_image_dataset(tmp_path, [{"tag": "car", "fbox": [1, 1, 5, 5]}])
    _write(tmp_path, [json.dumps(entry)])
    skips = SkipCounter()
    (record,) = crowdhuman.parse(tmp_path, "train", skips=skips)
    assert len(record["boxes"]) == 0 and skips.counts == {"unknown key or label": 1}


def test_missing_and_corrupt_images(tmp_path):
    entry, good = _one_image_dataset(tmp_path, [], image_ok=False)
    missing = json.dumps({"ID": "no-such-image", "gtboxes": []})
    _write(tmp_path, [json.dumps(entry), missing, good])
    skips = SkipCounter()
    assert [r["image_id"] for r in crowdhuman.parse(tmp_path, "train", skips=skips)] == [
        f"Images/{json.loads(good)['ID']}.jpg"
    ]
    assert skips.counts == {"corrupt or truncated image": 1, "missing image": 1}
    with pytest.raises(DataFormatError, match="annotation_train.odgt:1 .*corrupt or truncated image"):
        list(crowdhuman.parse(tmp_path, "train", strict=True))


def test_missing_data_dir_says_where_to_obtain(tmp_path):
    with pytest.raises(FileNotFoundError, match="crowdhuman.org"):
        list(crowdhuman.parse(tmp_path / "nowhere", "train"))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        list(crowdhuman.parse(tmp_path, "test"))


def _huge_jpeg_header(path, width=20000, height=10000):
    """Rewrite a jpeg's frame header (SOF0) to declare ``width`` x ``height`` (a decompression bomb)."""
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))


def test_null_gtboxes_non_utf8_duplicates_and_huge_images_are_counted(tmp_path):
    entry, good = _one_image_dataset(tmp_path, None)  # "gtboxes": null
    lines = [json.dumps(entry).encode(), b'{"ID": "caf\xe9", "gtboxes": []}', good.encode(), good.encode()]
    (tmp_path / "annotation_train.odgt").write_bytes(b"\n".join(lines) + b"\n")
    skips = SkipCounter()
    records = list(crowdhuman.parse(tmp_path, "train", skips=skips))
    assert [r["image_id"] for r in records] == [f"Images/{json.loads(good)['ID']}.jpg"]
    assert skips.counts == {"malformed annotation line": 1, "line is not UTF-8": 1, "duplicate image id": 1}
    for line, message in [(1, "key 'gtboxes': expected a list, got None"), (2, "line is not UTF-8")]:
        (tmp_path / "annotation_train.odgt").write_bytes(b"\n".join(lines[line - 1 :]) + b"\n")
        with pytest.raises(DataFormatError, match=f"annotation_train.odgt:1: .*{message}"):
            list(crowdhuman.parse(tmp_path, "train", strict=True))
    with pytest.raises(DataFormatError, match="annotation_train.odgt:2: duplicate image id"):
        (tmp_path / "annotation_train.odgt").write_bytes(b"\n".join(lines[2:]) + b"\n")
        list(crowdhuman.parse(tmp_path, "train", strict=True))

    _huge_jpeg_header(tmp_path / "Images" / f"{json.loads(good)['ID']}.jpg")
    skips = SkipCounter()
    assert list(crowdhuman.parse(tmp_path, "train", skips=skips)) == []
    assert skips.counts == {"corrupt or truncated image": 1, "duplicate image id": 1}
    assert "exceeds limit" in skips.summary()  # PIL's decompression bomb limit, not a 600 MB decode
