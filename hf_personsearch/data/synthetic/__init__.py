"""Synthetic person search data written in each dataset's REAL raw format.

Tests and the demo cannot ship the real datasets (none of them may be redistributed), so this package
draws persons whose identity is visible in their clothing (:mod:`.render`) and writes them as the
files of every registered dataset (its ``DatasetSpec.synthetic_writer``, a module of this package for the
built-in ones). The parsers in :mod:`hf_personsearch.data.formats` are tested on these files: the round
trip generator -> raw files -> parser must give back the records each writer returns as ground truth.

Usage::

    from hf_personsearch.data.synthetic import generate
    truth = generate("crowdhuman", "/tmp/crowdhuman", seed=0, num_train=8)
    truth["records"]  # unified records (schema.py) the parser must reproduce

or from a shell: ``python -m hf_personsearch.data.synthetic crowdhuman /tmp/crowdhuman``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..formats import get_spec
from .render import DOMAINS, person_appearance, render_person, render_scene


def generate(fmt: str, out_dir: str | Path, seed: int = 0, **sizes) -> dict:
    """Write a small synthetic dataset of format ``fmt`` under ``out_dir``.

    Args:
        fmt: a registered dataset (:func:`hf_personsearch.data.formats.dataset_names`).
        out_dir: the dataset root to create (the folder a user would pass as ``data_dir``).
        seed: everything drawn depends on it only.
        **sizes: writer-specific size arguments (numbers of images, identities, cameras ...), see the
            ``write`` function of each writer module; the defaults are small and fast.

    Returns:
        the writer's ground truth: at least ``{"records": [...]}`` (unified records, split included),
        plus ``"queries"`` for the target datasets.
    """
    truth = get_spec(fmt).write_synthetic(out_dir, seed=seed, **sizes)
    marker = {"format": fmt, "seed": seed, "sizes": sizes}
    (Path(out_dir) / SYNTHETIC_MARKER).write_text(json.dumps(marker, sort_keys=True, default=str) + "\n")
    return truth


SYNTHETIC_MARKER = "SYNTHETIC_DATA.json"
"""Written by :func:`generate` at the root of every synthetic dataset (format, seed, sizes), so that a model
trained on it says so in its card wherever the folder is passed as ``data_dir``. No parser reads it."""


def is_synthetic(data_dir: str | Path | None) -> bool:
    """Whether ``data_dir`` holds a dataset written by :func:`generate` (its :data:`SYNTHETIC_MARKER`)."""
    return data_dir is not None and (Path(data_dir) / SYNTHETIC_MARKER).is_file()


__all__ = [
    "DOMAINS",
    "SYNTHETIC_MARKER",
    "generate",
    "is_synthetic",
    "person_appearance",
    "render_person",
    "render_scene",
]
