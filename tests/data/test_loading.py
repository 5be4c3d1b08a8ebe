"""load_person_search_dataset and the Parquet conversion CLI."""

from __future__ import annotations

import json
import logging
import shutil

import datasets
import numpy as np
import pytest

from hf_personsearch.data.convert import convert, main
from hf_personsearch.data.errors import DataFormatError
from hf_personsearch.data.formats import record_differences
from hf_personsearch.data.loading import load_person_search_dataset
from hf_personsearch.data.synthetic import generate


def _records(dataset):
    rows = dataset.remove_columns("image").to_list()
    for row in rows:
        row["boxes"] = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
        row["ignore_regions"] = np.asarray(row["ignore_regions"], np.float32).reshape(-1, 4)
    return rows


def test_load_one_split_with_parser_options(tmp_path):
    truth = generate("crowdhuman", tmp_path / "raw", seed=0)
    train = load_person_search_dataset(
        "crowdhuman", data_dir=tmp_path / "raw", split="train", cache_dir=tmp_path / "c"
    )
    expected = [r for r in truth["records"] if r["split"] == "train"]
    assert record_differences(expected, _records(train)) == []
    labeled = load_person_search_dataset(
        "cuhk03", data_dir=generate_dir(tmp_path), split="query", cache_dir=tmp_path / "c", image_type="labeled"
    )
    assert len(labeled) > 0 and set(labeled["split"]) == {"query"}


def generate_dir(tmp_path):
    generate("cuhk03", tmp_path / "cuhk03", seed=0)
    return tmp_path / "cuhk03"


def test_missing_data_dir_error_says_where_to_obtain(tmp_path):
    with pytest.raises(FileNotFoundError, match="crowdhuman.org"):
        load_person_search_dataset("crowdhuman", split="train", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'coco'"):
        load_person_search_dataset("coco", data_dir=tmp_path, cache_dir=tmp_path)


def test_convert_writes_self_contained_parquet(tmp_path):
    truth = generate("msmt17", tmp_path / "raw", seed=0, num_train_ids=2, num_test_ids=2, num_cameras=2)
    convert("msmt17", tmp_path / "raw", tmp_path / "out", splits=["train", "query"], cache_dir=tmp_path / "c")
    first_pixels = np.asarray(datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"))["train"][0]["image"])
    shutil.rmtree(tmp_path / "raw")  # the images must be inside the Parquet files, not referenced
    shutil.rmtree(tmp_path / "c")
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c2"))
    assert set(loaded) == {"train", "query"}
    expected = [r for r in truth["records"] if r["split"] in ("train", "query")]
    assert record_differences(expected, _records(loaded["train"]) + _records(loaded["query"])) == []
    np.testing.assert_array_equal(np.asarray(loaded["train"][0]["image"]), first_pixels)
    assert first_pixels.shape == (loaded["train"][0]["height"], loaded["train"][0]["width"], 3)


def test_convert_cli(tmp_path, capsys):
    generate("luperson", tmp_path / "raw", seed=0, num_crops=3)
    assert main(["luperson", str(tmp_path / "raw"), str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "luperson/train: 3 records" in capsys.readouterr().out
    assert (tmp_path / "out" / "data" / "train-00000-of-00001.parquet").is_file()


def test_convert_cli_errors_are_one_line_and_a_push_that_cannot_happen_is_refused_first(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    assert main(["prw", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: prw: data_dir") and "does not exist" in error
    generate("luperson", tmp_path / "raw", seed=0, num_crops=3)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit):
        main(["luperson", str(tmp_path / "raw"), str(tmp_path / "pushed"), "--push-to-hub", "me/luperson"])
    assert "--push-to-hub me/luperson: HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert not (tmp_path / "pushed").exists()  # refused before converting


def test_cache_follows_edits_of_the_raw_files(tmp_path):
    """The datasets cache key is the config; the builder adds a fingerprint of data_dir to it."""
    generate("crowdhuman", tmp_path / "raw", seed=0, num_train=6, num_val=1)

    def load():
        return load_person_search_dataset("crowdhuman", data_dir=tmp_path / "raw", cache_dir=tmp_path / "c")

    assert len(load()) == 6
    odgt = tmp_path / "raw" / "annotation_train.odgt"
    lines = odgt.read_text().splitlines()
    odgt.write_text("\n".join(lines[:2]) + "\n")  # an edited annotation file
    assert len(load()) == 2
    odgt.write_text("\n".join(lines) + "\n")
    (tmp_path / "raw" / "Images" / f"{json.loads(lines[0])['ID']}.jpg").unlink()  # a deleted image
    assert len(load()) == 5


def test_skip_report_is_shown_again_on_a_cached_load(tmp_path, caplog):
    generate("msmt17", tmp_path / "raw", seed=0, num_train_ids=2, num_test_ids=1, num_cameras=2)
    list_path = tmp_path / "raw" / "MSMT17_V1" / "list_train.txt"
    list_path.write_text(list_path.read_text() + "garbage\n")
    for attempt in ("prepared", "cached"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            dataset = load_person_search_dataset("msmt17", data_dir=tmp_path / "raw", cache_dir=tmp_path / "c")
        assert len(dataset) == 4
        reports = [r.getMessage() for r in caplog.records if "skipped 1 item(s)" in r.getMessage()]
        assert len(reports) == 1, (attempt, reports)
        assert "1 x malformed annotation line, e.g. " in reports[0] and "list_train.txt:5" in reports[0]


def test_strict_error_names_file_and_line_at_top_level(tmp_path):
    generate("msmt17", tmp_path / "raw", seed=0, num_train_ids=2, num_test_ids=1, num_cameras=2)
    list_path = tmp_path / "raw" / "MSMT17_V1" / "list_train.txt"
    list_path.write_text(list_path.read_text() + "garbage\n")
    with pytest.raises(DataFormatError, match="list_train.txt:5: malformed annotation line"):
        load_person_search_dataset("msmt17", data_dir=tmp_path / "raw", cache_dir=tmp_path / "c", strict=True)
