"""PRW: synthetic raw files -> parser round trip, the CRLF rule of query_info.txt, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from format_checks import assert_same, generated_dataset
from scipy.io import loadmat, savemat

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import prw
from hf_personsearch.data.schema import NO_IDENTITY
from hf_personsearch.data.synthetic import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generated_dataset(tmp_path_factory, "prw", seed=3)


def test_round_trip_records_and_queries(dataset):
    root, truth = dataset
    parsed = list(prw.parse(root, "train")) + list(prw.parse(root, "test"))
    assert_same(parsed, truth["records"])
    assert_same(prw.load_queries(root), truth["queries"])
    assert any(NO_IDENTITY in r["person_ids"] for r in parsed)  # the -2 persons became NO_IDENTITY
    assert {r["camera_id"] for r in parsed} == {1, 2, 3}


def test_query_info_has_crlf_and_public_readers_get_the_frame_names(dataset):
    root, truth = dataset
    raw_lines = (root / "query_info.txt").read_bytes().splitlines(keepends=True)
    assert raw_lines and all(line.endswith(b"\r\n") for line in raw_lines)
    # The public loaders' rule: split on spaces, drop the last two characters of the frame field.
    names = [str(line, "utf-8").split(" ")[5][:-2] for line in raw_lines]
    assert [f"frames/{n}.jpg" for n in names] == [q["image_id"] for q in truth["queries"]]
    assert all((root / "frames" / f"{n}.jpg").is_file() for n in names)


def test_public_loader_indexing_of_the_mat_files(dataset):
    root, truth = dataset
    names = [img[0][0] + ".jpg" for img in loadmat(root / "frame_test.mat")["img_index_test"]]
    test_records = [r for r in truth["records"] if r["split"] == "test"]
    assert names == [r["image_id"].split("/")[1] for r in test_records]
    rows = loadmat(str(root / "annotations" / names[0]))["box_new"]  # loadmat appends ".mat"
    xyxy = np.concatenate([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], axis=1)
    assert np.array_equal(xyxy, test_records[0]["boxes"])


def test_older_annotation_keys_are_read(tmp_path):
    truth = generate("prw", tmp_path, seed=1)
    first = truth["records"][0]["image_id"].split("/")[1]
    path = tmp_path / "annotations" / f"{first}.mat"
    savemat(path, {"anno_previous": loadmat(path)["box_new"]})
    assert_same(next(iter(prw.parse(tmp_path, "train"))), truth["records"][0])


def test_bad_boxes_are_clipped_or_skipped_and_counted(tmp_path):
    generate("prw", tmp_path, seed=1)
    first = loadmat(tmp_path / "frame_train.mat")["img_index_train"][0][0][0]
    rows = np.array(
        [
            [5, -4.0, 10.0, 20.0, 50.0],  # overhangs the left edge: clipped to x1 = 0
            [-2, 30.0, 10.0, 0.0, 50.0],  # zero width
            [6, np.nan, 10.0, 20.0, 50.0],  # NaN
            [7, 500.0, 10.0, 20.0, 50.0],  # right of the 240-pixel image
            [-7, 30.0, 10.0, 20.0, 50.0],  # invalid id
        ]
    )
    savemat(tmp_path / "annotations" / f"{first}.jpg.mat", {"box_new": rows})
    skips = SkipCounter()
    record = next(iter(prw.parse(tmp_path, "train", skips=skips)))
    assert np.array_equal(record["boxes"], np.array([[0, 10, 16, 60]], np.float32))
    assert record["person_ids"].tolist() == [5]
    assert skips.counts == {
        "box has width or height <= 0": 1,
        "box has NaN or infinite coordinates": 1,
        "box outside image": 1,
        "invalid person id": 1,
    }
    with pytest.raises(DataFormatError, match=f"{first}.jpg.mat key 'box_new' row 1"):
        next(iter(prw.parse(tmp_path, "train", strict=True)))


def test_unknown_mat_key_and_missing_files(tmp_path):
    truth = generate("prw", tmp_path, seed=1)
    names = [r["image_id"].split("/")[1] for r in truth["records"] if r["split"] == "train"]
    savemat(tmp_path / "annotations" / f"{names[0]}.mat", {"boxes": np.zeros((1, 5))})
    (tmp_path / "frames" / names[1]).unlink()
    skips = SkipCounter()
    records = list(prw.parse(tmp_path, "train", skips=skips))
    assert [r["image_id"] for r in records] == [f"frames/{n}" for n in names[2:]]
    assert skips.counts == {"annotation file without box key": 1, "image file missing": 1}
    assert "expected one of ('box_new', 'anno_file', 'anno_previous'), found keys ['boxes']" in skips.report()
    with pytest.raises(DataFormatError, match=f"{names[0]}.mat"):
        list(prw.parse(tmp_path, "train", strict=True))
    with pytest.raises(FileNotFoundError, match="PRW-baseline"):
        list(prw.parse(tmp_path / "nowhere", "train"))
    (tmp_path / "frame_test.mat").unlink()
    with pytest.raises(FileNotFoundError, match="frame_test.mat"):
        list(prw.parse(tmp_path, "test"))


def test_malformed_query_line_names_file_and_line(tmp_path):
    truth = generate("prw", tmp_path, seed=1)
    path = tmp_path / "query_info.txt"
    lines = path.read_bytes().split(b"\r\n")
    lines[1] = b"12 3 4 c1s1_000001"
    path.write_bytes(b"\r\n".join(lines))
    skips = SkipCounter()
    queries = prw.load_queries(tmp_path, skips=skips)
    assert [q["person_id"] for q in queries] == [q["person_id"] for k, q in enumerate(truth["queries"]) if k != 1]
    with pytest.raises(DataFormatError, match="query_info.txt:2"):
        prw.load_queries(tmp_path, strict=True)


def test_frame_listed_twice_is_kept_once_and_counted(tmp_path):
    truth = generate("prw", tmp_path, seed=2)
    frames = loadmat(tmp_path / "frame_train.mat")["img_index_train"]
    savemat(tmp_path / "frame_train.mat", {"img_index_train": np.vstack([frames, frames[:1]])})
    skips = SkipCounter()
    records = list(prw.parse(tmp_path, "train", skips=skips))
    assert_same(records, [r for r in truth["records"] if r["split"] == "train"])
    assert skips.counts == {"duplicate image id": 1}
    with pytest.raises(DataFormatError, match="frame_train.mat: duplicate image id"):
        list(prw.parse(tmp_path, "train", strict=True))


def test_mat_element_of_unknown_type_is_refused_before_scipy_reads_it(tmp_path):
    """scipy 1.17's loadmat crashes the interpreter (SIGSEGV) on an element type it does not know; one
    changed byte of a downloaded file does it. The element structure is checked first."""
    import struct

    from hf_personsearch.data.formats.matlab import read_mat

    savemat(tmp_path / "frame_train.mat", {"img_index_train": np.array([["c1s1_000151"]], dtype=object)})
    data = bytearray((tmp_path / "frame_train.mat").read_bytes())
    tag = data.index(struct.pack("<II", 16, 11))  # the miUTF8 element of the 11-character name
    data[tag : tag + 4] = struct.pack("<I", 0xAB10)
    (tmp_path / "frame_train.mat").write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=f"frame_train.mat: not a readable MATLAB v5 file .*byte {tag}"):
        read_mat(tmp_path / "frame_train.mat")
    data[tag : tag + 8] = struct.pack("<II", 16, 10**6)  # a size beyond the file
    (tmp_path / "frame_train.mat").write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=f"element at byte {tag} declares 1000000 bytes"):
        read_mat(tmp_path / "frame_train.mat")
