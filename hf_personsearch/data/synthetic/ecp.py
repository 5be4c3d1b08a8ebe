"""Synthetic EuroCity Persons: ``ECP/{day,night}/{img,labels}/{train,val}/<city>/<city>_<n>.{png,json}``.

Each label file is the ECP JSON tree ``{"identity": "frame", "imagewidth", "imageheight", "tags",
"children": [...]}``; every child has ``identity``, ``x0, y0, x1, y1``, ``tags`` and its own
``children`` (a rider carries its bicycle). Per image: some pedestrians (positives), one rider with a
bicycle child, one pedestrian tagged ``"depiction"`` and one ``"person-group-far-away"`` (all three
ignore regions in the unified record); small far-away persons are drawn under the group, so the
ignore region holds person-like pixels as in the real images. Both subsets have ECP's blue cast (the
"cool" style by day, "night" by night, see ``render.STYLES``), which sets ECP apart from CrowdHuman.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..schema import NO_IDENTITY, make_record
from .render import COOL, NIGHT, AppearancePool, render_scene

CITIES = ("berlin", "paris", "roma")


def _child(identity: str, box, tags=(), children=()) -> dict:
    x0, y0, x1, y1 = (float(v) for v in box)
    return {
        "identity": identity,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "orient": 0.0,
        "tags": list(tags),
        "children": list(children),
    }


GROUP_SIZE = (3, 6)
"""Range of the number of far-away persons drawn under each image's "person-group-far-away" (inclusive)."""

TIME_STYLES = {"day": COOL, "night": NIGHT}
"""ECP's camera has a blue cast: "cool" by day, "night" (dark and blue) by night; CrowdHuman is "street"."""


def write(
    out_dir: Path,
    *,
    seed: int = 0,
    num_per_subset: int = 2,
    num_val_per_subset: int | None = None,
    max_pedestrians: int = 3,
    min_person_height: int | None = None,
    max_person_height: int | None = None,
    width: int = 360,
    height: int = 192,
) -> dict:
    """Write ``num_per_subset`` train and ``num_val_per_subset`` (default the same) val images for each of
    day and night.

    Persons are ``min_person_height``..``max_person_height`` pixels high (default a fifth to a half of the
    image height); each image holds 1..``max_pedestrians`` pedestrians, a rider, a depiction and a drawn
    far-away group. All wear ECP's block of appearances (``AppearancePool``).
    Defaults: 8 images at 1/5.33 of ECP's 1920x1024 (same aspect ratio), enough for a round trip.
    Returns ``{"records": [...], "appearances": [...]}`` (the appearance of each box of each record).
    """
    rng = np.random.default_rng(seed)
    pool = AppearancePool("ecp")
    root = Path(out_dir) / "ECP"
    counts = {"train": num_per_subset, "val": num_per_subset if num_val_per_subset is None else num_val_per_subset}
    records, appearances = [], []
    for time, style in TIME_STYLES.items():
        for split, count in counts.items():
            for index in range(count):
                city = CITIES[index % len(CITIES)]
                name = f"{city}_{index:05d}"
                n = int(rng.integers(1, max_pedestrians + 1))
                looks = [pool.stranger(rng) for _ in range(n + 2)]
                crowd = [pool.stranger(rng) for _ in range(int(rng.integers(GROUP_SIZE[0], GROUP_SIZE[1] + 1)))]
                image, drawn = render_scene(
                    looks,
                    width=width,
                    height=height,
                    domain=style,
                    rng=rng,
                    min_person_height=height // 5 if min_person_height is None else min_person_height,
                    max_person_height=height // 2 if max_person_height is None else max_person_height,
                    crowds=[crowd],
                )
                pedestrians, rider, depiction, group = drawn[:n], drawn[n], drawn[n + 1], drawn[n + 2]
                bicycle = np.array([rider[0], (rider[1] + rider[3]) / 2, rider[2], rider[3]], np.float32)
                children = [
                    _child("pedestrian", box, tags=["occluded>10"] * (k % 2)) for k, box in enumerate(pedestrians)
                ]
                children.append(_child("rider", rider, children=[_child("bicycle", bicycle)]))
                children.append(_child("pedestrian", depiction, tags=["depiction"]))
                children.append(_child("person-group-far-away", group))
                tree = {
                    "identity": "frame",
                    "imagewidth": width,
                    "imageheight": height,
                    "tags": [],
                    "children": children,
                }
                image_path = root / time / "img" / split / city / f"{name}.png"
                label_path = root / time / "labels" / split / city / f"{name}.json"
                image_path.parent.mkdir(parents=True, exist_ok=True)
                label_path.parent.mkdir(parents=True, exist_ok=True)
                image.save(image_path)
                label_path.write_text(json.dumps(tree, indent=1))
                records.append(
                    make_record(
                        image=str(image_path),
                        image_id=f"{time}/img/{split}/{city}/{name}.png",
                        width=width,
                        height=height,
                        boxes=pedestrians,
                        person_ids=[NO_IDENTITY] * n,
                        ignore_regions=np.stack([rider, depiction, group]),
                        source="ecp",
                        task="detection",
                        split=split,
                    )
                )
                appearances.append(looks[:n])
    return {"records": records, "appearances": appearances}
