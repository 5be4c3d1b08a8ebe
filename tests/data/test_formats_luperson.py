"""LUPerson crop folders: round trip and bad files."""

from __future__ import annotations

import pytest

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import luperson, record_differences
from hf_personsearch.data.synthetic import generate


def test_round_trip_both_folder_depths(tmp_path):
    truth = generate("luperson", tmp_path, seed=0)
    records = list(luperson.parse(tmp_path, "train", strict=True))
    assert record_differences(truth["records"], records) == []
    depths = {len(r["image_id"].split("/")) for r in records}
    assert depths == {3, 4}
    assert all(r["person_ids"].tolist() == [-1] and r["camera_id"] == -1 for r in records)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("truncate", "corrupt or truncated image"), ("rename", "malformed annotation line")],
)
def test_bad_crops(tmp_path, damage, reason):
    generate("luperson", tmp_path, seed=1, num_crops=3)
    crop = sorted(tmp_path.rglob("*.jpg"))[0]
    if damage == "truncate":
        crop.write_bytes(crop.read_bytes()[:150])
    else:
        crop.rename(crop.with_name("thumbnail.jpg"))
    skips = SkipCounter()
    assert len(list(luperson.parse(tmp_path, skips=skips))) == 2
    assert skips.counts == {reason: 1}
    with pytest.raises(DataFormatError, match=reason):
        list(luperson.parse(tmp_path, strict=True))


def test_missing_data_dir_says_where_to_obtain(tmp_path):
    with pytest.raises(FileNotFoundError, match="DengpanFu/LUPerson"):
        list(luperson.parse(tmp_path / "absent"))


def test_upper_case_and_jpeg_suffixes_and_symlinked_folders(tmp_path):
    truth = generate("luperson", tmp_path / "real", seed=2, num_crops=4)
    crops = sorted((tmp_path / "real").rglob("*.jpg"))
    crops[0].rename(crops[0].with_suffix(".JPG"))
    crops[1].rename(crops[1].with_suffix(".jpeg"))
    (tmp_path / "data").mkdir()
    countries = sorted(path for path in (tmp_path / "real").iterdir() if path.is_dir())
    for country in countries:
        (tmp_path / "data" / country.name).symlink_to(country, target_is_directory=True)
    first_city = sorted(countries[0].iterdir())[0]
    (first_city / "loop").symlink_to(first_city, target_is_directory=True)  # a link loop must end
    skips = SkipCounter()
    records = list(luperson.parse(tmp_path / "data", skips=skips))
    assert len(records) == len(truth["records"]) == 4
    assert {r["image_id"].rsplit(".", 1)[1] for r in records} == {"jpg", "JPG", "jpeg"}
    assert skips.counts == {"folder reached twice through symlinks": 1}
    with pytest.raises(DataFormatError, match="loop: folder reached twice through symlinks"):
        list(luperson.parse(tmp_path / "data", strict=True))
