"""Synthetic PRW in the released raw format (frames/*.jpg, annotations/*.jpg.mat, frame lists, CRLF queries).

The files follow the real release exactly (see :mod:`hf_personsearch.data.formats.prw`), so public
loaders that do ``loadmat(frame_test.mat)["img_index_test"]`` or strip the last two characters of each
query_info.txt line read them as they read the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import savemat

from ..schema import NO_IDENTITY, make_record
from .render import DOMAINS, render_scene

UNKNOWN_PERSON_ID = -2
UNKNOWN_APPEARANCES = (3000, 4000)
"""Render identities of the unknown (-2) persons: far from the labeled ids, so they look different."""


def _frame_people(num_frames: int, identities: list[int]) -> list[list[int]]:
    """Identity ``k`` appears in frames ``k`` and ``k + 1`` (mod num_frames): consecutive frames have
    different cameras, so every identity is seen by two cameras and every test query has a gallery match."""
    people = [[] for _ in range(num_frames)]
    for k, identity in enumerate(identities):
        people[k % num_frames].append(identity)
        people[(k + 1) % num_frames].append(identity)
    return people


def write(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train_frames: int = 6,
    num_test_frames: int = 8,
    num_train_identities: int = 4,
    num_test_identities: int = 5,
    num_cameras: int = 3,
    width: int = 240,
    height: int = 135,
) -> dict:
    """Write a small PRW under ``out_dir`` and return its ground truth.

    Defaults: a few frames (16:9 like PRW's 1920x1080, at 1/8 scale) so a round trip takes well under a
    second; 3 cameras, enough for cross-camera queries. Train ids are 1..num_train_identities, test ids
    follow (disjoint, as in PRW); every frame may also hold one unknown person (id -2).

    Returns:
        ``{"records": [...train then test records...], "queries": [...one per test identity...]}``.
    """
    if num_train_identities > 2 * num_train_frames or num_test_identities > 2 * num_test_frames:
        raise ValueError("each frame holds at most two labeled persons: use more frames or fewer identities")
    if num_test_frames < 2 or num_cameras < 2:
        raise ValueError("need at least 2 test frames and 2 cameras so that every query has a gallery match")
    root = Path(out_dir)
    for folder in ("frames", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_ids = list(range(1, num_train_identities + 1))
    test_ids = list(range(num_train_identities + 1, num_train_identities + num_test_identities + 1))
    records, queries, frame_index = [], [], 0
    for split, num_frames, identities in (("train", num_train_frames, train_ids), ("test", num_test_frames, test_ids)):
        names = []
        for people in _frame_people(num_frames, identities):
            frame_index += 1
            camera = 1 + frame_index % num_cameras
            name = f"c{camera}s1_{frame_index:06d}"
            ids = people + [UNKNOWN_PERSON_ID] * int(rng.integers(0, 2))
            looks = [i if i > 0 else int(rng.integers(*UNKNOWN_APPEARANCES)) for i in ids]
            image, boxes = render_scene(
                looks, width=width, height=height, domain=camera % DOMAINS, rng=rng, max_person_height=height - 10
            )
            image.save(root / "frames" / f"{name}.jpg", quality=92)
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            rows = np.concatenate([np.array(ids, np.float64)[:, None], xywh.astype(np.float64)], axis=1)
            savemat(root / "annotations" / f"{name}.jpg.mat", {"box_new": rows.reshape(-1, 5)})
            names.append(name)
            records.append(
                make_record(
                    image=str(root / "frames" / f"{name}.jpg"),
                    image_id=f"frames/{name}.jpg",
                    width=width,
                    height=height,
                    boxes=boxes,
                    person_ids=[i if i > 0 else NO_IDENTITY for i in ids],
                    camera_id=camera,
                    source="prw",
                    task="search",
                    split=split,
                )
            )
        cell = np.empty((len(names), 1), dtype=object)
        for k, name in enumerate(names):
            cell[k, 0] = name
        savemat(root / f"frame_{split}.mat", {f"img_index_{split}": cell})
        savemat(root / f"ID_{split}.mat", {f"ID_{split}": np.array([identities], np.float64)})

    lines = []
    for identity in test_ids:
        record = next(r for r in records if r["split"] == "test" and identity in r["person_ids"])
        box = record["boxes"][list(record["person_ids"]).index(identity)]
        x, y, w, h = (int(v) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1]))
        frame = record["image_id"][len("frames/") : -len(".jpg")]
        lines.append(f"{identity} {x} {y} {w} {h} {frame}\r\n")
        queries.append(
            {
                "image_id": record["image_id"],
                "box": box.copy(),
                "person_id": identity,
                "camera_id": record["camera_id"],
                "gallery": None,
            }
        )
    (root / "query_info.txt").write_bytes("".join(lines).encode("utf-8"))
    return {"records": records, "queries": queries}
