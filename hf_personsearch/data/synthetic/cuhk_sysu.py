"""Synthetic CUHK-SYSU in the released raw format: MATLAB struct arrays as scipy writes them.

Every .mat file mirrors the nesting of the real release, so the public loaders' indexing works on it:
``loadmat(Images.mat)["Img"].squeeze()`` gives records ``(imname, nAppear, box)`` whose ``box[0]`` lists
``(idlocate, ishard)``; ``loadmat(TestG50.mat)["TestG50"].squeeze()`` gives records whose
``["Query"][0, 0]`` is ``(imname, idlocate, ishard)`` and whose ``["Gallery"].squeeze()`` lists N such
entries, matches first, then distractors with an empty ``idlocate``; Train.mat is a cell of 1x1 structs
``(idname, nAppear, scene)``; pool.mat a cell of names. See :mod:`hf_personsearch.data.formats.cuhk_sysu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats.cuhk_sysu import IMAGE_DIR, PROTOCOL_DIR, SUBSETS
from ..schema import NO_CAMERA, NO_IDENTITY, make_record
from ._common import savemat, xyxy_to_xywh
from .render import NIGHT, STREET, AppearancePool, render_scene


def _struct_array(rows: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    """A 1 x n MATLAB struct array (numpy record array of object fields, as savemat expects)."""
    array = np.empty((1, len(rows)), dtype=[(field, object) for field in fields])
    for k, row in enumerate(rows):
        for field in fields:
            array[field][0, k] = row[field]
    return array


def _cell(values: list) -> np.ndarray:
    """An n x 1 MATLAB cell array."""
    cell = np.empty((len(values), 1), dtype=object)
    for k, value in enumerate(values):
        cell[k, 0] = value
    return cell


def _entry(name: str, xywh) -> dict:
    """A scene / query / gallery entry; ``xywh`` None gives the empty idlocate of a distractor."""
    idlocate = np.zeros((0, 0)) if xywh is None else np.array([xywh], np.float64)
    return {"imname": name, "idlocate": idlocate, "ishard": np.array([[0.0]])}


def _appearances(num_images: int, identities: list[int], start: int = 0) -> list[list[int]]:
    """Identity ``k`` is in images ``start + k`` and ``start + k + 1`` (each identity in two images)."""
    people = [[] for _ in range(num_images)]
    for k, identity in enumerate(identities):
        people[(start + k) % num_images].append(identity)
        people[(start + k + 1) % num_images].append(identity)
    return people


def write(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train_images: int = 6,
    num_train_identities: int = 4,
    num_test_identities: int = 3,
    gallery_sizes: tuple[int, ...] = (10, 50),
    occlusion_queries: tuple[int, ...] = (0,),
    resolution_queries: tuple[int, ...] = (1,),
    width: int = 200,
    height: int = 150,
) -> dict:
    """Write a small CUHK-SYSU under ``out_dir`` and return its ground truth.

    Defaults: TestG50 (a released size, the one that numbers the test identities) and a TestG10, so
    two gallery sizes are exercised; ``max(gallery_sizes) + 1`` test images (a query's gallery never holds
    its own image) keep the round trip to about a second. Each identity appears in two images; images
    also hold persons without identity. The subset files list the queries of ``occlusion_queries`` /
    ``resolution_queries`` with the galleries of ``max(gallery_sizes)``. Images alternate between the
    "street" and "night" styles; persons wear CUHK-SYSU's block of appearances (``render.AppearancePool``).

    Returns:
        ``{"records": [train in Images.mat order, then test in pool order], "queries": {gallery size or
        None (full set) or "occlusion"/"resolution": [queries as load_queries returns them]}, "appearances":
        [the appearance of each box of each record]}``.
    """
    if num_test_identities < 1 or num_train_identities < 1:
        raise ValueError("need at least one train and one test identity")
    root = Path(out_dir)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / PROTOCOL_DIR).mkdir(parents=True, exist_ok=True)
    (root / "annotation/test/subset").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_test_images = max(gallery_sizes) + 1
    train_ids = list(range(num_train_identities))
    test_ids = list(range(num_train_identities, num_train_identities + num_test_identities))
    people = _appearances(num_train_images, train_ids) + _appearances(num_test_images, test_ids)
    pool = AppearancePool("cuhk_sysu", num_train_identities + num_test_identities)

    records, image_rows, appearances = [], [], []
    for k, labeled in enumerate(people):
        split = "train" if k < num_train_images else "test"
        name = f"s{k + 1}.jpg"
        ids = labeled + [NO_IDENTITY] * int(rng.integers(0 if labeled else 1, 3))
        looks = [pool.identity(i) if i >= 0 else pool.stranger(rng) for i in ids]
        appearances.append(looks)
        image_width = width + 8 * int(rng.integers(0, 5))  # CUHK-SYSU images differ in size
        image, boxes = render_scene(
            looks,
            width=image_width,
            height=height,
            domain=(STREET, NIGHT)[k % 2],
            rng=rng,
            max_person_height=height - 10,
        )
        image.save(root / IMAGE_DIR / name, quality=92)
        xywh = [xyxy_to_xywh(b) for b in boxes]
        box_rows = [{"idlocate": np.array([box], np.float64), "ishard": np.array([[0.0]])} for box in xywh]
        image_rows.append(
            {
                "imname": name,
                "nAppear": np.array([[len(ids)]], np.float64),
                "box": _struct_array(box_rows, ("idlocate", "ishard")),
            }
        )
        records.append(
            make_record(
                image=str(root / IMAGE_DIR / name),
                image_id=f"{IMAGE_DIR}/{name}",
                width=image_width,
                height=height,
                boxes=boxes,
                person_ids=ids,
                camera_id=NO_CAMERA,
                source="cuhk_sysu",
                task="search",
                split=split,
            )
        )
    savemat(root / "annotation/Images.mat", {"Img": _struct_array(image_rows, ("imname", "nAppear", "box"))})
    test_records = records[num_train_images:]
    savemat(root / "annotation/pool.mat", {"pool": _cell([r["image_id"].split("/")[-1] for r in test_records])})

    def appearances_of(identity: int, split_records: list[dict]) -> list[tuple[str, np.ndarray]]:
        found = []
        for record in split_records:
            for box, person_id in zip(record["boxes"], record["person_ids"]):
                if person_id == identity:
                    found.append((record["image_id"].split("/")[-1], box))
        return found

    train_cells = []
    for identity in train_ids:
        scenes = [
            _entry(name, (b[0], b[1], b[2] - b[0], b[3] - b[1])) for name, b in appearances_of(identity, records)
        ]
        train_cells.append(
            _struct_array(
                [{"idname": f"p{identity + 1:05d}", "nAppear": np.array([[len(scenes)]], np.float64),
                  "scene": _struct_array(scenes, ("imname", "idlocate", "ishard"))}],
                ("idname", "nAppear", "scene"),
            )
        )  # fmt: skip
    savemat(root / PROTOCOL_DIR / "Train.mat", {"Train": _cell(train_cells)})

    queries: dict = {}
    protocol_rows: dict = {}
    for size in gallery_sizes:
        rows, queries[size] = [], []
        for identity in test_ids:
            (query_name, query_box), *matches = appearances_of(identity, test_records)
            others = [r["image_id"].split("/")[-1] for r in test_records if identity not in r["person_ids"]]
            distractors = [others[i] for i in rng.permutation(len(others))[: size - len(matches)]]
            gallery = [_entry(n, (b[0], b[1], b[2] - b[0], b[3] - b[1])) for n, b in matches]
            gallery += [_entry(n, None) for n in distractors]
            qb = query_box
            rows.append(
                {
                    "Query": _struct_array([_entry(query_name, (qb[0], qb[1], qb[2] - qb[0], qb[3] - qb[1]))],
                                           ("imname", "idlocate", "ishard")),
                    "Gallery": _struct_array(gallery, ("imname", "idlocate", "ishard")),
                }
            )  # fmt: skip
            queries[size].append(
                {
                    "image_id": f"{IMAGE_DIR}/{query_name}",
                    "box": query_box.copy(),
                    "person_id": identity,
                    "camera_id": NO_CAMERA,
                    "gallery": [{"image_id": f"{IMAGE_DIR}/{n}", "box": b.copy()} for n, b in matches]
                    + [{"image_id": f"{IMAGE_DIR}/{n}", "box": None} for n in distractors],
                }
            )
        protocol_rows[size] = rows
        savemat(root / PROTOCOL_DIR / f"TestG{size}.mat", {f"TestG{size}": _struct_array(rows, ("Query", "Gallery"))})
    queries[None] = [dict(q, gallery=None) for q in queries[max(gallery_sizes)]]
    for subset, chosen in (("occlusion", occlusion_queries), ("resolution", resolution_queries)):
        relative, key = SUBSETS[subset]
        rows = [protocol_rows[max(gallery_sizes)][q] for q in chosen]
        savemat(root / relative, {key: _struct_array(rows, ("Query", "Gallery"))})
        queries[subset] = [queries[max(gallery_sizes)][q] for q in chosen]
    return {"records": records, "queries": queries, "appearances": appearances}
