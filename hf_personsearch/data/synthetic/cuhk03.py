"""Synthetic CUHK03 in its three real layouts.

- ``cuhk03_release/cuhk-03.mat``: MATLAB v7.3 (HDF5 with the 512-byte MATLAB header), written with
  h5py object references exactly as MATLAB stores cells: ``f["detected"]`` / ``f["labeled"]`` are
  (1, 5) arrays of references to the 5 camera-pair cells; each cell, (num_ids, 10) in MATLAB, is stored
  transposed as (10, num_ids) references; an image, H x W x 3 uint8 in MATLAB, is stored as (3, W, H);
  an empty cell entry is MATLAB's empty marker (a uint64 [0, 0] with ``MATLAB_empty = 1``). So the
  public recipe ``f[f[f["detected"][0][campair]][:].T[pid, view]][:].T`` gives an H x W x 3 image.
- ``cuhk03_new_protocol_config_{detected,labeled}.mat`` (the 767/700 split; scipy.io.savemat):
  ``filelist`` (cell of png names), ``labels``, ``camId`` and 1-based ``train_idx`` / ``query_idx`` /
  ``gallery_idx`` column vectors.
- ``images_{detected,labeled}/{campair}_{pid:03d}_{view}_{img:02d}.png``: the extracted png files
  most users have (1-based campair, pid and image column; view 1 for columns 1-5, 2 for 6-10).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from ..schema import make_record
from ._common import savemat
from .render import STREET, AppearancePool, render_person

IMAGE_TYPES = ("detected", "labeled")
NUM_CAMERA_PAIRS = 5
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."


def png_name(campair: int, pid: int, column: int) -> str:
    """The extracted-png name of cell ``(pid, column)`` of camera pair ``campair`` (all 0-based)."""
    return f"{campair + 1}_{pid + 1:03d}_{1 if column < 5 else 2}_{column + 1:02d}.png"


class _MatlabRefs:
    """Stores datasets under ``#refs#`` the way MATLAB does and hands back their object references."""

    def __init__(self, file: h5py.File):
        self.group = file.create_group("#refs#")
        self.count = 0

    def store(self, data: np.ndarray, matlab_class: str, empty: bool = False):
        self.count += 1
        dataset = self.group.create_dataset(f"r{self.count}", data=data)
        dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
        if empty:
            dataset.attrs["MATLAB_empty"] = np.uint8(1)
        return dataset.ref


def write_matlab_v73(path: Path, cells: dict[str, list[list[list[np.ndarray | None]]]]) -> None:
    """Write ``cells[image_type][campair][pid][column]`` (H x W x 3 uint8 or None) as cuhk-03.mat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as file:
        refs = _MatlabRefs(file)
        for image_type, pairs in cells.items():
            pair_refs = []
            for pair in pairs:
                cell = np.empty((10, len(pair)), dtype=h5py.ref_dtype)
                for pid, columns in enumerate(pair):
                    for column, image in enumerate(columns):
                        if image is None:
                            cell[column, pid] = refs.store(np.zeros(2, np.uint64), "double", empty=True)
                        else:
                            cell[column, pid] = refs.store(np.ascontiguousarray(image.transpose(2, 1, 0)), "uint8")
                pair_refs.append(refs.store(cell, "cell"))
            top = file.create_dataset(image_type, data=np.array([pair_refs], dtype=h5py.ref_dtype))
            top.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as raw:  # MATLAB's text header + version 0x0200 + endian "IM" in the user block
        raw.write(MATLAB_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def write(
    out_dir: Path,
    *,
    seed: int = 0,
    ids_per_pair: int = 2,
    images_per_view: int = 2,
    write_png: bool = True,
) -> dict:
    """Write ``ids_per_pair`` identities per camera pair with ``images_per_view`` crops per view.

    Columns ``images_per_view..4`` of each view stay empty cells, as many real cells are. The second
    half of the identities (in a seeded random order) is the test set; per test identity and view the
    first crop is a query and the others are gallery crops. Crops are 32..64 pixels high, half the
    resolution of the synthetic MSMT17 (CUHK03's low-resolution cameras), cut from "street" scenes with
    a margin of background; "detected" and "labeled" crops of an identity wear its one appearance.
    Defaults: 10 identities, 40 crops per image type. Returns ``{"records": [...]}`` for the "detected" crops with splits train/query/gallery,
    ``"records_all"`` (every detected crop, split "full"; not "all", which ``datasets`` reserves for
    "every split"), ``"records_labeled"`` and ``"appearances"`` (per record of
    ``"records"``, the appearance of its one box).
    """
    if not 1 <= images_per_view <= 5:
        raise ValueError(f"images_per_view must be in 1..5 (5 columns per view), got {images_per_view}")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    num_ids = ids_per_pair * NUM_CAMERA_PAIRS
    pool = AppearancePool("cuhk03", num_ids)
    test_ids = set(rng.permutation(num_ids)[num_ids - num_ids // 2 :].tolist())
    cells = {}
    truth = {image_type: [] for image_type in IMAGE_TYPES}
    for image_type in IMAGE_TYPES:
        folder = out_dir / f"images_{image_type}"
        pairs = []
        for campair in range(NUM_CAMERA_PAIRS):
            pair = []
            for pid in range(ids_per_pair):
                label = campair * ids_per_pair + pid + 1  # 1-based global id, as the protocol's labels
                columns: list[np.ndarray | None] = [None] * 10
                for view in range(2):
                    for k in range(images_per_view):
                        height = int(rng.integers(32, 65))
                        width = max(6, int(round(height * rng.uniform(0.35, 0.45))))
                        image = np.asarray(render_person(pool.identity(label - 1), height, width, rng, domain=STREET))
                        column = 5 * view + k
                        columns[column] = image
                        name = png_name(campair, pid, column)
                        if write_png:
                            folder.mkdir(parents=True, exist_ok=True)
                            Image.fromarray(image).save(folder / name)
                        split = "train" if label - 1 not in test_ids else ("query" if k == 0 else "gallery")
                        truth[image_type].append((name, label, 2 * campair + view, width, height, split))
                pair.append(columns)
            pairs.append(pair)
        cells[image_type] = pairs
        filelist = [entry[0] for entry in truth[image_type]]
        index = {
            split: [i + 1 for i, e in enumerate(truth[image_type]) if e[5] == split]
            for split in ("train", "query", "gallery")
        }
        savemat(
            out_dir / f"cuhk03_new_protocol_config_{image_type}.mat",
            {
                "filelist": np.array(filelist, dtype=object).reshape(-1, 1),
                "labels": np.array([e[1] for e in truth[image_type]], np.int32).reshape(-1, 1),
                "camId": np.array(
                    [1 if e[0].split("_")[2] == "1" else 2 for e in truth[image_type]], np.float64
                ).reshape(-1, 1),
                "train_idx": np.array(index["train"], np.int32).reshape(-1, 1),
                "query_idx": np.array(index["query"], np.int32).reshape(-1, 1),
                "gallery_idx": np.array(index["gallery"], np.int32).reshape(-1, 1),
            },
        )
    write_matlab_v73(out_dir / "cuhk03_release" / "cuhk-03.mat", cells)

    def records(image_type: str, all_split: bool) -> list[dict]:
        return [
            make_record(
                image=str(out_dir / f"images_{image_type}" / name),
                image_id=name,
                width=width,
                height=height,
                boxes=[[0, 0, width, height]],
                person_ids=[label],
                camera_id=camera,
                source="cuhk03",
                task="reid",
                split="full" if all_split else split,
            )
            for name, label, camera, width, height, split in truth[image_type]
        ]

    return {
        "records": records("detected", False),
        "records_all": records("detected", True),
        "records_labeled": records("labeled", False),
        "appearances": [[pool.identity(label - 1)] for _, label, *_ in truth["detected"]],
    }
