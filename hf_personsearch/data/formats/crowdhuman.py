"""CrowdHuman: ``annotation_{train,val}.odgt`` (one JSON object per line) + ``Images/<ID>.jpg``.

Line format (CrowdHuman's .odgt release files): ``{"ID": str, "gtboxes": [{"tag": "person" | "mask", "fbox" / "vbox" /
"hbox": [x, y, w, h], "extra": {"box_id", "occ", "ignore"?}, "head_attr": {...}}]}``. A ``"mask"``
entry or a person with ``extra.ignore == 1`` becomes an ignore region; every other person is a
detection box without identity (the paper's unification gives each one a new identity later).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import SkipCounter, reports_skips
from ..schema import NO_IDENTITY, make_record
from ._common import (
    BAD_LINE,
    DUPLICATE_ID,
    UNKNOWN_KEY,
    check_data_dir,
    check_split,
    clean_box,
    read_image_size,
    utf8_lines,
    xywh_to_xyxy,
)
from .spec import DatasetSpec

NAME = "crowdhuman"
SPLITS = ("train", "val")
HOW_TO_OBTAIN = (
    "CrowdHuman is not redistributable: download CrowdHuman_train0{1,2,3}.zip, CrowdHuman_val.zip and "
    "annotation_{train,val}.odgt from https://www.crowdhuman.org/download.html and unzip them into one "
    "folder (it then holds Images/ and the two .odgt files)."
)
DATA_URL = "https://www.crowdhuman.org/download.html"
BOX_TYPES = ("fbox", "vbox")
TAGS = ("person", "mask")


@reports_skips(NAME)
def parse(
    data_dir: str | Path,
    split: str,
    *,
    strict: bool = False,
    skips: SkipCounter | None = None,
    box_type: str = "fbox",
    verify_images: bool = True,
) -> Iterator[dict]:
    """Yield one detection record per image of ``annotation_<split>.odgt``.

    Args:
        box_type: "fbox" (default: the full body, what person search annotates) or "vbox" (visible
            part). Full-body boxes that leave the image are clipped to it.
        verify_images: decode every image once (see ``read_image_size``).
    """
    check_split(split, SPLITS, NAME)
    if box_type not in BOX_TYPES:
        raise ValueError(f"{NAME}: box_type must be one of {BOX_TYPES}, got {box_type!r}")
    root = check_data_dir(data_dir, NAME, HOW_TO_OBTAIN, "a folder with Images/ and annotation_{train,val}.odgt")
    odgt = root / f"annotation_{split}.odgt"
    if not odgt.is_file():
        raise FileNotFoundError(f"{NAME}: missing {odgt}. {HOW_TO_OBTAIN}")
    seen = set()
    for line_number, line in utf8_lines(odgt, skips):
        if not line.strip():
            continue
        where = f"{odgt}:{line_number}"
        entry = _read_line(line, where, skips)
        if entry is None:
            continue
        if entry["ID"] in seen:
            skips.skip(DUPLICATE_ID, where, f"ID {entry['ID']!r} was on an earlier line; the first is kept")
            continue
        seen.add(entry["ID"])
        record = _parse_entry(root, entry, where, skips, box_type, split, verify_images)
        if record is not None:
            yield record


def _read_line(line: str, where: str, skips) -> dict | None:
    """The JSON object of one line if it has a string ``ID`` and a list ``gtboxes``; else None (counted)."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        skips.skip(BAD_LINE, where, f"invalid JSON: {error}")
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("ID"), str) or not entry["ID"]:
        skips.skip(BAD_LINE, where, "expected a JSON object with a non-empty string 'ID'")
        return None
    if not isinstance(entry.get("gtboxes"), list):
        skips.skip(BAD_LINE, where, f"key 'gtboxes': expected a list, got {entry.get('gtboxes')!r:.80}")
        return None
    return entry


def _parse_entry(root: Path, entry: dict, where: str, skips, box_type: str, split: str, verify: bool):
    image_id = f"Images/{entry['ID']}.jpg"
    size = read_image_size(root / image_id, f"{where} ({image_id})", skips, verify=verify)
    if size is None:
        return None
    width, height = size
    boxes, ignore = [], []
    for k, gtbox in enumerate(entry["gtboxes"]):
        box_where = f"{where} gtboxes[{k}]"
        tag = gtbox.get("tag") if isinstance(gtbox, dict) else None
        if tag not in TAGS:
            skips.skip(UNKNOWN_KEY, box_where, f"tag {tag!r}, expected one of {TAGS}")
            continue
        key = box_type if tag == "person" else "fbox"
        if key not in gtbox:
            skips.skip(BAD_LINE, box_where, f"no {key!r}")
            continue
        try:
            xyxy = xywh_to_xyxy(gtbox[key])
        except (TypeError, ValueError):
            skips.skip(BAD_LINE, box_where, f"{key} {gtbox[key]!r}, expected [x, y, w, h]")
            continue
        box = clean_box(xyxy, width, height, box_where, skips)
        if box is None:
            continue
        extra = gtbox.get("extra") or {}
        if not isinstance(extra, dict):
            skips.skip(BAD_LINE, box_where, f"key 'extra': expected an object, got {extra!r:.80}")
            continue
        if tag == "mask" or extra.get("ignore", 0) == 1:
            ignore.append(box)
        else:
            boxes.append(box)
    return make_record(
        image=str(root / image_id),
        image_id=image_id,
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        person_ids=[NO_IDENTITY] * len(boxes),
        ignore_regions=np.asarray(ignore, np.float32).reshape(-1, 4),
        source=NAME,
        task="detection",
        split=split,
    )


SPEC = DatasetSpec(
    name=NAME,
    display_name="CrowdHuman",
    builder_name="CrowdHuman",
    task="detection",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.crowdhuman",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
)
