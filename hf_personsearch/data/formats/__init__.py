"""Parsers of the raw dataset formats, one module per dataset, all yielding unified records.

Every module has ``SPLITS``, ``HOW_TO_OBTAIN`` and
``parse(data_dir, split, *, strict=False, skips=None) -> Iterator[dict]`` (records of
:mod:`hf_personsearch.data.schema`); the target datasets also have ``load_queries``. The checks they share live in
:mod:`._common`, the MATLAB file readers in :mod:`.matlab`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from ._common import (  # noqa: F401  (re-exported: parsers written against ``from . import ...`` keep working)
    BAD_LINE,
    CORRUPT_IMAGE,
    EMPTY_BOX,
    MISSING_IMAGE,
    NON_FINITE_BOX,
    OUTSIDE_BOX,
    UNKNOWN_KEY,
    check_data_dir,
    check_split,
    clean_box,
    read_image_size,
    xywh_to_xyxy,
)

FORMAT_MODULES = ("crowdhuman", "ecp", "msmt17", "cuhk03", "luperson", "prw", "cuhk_sysu", "posetrack21", "custom")
"""Dataset names with a parser module ``hf_personsearch.data.formats.<name>``."""


def get_format(name: str) -> ModuleType:
    """The parser module of dataset ``name`` (one of :data:`FORMAT_MODULES`)."""
    if name not in FORMAT_MODULES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {FORMAT_MODULES}")
    return importlib.import_module(f"{__name__}.{name}")


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
