"""The unified schema: one record per image, whatever the source dataset.

Every raw-format parser in :mod:`hf_personsearch.data` yields records of this shape, every
``datasets`` builder in ``datasets_scripts/`` stores them with :data:`FEATURES`, and unification,
augmentation and the evaluation consume them. This is the one place where the schema is written down.

Record fields
-------------
``image``           the image: a path (str) when parsing, a ``datasets.Image`` value in a Dataset.
``image_id``        str, unique within (source, split); the file name relative to the dataset root.
``width``/``height`` int, size of the image in pixels, in its displayed orientation (EXIF orientation
                    applied, as :func:`hf_personsearch.image_loading.load_image` reads every image).
``boxes``           (n, 4) float32, ``x1, y1, x2, y2`` in pixels of that displayed image (no +1
                    convention), inside the image.
``person_ids``      (n,) int64, the identity of each box in the source dataset's own numbering, or
                    :data:`NO_IDENTITY` for a person without identity (a detection box, an unlabeled
                    re-ID crop, PRW's id -2, a CUHK-SYSU gallery person that is nobody's query).
``ignore_regions``  (k, 4) float32 xyxy: regions whose detections are neither positives nor negatives
                    (CrowdHuman "mask" / ignore boxes, ECP groups and depictions, PoseTrack21 ignore
                    polygons reduced to their bounding boxes).
``camera_id``       int, camera (PRW c<d>, MSMT17 camera, PoseTrack21 video) or :data:`NO_CAMERA`.
``source``          str, the dataset name (one of :func:`hf_personsearch.data.formats.dataset_names`).
``task``            one of :data:`TASKS`: "detection" (boxes, no ids), "reid" (one crop = one person,
                    ``boxes == [[0, 0, width, height]]``) or "search" (scene images with boxes and ids).
``split``           str, "train", "val", "test", "query", "gallery" ...

Queries (target datasets)
-------------------------
Query lists are plain dicts in the form :func:`hf_personsearch.evaluation.evaluate_search` consumes:
``{"image_id": str, "box": (4,) xyxy, "person_id": int, "camera_id": int,
"gallery": None | [{"image_id": str, "box": (4,) xyxy or None}, ...]}`` where ``gallery`` is only
given for CUHK-SYSU (its TestG{N} list; ``box`` None marks a distractor image).
"""

from __future__ import annotations

import numpy as np

# The model's OIM loss owns the no-identity value (the model code must import alone as Hub remote code).
from ..oim import NO_IDENTITY as NO_IDENTITY

NO_CAMERA = -1
"""Camera id of images whose source has no camera information."""

TASKS = ("detection", "reid", "search")


def features():
    """The ``datasets.Features`` of a unified record (imported lazily: the model never needs datasets)."""
    import datasets

    box = datasets.Sequence(datasets.Value("float32"), length=4)
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "boxes": datasets.Sequence(box),
            "person_ids": datasets.Sequence(datasets.Value("int64")),
            "ignore_regions": datasets.Sequence(box),
            "camera_id": datasets.Value("int32"),
            "source": datasets.Value("string"),
            "task": datasets.Value("string"),
            "split": datasets.Value("string"),
        }
    )


def make_record(
    *,
    image,
    image_id: str,
    width: int,
    height: int,
    boxes,
    person_ids,
    source: str,
    task: str,
    split: str,
    camera_id: int = NO_CAMERA,
    ignore_regions=None,
) -> dict:
    """Build a record with numpy arrays of the documented dtypes and check its invariants."""
    if task not in TASKS:
        raise ValueError(f"{image_id}: task must be one of {TASKS}, got {task!r}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    person_ids = np.asarray(person_ids, dtype=np.int64).reshape(-1)
    if len(boxes) != len(person_ids):
        raise ValueError(f"{image_id}: {len(boxes)} boxes but {len(person_ids)} person ids")
    ignore = np.zeros((0, 4), np.float32) if ignore_regions is None else np.asarray(ignore_regions, np.float32)
    return {
        "image": image,
        "image_id": str(image_id),
        "width": int(width),
        "height": int(height),
        "boxes": boxes,
        "person_ids": person_ids,
        "ignore_regions": ignore.reshape(-1, 4),
        "camera_id": int(camera_id),
        "source": source,
        "task": task,
        "split": split,
    }


BOX_ERRORS = ("box has NaN or infinite coordinates", "box has width or height <= 0", "box outside image")
"""The reasons :func:`clip_box_xyxy` rejects a box (the keys parsers count skipped boxes under)."""


def clip_box_xyxy(box, width: int, height: int) -> tuple[np.ndarray | None, str]:
    """Check one ``x1, y1, x2, y2`` box of a ``width`` x ``height`` image and clip it to the image.

    Real annotations overhang the image by a few pixels (PRW has negative coordinates, CrowdHuman full
    boxes leave the frame), so a box that still covers part of the image is clipped, not rejected. A box
    with NaN/inf coordinates, a non-positive width or height, or nothing left inside the image is
    unusable: the result is ``(None, reason)`` with ``reason`` one of :data:`BOX_ERRORS`, so the caller can
    raise or skip and count it with :class:`hf_personsearch.data.errors.SkipCounter`.

    Returns:
        ``(clipped float32 (4,) box, "")`` or ``(None, reason)``.
    """
    box = np.asarray(box, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(box)):
        return None, BOX_ERRORS[0]
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, BOX_ERRORS[1]
    clipped = np.array(
        [
            min(max(box[0], 0), width),
            min(max(box[1], 0), height),
            min(max(box[2], 0), width),
            min(max(box[3], 0), height),
        ]
    )
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, BOX_ERRORS[2]
    return clipped.astype(np.float32), ""
