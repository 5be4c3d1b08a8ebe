"""LUPerson: unlabeled person crops ``<country>/<city>/[<video>/]<frame:08d>_<obj:04d>.jpg``.

No identities (every crop is ``NO_IDENTITY``; unification gives each a new one) and no cameras. The
LMDB + keys.pkl release is not read yet: extract it to this folder layout first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import SkipCounter
from ..schema import NO_IDENTITY, make_record
from . import BAD_LINE, check_data_dir, check_split, read_image_size

NAME = "luperson"
SPLITS = ("train",)
HOW_TO_OBTAIN = (
    "LUPerson is not redistributable: follow https://github.com/DengpanFu/LUPerson (the authors' "
    "download scripts rebuild it from the YouTube videos) and point data_dir at the folder holding "
    "<country>/<city>/... crops (the paper uses a 30k-crop subset)."
)
DATA_URL = "https://github.com/DengpanFu/LUPerson"
CROP_NAME = re.compile(r"^\d{8}_\d{4}\.jpg$")


def parse(
    data_dir: str | Path,
    split: str = "train",
    *,
    strict: bool = False,
    skips: SkipCounter | None = None,
    verify_images: bool = True,
) -> Iterator[dict]:
    """Yield one unlabeled re-ID record per crop, in sorted path order (reproducible everywhere)."""
    check_split(split, SPLITS, NAME)
    root = check_data_dir(data_dir, NAME, HOW_TO_OBTAIN, "a folder of <country>/<city>/.../<frame>_<obj>.jpg crops")
    skips = skips if skips is not None else SkipCounter(strict)
    for path in sorted(root.rglob("*.jpg")):
        image_id = path.relative_to(root).as_posix()
        if not CROP_NAME.match(path.name) or len(path.relative_to(root).parts) not in (3, 4):
            skips.skip(BAD_LINE, str(path), "expected <country>/<city>/[<video>/]<frame:08d>_<obj:04d>.jpg")
            continue
        size = read_image_size(path, image_id, skips, verify=verify_images)
        if size is None:
            continue
        width, height = size
        yield make_record(
            image=str(path),
            image_id=image_id,
            width=width,
            height=height,
            boxes=[[0, 0, width, height]],
            person_ids=[NO_IDENTITY],
            source=NAME,
            task="reid",
            split=split,
        )
