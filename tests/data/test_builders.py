"""The datasets builders of datasets_scripts/: prepare from synthetic raw files, read back the truth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

from hf_personsearch.data.builder import builder_class
from hf_personsearch.data.errors import DataFormatError
from hf_personsearch.data.formats import FORMAT_MODULES, get_spec, record_differences
from hf_personsearch.data.synthetic import generate

SCRIPTS = Path(__file__).resolve().parents[2] / "datasets_scripts"


def load_script_class(name: str):
    spec = importlib.util.spec_from_file_location(f"datasets_scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # datasets re-imports the builder's module by name
    spec.loader.exec_module(module)
    return getattr(module, get_spec(name).builder_name)


def rows_as_records(dataset) -> list[dict]:
    rows = dataset.remove_columns("image").to_list()
    for row in rows:
        row["boxes"] = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
        row["ignore_regions"] = np.asarray(row["ignore_regions"], np.float32).reshape(-1, 4)
    return rows


@pytest.mark.parametrize("name", FORMAT_MODULES)
def test_every_script_prepares_the_generated_dataset(name, tmp_path):
    truth = generate(name, tmp_path / "raw", seed=0)
    assert load_script_class(name) is builder_class(name)  # one class, so one cache folder
    builder = load_script_class(name)(data_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), strict=True)
    builder.download_and_prepare()
    splits = sorted({r["split"] for r in truth["records"]})
    prepared = []
    for split in splits:
        dataset = builder.as_dataset(split=split)
        prepared += rows_as_records(dataset)
    assert record_differences(truth["records"], prepared) == []
    first = builder.as_dataset(split=splits[0])[0]
    assert first["image"].size == (first["width"], first["height"])
    assert all(report.endswith("nothing skipped") for report in builder.skip_reports.values())


def test_builder_options_reach_the_parser(tmp_path):
    truth = generate("cuhk03", tmp_path / "raw", seed=0)
    builder = builder_class("cuhk03")(
        data_dir=str(tmp_path / "raw"),
        cache_dir=str(tmp_path / "cache"),
        splits=("full",),
        parse_options={"layout": "mat"},
    )
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="full")
    assert record_differences(truth["records_all"], rows_as_records(dataset)) == []
    pixels = np.asarray(dataset[0]["image"])
    assert pixels.shape == (dataset[0]["height"], dataset[0]["width"], 3)


def test_skips_are_reported_and_strict_raises(tmp_path):
    generate("msmt17", tmp_path / "raw", seed=0, num_train_ids=2, num_test_ids=1, num_cameras=2)
    list_path = tmp_path / "raw" / "MSMT17_V1" / "list_train.txt"
    list_path.write_text(list_path.read_text() + "garbage\n")
    builder = builder_class("msmt17")(
        data_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "c1"), splits=("train",)
    )
    builder.download_and_prepare()
    assert len(builder.as_dataset(split="train")) == 4
    assert "1 x malformed annotation line" in builder.skip_reports["train"]
    strict = builder_class("msmt17")(
        data_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "c2"), splits=("train",), strict=True
    )
    # the file and line are the top-level error, not only the cause of datasets' generic message
    with pytest.raises(DataFormatError, match="list_train.txt:5: malformed annotation line") as raised:
        strict.download_and_prepare()
    assert isinstance(raised.value.__cause__, datasets.exceptions.DatasetGenerationError)


def test_missing_data_dir_says_where_to_obtain(tmp_path):
    with pytest.raises(FileNotFoundError, match=get_spec("ecp").data_url):
        builder_class("ecp")(cache_dir=str(tmp_path)).download_and_prepare()
    with pytest.raises(ValueError, match="unknown split"):
        builder_class("ecp")(data_dir=str(tmp_path), cache_dir=str(tmp_path), splits=("test",)).download_and_prepare()
