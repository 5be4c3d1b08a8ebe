"""PRW (Person Re-identification in the Wild, Zheng et al., CVPR 2017) in its released raw format.

Layout of ``data_dir`` (the unpacked release)::

    frames/c{cam}s{seq}_{frame:06d}.jpg       1920x1080 frames of 6 cameras
    annotations/<frame>.jpg.mat               key "box_new" (older releases "anno_file" or
                                              "anno_previous"): rows [id, x, y, w, h], id -2 = unknown person
    frame_train.mat / frame_test.mat          keys "img_index_train" / "img_index_test": cell (N, 1) of frame
                                              names without ".jpg"
    query_info.txt                            lines "pid x y w h frame_name" with CRLF line ends

Coordinates may be negative (persons entering the frame): boxes are clipped to the image, as every
public loader does. The camera is the digit after "c" in the frame name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataFormatError, SkipCounter, reports_skips
from ..schema import NO_IDENTITY, make_record
from ._common import (
    DUPLICATE_ID,
    INT64_MAX,
    check_data_dir,
    check_split,
    json_integer,
    read_image_header_size,
    require_file,
    utf8_lines,
    xywh_box,
)
from .matlab import load_mat, mat_string, read_mat
from .spec import DatasetSpec

SOURCE = "prw"
SPLITS = ("train", "test")
DATA_URL = "https://github.com/liangzheng06/PRW-baseline"
HOW_TO_OBTAIN = (
    f"PRW is distributed by its authors only (Zheng et al., CVPR 2017); follow the download link at {DATA_URL} "
    "and unpack it so that data_dir holds frames/, annotations/, frame_train.mat, frame_test.mat and query_info.txt"
)
FRAME_LISTS = {"train": ("frame_train.mat", "img_index_train"), "test": ("frame_test.mat", "img_index_test")}
BOX_KEYS = ("box_new", "anno_file", "anno_previous")
"""Annotation keys in order of preference: box_new is the corrected release, the others older ones."""
UNKNOWN_PERSON_ID = -2
"""PRW's id for a person without identity; becomes :data:`NO_IDENTITY`."""
QUERY_FILE = "query_info.txt"
CAMERA_PATTERN = re.compile(r"c(\d)")


def camera_of(frame_name: str) -> int | None:
    """The camera number in a PRW frame name ("c3s1_012345" -> 3), None if the name has none."""
    match = CAMERA_PATTERN.search(frame_name)
    return int(match.group(1)) if match else None


def frame_names(root: Path, split: str) -> list[str]:
    """The frame names (without ".jpg") of a split, from frame_train.mat / frame_test.mat."""
    check_split(split, SPLITS, SOURCE)
    file_name, key = FRAME_LISTS[split]
    path = require_file(root / file_name, SOURCE, HOW_TO_OBTAIN)
    names = []
    for index, cell in enumerate(load_mat(path, key).reshape(-1)):
        try:
            name = mat_string(cell)
        except ValueError as error:
            raise DataFormatError(f"{path}: {key}[{index}]: {error}") from error
        names.append(name[: -len(".jpg")] if name.endswith(".jpg") else name)
    return names


def _frame_boxes(annotation_path: Path, skips: SkipCounter) -> tuple[str, np.ndarray] | None:
    """``(key, rows)`` of one frame's annotation file, rows (n, 5) [id, x, y, w, h]; None when skipped."""
    where = str(annotation_path)
    if not annotation_path.is_file():
        skips.skip("annotation file missing", where)
        return None
    try:
        content = read_mat(annotation_path)
    except DataFormatError as error:
        skips.skip("annotation file unreadable", where, str(error))
        return None
    key = next((k for k in BOX_KEYS if k in content), None)
    if key is None:
        found = sorted(k for k in content if not k.startswith("__"))
        skips.skip("annotation file without box key", where, f"expected one of {BOX_KEYS}, found keys {found}")
        return None
    rows = np.asarray(content[key])
    if rows.size == 0:
        return key, np.zeros((0, 5))
    if rows.ndim != 2 or rows.shape[1] != 5 or rows.dtype.kind not in "iuf":
        skips.skip(
            "malformed box array", f"{where} key {key!r}", f"expected (n, 5) numbers, got {rows.dtype} {rows.shape}"
        )
        return None
    return key, rows.astype(np.float64)


def _person_id(value: float, where: str, skips: SkipCounter) -> int | None:
    if value == UNKNOWN_PERSON_ID:
        return NO_IDENTITY
    person_id = json_integer(value, 0, INT64_MAX)
    if person_id is None:
        skips.skip("invalid person id", where, f"expected an integer >= 0 or {UNKNOWN_PERSON_ID}, got {value}")
    return person_id


@reports_skips(SOURCE)
def parse(
    data_dir: str | Path, split: str, *, strict: bool = False, skips: SkipCounter | None = None
) -> Iterator[dict]:
    """Yield one unified record (task "search") per frame of the split, in the frame list's order.

    Args:
        data_dir: the unpacked PRW folder (see the module docstring).
        split: "train" or "test" (the test frames are the gallery).
        strict: raise :class:`DataFormatError` at the first bad item instead of skipping it.
        skips: a counter that also receives the skipped items (its own ``strict`` then applies). Either way
            this call's skips are reported when parsing ends (:func:`~hf_personsearch.data.errors.reports_skips`).
    """
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    seen = set()
    for name in frame_names(root, split):
        image_path = root / "frames" / f"{name}.jpg"
        if name in seen:
            skips.skip(
                DUPLICATE_ID, str(root / FRAME_LISTS[split][0]), f"frame {name} listed twice; the first is kept"
            )
            continue
        seen.add(name)
        camera = camera_of(name)
        if camera is None:
            skips.skip("frame name without camera", str(image_path), "expected c<digit> in the name")
            continue
        found = _frame_boxes(root / "annotations" / f"{name}.jpg.mat", skips)
        if found is None:
            continue
        key, rows = found
        size = read_image_header_size(image_path, skips)
        if size is None:
            continue
        boxes, person_ids = [], []
        for index, row in enumerate(rows):
            where = f"{root / 'annotations' / name}.jpg.mat key {key!r} row {index}"
            person_id = _person_id(row[0], where, skips)
            box = xywh_box(row[1:], size[0], size[1], where, skips) if person_id is not None else None
            if box is not None:
                boxes.append(box)
                person_ids.append(person_id)
        yield make_record(
            image=str(image_path),
            image_id=f"frames/{name}.jpg",
            width=size[0],
            height=size[1],
            boxes=boxes,
            person_ids=person_ids,
            camera_id=camera,
            source=SOURCE,
            task="search",
            split=split,
        )


@reports_skips(f"{SOURCE} queries")
def load_queries(
    data_dir: str | Path, split: str = "test", *, strict: bool = False, skips: SkipCounter | None = None
) -> list[dict]:
    """The 2057 query persons of query_info.txt in the schema.py query form, in file order.

    Boxes are converted from xywh to xyxy and clipped to the frame; the camera comes from the frame
    name. ``"gallery": None``: PRW searches all test frames but the query's (the evaluation's camera
    setting decides about same-camera frames). Lines may end in CRLF (as released) or LF.
    """
    if split != "test":
        raise ValueError(f"{SOURCE}: queries exist for the 'test' split only, got {split!r}")
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    path = require_file(root / QUERY_FILE, SOURCE, HOW_TO_OBTAIN)
    queries = []
    sizes: dict[str, tuple[int, int] | None] = {}
    for line_number, raw in utf8_lines(path, skips):
        where = f"{path}:{line_number}"
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 6:
            skips.skip("malformed query line", where, f"expected 'pid x y w h frame_name', got {raw!r}")
            continue
        try:
            person_id = int(fields[0])
            xywh = [float(v) for v in fields[1:5]]
        except ValueError:
            skips.skip("malformed query line", where, f"expected an integer pid and 4 numbers, got {raw!r}")
            continue
        name = fields[5][: -len(".jpg")] if fields[5].endswith(".jpg") else fields[5]
        camera = camera_of(name)
        if camera is None or not 0 <= person_id <= INT64_MAX:
            skips.skip("malformed query line", where, f"expected pid >= 0 and a c<digit> frame name, got {raw!r}")
            continue
        if name not in sizes:
            sizes[name] = read_image_header_size(root / "frames" / f"{name}.jpg", skips)
        if sizes[name] is None:
            continue
        box = xywh_box(xywh, sizes[name][0], sizes[name][1], where, skips)
        if box is None:
            continue
        queries.append(
            {
                "image_id": f"frames/{name}.jpg",
                "box": box,
                "person_id": person_id,
                "camera_id": camera,
                "gallery": None,
            }
        )
    return queries


SPEC = DatasetSpec(
    name=SOURCE,
    display_name="PRW",
    builder_name="PRW",
    task="search",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.prw",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
    train_split="train",
    gallery_split="test",
    protocol="prw",
    load_queries=load_queries,
)
