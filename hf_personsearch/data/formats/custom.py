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
from pathlib import Path

from ..errors import DataFormatError, SkipCounter, reports_skips
from ..schema import NO_CAMERA, NO_IDENTITY, make_record
from ._common import check_data_dir, read_image_header_size, require_file, xywh_box
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


def image_size(image: dict, root: Path, skips: SkipCounter) -> tuple[int, int] | None:
    """``(width, height)`` of an ``images`` entry: its optional fields, else the image header (None if unreadable)."""
    if "width" in image and "height" in image:
        return int(image["width"]), int(image["height"])
    return read_image_header_size(root / str(image["file_name"]), skips)


def read_coco_json(path: Path) -> dict:
    """Load a COCO-style json and check its two lists; a broken file raises (nothing in it is usable)."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: invalid JSON ({error.msg}, column {error.colno})") from error
    if not isinstance(document, dict):
        raise DataFormatError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(document.get(key), list):
            raise DataFormatError(f"{path}: expected key {key!r} holding a list, found {type(document.get(key))}")
    return document


def annotations_by_image(document: dict, path: Path, skips: SkipCounter) -> dict:
    """Group the annotations by ``image_id`` (the ones without an image_id are skipped and counted)."""
    grouped = defaultdict(list)
    for index, annotation in enumerate(document["annotations"]):
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            skips.skip("annotation without image_id", f"{path} annotations[{index}]")
            continue
        grouped[annotation["image_id"]].append((index, annotation))
    return grouped


def person_id_of(annotation: dict, where: str, skips: SkipCounter) -> int | None:
    """The identity of a box: its ``person_id`` (>= 0), NO_IDENTITY for absent/null/negative, None if invalid."""
    value = annotation.get("person_id")
    if value is None:
        return NO_IDENTITY
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        skips.skip("invalid person_id", where, f"expected an integer, got {value!r}")
        return None
    return int(value) if value >= 0 else NO_IDENTITY


def image_entries(document: dict, path: Path, skips: SkipCounter) -> Iterator[dict]:
    """The ``images`` entries that have an ``id`` and a ``file_name`` (the others are skipped and counted)."""
    for index, image in enumerate(document["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            skips.skip("image entry without id or file_name", f"{path} images[{index}]")
            continue
        yield image


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
    grouped = annotations_by_image(document, path, skips)
    for image in image_entries(document, path, skips):
        file_name = str(image["file_name"])
        size = image_size(image, root, skips)
        if size is None:
            continue
        width, height = size
        boxes, person_ids, ignore_regions = [], [], []
        for a_index, annotation in grouped.get(image["id"], []):
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
            camera_id=int(image.get("camera_id", NO_CAMERA)),
            source=SOURCE,
            task="search",
            split=split,
        )


def queries_from_coco(path: Path, root: Path, skips: SkipCounter, camera_of) -> list[dict]:
    """One query per annotation of a COCO-style query file, in the schema.py query form (gallery None:
    the whole gallery split except the query image). ``camera_of(image_entry)`` gives the camera id."""
    document = read_coco_json(path)
    images = {image["id"]: image for image in image_entries(document, path, skips)}
    queries = []
    for index, annotation in enumerate(document["annotations"]):
        where = f"{path} annotations[{index}]"
        image = images.get(annotation.get("image_id"))
        if image is None:
            skips.skip("query refers to an unknown image_id", where, f"image_id={annotation.get('image_id')!r}")
            continue
        file_name = str(image["file_name"])
        size = image_size(image, root, skips)
        if size is None:
            continue
        box = xywh_box(annotation.get("bbox"), size[0], size[1], where, skips)
        person_id = person_id_of(annotation, where, skips)
        if box is None or person_id is None:
            continue
        if person_id == NO_IDENTITY:
            skips.skip("query without person_id", where)
            continue
        queries.append(
            {"image_id": file_name, "box": box, "person_id": person_id, "camera_id": camera_of(image), "gallery": None}
        )
    return queries


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
    gallery_names = {str(image.get("file_name")) for image in read_coco_json(gallery_path)["images"]}
    queries = []
    for query in queries_from_coco(path, root, skips, lambda image: int(image.get("camera_id", NO_CAMERA))):
        if query["image_id"] not in gallery_names:
            skips.skip("query image not in the gallery split", str(path), f"{query['image_id']} not in {gallery_path}")
            continue
        queries.append(query)
    return queries


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
