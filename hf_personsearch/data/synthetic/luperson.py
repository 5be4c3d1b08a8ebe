"""Synthetic LUPerson: unlabeled crops ``<country>/<city>/[<video>/]<frame:08d>_<obj:04d>.jpg``.

LUPerson has no identities; the writer still draws a different appearance per crop (each crop is a
new person, as the paper's unification assumes). Half the cities have a video level, half not, as
both layouts occur in the released folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import NO_IDENTITY, make_record
from .render import render_person

PLACES = (("france", "paris"), ("japan", "tokyo"), ("brazil", "rio"))


def write(out_dir: Path, *, seed: int = 0, num_crops: int = 12, first_identity: int = 1000) -> dict:
    """Write ``num_crops`` crops spread over the places of :data:`PLACES`.

    Args:
        first_identity: appearance index of the first crop; default 1000 keeps the look of LUPerson
            crops apart from the labeled synthetic sets (which use small indices).
    Returns ``{"records": [...]}`` (split "train", no identities).
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    records = []
    for index in range(num_crops):
        country, city = PLACES[index % len(PLACES)]
        folder = Path(country) / city / (f"video_{index % 2:03d}" if index % 2 else "")
        name = f"{int(rng.integers(0, 10**6)):08d}_{index:04d}.jpg"
        height = int(rng.integers(64, 129))
        width = max(8, int(round(height * rng.uniform(0.35, 0.45))))
        path = out_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        render_person(first_identity + index, height, width, rng).save(path, quality=95)
        records.append(
            make_record(
                image=str(path),
                image_id=(folder / name).as_posix(),
                width=width,
                height=height,
                boxes=[[0, 0, width, height]],
                person_ids=[NO_IDENTITY],
                source="luperson",
                task="reid",
                split="train",
            )
        )
    return {"records": records}
