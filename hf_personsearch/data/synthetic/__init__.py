"""Synthetic person search data written in each dataset's REAL raw format.

Tests and the demo cannot ship the real datasets (none of them may be redistributed), so this package
draws persons whose identity is visible in their clothing (:mod:`.render`) and writes them as the
files of CrowdHuman, EuroCity Persons, MSMT17, CUHK03, LUPerson, PRW, CUHK-SYSU, PoseTrack21 and the
custom format. The parsers in :mod:`hf_personsearch.data.formats` are tested on these files: the round
trip generator -> raw files -> parser must give back the records each writer returns as ground truth.

Usage::

    from hf_personsearch.data.synthetic import generate
    truth = generate("crowdhuman", "/tmp/crowdhuman", seed=0, num_train=8)
    truth["records"]  # unified records (schema.py) the parser must reproduce

or from a shell: ``python -m hf_personsearch.data.synthetic crowdhuman /tmp/crowdhuman``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .render import DOMAINS, person_appearance, render_person, render_scene

FORMATS = ("crowdhuman", "ecp", "msmt17", "cuhk03", "luperson", "prw", "cuhk_sysu", "posetrack21", "custom")
"""Every raw format a writer exists for; each is the module ``hf_personsearch.data.synthetic.<fmt>``."""


def generate(fmt: str, out_dir: str | Path, seed: int = 0, **sizes) -> dict:
    """Write a small synthetic dataset of format ``fmt`` under ``out_dir``.

    Args:
        fmt: one of :data:`FORMATS`.
        out_dir: the dataset root to create (the folder a user would pass as ``data_dir``).
        seed: everything drawn depends on it only.
        **sizes: writer-specific size arguments (numbers of images, identities, cameras ...), see the
            ``write`` function of each writer module; the defaults are small and fast.

    Returns:
        the writer's ground truth: at least ``{"records": [...]}`` (unified records, split included),
        plus ``"queries"`` for the target datasets.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}; expected one of {FORMATS}")
    module = importlib.import_module(f"{__name__}.{fmt}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return module.write(out_dir, seed=seed, **sizes)


__all__ = ["DOMAINS", "FORMATS", "generate", "person_appearance", "render_person", "render_scene"]
