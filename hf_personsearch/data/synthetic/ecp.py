"""Synthetic EuroCity Persons: ``ECP/{day,night}/{img,labels}/{train,val}/<city>/<city>_<n>.{png,json}``.

Each label file is the ECP JSON tree ``{"identity": "frame", "imagewidth", "imageheight", "tags",
"children": [...]}``; every child has ``identity``, ``x0, y0, x1, y1``, ``tags`` and its own
``children`` (a rider carries its bicycle). Per image: some pedestrians (positives), one rider with a
bicycle child, one pedestrian tagged ``"depiction"`` and one ``"person-group-far-away"`` (all three
ignore regions in the unified record). Day images use the "street" background, night images the
"night" one, so the two ECP subsets are two domains, as in the real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..schema import NO_IDENTITY, make_record
from .render import render_scene

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


def write(
    out_dir: Path,
    *,
    seed: int = 0,
    num_per_subset: int = 2,
    max_pedestrians: int = 3,
    width: int = 360,
    height: int = 192,
) -> dict:
    """Write ``num_per_subset`` images for each of day/night x train/val.

    Defaults: 8 images at 1/5.33 of ECP's 1920x1024 (same aspect ratio), enough for a round trip.
    Returns ``{"records": [...]}``.
    """
    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "ECP"
    records, next_identity = [], 0
    for domain, time in enumerate(("day", "night")):
        for split in ("train", "val"):
            for index in range(num_per_subset):
                city = CITIES[index % len(CITIES)]
                name = f"{city}_{index:05d}"
                n = int(rng.integers(1, max_pedestrians + 1))
                identities = list(range(next_identity, next_identity + n + 2))
                next_identity += n + 2
                image, drawn = render_scene(
                    identities,
                    width=width,
                    height=height,
                    domain=domain,
                    rng=rng,
                    min_person_height=height // 5,
                    max_person_height=height // 2,
                )
                pedestrians, rider, depiction = drawn[:n], drawn[n], drawn[n + 1]
                group = np.array([0, height - 12, 30, height], np.float32)
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
    return {"records": records}
