"""Parsers of the raw dataset formats, one module per dataset, all yielding unified records.

Every module has ``SPLITS``, ``HOW_TO_OBTAIN`` and
``parse(data_dir, split, *, strict=False, skips=None) -> Iterator[dict]`` (records of
:mod:`hf_personsearch.data.schema`); the target datasets also have ``load_queries``. This file holds
the checks they share, so that one kind of bad input gets one reason string whatever the dataset.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from ..errors import SkipCounter

FORMAT_MODULES = ("crowdhuman", "ecp", "msmt17", "cuhk03", "luperson", "prw", "cuhk_sysu", "posetrack21", "custom")
"""Dataset names with a parser module ``hf_personsearch.data.formats.<name>``."""

# One reason string per kind of bad input (the keys of SkipCounter.counts).
MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt or truncated image"
BAD_LINE = "malformed annotation line"
NON_FINITE_BOX = "box with NaN or infinite coordinates"
EMPTY_BOX = "box with width or height <= 0"
OUTSIDE_BOX = "box entirely outside the image"
UNKNOWN_KEY = "unknown key or label"


def get_format(name: str) -> ModuleType:
    """The parser module of dataset ``name`` (one of :data:`FORMAT_MODULES`)."""
    if name not in FORMAT_MODULES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {FORMAT_MODULES}")
    return importlib.import_module(f"{__name__}.{name}")


def check_data_dir(data_dir: str | Path | None, name: str, how_to_obtain: str, expected: str) -> Path:
    """``data_dir`` as a Path, or a FileNotFoundError that says what was expected and where to get it.

    None of the datasets may be redistributed, so the error is the user's pointer to the download.
    """
    if data_dir is None or not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"{name}: data_dir {str(data_dir)!r} is not a folder; expected {expected}. {how_to_obtain}"
        )
    return Path(data_dir)


def check_split(split: str, splits: tuple[str, ...], name: str) -> None:
    """Reject a split the dataset does not have, listing the ones it has."""
    if split not in splits:
        raise ValueError(f"{name}: unknown split {split!r}; expected one of {splits}")


def clean_box(
    xyxy, width: int, height: int, where: str, skips: SkipCounter, *, clip: bool = True
) -> np.ndarray | None:
    """A valid float32 xyxy box clipped to the image, or None (skipped and counted / raised when strict).

    NaN/inf coordinates, width or height <= 0 and boxes entirely outside the image are bad input;
    a box partly outside (CrowdHuman full-body boxes, PRW negative coordinates) is clipped.
    """
    try:
        x1, y1, x2, y2 = (float(v) for v in xyxy)
    except (TypeError, ValueError):
        skips.skip(BAD_LINE, where, f"expected 4 numbers for a box, got {xyxy!r}")
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        skips.skip(NON_FINITE_BOX, where, f"box {[x1, y1, x2, y2]}")
        return None
    if x2 <= x1 or y2 <= y1:
        skips.skip(EMPTY_BOX, where, f"xyxy box {[x1, y1, x2, y2]}")
        return None
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        skips.skip(OUTSIDE_BOX, where, f"xyxy box {[x1, y1, x2, y2]} in a {width}x{height} image")
        return None
    if clip:
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    return np.array([x1, y1, x2, y2], np.float32)


def read_image_size(path: Path, where: str, skips: SkipCounter, *, verify: bool = True) -> tuple[int, int] | None:
    """``(width, height)`` of an image file, or None when it is missing or unreadable (skipped/raised).

    Args:
        verify: decode the whole image, not only its header, so a truncated file is found once at
            preparation time rather than during training. Default True: preparing runs once per dataset.
    """
    if not path.is_file():
        skips.skip(MISSING_IMAGE, where, f"no file {path}")
        return None
    try:
        with Image.open(path) as image:
            size = image.size
            if verify:
                image.load()
    except (OSError, SyntaxError, ValueError) as error:
        skips.skip(CORRUPT_IMAGE, where, f"{path}: {error}")
        return None
    return size


def xywh_to_xyxy(box) -> list[float]:
    """``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` (no +1: pixel edges)."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def record_differences(expected: list[dict], actual: list[dict], atol: float = 1e-3) -> list[str]:
    """What differs between two lists of unified records, matched by ``(split, image_id)``.

    Used by the round-trip tests (generator truth vs parser output) and handy when checking a new
    parser against a reference conversion. Boxes compare to ``atol`` pixels, everything else exactly;
    the ``image`` field is not compared (a path in one, maybe bytes in the other).
    """
    problems = []
    by_key = {(r["split"], r["image_id"]): r for r in actual}
    if len(by_key) != len(actual):
        problems.append("actual records repeat a (split, image_id)")
    missing = [(r["split"], r["image_id"]) for r in expected if (r["split"], r["image_id"]) not in by_key]
    if missing:
        problems.append(f"missing records {missing[:5]}")
    extra = {(r["split"], r["image_id"]) for r in actual} - {(r["split"], r["image_id"]) for r in expected}
    if extra:
        problems.append(f"unexpected records {sorted(extra)[:5]}")
    for want in expected:
        got = by_key.get((want["split"], want["image_id"]))
        if got is None:
            continue
        name = f"{want['split']}/{want['image_id']}"
        for key in ("width", "height", "camera_id", "source", "task"):
            if want[key] != got[key]:
                problems.append(f"{name}: {key} {got[key]!r} != expected {want[key]!r}")
        for key in ("boxes", "ignore_regions"):
            a, b = np.asarray(want[key], np.float32).reshape(-1, 4), np.asarray(got[key], np.float32).reshape(-1, 4)
            if a.shape != b.shape or not np.allclose(a, b, atol=atol):
                problems.append(f"{name}: {key} {b.tolist()} != expected {a.tolist()}")
        if not np.array_equal(np.asarray(want["person_ids"]), np.asarray(got["person_ids"])):
            problems.append(f"{name}: person_ids {list(got['person_ids'])} != expected {list(want['person_ids'])}")
    return problems
