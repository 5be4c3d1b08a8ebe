"""Helpers shared by the raw-format parser tests (tests/data/test_formats_*.py)."""

from __future__ import annotations

import numpy as np

from hf_personsearch.data.synthetic import generate


def assert_same(parsed, truth):
    """Deep equality of records / queries (numpy arrays compared exactly, dtypes included)."""
    if isinstance(truth, dict):
        assert parsed.keys() == truth.keys()
        for key in truth:
            assert_same(parsed[key], truth[key])
    elif isinstance(truth, list):
        assert len(parsed) == len(truth)
        for a, b in zip(parsed, truth):
            assert_same(a, b)
    elif isinstance(truth, np.ndarray):
        assert parsed.dtype == truth.dtype and np.array_equal(parsed, truth)
    else:
        assert parsed == truth


def generated_dataset(tmp_path_factory, fmt: str, seed: int):
    """``(root, truth)`` of a synthetic ``fmt`` dataset written to a fresh folder named after the format."""
    root = tmp_path_factory.mktemp(fmt)
    return root, generate(fmt, root, seed=seed)
