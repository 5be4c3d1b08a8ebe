"""Pieces the synthetic writers share: box conversion, MATLAB files, the query list of COCO-style formats."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import scipy.io

MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, written by hf_personsearch.data.synthetic"
"""The text part of a v5 .mat header (116 bytes once padded). scipy writes the creation time there, so the
same seed would write different bytes; MATLAB and scipy ignore the text when reading."""


def xyxy_to_xywh(box) -> list[float]:
    """``[x1, y1, x2, y2]`` -> ``[x, y, w, h]`` as plain floats (the raw formats store xywh boxes in json/mat)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def savemat(path: str | Path, variables: dict) -> None:
    """``scipy.io.savemat(path, variables)`` with the fixed :data:`MAT_HEADER` text, so files are reproducible."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    data = bytearray(buffer.getvalue())
    data[:116] = MAT_HEADER.ljust(116)
    Path(path).write_bytes(bytes(data))


def add_coco_query(
    query_document: dict, queries: list[dict], image_entry: dict, annotation: dict, box: np.ndarray, camera_id: int
) -> None:
    """Make ``annotation`` a query: add it (and its image entry, once) to the query json and the ground truth.

    The query json has the structure of the split files (custom query.json, PoseTrack21 query.json); the
    ground truth is in the schema.py query form, with ``"gallery": None`` (the whole gallery split).
    """
    query_document["annotations"].append(dict(annotation))
    if image_entry not in query_document["images"]:
        query_document["images"].append(image_entry)
    queries.append(
        {
            "image_id": image_entry["file_name"],
            "box": box.copy(),
            "person_id": annotation["person_id"],
            "camera_id": camera_id,
            "gallery": None,
        }
    )
