"""Parsers of the raw dataset formats, one module per dataset, all yielding unified records; the registry.

Every parser module declares its dataset once, ``SPEC = DatasetSpec(...)`` (:mod:`.spec`): name, display
name, task, splits, ``parse(data_dir, split, *, strict=False, skips=None) -> Iterator[dict]`` (records of
:mod:`hf_personsearch.data.schema`), synthetic writer, how to obtain the data and, for the target datasets,
the fine-tuning and evaluation settings. Loading, conversion, the ``datasets`` builders, synthetic
generation, pre-training and evaluation all look datasets up here. Each ``parse`` and ``load_queries`` is
wrapped by :func:`hf_personsearch.data.errors.reports_skips` (so inside them ``skips`` is always a counter, and
every call reports what it skipped). The checks parsers share live in :mod:`._common`, the MATLAB file readers
in :mod:`.matlab`.
"""

from __future__ import annotations

import importlib

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
from .spec import DatasetSpec

FORMAT_MODULES = ("crowdhuman", "ecp", "msmt17", "cuhk03", "luperson", "prw", "cuhk_sysu", "posetrack21", "custom")
"""The built-in datasets, each the parser module ``hf_personsearch.data.formats.<name>`` with its ``SPEC``;
the one list of them (detection, then re-ID, then person search: the order choices are shown in)."""

_REGISTERED: dict[str, DatasetSpec] = {}
"""Datasets added at run time with :func:`register`."""


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset whose parser lives outside this package; loading, conversion, the builders, synthetic
    generation, pre-training and evaluation then accept ``spec.name``. Returns ``spec``."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register expects a DatasetSpec, got {type(spec).__name__}")
    if spec.name in dataset_names():
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _REGISTERED[spec.name] = spec
    return spec


def dataset_names() -> tuple[str, ...]:
    """Every known dataset: the built-in ones (:data:`FORMAT_MODULES`), then the registered ones."""
    return FORMAT_MODULES + tuple(_REGISTERED)


def target_names() -> tuple[str, ...]:
    """The datasets fine-tuning and person search evaluation accept (those with a protocol)."""
    return tuple(name for name in dataset_names() if get_spec(name).is_target)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of dataset ``name``; unknown names raise listing the known ones."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in FORMAT_MODULES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {dataset_names()}")
    return importlib.import_module(f"{__name__}.{name}").SPEC


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
