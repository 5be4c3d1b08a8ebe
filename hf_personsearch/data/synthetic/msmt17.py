"""Synthetic MSMT17: ``MSMT17_V1/{train,test}/<pid>/<name>.jpg`` + ``list_{train,val,query,gallery}.txt``.

List lines are ``"<pid:04d>/<name>.jpg <label>"`` (path relative to train/ or test/, labels 0-based
within train and within test); names follow MSMT17's ``<pid>_<seq>_<cam:02d>_<date><time>_<frame>_<k>``
with a 1-based camera, so ``int(name.split('_')[2]) - 1`` is the 0-based camera as public loaders use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import make_record
from .render import WARM, AppearancePool, render_person

TIMES_OF_DAY = ("morning", "noon", "afternoon")


def write(
    out_dir: Path,
    *,
    seed: int = 0,
    num_train_ids: int = 4,
    num_test_ids: int = 3,
    num_cameras: int = 3,
) -> dict:
    """Write one crop per identity and camera (+ one val crop per train identity).

    Crops are 64..128 pixels high, cut from "warm" scenes (MSMT17's style, see ``render.STYLES``) with a
    margin of background. Test identity k is MSMT17's identity ``num_train_ids + k`` of its appearance
    block, so train and test persons differ, as in the real split. Query: the camera-0 crop of each test
    identity; gallery: the other cameras. Defaults: 12 train, 4 val, 3 query and 6 gallery crops.
    Returns ``{"records": [...], "appearances": [...]}`` (per record, the appearance of its one box).
    """
    if num_cameras < 2:
        raise ValueError(f"num_cameras must be >= 2 (query and gallery views), got {num_cameras}")
    rng = np.random.default_rng(seed)
    pool = AppearancePool("msmt17", num_train_ids + num_test_ids)
    root = Path(out_dir) / "MSMT17_V1"
    lists = {"train": [], "val": [], "query": [], "gallery": []}
    records, appearances = [], []

    def add(split: str, folder: str, label: int, appearance: int, camera: int, frame: int) -> None:
        height = int(rng.integers(64, 129))
        width = max(8, int(round(height * rng.uniform(0.35, 0.45))))
        date = f"03{int(rng.integers(10, 29))}{TIMES_OF_DAY[frame % 3]}"
        name = f"{label:04d}_{frame:03d}_{camera + 1:02d}_{date}_{frame:04d}_{frame % 3}.jpg"
        path = root / folder / f"{label:04d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        render_person(appearance, height, width, rng, domain=WARM).save(path, quality=95)
        appearances.append([appearance])
        lists[split].append(f"{label:04d}/{name} {label}")
        records.append(
            make_record(
                image=str(path),
                image_id=f"{folder}/{label:04d}/{name}",
                width=width,
                height=height,
                boxes=[[0, 0, width, height]],
                person_ids=[label],
                camera_id=camera,
                source="msmt17",
                task="reid",
                split=split,
            )
        )

    for pid in range(num_train_ids):
        for camera in range(num_cameras):
            add("train", "train", pid, pool.identity(pid), camera, frame=camera)
        add("val", "train", pid, pool.identity(pid), int(rng.integers(num_cameras)), frame=num_cameras)
    for pid in range(num_test_ids):
        for camera in range(num_cameras):
            split = "query" if camera == 0 else "gallery"
            add(split, "test", pid, pool.identity(num_train_ids + pid), camera, frame=camera)
    for split, lines in lists.items():
        (root / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
    return {"records": records, "appearances": appearances}
