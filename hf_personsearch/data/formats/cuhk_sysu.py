"""CUHK-SYSU (Xiao et al., CVPR 2017) in its released raw format (MATLAB struct arrays).

Layout of ``data_dir``::

    Image/SSM/<imname>                              the scene images (s1.jpg ...)
    annotation/Images.mat        "Img"              struct array: imname, nAppear, box (struct array:
                                                    idlocate [x, y, w, h], ishard), every person of an image
    annotation/pool.mat          "pool"             cell of the test image names (train = all others)
    annotation/test/train_test/Train.mat  "Train"   cell of structs: idname, nAppear, scene (struct array:
                                                    imname, idlocate, ishard), one per training identity
    annotation/test/train_test/TestG{N}.mat "TestG{N}"  struct array, one per query: Query (imname,
                                                    idlocate, ishard) and Gallery (N entries; idlocate
                                                    empty for a distractor image)
    annotation/test/subset/Occlusion.mat "Occlusion1", Resolution.mat "Test_Size"   query subsets, same
                                                    Query/Gallery structure

Identities: boxes of different files are matched by exact equality of their integer ``idlocate``, as
every public loader does. Training identity ``k`` is the k-th entry of Train.mat (0-based); test identity
``len(Train) + q`` is the person of the q-th query (the query order is the same in every TestG file).
Every other box has :data:`NO_IDENTITY`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataFormatError, SkipCounter, reports_skips
from ..schema import NO_CAMERA, NO_IDENTITY, clip_box_xyxy, make_record
from ._common import check_data_dir, check_split, read_image_header_size, require_file, xywh_box, xywh_to_xyxy
from .matlab import load_mat, mat_string, struct_entries, unwrap_cells
from .spec import DatasetSpec

SOURCE = "cuhk_sysu"
SPLITS = ("train", "test")
DATA_URL = "https://github.com/ShuangLI59/person_search"
HOW_TO_OBTAIN = (
    f"CUHK-SYSU is distributed by its authors only (Xiao et al., CVPR 2017); request it via the link at {DATA_URL} "
    "and unpack it so that data_dir holds Image/SSM/ and annotation/"
)
IMAGE_DIR = "Image/SSM"
PROTOCOL_DIR = "annotation/test/train_test"
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
"""The gallery sizes of the released TestG{N}.mat files."""
DEFAULT_GALLERY_SIZE = 100
"""TestG100: the gallery size published CUHK-SYSU tables report."""
SUBSETS = {"occlusion": ("annotation/test/subset/Occlusion.mat", "Occlusion1"),
           "resolution": ("annotation/test/subset/Resolution.mat", "Test_Size")}  # fmt: skip
"""The query subsets of the release (occluded and low-resolution query persons) and their .mat keys."""


def _box(value) -> tuple[float, float, float, float] | None:
    """An ``idlocate`` as an xywh tuple, None when empty (a distractor gallery entry)."""
    box = np.asarray(value, dtype=np.float64).reshape(-1)
    if box.size == 0:
        return None
    if box.size != 4:
        raise ValueError(f"expected idlocate [x, y, w, h], got {box.size} numbers")
    return tuple(float(v) for v in box)


def read_images(root: Path) -> dict[str, list[tuple[float, ...]]]:
    """Images.mat: image name -> its persons' ``idlocate`` boxes (xywh), in the file's order."""
    path = require_file(root / "annotation/Images.mat", SOURCE, HOW_TO_OBTAIN)
    images = {}
    for index, entry in enumerate(struct_entries(load_mat(path, "Img"), ("imname", "box"), f"{path} key 'Img'")):
        where = f"{path} Img[{index}]"
        try:
            name = mat_string(entry["imname"])
            boxes = struct_entries(unwrap_cells(entry["box"]), ("idlocate",), f"{where}.box")
            images[name] = [_box(b["idlocate"]) for b in boxes]
        except ValueError as error:
            raise DataFormatError(f"{where}: {error}") from error
    return images


def read_pool(root: Path) -> list[str]:
    """pool.mat: the names of the test images."""
    path = require_file(root / "annotation/pool.mat", SOURCE, HOW_TO_OBTAIN)
    try:
        return [mat_string(cell) for cell in load_mat(path, "pool").reshape(-1)]
    except ValueError as error:
        raise DataFormatError(f"{path} key 'pool': {error}") from error


def read_train_identities(root: Path) -> list[list[tuple[str, tuple[float, ...]]]]:
    """Train.mat: per training identity, its ``(imname, idlocate)`` appearances."""
    path = require_file(root / PROTOCOL_DIR / "Train.mat", SOURCE, HOW_TO_OBTAIN)
    identities = []
    for index, cell in enumerate(load_mat(path, "Train").reshape(-1)):
        where = f"{path} Train[{index}]"
        identity = struct_entries(unwrap_cells(cell), ("scene",), where)[0]
        scenes = struct_entries(unwrap_cells(identity["scene"]), ("imname", "idlocate"), f"{where}.scene")
        try:
            identities.append([(mat_string(s["imname"]), _box(s["idlocate"])) for s in scenes])
        except ValueError as error:
            raise DataFormatError(f"{where}: {error}") from error
    return identities


def read_protocol(path: Path, key: str) -> list[tuple[tuple[str, tuple], list[tuple[str, tuple | None]]]]:
    """A TestG{N}.mat (or subset) file: per query ``((imname, idlocate), [(imname, idlocate or None), ...])``."""
    protocol = []
    for index, item in enumerate(struct_entries(load_mat(path, key), ("Query", "Gallery"), f"{path} key {key!r}")):
        where = f"{path} {key}[{index}]"
        query = struct_entries(unwrap_cells(item["Query"]), ("imname", "idlocate"), f"{where}.Query")[0]
        gallery = struct_entries(unwrap_cells(item["Gallery"]), ("imname", "idlocate"), f"{where}.Gallery")
        try:
            protocol.append(
                (
                    (mat_string(query["imname"]), _box(query["idlocate"])),
                    [(mat_string(g["imname"]), _box(g["idlocate"])) for g in gallery],
                )
            )
        except ValueError as error:
            raise DataFormatError(f"{where}: {error}") from error
    return protocol


def protocol_files(root: Path) -> dict[int, Path]:
    """The TestG{N}.mat files present, by gallery size N."""
    found = {}
    for path in (root / PROTOCOL_DIR).glob("TestG*.mat"):
        match = re.fullmatch(r"TestG(\d+)\.mat", path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def _identity_protocol(root: Path) -> Path:
    """The TestG file that numbers the test identities: the smallest released size present (TestG50)."""
    files = protocol_files(root)
    if not files:
        raise FileNotFoundError(
            f"{SOURCE}: no TestG{{N}}.mat in {root / PROTOCOL_DIR} (expected N in {GALLERY_SIZES}). {HOW_TO_OBTAIN}"
        )
    released = [n for n in sorted(files) if n in GALLERY_SIZES]
    return files[released[0] if released else min(files)]


def test_identities(root: Path) -> dict[tuple[str, tuple], int]:
    """``(imname, idlocate) -> identity`` of the test persons: query q and its gallery matches are
    ``len(Train) + q``, so test ids never collide with training ids."""
    offset = len(read_train_identities(root))
    path = _identity_protocol(root)
    labels = {}
    for q, (query, gallery) in enumerate(read_protocol(path, path.stem)):
        labels[query] = offset + q
        for entry in gallery:
            if entry[1] is not None:
                labels[entry] = offset + q
    return labels


@reports_skips(SOURCE)
def parse(
    data_dir: str | Path, split: str, *, strict: bool = False, skips: SkipCounter | None = None
) -> Iterator[dict]:
    """Yield one unified record (task "search") per image of the split.

    Args:
        data_dir: the unpacked CUHK-SYSU folder (see the module docstring).
        split: "train" (Images.mat order, every image not in pool.mat) or "test" (pool.mat order).
        strict: raise :class:`DataFormatError` at the first bad item instead of skipping it.
        skips: a counter that also receives the skipped items (its own ``strict`` then applies). Either way
            this call's skips are reported when parsing ends (:func:`~hf_personsearch.data.errors.reports_skips`).
    """
    check_split(split, SPLITS, SOURCE)
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    images = read_images(root)
    pool = read_pool(root)
    if split == "train":
        pool_set = set(pool)
        names = [name for name in images if name not in pool_set]
        labels = {}
        for k, appearances in enumerate(read_train_identities(root)):
            labels.update({appearance: k for appearance in appearances})
        label_file = str(root / PROTOCOL_DIR / "Train.mat")
    else:
        names = pool
        labels = test_identities(root)
        label_file = str(_identity_protocol(root))
    known = {(name, box) for name, boxes in images.items() for box in boxes}
    for (name, box), identity in labels.items():
        if (name, box) not in known:
            skips.skip("identity box not in Images.mat", label_file, f"identity {identity}: {name} idlocate {box}")
    for name in names:
        if name not in images:
            skips.skip("pool image not in Images.mat", str(root / "annotation/pool.mat"), name)
            continue
        image_path = root / IMAGE_DIR / name
        size = read_image_header_size(image_path, skips)
        if size is None:
            continue
        boxes, person_ids = [], []
        for index, xywh in enumerate(images[name]):
            where = f"annotation/Images.mat image {name} box {index}"
            if xywh is None:
                skips.skip("box has width or height <= 0", where, "empty idlocate")
                continue
            box = xywh_box(xywh, size[0], size[1], where, skips)
            if box is not None:
                boxes.append(box)
                person_ids.append(labels.get((name, xywh), NO_IDENTITY))
        yield make_record(
            image=str(image_path),
            image_id=f"{IMAGE_DIR}/{name}",
            width=size[0],
            height=size[1],
            boxes=boxes,
            person_ids=person_ids,
            camera_id=NO_CAMERA,
            source=SOURCE,
            task="search",
            split=split,
        )


@reports_skips(f"{SOURCE} queries")
def load_queries(
    data_dir: str | Path,
    split: str = "test",
    *,
    gallery_size: int | None = DEFAULT_GALLERY_SIZE,
    subset: str | None = None,
    strict: bool = False,
    skips: SkipCounter | None = None,
) -> list[dict]:
    """The 2900 test queries with their per-query galleries, in the schema.py query form.

    Args:
        data_dir: the unpacked CUHK-SYSU folder.
        split: "test" (the only split with queries).
        gallery_size: N of the TestG{N}.mat protocol to read (released: :data:`GALLERY_SIZES`; any N whose
            file exists is accepted). ``"gallery"`` is that file's list, in file order: the images holding
            the query person first (``box`` = their xyxy box), then the distractors (``box`` None).
            None = the full-set protocol: ``"gallery": None``, meaning every test image except the query's.
        subset: None, "occlusion" or "resolution": the queries of that subset file (:data:`SUBSETS`) with
            the subset file's own galleries; ``gallery_size`` must then be None (full set) or equal to the
            subset file's gallery length (checked, so a gallery size is never silently ignored).
        strict, skips: as in :func:`parse`.

    Queries whose gallery lists a matching image after a distractor are rejected (public loaders stop
    at the first distractor and would miss that match); so are queries with unusable boxes.
    """
    if split != "test":
        raise ValueError(f"{SOURCE}: queries exist for the 'test' split only, got {split!r}")
    root = check_data_dir(data_dir, SOURCE, HOW_TO_OBTAIN)
    if subset is not None:
        if subset not in SUBSETS:
            raise ValueError(f"{SOURCE}: unknown query subset {subset!r}; expected one of {tuple(SUBSETS)}")
        relative, key = SUBSETS[subset]
        path = require_file(root / relative, SOURCE, HOW_TO_OBTAIN)
    elif gallery_size is None:
        path = _identity_protocol(root)
        key = path.stem
    else:
        path = root / PROTOCOL_DIR / f"TestG{gallery_size}.mat"
        if not path.is_file():
            raise FileNotFoundError(
                f"{SOURCE}: no protocol file {path} for gallery_size={gallery_size}; present: "
                f"{sorted(protocol_files(root))} (released: {GALLERY_SIZES}). {HOW_TO_OBTAIN}"
            )
        key = path.stem
    labels = test_identities(root)
    sizes: dict[str, tuple[int, int] | None] = {}
    queries = []
    for q, ((query_name, query_box), gallery) in enumerate(read_protocol(path, key)):
        where = f"{path} {key}[{q}]"
        if subset is not None and gallery_size is not None and len(gallery) != gallery_size:
            raise ValueError(
                f"{where}: the {subset} subset galleries have {len(gallery)} images, not gallery_size={gallery_size}; "
                f"pass gallery_size={len(gallery)} or None (full set)"
            )
        if (query_name, query_box) not in labels:
            skips.skip("query person not among the test identities", where, f"{query_name} idlocate {query_box}")
            continue
        is_distractor = [box is None for _, box in gallery]
        if any(is_distractor[i] and not is_distractor[i + 1] for i in range(len(gallery) - 1)):
            skips.skip("gallery lists a match after a distractor", where, "expected matches first, then distractors")
            continue
        if query_name not in sizes:
            sizes[query_name] = read_image_header_size(root / IMAGE_DIR / query_name, skips)
        if sizes[query_name] is None:
            continue
        box = xywh_box(query_box, *sizes[query_name], f"{where}.Query", skips)
        if box is None:
            continue
        entries = []
        for g, (name, xywh) in enumerate(gallery):
            gallery_box = None
            if xywh is not None:
                # Gallery images are not opened (2900 x N headers): boxes are checked, clipped at 0 only.
                gallery_box, reason = clip_box_xyxy(xywh_to_xyxy(xywh), np.inf, np.inf)
                if gallery_box is None:
                    skips.skip(reason, f"{where}.Gallery[{g}]", f"idlocate {xywh}")
                    break
            entries.append({"image_id": f"{IMAGE_DIR}/{name}", "box": gallery_box})
        else:
            queries.append(
                {
                    "image_id": f"{IMAGE_DIR}/{query_name}",
                    "box": box,
                    "person_id": labels[(query_name, query_box)],
                    "camera_id": NO_CAMERA,
                    "gallery": None if gallery_size is None else entries,
                }
            )
    return queries


SPEC = DatasetSpec(
    name=SOURCE,
    display_name="CUHK-SYSU",
    builder_name="CUHKSYSU",
    task="search",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.cuhk_sysu",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
    train_split="train",
    gallery_split="test",
    protocol="cuhk_sysu",
    load_queries=load_queries,
    gallery_sizes=GALLERY_SIZES,
    default_gallery_size=DEFAULT_GALLERY_SIZE,
)
