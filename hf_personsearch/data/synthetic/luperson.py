"""Synthetic LUPerson: unlabeled crops, as a crop folder or as the released LMDB + keys.pkl.

LUPerson has no identities; the writer still draws a different appearance per crop (each crop is a
new person, as the paper's unification assumes), from LUPerson's own appearance block. Crops are cut
from "cool" scenes (LUPerson's style, see ``render.STYLES``) with a margin of background. Half the cities have a video level, half not, as
both layouts occur in the released folders. ``layout="lmdb"`` writes the very same crops (same draws,
same JPEG bytes) into ``lmdb/`` + ``keys.pkl``, the public release's layout.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..schema import NO_IDENTITY, make_record
from .render import COOL, AppearancePool, render_person

PLACES = (("france", "paris"), ("japan", "tokyo"), ("brazil", "rio"))
LAYOUTS = ("folder", "lmdb")


def write(out_dir: Path, *, seed: int = 0, num_crops: int = 12, layout: str = "folder") -> dict:
    """Write ``num_crops`` crops (64..128 pixels high) spread over the places of :data:`PLACES`.

    Args:
        layout: "folder" (default: the layout every other test reads) writes
            ``<country>/<city>/[<video>/]<frame>_<obj>.jpg`` files; "lmdb" writes ``out_dir/lmdb/`` (the
            LMDB environment, key = crop name, value = JPEG bytes) and ``out_dir/keys.pkl`` (the list of
            keys) and needs the optional ``lmdb`` package.
    Returns ``{"records": [...], "appearances": [...]}`` (split "train", no identities; per record the
    appearance of its one box); with "lmdb" each record's image is ``{"bytes": ..., "path": key}`` as the parser gives it.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"synthetic luperson: unknown layout {layout!r}; expected one of {LAYOUTS}")
    rng = np.random.default_rng(seed)
    pool = AppearancePool("luperson", num_crops)
    out_dir = Path(out_dir)
    records, crops = [], {}
    for index in range(num_crops):
        country, city = PLACES[index % len(PLACES)]
        folder = Path(country) / city / (f"video_{index % 2:03d}" if index % 2 else "")
        name = f"{int(rng.integers(0, 10**6)):08d}_{index:04d}.jpg"
        height = int(rng.integers(64, 129))
        width = max(8, int(round(height * rng.uniform(0.35, 0.45))))
        key = (folder / name).as_posix()
        buffer = io.BytesIO()
        render_person(pool.identity(index), height, width, rng, domain=COOL).save(buffer, format="JPEG", quality=95)
        if layout == "folder":
            path = out_dir / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buffer.getvalue())
            image = str(path)
        else:
            crops[key] = buffer.getvalue()
            image = {"bytes": buffer.getvalue(), "path": key}
        records.append(
            make_record(
                image=image,
                image_id=key,
                width=width,
                height=height,
                boxes=[[0, 0, width, height]],
                person_ids=[NO_IDENTITY],
                source="luperson",
                task="reid",
                split="train",
            )
        )
    if layout == "lmdb":
        write_lmdb(out_dir, crops)
    return {"records": records, "appearances": [[pool.identity(index)] for index in range(num_crops)]}


def write_lmdb(out_dir: Path, crops: dict[str, bytes], keys: list | None = None) -> None:
    """Write ``crops`` (key -> JPEG bytes) as ``out_dir/lmdb/`` and ``keys`` (default: the crop keys) as keys.pkl.

    ``keys`` may differ from the stored crops so that tests can list a key the LMDB lacks.
    """
    import lmdb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # map_size is the LMDB's maximum size: twice the data plus 1 MiB leaves room for its pages and tree.
    environment = lmdb.open(str(out_dir / "lmdb"), map_size=2 * sum(map(len, crops.values())) + 2**20, subdir=True)
    with environment.begin(write=True) as transaction:
        for key, value in crops.items():
            transaction.put(key.encode("utf-8"), value)
    environment.close()
    with open(out_dir / "keys.pkl", "wb") as file:
        pickle.dump(list(crops) if keys is None else keys, file)
