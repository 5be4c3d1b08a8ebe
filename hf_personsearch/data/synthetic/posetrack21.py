"""Synthetic PoseTrack21 person search in the released raw format (COCO-style json + video folders).

See :mod:`hf_personsearch.data.formats.posetrack21` for the layout. Person ids are global across
videos (as in PoseTrack21 person search); track ids are per video; some frames carry an ignore polygon.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..formats.posetrack21 import ANNOTATION_DIR
from ..schema import make_record
from ._common import add_coco_query, xyxy_to_xywh
from .render import NIGHT, STREET, AppearancePool, render_scene

NUM_KEYPOINTS = 17
IGNORED_CROWD_SIZE = 3
"""Far-away persons drawn under the ignore polygon of a video's first frame: what the polygon is for."""


def _keypoints(box: np.ndarray) -> list[float]:
    """17 (x, y, visibility) triplets on the box's vertical axis: a placeholder pose inside the box."""
    x = float((box[0] + box[2]) / 2)
    ys = np.linspace(box[1], box[3], NUM_KEYPOINTS)
    return [v for y in ys for v in (x, float(y), 1.0)]


def write(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train_videos: int = 2,
    num_val_videos: int = 3,
    frames_per_video: int = 3,
    num_train_identities: int = 3,
    num_val_identities: int = 3,
    width: int = 224,
    height: int = 128,
) -> dict:
    """Write a small PoseTrack21 person search under ``out_dir`` and return its ground truth.

    Defaults: a few short videos (each one a camera); every val identity appears in two videos, so each
    query (its first frame in the first of them) has matches elsewhere; train and val identities are
    disjoint. The first frame of every video carries one ignore polygon (a rectangle) over a drawn
    far-away crowd. Odd videos have the "night" style, even ones "street"; persons wear PoseTrack21's
    block of appearances (``render.AppearancePool``).

    Returns:
        ``{"records": [train then val records in json order], "queries": [one per val identity],
        "appearances": [the appearance of each box of each record]}``.
    """
    root = Path(out_dir)
    (root / ANNOTATION_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = AppearancePool("posetrack21", num_train_identities + num_val_identities)
    records, queries, appearances = [], [], []
    query_document = {"images": [], "annotations": []}
    next_identity, video = 1, 0
    for split, num_videos, num_identities in (
        ("train", num_train_videos, num_train_identities),
        ("val", num_val_videos, num_val_identities),
    ):
        identities = list(range(next_identity, next_identity + num_identities))
        next_identity += num_identities
        document = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
        for v in range(num_videos):
            video += 1
            folder = f"images/{split}/{video:06d}_mpii_{split}"
            (root / folder).mkdir(parents=True, exist_ok=True)
            # identity k is in videos k and k + 1 (mod num_videos): seen in two videos ("cameras")
            cast = [i for k, i in enumerate(identities) if v in (k % num_videos, (k + 1) % num_videos)]
            for frame in range(frames_per_video):
                image_id = int(f"1{video:06d}{frame:04d}")
                file_name = f"{folder}/{frame:06d}.jpg"
                looks = [pool.identity(identity - 1) for identity in cast]
                crowds = [[pool.stranger(rng) for _ in range(IGNORED_CROWD_SIZE)]] if frame == 0 else []
                image, boxes = render_scene(
                    looks,
                    width=width,
                    height=height,
                    domain=(STREET, NIGHT)[video % 2],
                    rng=rng,
                    max_person_height=height - 8,
                    crowds=crowds,
                )
                boxes, crowd_boxes = boxes[: len(cast)], boxes[len(cast) :]
                appearances.append(looks)
                image.save(root / file_name, quality=92)
                polygon_x = [[float(b[0]), float(b[2]), float(b[2]), float(b[0])] for b in crowd_boxes]
                polygon_y = [[float(b[1]), float(b[1]), float(b[3]), float(b[3])] for b in crowd_boxes]
                document["images"].append(
                    {
                        "id": image_id,
                        "frame_id": image_id,
                        "vid_id": f"{video:06d}",
                        "file_name": file_name,
                        "nframes": frames_per_video,
                        "is_labeled": True,
                        "has_labeled_person": bool(cast),
                        "ignore_regions_x": polygon_x,
                        "ignore_regions_y": polygon_y,
                    }
                )
                for track, (identity, box) in enumerate(zip(cast, boxes)):
                    x, y, w, h = xyxy_to_xywh(box)
                    annotation = {
                        "id": image_id * 100 + track,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x, y, w, h],
                        "bbox_head": [x + 0.3 * w, y, 0.4 * w, 0.17 * h],
                        "keypoints": _keypoints(box),
                        "person_id": identity,
                        "track_id": track,
                    }
                    document["annotations"].append(annotation)
                    if split == "val" and frame == 0 and v == identities.index(identity) % num_videos:
                        add_coco_query(query_document, queries, document["images"][-1], annotation, box, video)
                records.append(
                    make_record(
                        image=str(root / file_name),
                        image_id=file_name,
                        width=width,
                        height=height,
                        boxes=boxes,
                        person_ids=cast,
                        ignore_regions=crowd_boxes,
                        camera_id=video,
                        source="posetrack21",
                        task="search",
                        split=split,
                    )
                )
        (root / ANNOTATION_DIR / f"{split}.json").write_text(json.dumps(document))
    (root / ANNOTATION_DIR / "query.json").write_text(json.dumps(query_document))
    return {"records": records, "queries": queries, "appearances": appearances}
