"""Synthetic data in the documented custom format (docs/custom_format.md): COCO-style json + person_id.

It doubles as a worked example of the format: train.json / test.json / query.json, images under
``images/cam<k>/``, optional fields used both ways (``width``/``height`` given for some images and read
from the header for others; one ``ignore`` box; persons without ``person_id``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..formats.custom import DEFAULT_PROTOCOL
from ..schema import NO_IDENTITY, make_record
from ._common import add_coco_query, xyxy_to_xywh
from .render import NIGHT, STREET, AppearancePool, render_scene

IGNORED_CROWD_SIZE = 3
"""Far-away persons drawn under the ignore box: what such a box is for (a crowd nobody annotated)."""


def write(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train_images: int = 4,
    num_test_images: int = 5,
    num_cameras: int = 2,
    num_train_identities: int = 3,
    num_test_identities: int = 3,
    width: int = 192,
    height: int = 128,
) -> dict:
    """Write a small custom-format dataset under ``out_dir`` and return its ground truth.

    Defaults: a handful of images, each identity in two images of different cameras (so every test
    query has a match), one unlabeled person per image, and an ignore box over a drawn far-away crowd in
    the first image of a split. Images of odd cameras have the "night" style, the others "street";
    persons wear the custom block of appearances (``render.AppearancePool``).

    Returns:
        ``{"records": [train then test records], "queries": [one per test identity, in test.json],
        "appearances": [the appearance of each box of each record]}``.
    """
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    pool = AppearancePool("custom", num_train_identities + num_test_identities)
    records, queries, appearances = [], [], []
    # The protocol stated explicitly, as docs/custom_format.md asks of users' own data.
    query_document = {"protocol": DEFAULT_PROTOCOL, "images": [], "annotations": []}
    next_identity, image_id = 0, 0
    for split, num_images, num_identities in (
        ("train", num_train_images, num_train_identities),
        ("test", num_test_images, num_test_identities),
    ):
        identities = list(range(next_identity, next_identity + num_identities))
        next_identity += num_identities
        document = {"images": [], "annotations": []}
        for k in range(num_images):
            image_id += 1
            camera = 1 + image_id % num_cameras
            file_name = f"images/cam{camera}/{split}_{k:04d}.jpg"
            (root / file_name).parent.mkdir(parents=True, exist_ok=True)
            labeled = [i for j, i in enumerate(identities) if k in (j % num_images, (j + 1) % num_images)]
            ids = labeled + [NO_IDENTITY]
            looks = [pool.identity(i) if i >= 0 else pool.stranger(rng) for i in ids]
            crowds = [[pool.stranger(rng) for _ in range(IGNORED_CROWD_SIZE)]] if k == 0 else []
            image, boxes = render_scene(
                looks,
                width=width,
                height=height,
                domain=(STREET, NIGHT)[camera % 2],
                rng=rng,
                max_person_height=height - 8,
                crowds=crowds,
            )
            boxes, crowd_boxes = boxes[: len(ids)], boxes[len(ids) :]
            appearances.append(looks)
            image.save(root / file_name, quality=92)
            entry = {"id": image_id, "file_name": file_name, "camera_id": camera}
            if k % 2 == 0:  # width/height are optional: given here, read from the image header otherwise
                entry.update(width=width, height=height)
            document["images"].append(entry)
            for identity, box in zip(ids, boxes):
                annotation = {"image_id": image_id, "bbox": xyxy_to_xywh(box)}
                if identity != NO_IDENTITY:  # person_id omitted = no identity
                    annotation["person_id"] = identity
                document["annotations"].append(annotation)
                if split == "test" and identity != NO_IDENTITY and identity not in [q["person_id"] for q in queries]:
                    add_coco_query(query_document, queries, entry, annotation, box, camera)
            for box in crowd_boxes:  # an ignore box: a crowd nobody annotated one by one
                document["annotations"].append({"image_id": image_id, "bbox": xyxy_to_xywh(box), "ignore": 1})
            records.append(
                make_record(
                    image=str(root / file_name),
                    image_id=file_name,
                    width=width,
                    height=height,
                    boxes=boxes,
                    person_ids=ids,
                    ignore_regions=crowd_boxes,
                    camera_id=camera,
                    source="custom",
                    task="search",
                    split=split,
                )
            )
        (root / f"{split}.json").write_text(json.dumps(document, indent=1))
    (root / "query.json").write_text(json.dumps(query_document, indent=1))
    return {"records": records, "queries": queries, "appearances": appearances}
