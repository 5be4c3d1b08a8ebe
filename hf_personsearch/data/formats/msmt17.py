"""MSMT17: ``list_{train,val,query,gallery}.txt`` + crops under ``train/`` and ``test/``.

Each line is ``"<pid>/<name>.jpg <label>"`` (MSMT17_V1 list files), the path relative to ``train/`` (train,
val) or ``test/`` (query, gallery); labels are 0-based; the camera is
``int(name.split('_')[2]) - 1``. One record per crop: a re-ID record with the single box
``[0, 0, width, height]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ..errors import SkipCounter, reports_skips
from ..schema import make_record
from ._common import (
    BAD_LINE,
    DUPLICATE_ID,
    INT32_MAX,
    INT64_MAX,
    check_data_dir,
    check_split,
    json_integer,
    read_image_size,
    utf8_lines,
)
from .spec import DatasetSpec

NAME = "msmt17"
SPLITS = ("train", "val", "query", "gallery")
IMAGE_FOLDER = {"train": "train", "val": "train", "query": "test", "gallery": "test"}
HOW_TO_OBTAIN = (
    "MSMT17 is not redistributable: request it from the authors (https://www.pkuvmc.com/dataset.html, "
    "signed release agreement) and unzip MSMT17_V1 (or V2); data_dir is the folder holding train/, test/ "
    "and list_{train,val,query,gallery}.txt."
)
DATA_URL = "https://www.pkuvmc.com/dataset.html"
DIGITS = re.compile(r"[0-9]+")


def msmt17_root(data_dir: str | Path) -> Path:
    """``data_dir`` itself when it holds the list files, else its MSMT17_V1 / MSMT17_V2 sub-folder."""
    root = check_data_dir(data_dir, NAME, HOW_TO_OBTAIN, "a folder with train/, test/ and list_*.txt")
    for candidate in (root, root / "MSMT17_V1", root / "MSMT17_V2"):
        if (candidate / "list_train.txt").is_file():
            return candidate
    return root


@reports_skips(NAME)
def parse(
    data_dir: str | Path,
    split: str,
    *,
    strict: bool = False,
    skips: SkipCounter | None = None,
    verify_images: bool = True,
) -> Iterator[dict]:
    """Yield one re-ID record per line of ``list_<split>.txt``, in file order."""
    check_split(split, SPLITS, NAME)
    root = msmt17_root(data_dir)
    list_path = root / f"list_{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"{NAME}: missing {list_path}. {HOW_TO_OBTAIN}")
    folder = IMAGE_FOLDER[split]
    seen = set()
    for line_number, line in utf8_lines(list_path, skips):
        if not line.strip():
            continue
        where = f"{list_path}:{line_number}"
        parsed = _parse_line(line)
        if parsed is None:
            skips.skip(
                BAD_LINE, where, f"expected '<pid>/<pid>_<seq>_<cam>_..._<k>.jpg <label>', got {line.strip()!r}"
            )
            continue
        relative, label, camera = parsed
        image_id = f"{folder}/{relative}"
        if image_id in seen:
            skips.skip(DUPLICATE_ID, where, f"{image_id} is on an earlier line; the first is kept")
            continue
        seen.add(image_id)
        size = read_image_size(root / image_id, f"{where} ({image_id})", skips, verify=verify_images)
        if size is None:
            continue
        width, height = size
        yield make_record(
            image=str(root / image_id),
            image_id=image_id,
            width=width,
            height=height,
            boxes=[[0, 0, width, height]],
            person_ids=[label],
            camera_id=camera,
            source=NAME,
            task="reid",
            split=split,
        )


def _parse_line(line: str) -> tuple[str, int, int] | None:
    """``(relative path, label, camera)`` of a list line, None when it is malformed (or the path leaves the
    image folder, or a number does not fit the schema's integer columns)."""
    fields = line.split()
    if len(fields) != 2 or PurePosixPath(fields[0]).is_absolute() or ".." in PurePosixPath(fields[0]).parts:
        return None
    relative, label = fields
    name_fields = PurePosixPath(relative).name.split("_")
    label = _number(label, 0, INT64_MAX)
    camera = _number(name_fields[2], 1, INT32_MAX) if len(name_fields) > 2 else None
    if label is None or camera is None:
        return None
    camera -= 1  # the name counts cameras from 1
    return relative, label, camera


def _number(text: str, low: int, high: int) -> int | None:
    """The decimal number ``text`` (ASCII digits only) within ``[low, high]``, else None."""
    return json_integer(int(text), low, high) if DIGITS.fullmatch(text) else None


SPEC = DatasetSpec(
    name=NAME,
    display_name="MSMT17",
    builder_name="MSMT17",
    task="reid",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.msmt17",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
)
