"""The documented custom format: COCO-style json with a ``person_id`` per box, for users' own data.

The full description for users is ``docs/custom_format.md``. In short::

    <data_dir>/<split>.json     one file per split ("train", "test", any name)
    <data_dir>/query.json       optional: the query persons, searched in the gallery split, and the
                                evaluation protocol ("protocol": "posetrack21" or "prw")
    <data_dir>/<file_name>      the images, at the paths the json files give

    {"images": [{"id": 1, "file_name": "images/cam1/0001.jpg",
                 "width": 1920, "height": 1080,      # optional: read from the image header if absent
                 "camera_id": 1}],                   # optional: NO_CAMERA if absent
     "annotations": [{"image_id": 1, "bbox": [x, y, w, h],
                      "person_id": 7,                # optional: absent, null or -1 = no identity
                      "ignore": 0}]}                 # optional: 1 (or "iscrowd": 1) = ignore region

This module also holds the COCO-style json pieces (reading the file, grouping annotations, person ids,
query files) that PoseTrack21 reuses: it is this format plus video ids and polygon ignore regions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ..errors import DataFormatError, SkipCounter, reports_skips
from ..schema import NO_CAMERA, NO_IDENTITY, make_record
from ._common import (
    DUPLICATE_ID,
    INT32_MAX,
    INT64_MAX,
    check_data_dir,
    json_integer,
    read_image_header_size,
    require_file,
    xywh_box,
)
from .spec import DatasetSpec

SOURCE = "custom"
SPLITS = ("train", "test")
"""The conventional split names; any ``<split>.json`` in the folder is a valid split."""

QUERY_FILE = "query.json"
PROTOCOL_KEY = "protocol"
PROTOCOLS = ("posetrack21", "prw")
"""The evaluation protocols custom data may state in query.json. Both search every other image of the gallery
split; "posetrack21" drops detections in ignore regions and skips (and reports) a query whose person appears in
no other gallery image, "prw" ignores ignore regions and requires every query person in another gallery image.
CUHK-SYSU's protocol needs per-query gallery lists, which this format does not carry."""
DEFAULT_PROTOCOL = "posetrack21"
"""The protocol of a query.json without "protocol": own data often has ignore regions and persons seen only
once, which this protocol handles by its rules instead of failing the evaluation."""
HOW_TO_OBTAIN = (
    "the custom format is your own data: write <data_dir>/<split>.json (COCO-style, one person_id per box) "
    "as described in docs/custom_format.md of hf-personsearch"
)
DATA_URL = "docs/custom_format.md"


INVALID_SIZE = "invalid width/height"
SIZE_MISMATCH = "declared width/height differ from the image file"
UNKNOWN_IMAGE = "annotation refers to an unknown image_id"
AMBIGUOUS_IMAGE = "annotation refers to a duplicated image id"
DUPLICATE_FILE = "duplicate file_name"
QUERY_NOT_IN_GALLERY = "query image not in the gallery split"


def image_size(image: dict, root: Path, where: str, skips: SkipCounter) -> tuple[int, int] | None:
    """``(width, height)`` of an ``images`` entry, read from the image file (None after counting a skip).

    The optional ``width``/``height`` fields must match the file: boxes are checked against the real image,
    and a json written for resized images would otherwise keep boxes the pixels do not have.
    """
    size = read_image_header_size(root / image["file_name"], skips)
    if size is None or ("width" not in image and "height" not in image):
        return size
    declared = (json_integer(image.get("width"), 1, INT32_MAX), json_integer(image.get("height"), 1, INT32_MAX))
    if None in declared:
        found = f"{image.get('width')!r:.40} x {image.get('height')!r:.40}"
        skips.skip(INVALID_SIZE, where, f"expected positive integers, got {found}")
        return None
    if declared != size:
        skips.skip(SIZE_MISMATCH, where, f"declared {declared[0]}x{declared[1]}, file {size[0]}x{size[1]}")
        return None
    return size


def read_coco_json(path: Path) -> dict:
    """Load a COCO-style json and check its two lists; a broken file raises (nothing in it is usable)."""
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 at byte {error.start} ({error.reason})") from error
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: invalid JSON ({error.msg}, column {error.colno})") from error
    except RecursionError as error:
        raise DataFormatError(f"{path}: JSON nested too deeply to be a COCO-style file") from error
    if not isinstance(document, dict):
        raise DataFormatError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(document.get(key), list):
            raise DataFormatError(f"{path}: expected key {key!r} holding a list, found {type(document.get(key))}")
    return document


def image_entries(document: dict, path: Path, skips: SkipCounter) -> dict:
    """The usable ``images`` entries by id: each has an integer or string ``id`` and a ``file_name``.

    Every other entry is counted: no id/file_name, an id of another type, a file_name listed before (the first
    is kept), and an id two entries share (all of them are dropped: their annotations cannot be told apart).
    """
    images, where_of, names, duplicated = {}, {}, set(), set()
    for index, image in enumerate(document["images"]):
        where = f"{path} images[{index}]"
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            skips.skip("image entry without id or file_name", where, "expected 'id' and a string 'file_name'")
            continue
        image_id, file_name = image["id"], image["file_name"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            skips.skip("invalid image id", where, f"expected an integer or a string, got {image_id!r:.40}")
            continue
        if PurePosixPath(file_name).is_absolute() or ".." in PurePosixPath(file_name).parts:
            skips.skip("file_name outside data_dir", where, f"expected a path relative to data_dir, got {file_name!r}")
            continue
        if image_id in images or image_id in duplicated:
            skips.skip(DUPLICATE_ID, where, f"id {image_id!r} is also the id of {where_of[image_id]}; both dropped")
            if image_id in images:
                skips.skip(DUPLICATE_ID, where_of[image_id], f"id {image_id!r} is also the id of {where}")
                names.discard(images.pop(image_id)["file_name"])
            duplicated.add(image_id)
            continue
        if file_name in names:
            skips.skip(DUPLICATE_FILE, where, f"{file_name!r} is listed by an earlier entry; the first is kept")
            continue
        images[image_id], where_of[image_id] = image, where
        names.add(file_name)
    for image_id in duplicated:
        images.pop(image_id, None)
    return {"images": images, "duplicated": duplicated}


def annotations_by_image(document: dict, path: Path, entries: dict, skips: SkipCounter) -> dict:
    """Group the annotations by ``image_id``; those without one, or whose id is no usable image, are counted."""
    grouped = defaultdict(list)
    ids = entries["images"]
    id_types = sorted({type(key).__name__ for key in ids})  # shown for an unknown id: "1" vs 1 is the usual cause
    for index, annotation in enumerate(document["annotations"]):
        where = f"{path} annotations[{index}]"
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id is None:
            skips.skip("annotation without image_id", where)
        elif isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            skips.skip(UNKNOWN_IMAGE, where, f"image_id {image_id!r:.40} is not an integer or a string")
        elif image_id in entries["duplicated"]:
            skips.skip(AMBIGUOUS_IMAGE, where, f"image_id {image_id!r}")
        elif image_id not in ids:
            detail = f"image_id {image_id!r} ({type(image_id).__name__}; image ids: {id_types})"
            skips.skip(UNKNOWN_IMAGE, where, detail)
        else:
            grouped[image_id].append((index, annotation))
    return grouped


def person_id_of(annotation: dict, where: str, skips: SkipCounter) -> int | None:
    """The identity of a box: its ``person_id`` (>= 0), NO_IDENTITY for absent/null/negative, None if invalid."""
    value = annotation.get("person_id")
    if value is None:
        return NO_IDENTITY
    person_id = json_integer(value, -INT64_MAX, INT64_MAX)
    if person_id is None:
        skips.skip("invalid person_id", where, f"expected an integer that fits in int64, got {value!r:.40}")
        return None
    return person_id if person_id >= 0 else NO_IDENTITY


def camera_id_of(image: dict, key: str, where: str, skips: SkipCounter) -> int | None:
    """The integer camera of an ``images`` entry under ``key`` (NO_CAMERA when absent); None after counting."""
    value = image.get(key, NO_CAMERA)
    if isinstance(value, str) and value.isdigit():  # PoseTrack21 writes video ids as "000342"
        value = int(value)
    camera = json_integer(value, NO_CAMERA, INT32_MAX)
    if camera is None:
        skips.skip(f"invalid {key}", where, f"expected an integer >= {NO_CAMERA}, got {value!r:.40}")
    return camera


@reports_skips(SOURCE)
def parse(
    data_dir: str | Path, split: str, *, strict: bool = False, skips: SkipCounter | None = None
) -> Iterator[dict]:
    """Yield one unified record (task "search") per image of ``<data_dir>/<split>.json``.

    Args:
        data_dir: the dataset root (image ``file_name`` values are relative to it).
        split: the json file's stem.
        strict: raise :class:`DataFormatError` at the first bad item instead of skipping it.
        skips: a counter that also receives the skipped items (its own ``strict`` then applies). Either way
            this call's skips are reported when parsing ends (:func:`~hf_personsearch.data.errors.reports_skips`).
    """
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    path = root / f"{split}.json"
    if not path.is_file():
        found = sorted(p.stem for p in root.glob("*.json") if p.name != QUERY_FILE)
        raise FileNotFoundError(f"{SOURCE}: no {path} for split {split!r}; splits found: {found}. {HOW_TO_OBTAIN}")
    document = read_coco_json(path)
    entries = image_entries(document, path, skips)
    grouped = annotations_by_image(document, path, entries, skips)
    for image_id, image in entries["images"].items():
        file_name = image["file_name"]
        where = f"{path} image {image_id!r} ({file_name})"
        camera = camera_id_of(image, "camera_id", where, skips)
        size = image_size(image, root, where, skips) if camera is not None else None
        if size is None:
            continue
        width, height = size
        boxes, person_ids, ignore_regions = [], [], []
        for a_index, annotation in grouped.get(image_id, []):
            where = f"{path} annotations[{a_index}] (image {file_name})"
            box = xywh_box(annotation.get("bbox"), width, height, where, skips)
            if box is None:
                continue
            if annotation.get("ignore", 0) or annotation.get("iscrowd", 0):
                ignore_regions.append(box)
                continue
            person_id = person_id_of(annotation, where, skips)
            if person_id is None:
                continue
            boxes.append(box)
            person_ids.append(person_id)
        yield make_record(
            image=str(root / file_name),
            image_id=file_name,
            width=width,
            height=height,
            boxes=boxes,
            person_ids=person_ids,
            ignore_regions=ignore_regions,
            camera_id=camera,
            source=SOURCE,
            task="search",
            split=split,
        )


def queries_from_coco(
    path: Path, root: Path, skips: SkipCounter, camera_key: str, gallery: tuple[Path, set[str]] | None = None
) -> list[dict]:
    """One query per annotation of a COCO-style query file, in the schema.py query form (gallery None:
    the whole gallery split except the query image). ``camera_key`` names the images' camera field;
    ``gallery`` = (gallery json, its file names): queries in other images are counted and dropped."""
    document = read_coco_json(path)
    entries = image_entries(document, path, skips)
    queries = []
    for image_id, image_annotations in annotations_by_image(document, path, entries, skips).items():
        image = entries["images"][image_id]
        file_name = image["file_name"]
        if gallery is not None and file_name not in gallery[1]:
            for index, _ in image_annotations:
                skips.skip(QUERY_NOT_IN_GALLERY, f"{path} annotations[{index}]", f"{file_name} not in {gallery[0]}")
            continue
        image_where = f"{path} image {image_id!r} ({file_name})"
        camera = camera_id_of(image, camera_key, image_where, skips)
        size = image_size(image, root, image_where, skips) if camera is not None else None
        if size is None:
            continue
        for index, annotation in image_annotations:
            where = f"{path} annotations[{index}]"
            box = xywh_box(annotation.get("bbox"), size[0], size[1], where, skips)
            person_id = person_id_of(annotation, where, skips) if box is not None else None
            if person_id is None:
                continue
            if person_id == NO_IDENTITY:
                skips.skip("query without person_id", where)
                continue
            query = {"image_id": file_name, "box": box, "person_id": person_id, "camera_id": camera, "gallery": None}
            queries.append((index, query))
    return [query for _, query in sorted(queries, key=lambda item: item[0])]  # file order


def read_protocol(data_dir: str | Path) -> str:
    """The evaluation protocol query.json states (key :data:`PROTOCOL_KEY`), :data:`DEFAULT_PROTOCOL` when absent.

    A value outside :data:`PROTOCOLS` raises :class:`DataFormatError` naming the file and the key.
    """
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    path = require_file(root / QUERY_FILE, SOURCE, HOW_TO_OBTAIN)
    protocol = read_coco_json(path).get(PROTOCOL_KEY, DEFAULT_PROTOCOL)
    if protocol not in PROTOCOLS:
        hint = " (it needs per-query gallery lists, which the custom format does not carry)"
        raise DataFormatError(
            f"{path}: key {PROTOCOL_KEY!r}: expected one of {PROTOCOLS}, got {protocol!r}"
            + (hint if protocol == "cuhk_sysu" else "")
        )
    return protocol


@reports_skips(f"{SOURCE} queries")
def load_queries(
    data_dir: str | Path, split: str = "test", *, strict: bool = False, skips: SkipCounter | None = None
) -> list[dict]:
    """The queries of ``<data_dir>/query.json``, searched in the gallery split ``split``.

    Every annotation of query.json is one query; its image must be an image of ``<split>.json`` (the
    gallery of a query is that split minus the query image, hence ``"gallery": None``).
    """
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    path = require_file(root / QUERY_FILE, SOURCE, HOW_TO_OBTAIN)
    gallery_path = require_file(root / f"{split}.json", SOURCE, HOW_TO_OBTAIN)
    gallery = image_entries(read_coco_json(gallery_path), gallery_path, SkipCounter())  # parse() reports its skips
    gallery_names = {image["file_name"] for image in gallery["images"].values()}
    return queries_from_coco(path, root, skips, "camera_id", (gallery_path, gallery_names))


SPEC = DatasetSpec(
    name=SOURCE,
    display_name="custom",
    builder_name="CustomPersonSearch",
    task="search",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.custom",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
    train_split="train",
    gallery_split="test",
    protocol=DEFAULT_PROTOCOL,
    load_queries=load_queries,
    read_protocol=read_protocol,
)
