"""The checks the parsers share (formats/_common.py): image completeness without a full decode, integers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hf_personsearch.data.errors import SkipCounter
from hf_personsearch.data.formats import get_spec
from hf_personsearch.data.formats._common import ends_complete, json_integer, read_image_header_size
from hf_personsearch.data.synthetic import generate


def _noise_image(path, image_format):
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)
    Image.fromarray(pixels).save(path, format=image_format)
    return path.read_bytes()


@pytest.mark.parametrize(("suffix", "image_format"), [(".jpg", "JPEG"), (".png", "PNG")])
def test_truncated_file_is_unreadable_but_trailing_bytes_are_fine(tmp_path, suffix, image_format):
    path = tmp_path / f"frame{suffix}"
    data = _noise_image(path, image_format)
    assert ends_complete(path)
    assert read_image_header_size(path, SkipCounter(strict=True)) == (80, 60)
    path.write_bytes(data + b"\0" * 100)  # bytes after the end marker (some cameras write them)
    assert ends_complete(path) and read_image_header_size(path, SkipCounter(strict=True)) == (80, 60)
    path.write_bytes(data + b"\0" * 5000)  # too far for the 1 KiB window: the full decode decides (it is fine)
    assert not ends_complete(path)
    assert read_image_header_size(path, SkipCounter(strict=True)) == (80, 60)
    path.write_bytes(data[:-1])
    assert not ends_complete(path)  # a cut end marker always sends the file to the full decode
    path.write_bytes(data[: len(data) // 2])
    assert not ends_complete(path)
    skips = SkipCounter()
    assert read_image_header_size(path, skips) is None
    assert skips.counts == {"image file unreadable": 1}


@pytest.mark.parametrize("name", ["prw", "cuhk_sysu", "posetrack21", "custom"])
def test_person_search_parsers_skip_a_truncated_frame(tmp_path, name):
    """These parsers read image headers only; a frame cut in half used to pass and crash at decode mid-epoch."""
    spec = get_spec(name)
    truth = generate(name, tmp_path, seed=0)
    split = spec.train_split
    expected = [r for r in truth["records"] if r["split"] == split]
    frame = tmp_path / expected[0]["image_id"]
    frame.write_bytes(frame.read_bytes()[: frame.stat().st_size // 2])
    with Image.open(frame) as image:
        assert image.size == (expected[0]["width"], expected[0]["height"])  # the header alone looks fine
    skips = SkipCounter()
    records = list(spec.parse(tmp_path, split, skips=skips))
    assert [r["image_id"] for r in records] == [r["image_id"] for r in expected[1:]]
    assert skips.counts == {"image file unreadable": 1}


def test_json_integer_accepts_integers_in_range_only():
    assert json_integer(3, 0, 10) == 3 and json_integer(3.0, 0, 10) == 3 and json_integer(np.int16(4), 0, 10) == 4
    for bad in (True, "3", 3.5, float("nan"), float("inf"), 1e20, -1, 11, None, [3]):
        assert json_integer(bad, 0, 10) is None, bad
    assert json_integer(2**63 - 1, 0, 2**63 - 1) == 2**63 - 1
    assert json_integer(float(2**63), 0, 2**63 - 1) is None  # rounds above int64


def test_jpeg_end_marker_check_costs_far_less_than_a_decode(tmp_path):
    """The figure behind choosing the end-marker check: a 1920x1080 frame, checked vs fully decoded."""
    import time

    path = tmp_path / "frame.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), np.uint8)).save(path, quality=90)
    start = time.perf_counter()
    for _ in range(20):
        assert read_image_header_size(path, SkipCounter(strict=True)) == (1920, 1080)
    checked = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    for _ in range(5):
        with Image.open(path) as image:
            image.load()
    decoded = (time.perf_counter() - start) / 5
    assert checked < decoded / 5, (checked, decoded)


def test_huge_declared_size_is_skipped_not_decoded(tmp_path):
    path = tmp_path / "bomb.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (10000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    path.write_bytes(bytes(data))
    skips = SkipCounter()
    assert read_image_header_size(path, skips) is None
    assert "decompression bomb" in skips.summary()
