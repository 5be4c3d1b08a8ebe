"""Synthetic CrowdHuman: ``annotation_{train,val}.odgt`` + ``Images/<ID>.jpg`` (REFERENCE.md 4).

Each .odgt line is a JSON object ``{"ID", "gtboxes": [...]}`` with the keys the public loaders read
(``tag``, ``fbox``/``vbox``/``hbox`` as ``[x, y, w, h]``, ``extra`` with ``box_id``/``occ``/``ignore``,
``head_attr``). Besides the fully visible persons each image may have a person cut by the left image
border (``fbox`` leaves the image, as in real CrowdHuman), one person marked ``extra.ignore = 1`` and
one ``"mask"`` region; both of the latter are ignore regions in the unified record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..schema import NO_IDENTITY, make_record
from ._common import xyxy_to_xywh
from .render import render_person, render_scene


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


def write(
    out_dir: Path,
    *,
    seed: int = 0,
    num_train: int = 6,
    num_val: int = 3,
    max_persons: int = 4,
    width: int = 320,
    height: int = 240,
) -> dict:
    """Write ``num_train`` + ``num_val`` scene images with 1..``max_persons`` visible persons each.

    Defaults: a few small images, enough for a round trip and a detector smoke test in seconds.
    Returns ``{"records": [...]}``: boxes are the full-body boxes clipped to the image.
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    (out_dir / "Images").mkdir(parents=True, exist_ok=True)
    records, next_identity = [], 0
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        for index in range(count):
            image_id = f"{273271 + 1000 * (split == 'val') + index},{seed:x}{index:05x}"
            n = int(rng.integers(1, max_persons + 1))
            identities = list(range(next_identity, next_identity + n + 1))
            next_identity += n + 1
            image, drawn = render_scene(
                identities,
                width=width,
                height=height,
                domain=index % 2,
                rng=rng,
                min_person_height=height // 5,
                max_person_height=height // 2,
            )
            gtboxes, boxes, ignore = [], [], []
            # The last drawn person is marked ignore (CrowdHuman's extra.ignore), the others are positives.
            for k, box in enumerate(drawn):
                is_ignored = k == len(drawn) - 1
                gtboxes.append(_gtbox("person", xyxy_to_xywh(box), xyxy_to_xywh(box), k, ignore=int(is_ignored)))
                (ignore if is_ignored else boxes).append(box)
            # A person cut by the left border: its full-body box starts at a negative x.
            h = height // 3
            w = int(h * 0.4)
            y = int(rng.integers(0, height - h))
            if _free_band(np.asarray(drawn), w - w // 2, y, y + h):
                crop = render_person(next_identity, h, w, rng)
                next_identity += 1
                image.paste(crop.crop((w // 2, 0, w, h)), (0, y))
                fbox = [float(-(w // 2)), float(y), float(w), float(h)]
                vbox = [0.0, float(y), float(w - w // 2), float(h)]
                gtboxes.append(_gtbox("person", fbox, vbox, len(gtboxes)))
                boxes.append(np.array([0, y, w - w // 2, y + h], np.float32))
            # A crowd "mask" region over the top-right corner (nothing needs to be drawn for it).
            mask = [float(width - 40), 0.0, 40.0, 20.0]
            gtboxes.append(_gtbox("mask", mask, mask, len(gtboxes)))
            ignore.append(np.array([width - 40, 0, width, 20], np.float32))
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
                    ignore_regions=np.asarray(ignore, np.float32).reshape(-1, 4),
                    source="crowdhuman",
                    task="detection",
                    split=split,
                )
            )
        (out_dir / f"annotation_{split}.odgt").write_text("\n".join(lines) + "\n")
    return {"records": records}
