"""EuroCity Persons: ``ECP/{day,night}/labels/{train,val}/<city>/<name>.json`` + ``img/.../<name>.png``.

A label file is a tree (EuroCity Persons release format): ``{"identity": "frame", "children": [{"identity", "x0",
"y0", "x1", "y1", "tags", "children": [...]}]}``; the parser walks it recursively (riders carry their
vehicles as children). Pedestrians are the detection boxes. Ignore regions: person groups
("person-group-far-away", "rider+vehicle-group-far-away"), anything tagged "depiction" (posters,
statues) and, unless ``riders_as_persons``, riders: ECP's own pedestrian benchmark neither rewards
nor penalises detections of them. Vehicles and other objects are not persons and are passed over.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import SkipCounter, reports_skips
from ..schema import NO_IDENTITY, make_record
from ._common import BAD_LINE, check_data_dir, check_split, clean_box, read_image_size
from .spec import DatasetSpec

NAME = "ecp"
SPLITS = ("train", "val")
TIMES = ("day", "night")
HOW_TO_OBTAIN = (
    "EuroCity Persons is not redistributable: register at https://eurocity-dataset.tudelft.nl/ , "
    "download ECP_{day,night}_img_{train,val}.zip and ECP_{day,night}_labels_{train,val}.zip and unzip "
    "them into one folder (it then holds ECP/day/... and ECP/night/...)."
)
DATA_URL = "https://eurocity-dataset.tudelft.nl/"
GROUP_IDENTITIES = ("person-group-far-away", "rider+vehicle-group-far-away")


def ecp_root(data_dir: str | Path) -> Path:
    """The ``ECP`` folder: ``data_dir`` itself or its ``ECP`` sub-folder."""
    root = check_data_dir(data_dir, NAME, HOW_TO_OBTAIN, "a folder holding ECP/{day,night}/{img,labels}")
    return root / "ECP" if (root / "ECP").is_dir() else root


@reports_skips(NAME)
def parse(
    data_dir: str | Path,
    split: str,
    *,
    strict: bool = False,
    skips: SkipCounter | None = None,
    times: tuple[str, ...] = TIMES,
    riders_as_persons: bool = False,
    verify_images: bool = True,
) -> Iterator[dict]:
    """Yield one detection record per labelled image of ``split``, day images first, then night.

    Args:
        times: which subsets to read; default both (the paper's pre-training uses all of ECP).
        riders_as_persons: make riders detection boxes instead of ignore regions.
        verify_images: decode every image once (see ``read_image_size``).
    """
    check_split(split, SPLITS, NAME)
    root = ecp_root(data_dir)
    for time in times:
        if time not in TIMES:
            raise ValueError(f"{NAME}: times must be drawn from {TIMES}, got {time!r}")
        labels = root / time / "labels" / split
        if not labels.is_dir():
            raise FileNotFoundError(f"{NAME}: missing folder {labels}. {HOW_TO_OBTAIN}")
        for label_path in sorted(labels.rglob("*.json")):
            record = _parse_file(root, label_path, split, skips, riders_as_persons, verify_images)
            if record is not None:
                yield record


def _parse_file(root: Path, label_path: Path, split: str, skips, riders_as_persons: bool, verify: bool):
    where = str(label_path)
    try:
        tree = json.loads(label_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        skips.skip(BAD_LINE, where, f"expected an ECP JSON tree (UTF-8 JSON): {error}")
        return None
    children = tree.get("children") if isinstance(tree, dict) else None
    if not isinstance(children, list):
        skips.skip(BAD_LINE, where, f"key 'children': expected a list, got {children!r:.80}")
        return None
    relative = label_path.relative_to(root)
    time, _, split_dir, *rest = relative.parts
    image_id = "/".join([time, "img", split_dir, *rest])[: -len(".json")] + ".png"
    size = read_image_size(root / image_id, f"{where} ({image_id})", skips, verify=verify)
    if size is None:
        return None
    width, height = size
    boxes, ignore = [], []
    stack = [(child, f"{where} children[{k}]") for k, child in enumerate(children)]
    stack.reverse()
    while stack:  # depth-first, in file order
        child, child_where = stack.pop()
        if not isinstance(child, dict):
            skips.skip(BAD_LINE, child_where, f"expected an object, got {type(child).__name__}")
            continue
        identity = child.get("identity")
        tags = child.get("tags") or []
        grandchildren = child.get("children") or []
        if not isinstance(tags, list) or not isinstance(grandchildren, list):
            skips.skip(BAD_LINE, child_where, "keys 'tags' and 'children': expected lists (or null)")
            continue
        stack.extend((c, f"{child_where}.children[{k}]") for k, c in reversed(list(enumerate(grandchildren))))
        is_person = identity == "pedestrian" or (identity == "rider" and riders_as_persons)
        is_ignored = identity in GROUP_IDENTITIES or "depiction" in tags or identity == "rider"
        if not (is_person or is_ignored):
            continue
        try:
            xyxy = [child["x0"], child["y0"], child["x1"], child["y1"]]
        except KeyError as error:
            skips.skip(BAD_LINE, child_where, f"{identity} without coordinate {error}")
            continue
        box = clean_box(xyxy, width, height, child_where, skips)
        if box is None:
            continue
        (boxes if is_person and "depiction" not in tags else ignore).append(box)
    return make_record(
        image=str(root / image_id),
        image_id=image_id,
        width=width,
        height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        person_ids=[NO_IDENTITY] * len(boxes),
        ignore_regions=np.asarray(ignore, np.float32).reshape(-1, 4),
        source=NAME,
        task="detection",
        split=split,
    )


SPEC = DatasetSpec(
    name=NAME,
    display_name="EuroCity Persons",
    builder_name="EuroCityPersons",
    task="detection",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.ecp",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
)
