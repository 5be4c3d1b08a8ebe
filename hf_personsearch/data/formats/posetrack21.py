"""PoseTrack21 person search (Doering et al., CVPR 2022) in its released raw format (COCO-style json).

Layout of ``data_dir`` (the dataset root)::

    images/{train,val}/<video>/<frame>.jpg
    posetrack_person_search/{train,val,query}.json

    {"images": [{"id", "file_name" (relative to the root), "vid_id", "frame_id",
                 "ignore_regions_x": [[x1, x2, ...], ...], "ignore_regions_y": [[y1, y2, ...], ...]}],
     "annotations": [{"image_id", "bbox": [x, y, w, h], "bbox_head", "keypoints", "person_id", "track_id"}]}

query.json has the same structure: each annotation is one query person, in a val image. The camera of
an image is its video (``vid_id``); each ignore polygon becomes its bounding box in ``ignore_regions``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import SkipCounter, reports_skips
from ..schema import clip_box_xyxy, make_record
from ._common import check_data_dir, check_split, read_image_header_size, require_file, xywh_box
from .custom import (
    annotations_by_image,
    camera_id_of,
    image_entries,
    person_id_of,
    queries_from_coco,
    read_coco_json,
)
from .spec import DatasetSpec

SOURCE = "posetrack21"
SPLITS = ("train", "val")
DATA_URL = "https://github.com/anDoer/PoseTrack21"
HOW_TO_OBTAIN = (
    f"PoseTrack21 is distributed by its authors only: request access as described at {DATA_URL} (e-mail "
    "posetrack21[at]googlegroups[dot]com), download it with their script, and pass the dataset root that holds "
    "images/ and posetrack_person_search/"
)
ANNOTATION_DIR = "posetrack_person_search"
QUERY_FILE = "query.json"


CAMERA_KEY = "vid_id"
"""The camera of a PoseTrack21 image is its video ("000342" or 342 -> 342)."""


def ignore_boxes(image: dict, width: int, height: int, where: str, skips: SkipCounter) -> list[np.ndarray]:
    """The bounding boxes (xyxy, clipped) of an image's ignore polygons."""
    xs_list, ys_list = image.get("ignore_regions_x") or [], image.get("ignore_regions_y") or []
    if not isinstance(xs_list, list) or not isinstance(ys_list, list):
        skips.skip("malformed ignore polygon", where, "ignore_regions_x/y: expected lists of coordinate lists")
        return []
    if len(xs_list) != len(ys_list):
        skips.skip("ignore regions x/y mismatch", where, f"{len(xs_list)} x lists but {len(ys_list)} y lists")
        return []
    boxes = []
    for k, (xs, ys) in enumerate(zip(xs_list, ys_list)):
        try:
            xs, ys = np.asarray(xs, np.float64).reshape(-1), np.asarray(ys, np.float64).reshape(-1)
        except (TypeError, ValueError):
            xs, ys = np.zeros(0), np.ones(0)
        if len(xs) == 0 or len(xs) != len(ys):
            skips.skip("malformed ignore polygon", f"{where} ignore region {k}", "expected equal, non-empty x/y lists")
            continue
        box, reason = clip_box_xyxy([xs.min(), ys.min(), xs.max(), ys.max()], width, height)
        if box is None:
            skips.skip(reason, f"{where} ignore region {k}")
            continue
        boxes.append(box)
    return boxes


@reports_skips(SOURCE)
def parse(
    data_dir: str | Path, split: str, *, strict: bool = False, skips: SkipCounter | None = None
) -> Iterator[dict]:
    """Yield one unified record (task "search") per image of ``posetrack_person_search/<split>.json``.

    Args:
        data_dir: the PoseTrack21 root (see the module docstring).
        split: "train" or "val" (val is the gallery of the queries).
        strict: raise :class:`DataFormatError` at the first bad item instead of skipping it.
        skips: a counter that also receives the skipped items (its own ``strict`` then applies). Either way
            this call's skips are reported when parsing ends (:func:`~hf_personsearch.data.errors.reports_skips`).
    """
    check_split(split, SPLITS, SOURCE)
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    path = require_file(root / ANNOTATION_DIR / f"{split}.json", SOURCE, HOW_TO_OBTAIN)
    document = read_coco_json(path)
    entries = image_entries(document, path, skips)
    grouped = annotations_by_image(document, path, entries, skips)
    for image_id, image in entries["images"].items():
        file_name = image["file_name"]
        camera = camera_id_of(image, CAMERA_KEY, f"{path} image {image_id!r} ({file_name})", skips)
        size = read_image_header_size(root / file_name, skips) if camera is not None else None
        if size is None:
            continue
        width, height = size
        boxes, person_ids = [], []
        for index, annotation in grouped.get(image_id, []):
            where = f"{path} annotations[{index}] (image {file_name})"
            box = xywh_box(annotation.get("bbox"), width, height, where, skips)
            person_id = person_id_of(annotation, where, skips) if box is not None else None
            if person_id is not None:
                boxes.append(box)
                person_ids.append(person_id)
        yield make_record(
            image=str(root / file_name),
            image_id=file_name,
            width=width,
            height=height,
            boxes=boxes,
            person_ids=person_ids,
            ignore_regions=ignore_boxes(image, width, height, f"{path} image {file_name}", skips),
            camera_id=camera,
            source=SOURCE,
            task="search",
            split=split,
        )


@reports_skips(f"{SOURCE} queries")
def load_queries(
    data_dir: str | Path, split: str = "val", *, strict: bool = False, skips: SkipCounter | None = None
) -> list[dict]:
    """The query persons of query.json in the schema.py query form, in file order.

    ``"gallery": None``: the gallery is every val image except the query's (queries with no other
    occurrence are skipped by the evaluation, which also drops detections inside ignore regions).
    """
    if split != "val":
        raise ValueError(f"{SOURCE}: queries are searched in the 'val' split only, got {split!r}")
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    path = require_file(root / ANNOTATION_DIR / QUERY_FILE, SOURCE, HOW_TO_OBTAIN)
    return queries_from_coco(path, root, skips, CAMERA_KEY)


SPEC = DatasetSpec(
    name=SOURCE,
    display_name="PoseTrack21",
    builder_name="PoseTrack21",
    task="search",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.posetrack21",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
    train_split="train",
    gallery_split="val",
    protocol="posetrack21",
    load_queries=load_queries,
)
