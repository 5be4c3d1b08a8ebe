"""Synthetic PRW in the released raw format (frames/*.jpg, annotations/*.jpg.mat, frame lists, CRLF queries).

The files follow the real release exactly (see :mod:`hf_personsearch.data.formats.prw`), so public
loaders that do ``loadmat(frame_test.mat)["img_index_test"]`` or strip the last two characters of each
query_info.txt line read them as they read the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import NO_IDENTITY, make_record
from ._common import savemat
from .render import DUSK, STREET, AppearancePool, render_scene

UNKNOWN_PERSON_ID = -2
MAX_LABELED_PER_FRAME = 4
"""Most labeled persons a frame may hold: more would not fit side by side in a small frame."""


def _frame_people(num_frames: int, identities: list[int], frames_per_identity: int) -> list[list[int]]:
    """Identity ``k`` appears in frames ``k .. k + frames_per_identity - 1`` (mod num_frames): consecutive
    frames have different cameras and styles, so every identity is seen by several cameras, and every
    test query has ``frames_per_identity - 1`` gallery matches, in both styles."""
    people = [[] for _ in range(num_frames)]
    for k, identity in enumerate(identities):
        for j in range(frames_per_identity):
            people[(k + j) % num_frames].append(identity)
    return people


def write(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train_frames: int = 6,
    num_test_frames: int = 8,
    num_train_identities: int = 4,
    num_test_identities: int = 5,
    frames_per_identity: int = 2,
    num_cameras: int = 3,
    width: int = 240,
    height: int = 135,
) -> dict:
    """Write a small PRW under ``out_dir`` and return its ground truth.

    Defaults: a few frames (16:9 like PRW's 1920x1080, at 1/8 scale) so a round trip takes well under a
    second; 3 cameras, enough for cross-camera queries; each identity in 2 frames (one gallery match
    per query). Train ids are 1..num_train_identities, test ids follow (disjoint, as in PRW); every
    frame may also hold one unknown person (id -2). Even frames have the "street" style (seen in
    pre-training), odd frames the "dusk" style that no pre-training dataset has (``render.STYLES``).

    Returns:
        ``{"records": [...train then test records...], "queries": [...one per test identity...],
        "appearances": [...the appearance of each box of each record...]}``.
    """
    for split, frames, identities in (
        ("train", num_train_frames, num_train_identities),
        ("test", num_test_frames, num_test_identities),
    ):
        if not 2 <= frames_per_identity <= frames:
            raise ValueError(
                f"frames_per_identity must be in 2..num_{split}_frames ({frames}) so that every identity "
                f"has a match in another frame, got {frames_per_identity}"
            )
        if frames_per_identity * -(-identities // frames) > MAX_LABELED_PER_FRAME:
            raise ValueError(
                f"{identities} {split} identities in {frames_per_identity} of {frames} frames each put more "
                f"than {MAX_LABELED_PER_FRAME} labeled persons in a frame: use more frames or fewer identities"
            )
    if num_cameras < 2:
        raise ValueError(f"need at least 2 cameras so that queries have cross-camera matches, got {num_cameras}")
    root = Path(out_dir)
    for folder in ("frames", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = AppearancePool("prw", num_train_identities + num_test_identities)
    train_ids = list(range(1, num_train_identities + 1))
    test_ids = list(range(num_train_identities + 1, num_train_identities + num_test_identities + 1))
    records, queries, appearances, frame_index = [], [], [], 0
    for split, num_frames, identities in (("train", num_train_frames, train_ids), ("test", num_test_frames, test_ids)):
        names = []
        for people in _frame_people(num_frames, identities, frames_per_identity):
            frame_index += 1
            camera = 1 + frame_index % num_cameras
            name = f"c{camera}s1_{frame_index:06d}"
            ids = people + [UNKNOWN_PERSON_ID] * int(rng.integers(0, 2))
            looks = [pool.identity(i - 1) if i > 0 else pool.stranger(rng) for i in ids]
            style = DUSK if frame_index % 2 else STREET
            image, boxes = render_scene(
                looks, width=width, height=height, domain=style, rng=rng, max_person_height=height - 10
            )
            appearances.append(looks)
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
    return {"records": records, "queries": queries, "appearances": appearances}
