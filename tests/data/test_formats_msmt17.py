"""MSMT17 list files: round trip, public-loader reading, bad lines and images."""

from __future__ import annotations

import pytest
from format_checks import generated_dataset

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import msmt17, record_differences
from hf_personsearch.data.synthetic import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generated_dataset(tmp_path_factory, "msmt17", seed=0)


def test_round_trip_reproduces_generator_truth(dataset):
    root, truth = dataset
    records = [r for split in msmt17.SPLITS for r in msmt17.parse(root, split, strict=True)]
    assert record_differences(truth["records"], records) == []
    sizes = {split: sum(r["split"] == split for r in records) for split in msmt17.SPLITS}
    assert sizes == {"train": 12, "val": 4, "query": 3, "gallery": 6}
    query = [r for r in records if r["split"] == "query"]
    assert [int(r["person_ids"][0]) for r in query] == [0, 1, 2] and {r["camera_id"] for r in query} == {0}
    assert all(r["boxes"].tolist() == [[0, 0, r["width"], r["height"]]] for r in records)


def test_lines_read_the_way_public_loaders_read_them(dataset):
    root, truth = dataset
    train_truth = [r for r in truth["records"] if r["split"] == "train"]
    lines = (root / "MSMT17_V1" / "list_train.txt").read_text().splitlines()
    for line, record in zip(lines, train_truth, strict=True):
        img_path, pid = line.split(" ")
        assert int(pid) == record["person_ids"][0]
        assert int(img_path.split("/")[1].split("_")[2]) - 1 == record["camera_id"]
        assert (root / "MSMT17_V1" / "train" / img_path).is_file()


def _damage_line(root, new_line):
    list_path = root / "MSMT17_V1" / "list_train.txt"
    lines = list_path.read_text().splitlines()
    lines[1] = new_line(lines[1])
    list_path.write_text("\n".join(lines) + "\n")
    return list_path


@pytest.mark.parametrize(
    ("new_line", "reason"),
    [
        (lambda line: line.split()[0], "malformed annotation line"),
        (lambda line: line.split()[0] + " seven", "malformed annotation line"),
        (lambda line: "0000/badname.jpg 0", "malformed annotation line"),
        (lambda line: line.replace(".jpg", "_gone.jpg"), "missing image"),
    ],
)
def test_bad_lines(tmp_path, new_line, reason):
    generate("msmt17", tmp_path, seed=1, num_train_ids=1, num_test_ids=1, num_cameras=2)
    list_path = _damage_line(tmp_path, new_line)
    skips = SkipCounter()
    assert len(list(msmt17.parse(tmp_path, "train", skips=skips))) == 1
    assert skips.counts == {reason: 1}
    with pytest.raises(DataFormatError, match=f"{list_path.name}:2 .*{reason}|{list_path.name}:2: {reason}"):
        list(msmt17.parse(tmp_path, "train", strict=True))


def test_corrupt_image(tmp_path):
    generate("msmt17", tmp_path, seed=1, num_train_ids=1, num_test_ids=1, num_cameras=2)
    image = next((tmp_path / "MSMT17_V1" / "test").rglob("*.jpg"))
    image.write_bytes(image.read_bytes()[:300])
    skips = SkipCounter()
    assert (
        len(list(msmt17.parse(tmp_path, "query", skips=skips)))
        + len(list(msmt17.parse(tmp_path, "gallery", skips=skips)))
        == 1
    )
    assert skips.counts == {"corrupt or truncated image": 1}


def test_missing_data_dir_says_where_to_obtain(tmp_path):
    with pytest.raises(FileNotFoundError, match="pkuvmc.com"):
        list(msmt17.parse(tmp_path / "absent", "train"))
