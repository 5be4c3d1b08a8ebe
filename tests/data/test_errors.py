"""Skip reporting: every parser call reports its skips once, by reason with an example location, whoever calls it."""

from __future__ import annotations

import logging

import pytest
from scipy.io import loadmat

from hf_personsearch.data.errors import DataFormatError, SkipCounter
from hf_personsearch.data.formats import crowdhuman, msmt17, prw
from hf_personsearch.data.synthetic import generate

LOGGER = "hf_personsearch.data.errors"


def warnings_of(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_counter_summary_counts_per_reason_with_examples_and_parent_receives_them():
    parent = SkipCounter()
    counter = SkipCounter(parent=parent, max_examples=1)
    counter.skip("bad box", "a.txt:3", "w=0")
    counter.skip("bad box", "a.txt:7")
    counter.skip("missing image", "b.jpg")
    assert counter.summary("set") == "set: skipped 3 item(s)\n  2 x bad box, e.g. a.txt:3: bad box (w=0)\n" + (
        "  1 x missing image, e.g. b.jpg: missing image"
    )
    assert parent.counts == counter.counts and parent.total == 3
    assert SkipCounter().summary("set") == "set: nothing skipped"
    with pytest.raises(DataFormatError, match="a.txt:3: bad box"):
        SkipCounter(strict=True).skip("bad box", "a.txt:3")


def test_direct_msmt17_parse_reports_the_skipped_line(tmp_path, caplog):
    generate("msmt17", tmp_path, seed=0, num_train_ids=2, num_test_ids=1, num_cameras=2)
    list_path = tmp_path / "MSMT17_V1" / "list_train.txt"
    list_path.write_text(list_path.read_text() + "garbage\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        records = list(msmt17.parse(tmp_path, "train"))
    assert len(records) == 4
    [warning] = warnings_of(caplog)
    assert warning.startswith("msmt17 train: skipped 1 item(s)\n  1 x malformed annotation line, e.g. ")
    assert f"{list_path}:5: malformed annotation line" in warning


def test_direct_crowdhuman_parse_reports_each_reason(tmp_path, caplog):
    generate("crowdhuman", tmp_path, seed=0)
    odgt = tmp_path / "annotation_val.odgt"
    lines = odgt.read_text().splitlines()
    lines.insert(1, "{not json")
    lines.append('{"ID": "no_such_image", "gtboxes": []}')
    odgt.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        records = list(crowdhuman.parse(tmp_path, "val", verify_images=False))
    assert len(records) == len(lines) - 2
    [warning] = warnings_of(caplog)
    assert warning.startswith("crowdhuman val: skipped 2 item(s)")
    assert f"1 x malformed annotation line, e.g. {odgt}:2: malformed annotation line" in warning
    assert f"1 x missing image, e.g. {odgt}:{len(lines)} (Images/no_such_image.jpg): missing image" in warning


def test_direct_prw_parse_and_query_loading_report_their_skips(tmp_path, caplog):
    generate("prw", tmp_path, seed=0)
    first = loadmat(tmp_path / "frame_train.mat")["img_index_train"][0][0][0]
    annotation = tmp_path / "annotations" / f"{first}.jpg.mat"
    annotation.write_bytes(b"not a mat file")
    query_file = tmp_path / "query_info.txt"
    query_file.write_bytes(query_file.read_bytes() + b"1 2 3\r\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        records = list(prw.parse(tmp_path, "train"))
        queries = prw.load_queries(tmp_path)
    assert f"frames/{first}.jpg" not in {record["image_id"] for record in records}
    train_warning, query_warning = warnings_of(caplog)
    assert train_warning.startswith(
        f"prw train: skipped 1 item(s)\n  1 x annotation file unreadable, e.g. {annotation}"
    )
    assert query_warning.startswith("prw queries test: skipped 1 item(s)\n  1 x malformed query line, e.g. ")
    assert f"query_info.txt:{len(queries) + 1}: malformed query line" in query_warning


def test_a_callers_counter_accumulates_while_each_call_reports_its_own(tmp_path, caplog):
    generate("msmt17", tmp_path, seed=0, num_train_ids=2, num_test_ids=1, num_cameras=2)
    list_path = tmp_path / "MSMT17_V1" / "list_train.txt"
    list_path.write_text(list_path.read_text() + "garbage\n")
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        list(msmt17.parse(tmp_path, "train", skips=counter))
        list(msmt17.parse(tmp_path, "train", skips=counter))
        list(msmt17.parse(tmp_path, "val", skips=counter))
    assert counter.counts == {"malformed annotation line": 2}
    assert [warning.splitlines()[0] for warning in warnings_of(caplog)] == ["msmt17 train: skipped 1 item(s)"] * 2
    with pytest.raises(DataFormatError, match="list_train.txt:5: malformed annotation line"):
        list(msmt17.parse(tmp_path, "train", skips=SkipCounter(strict=True)))
    with pytest.raises(DataFormatError, match="list_train.txt:5: malformed annotation line"):
        list(msmt17.parse(tmp_path, "train", strict=True))
