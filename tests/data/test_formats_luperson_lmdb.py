"""LUPerson in its released LMDB + keys.pkl layout: round trip, safe keys.pkl, bad values, no lmdb."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import luperson, record_differences
from hf_personsearch.data.synthetic import generate
from hf_personsearch.data.synthetic.luperson import write_lmdb


@pytest.fixture
def lmdb_installed():
    return pytest.importorskip("lmdb")


def test_round_trip_same_crops_as_the_folder_layout(tmp_path, lmdb_installed):
    truth = generate("luperson", tmp_path / "lmdb_layout", seed=0, num_crops=6, layout="lmdb")
    folder_truth = generate("luperson", tmp_path / "folder_layout", seed=0, num_crops=6)
    assert sorted(p.name for p in (tmp_path / "lmdb_layout").iterdir()) == ["SYNTHETIC_DATA.json", "keys.pkl", "lmdb"]

    records = list(luperson.parse(tmp_path / "lmdb_layout", "train", strict=True))
    assert record_differences(truth["records"], records) == []
    assert record_differences(folder_truth["records"], records) == []
    assert [r["image_id"] for r in records] == sorted(r["image_id"] for r in truth["records"])
    assert list(luperson.parse(tmp_path / "lmdb_layout", layout="lmdb"))[0]["image_id"] == records[0]["image_id"]
    for record in records:
        # the value is the very JPEG file of the folder layout, and the record says which key it came from
        folder_file = tmp_path / "folder_layout" / record["image_id"]
        assert record["image"] == {"bytes": folder_file.read_bytes(), "path": record["image_id"]}
        with Image.open(io.BytesIO(record["image"]["bytes"])) as image:
            assert image.size == (record["width"], record["height"])
        assert record["boxes"].tolist() == [[0, 0, record["width"], record["height"]]]
        assert record["person_ids"].tolist() == [-1] and record["camera_id"] == -1


def test_lmdb_in_data_dir_itself_and_bytes_keys(tmp_path, lmdb_installed):
    crop = io.BytesIO()
    Image.new("RGB", (20, 50), (200, 10, 10)).save(crop, format="JPEG")
    write_lmdb(tmp_path, {"spain/madrid/00000001_0001.jpg": crop.getvalue()}, keys=[b"spain/madrid/00000001_0001.jpg"])
    for name in ("data.mdb", "lock.mdb"):  # the release's other arrangement: data.mdb next to keys.pkl
        os.replace(tmp_path / "lmdb" / name, tmp_path / name)
    (tmp_path / "lmdb").rmdir()
    (record,) = luperson.parse(tmp_path, strict=True)
    assert (record["image_id"], record["width"], record["height"]) == ("spain/madrid/00000001_0001.jpg", 20, 50)


def test_dataset_builder_stores_the_jpeg_bytes(tmp_path, lmdb_installed):
    from hf_personsearch.data.loading import load_person_search_dataset

    truth = generate("luperson", tmp_path / "raw", seed=3, num_crops=3, layout="lmdb")
    dataset = load_person_search_dataset("luperson", tmp_path / "raw", cache_dir=tmp_path / "cache", strict=True)
    by_id = {r["image_id"]: r for r in truth["records"]}
    assert sorted(dataset["image_id"]) == sorted(by_id)
    for row in dataset:
        expected = Image.open(io.BytesIO(by_id[row["image_id"]]["image"]["bytes"]))
        assert np.array_equal(np.asarray(row["image"]), np.asarray(expected))


class _RunsCode:
    """A pickled object whose loading would create a folder: what an unsafe keys.pkl could do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("runs_code", r"mkdir; only builtins list/str/bytes/tuple are allowed"),
        (OrderedDict(a=1), r"OrderedDict; only builtins list/str/bytes/tuple are allowed"),
        ({"keys": ["a/b/00000001_0001.jpg"]}, "expected a pickled list of str keys, got dict"),
        ([3], "key 0 must be a non-empty str, got 3"),
    ],
)
def test_unsafe_or_wrong_keys_pickle_is_rejected(tmp_path, payload, message):
    (tmp_path / "lmdb").mkdir()
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"")
    pwned = tmp_path / "pwned"
    with open(tmp_path / "keys.pkl", "wb") as file:
        pickle.dump(_RunsCode(pwned) if payload == "runs_code" else payload, file)
    with pytest.raises(DataFormatError, match=message) as raised:
        list(luperson.parse(tmp_path, layout="lmdb"))
    assert str(tmp_path / "keys.pkl") in str(raised.value)
    assert not pwned.exists()


def test_truncated_keys_pickle_names_the_file(tmp_path):
    (tmp_path / "keys.pkl").write_bytes(pickle.dumps(["a/b/00000001_0001.jpg"])[:-3])
    with pytest.raises(DataFormatError, match="keys.pkl: not a safe pickled list of keys"):
        luperson.read_keys(tmp_path / "keys.pkl")


@pytest.mark.parametrize(
    ("damage", "reason"), [("missing", "missing image"), ("corrupt", "corrupt or truncated image")]
)
def test_missing_key_or_corrupt_value_skipped_and_counted(tmp_path, lmdb_installed, damage, reason):
    truth = generate("luperson", tmp_path / "src", seed=1, num_crops=3, layout="lmdb")
    crops = {r["image_id"]: r["image"]["bytes"] for r in truth["records"]}
    bad_key = sorted(crops)[1]
    if damage == "missing":
        keys = list(crops)
        del crops[bad_key]
    else:
        keys = None
        crops[bad_key] = crops[bad_key][:150]
    write_lmdb(tmp_path / "raw", crops, keys=keys)

    skips = SkipCounter()
    records = list(luperson.parse(tmp_path / "raw", skips=skips))
    assert [r["image_id"] for r in records] == [
        k for k in sorted(truth_id["image_id"] for truth_id in truth["records"]) if k != bad_key
    ]
    assert skips.counts == {reason: 1}
    with pytest.raises(DataFormatError, match=f"key '{bad_key}': {reason}"):
        list(luperson.parse(tmp_path / "raw", strict=True))


def test_truncated_data_mdb_is_refused_before_lmdb_reads_past_its_end(tmp_path, lmdb_installed):
    # Crops larger than a page: each value takes overflow pages, so half the file cuts values off.
    rng = np.random.default_rng(0)
    crops = {}
    for index in range(40):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 48, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        crops[f"spain/madrid/{index + 1:08d}_0001.jpg"] = buffer.getvalue()
    write_lmdb(tmp_path, crops)
    data_file = tmp_path / "lmdb" / "data.mdb"
    with open(data_file, "r+b") as handle:
        handle.truncate(data_file.stat().st_size // 2)
    # In a child process: without the check, lmdb reads the missing pages and the process dies of SIGBUS.
    code = (
        "import sys\n"
        "from hf_personsearch.data.errors import DataFormatError\n"
        "from hf_personsearch.data.formats import luperson\n"
        "try:\n"
        f"    list(luperson.parse({str(tmp_path)!r}))\n"
        "except DataFormatError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    assert f"{data_file}: truncated LMDB file" in result.stdout


def test_duplicate_key_counted_once(tmp_path, lmdb_installed):
    truth = generate("luperson", tmp_path / "src", seed=2, num_crops=2, layout="lmdb")
    crops = {r["image_id"]: r["image"]["bytes"] for r in truth["records"]}
    write_lmdb(tmp_path / "raw", crops, keys=[*crops, next(iter(crops))])
    skips = SkipCounter()
    assert len(list(luperson.parse(tmp_path / "raw", skips=skips))) == 2
    assert skips.counts == {"duplicate key": 1}


def test_without_lmdb_the_error_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "lmdb").mkdir()
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"")
    (tmp_path / "keys.pkl").write_bytes(pickle.dumps(["a/b/00000001_0001.jpg"]))
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes "import lmdb" raise ImportError
    with pytest.raises(ImportError, match=r"pip install hf-personsearch\[lmdb\]"):
        list(luperson.parse(tmp_path))


def test_layout_choices(tmp_path):
    generate("luperson", tmp_path, seed=0, num_crops=2)
    assert len(list(luperson.parse(tmp_path, layout="auto"))) == 2  # no keys.pkl: the crop folder
    with pytest.raises(FileNotFoundError, match="keys.pkl"):
        list(luperson.parse(tmp_path, layout="lmdb"))
    with pytest.raises(ValueError, match="unknown layout 'zip'"):
        list(luperson.parse(tmp_path, layout="zip"))


def test_keys_pkl_declaring_a_huge_length_is_refused_without_allocating_it(tmp_path):
    import struct
    import tracemalloc

    evil = b"\x80\x04\x8e" + struct.pack("<Q", 300_000_000) + b"x" * 25  # BINBYTES8 of 300 MB, 36 bytes
    assert len(evil) == 36
    (tmp_path / "keys.pkl").write_bytes(evil)
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=r"keys.pkl: not a safe pickled list of keys: expected 300000000"):
            luperson.read_keys(tmp_path / "keys.pkl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
