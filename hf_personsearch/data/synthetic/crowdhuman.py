"""Synthetic CrowdHuman: ``annotation_{train,val}.odgt`` + ``Images/<ID>.jpg``, as released.

Each .odgt line is a JSON object ``{"ID", "gtboxes": [...]}`` with the keys the public loaders read
(``tag``, ``fbox``/``vbox``/``hbox`` as ``[x, y, w, h]``, ``extra`` with ``box_id``/``occ``/``ignore``,
``head_attr``). Besides the fully visible persons each image may have a person cut by the left image
border (``fbox`` leaves the image, as in real CrowdHuman), one small unclear person marked
``extra.ignore = 1`` and one ``"mask"`` region over a drawn far-away crowd; both of the latter are
ignore regions in the unified record, and both hold person-like pixels, as in the real images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..schema import NO_IDENTITY, make_record
from ._common import xyxy_to_xywh
from .render import STREET, AppearancePool, draw_person, render_scene


def _gtbox(tag: str, fbox, vbox, box_id: int, ignore: int = 0) -> dict:
    x, y, w, h = fbox
    head = [x + 0.3 * w, y, 0.4 * w, 0.16 * h]
    extra = {"box_id": box_id, "occ": int(vbox != fbox)}
    if ignore:
        extra["ignore"] = 1
    return {
        "tag": tag,
        "hbox": [round(v, 2) for v in head],
        "head_attr": {"ignore": 0, "occ": 0, "unsure": 0},
        "fbox": fbox,
        "vbox": vbox,
        "extra": extra,
    }


def _free_band(boxes: np.ndarray, x2: float, y1: float, y2: float) -> bool:
    """True when the region ``[0, y1, x2, y2]`` touches none of ``boxes``."""
    return not np.any((boxes[:, 0] < x2) & (boxes[:, 1] < y2) & (boxes[:, 3] > y1))


MASK_CROWD_SIZE = (3, 6)
"""Range of the number of far-away persons drawn under each image's "mask" region (inclusive)."""


def write(
    out_dir: Path,
    *,
    seed: int = 0,
    num_train: int = 6,
    num_val: int = 3,
    min_persons: int = 1,
    max_persons: int = 4,
    min_person_height: int | None = None,
    max_person_height: int | None = None,
    width: int = 320,
    height: int = 240,
) -> dict:
    """Write ``num_train`` + ``num_val`` street scenes with ``min_persons``..``max_persons`` visible persons each.

    Every image also holds a crowd of far-away persons under a ``"mask"`` region, one small unclear
    person marked ``extra.ignore = 1`` (both ignore regions in the unified record) and, where there is
    room, a person cut by the left border. Persons are ``min_person_height``..``max_person_height`` pixels
    high (default a fifth to a half of the image height: mid-distance pedestrians). All persons wear
    CrowdHuman's block of appearances (``AppearancePool``); the style is "street".

    Defaults: a few small images, enough for a round trip and a detector smoke test in seconds.
    Returns ``{"records": [...], "appearances": [...]}``: boxes are the full-body boxes clipped to the
    image; ``appearances[i]`` lists the appearance of each box of ``records[i]``.
    """
    if not 1 <= min_persons <= max_persons:
        raise ValueError(f"need 1 <= min_persons <= max_persons, got {min_persons}, {max_persons}")
    rng = np.random.default_rng(seed)
    pool = AppearancePool("crowdhuman")
    out_dir = Path(out_dir)
    (out_dir / "Images").mkdir(parents=True, exist_ok=True)
    records, appearances = [], []
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        for index in range(count):
            image_id = f"{273271 + 1000 * (split == 'val') + index},{seed:x}{index:05x}"
            n = int(rng.integers(min_persons, max_persons + 1))
            looks = [pool.stranger(rng) for _ in range(n)]
            mask_crowd = [
                pool.stranger(rng) for _ in range(int(rng.integers(MASK_CROWD_SIZE[0], MASK_CROWD_SIZE[1] + 1)))
            ]
            unclear = [pool.stranger(rng)]
            image, drawn = render_scene(
                looks,
                width=width,
                height=height,
                domain=STREET,
                rng=rng,
                min_person_height=height // 5 if min_person_height is None else min_person_height,
                max_person_height=height // 2 if max_person_height is None else max_person_height,
                crowds=[unclear, mask_crowd],
            )
            persons, unclear_box, mask_box = drawn[:n], drawn[n], drawn[n + 1]
            gtboxes = [_gtbox("person", xyxy_to_xywh(box), xyxy_to_xywh(box), k) for k, box in enumerate(persons)]
            boxes = list(persons)
            gtboxes.append(_gtbox("person", xyxy_to_xywh(unclear_box), xyxy_to_xywh(unclear_box), n, ignore=1))
            # A person cut by the left border: its full-body box starts at a negative x.
            h = height // 3
            w = int(h * 0.4)
            y = int(rng.integers(0, height - h))
            if _free_band(drawn, w - w // 2, y, y + h):
                looks.append(pool.stranger(rng))
                draw_person(image, -(w // 2), y, w, h, looks[-1], STREET, rng)
                fbox = [float(-(w // 2)), float(y), float(w), float(h)]
                vbox = [0.0, float(y), float(w - w // 2), float(h)]
                gtboxes.append(_gtbox("person", fbox, vbox, len(gtboxes)))
                boxes.append(np.array([0, y, w - w // 2, y + h], np.float32))
            gtboxes.append(_gtbox("mask", xyxy_to_xywh(mask_box), xyxy_to_xywh(mask_box), len(gtboxes)))
            image.save(out_dir / "Images" / f"{image_id}.jpg", quality=95)
            lines.append(json.dumps({"ID": image_id, "gtboxes": gtboxes}))
            records.append(
                make_record(
                    image=str(out_dir / "Images" / f"{image_id}.jpg"),
                    image_id=f"Images/{image_id}.jpg",
                    width=width,
                    height=height,
                    boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                    person_ids=[NO_IDENTITY] * len(boxes),
                    ignore_regions=np.stack([unclear_box, mask_box]),
                    source="crowdhuman",
                    task="detection",
                    split=split,
                )
            )
            appearances.append(looks)
        (out_dir / f"annotation_{split}.odgt").write_text("\n".join(lines) + "\n")
    return {"records": records, "appearances": appearances}
