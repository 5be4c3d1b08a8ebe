"""Turn user inputs (numpy arrays, torch tensors or lists) into checked numpy arrays.

Every check raises a ``ValueError`` that names the list, the item index (and image id) and the key that
is wrong, and what was expected, so a malformed 6,000-image gallery is fixed in one look.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.schema import NO_CAMERA


def to_numpy(value, dtype, where: str) -> np.ndarray:
    """``value`` (array, tensor or nested list) as a numpy array of ``dtype``; ``where`` names it in errors."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: cannot be read as a {np.dtype(dtype).name} array ({error})") from error


def checked_array(value, dtype, shape: tuple, where: str) -> np.ndarray:
    """``to_numpy`` plus a shape check (``-1`` = any size) and a finiteness check for floats.

    An empty list for an (n, 4) or (n, d) array is accepted as (0, 4) / (0, d) because images without
    boxes or detections are common.
    """
    array = to_numpy(value, dtype, where)
    if array.size == 0 and len(shape) == 2:
        array = array.reshape(0, shape[1] if shape[1] != -1 else 0)
    if array.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, array.shape)):
        wanted = "(" + ", ".join("n" if s == -1 else str(s) for s in shape) + ")"
        raise ValueError(f"{where}: expected shape {wanted}, got {tuple(array.shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{where}: contains NaN or infinite values")
    return array


def require(item: dict, key: str, where: str):
    """``item[key]`` or a ValueError naming the missing key."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a dict, got {type(item).__name__}")
    if key not in item:
        raise ValueError(f"{where}: missing key {key!r}")
    return item[key]


@dataclass
class Gallery:
    """The gallery as flat arrays: ground truth per image plus the KEPT detections of all images.

    Detections are stored image after image, so the detections of image ``g`` are the rows
    ``det_start[g]:det_start[g + 1]`` of ``det_boxes``/``det_scores``/``det_embeddings``.
    """

    image_ids: list[str]
    index_of: dict[str, int]
    camera_ids: np.ndarray
    gt_boxes: list[np.ndarray]
    gt_person_ids: list[np.ndarray]
    ignore_regions: list[np.ndarray]
    det_start: np.ndarray
    det_image: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_embeddings: np.ndarray


def read_gallery_annotations(gallery) -> tuple[list[str], dict[str, int], np.ndarray, list, list, list]:
    """Check the gallery list and return (image_ids, index_of, camera_ids, boxes, person_ids, ignore_regions)."""
    if not isinstance(gallery, (list, tuple)):
        raise ValueError(f"gallery: expected a list of dicts (one per gallery image), got {type(gallery).__name__}")
    image_ids, cameras, boxes, person_ids, ignores = [], [], [], [], []
    index_of: dict[str, int] = {}
    for index, item in enumerate(gallery):
        where = f"gallery[{index}]"
        image_id = str(require(item, "image_id", where))
        where = f"gallery[{index}] (image {image_id!r})"
        if image_id in index_of:
            raise ValueError(f"{where}: image id already used by gallery[{index_of[image_id]}]; ids must be unique")
        index_of[image_id] = index
        image_ids.append(image_id)
        item_boxes = checked_array(require(item, "boxes", where), np.float64, (-1, 4), f"{where}['boxes']")
        item_pids = checked_array(require(item, "person_ids", where), np.int64, (-1,), f"{where}['person_ids']")
        if len(item_pids) != len(item_boxes):
            raise ValueError(f"{where}: {len(item_boxes)} boxes but {len(item_pids)} person_ids")
        boxes.append(item_boxes)
        person_ids.append(item_pids)
        cameras.append(int(item.get("camera_id", NO_CAMERA)))
        ignore = item.get("ignore_regions")
        ignores.append(
            np.zeros((0, 4))
            if ignore is None
            else checked_array(ignore, np.float64, (-1, 4), f"{where}['ignore_regions']")
        )
    return image_ids, index_of, np.asarray(cameras, dtype=np.int64), boxes, person_ids, ignores


def read_detections(detections, gallery_size: int, image_ids: list[str], need_embeddings: bool = True) -> list:
    """Check the detections list (aligned with the gallery) and return (boxes, scores, embeddings) per image."""
    if not isinstance(detections, (list, tuple)):
        raise ValueError(f"detections: expected a list of dicts aligned with gallery, got {type(detections).__name__}")
    if len(detections) != gallery_size:
        raise ValueError(
            f"detections: {len(detections)} entries but the gallery has {gallery_size} images; "
            "one detections dict per gallery image, in the same order"
        )
    out = []
    dim = None
    for index, item in enumerate(detections):
        where = f"detections[{index}] (image {image_ids[index]!r})"
        boxes = checked_array(require(item, "boxes", where), np.float64, (-1, 4), f"{where}['boxes']")
        scores = checked_array(require(item, "scores", where), np.float64, (-1,), f"{where}['scores']")
        if len(scores) != len(boxes):
            raise ValueError(f"{where}: {len(boxes)} boxes but {len(scores)} scores")
        embeddings = None
        if need_embeddings:
            embeddings = checked_array(
                require(item, "embeddings", where), np.float64, (-1, -1), f"{where}['embeddings']"
            )
            if len(embeddings) != len(boxes):
                raise ValueError(f"{where}: {len(boxes)} boxes but {len(embeddings)} embeddings")
            if len(embeddings):
                if dim is not None and embeddings.shape[1] != dim:
                    raise ValueError(f"{where}['embeddings']: dimension {embeddings.shape[1]}, earlier images {dim}")
                dim = embeddings.shape[1]
        out.append((boxes, scores, embeddings))
    return out
