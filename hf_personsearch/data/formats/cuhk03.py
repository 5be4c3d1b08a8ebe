"""CUHK03: the MATLAB v7.3 ``cuhk-03.mat``, the extracted-png layout, and the 767/700 new protocol.

Layouts (the public release and the common extracted copy; the synthetic writer documents the HDF5 structure in detail):
- ``images_{detected,labeled}/{campair}_{pid:03d}_{view}_{img:02d}.png`` (preferred when present:
  plain files, fast to read),
- ``cuhk-03.mat`` (in ``data_dir`` or ``data_dir/cuhk03_release``): read with h5py through the
  object references; images are decoded from it and given to ``datasets`` as png bytes.
Splits: "train", "query", "gallery" from ``cuhk03_new_protocol_config_<image_type>.mat`` (labels as
the file gives them, 1-based), or "full" (every crop; the identity is the same 1-based global number
the protocol uses: camera pairs in order, identities in order within a pair).
Camera: ``2 * (campair - 1) + (view - 1)``, i.e. each of the 10 camera views gets its own id.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataFormatError, SkipCounter, reports_skips
from ..schema import make_record
from ._common import (
    BAD_LINE,
    CORRUPT_IMAGE,
    INT64_MAX,
    UNKNOWN_KEY,
    check_data_dir,
    check_split,
    json_integer,
    read_image_size,
)
from .matlab import read_mat
from .spec import DatasetSpec

NAME = "cuhk03"
SPLITS = ("train", "query", "gallery", "full")
IMAGE_TYPES = ("detected", "labeled")
LAYOUTS = ("auto", "png", "mat")
HOW_TO_OBTAIN = (
    "CUHK03 is not redistributable: request cuhk03_release.zip from the authors "
    "(https://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html) and the new-protocol files "
    "cuhk03_new_protocol_config_{detected,labeled}.mat from https://github.com/zhunzhong07/person-re-ranking ; "
    "data_dir holds cuhk03_release/cuhk-03.mat (or the extracted images_{detected,labeled}/ png folders) and "
    "the two protocol files."
)
DATA_URL = "https://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html"
PNG_NAME = re.compile(r"^(\d)_(\d{3})_([12])_(\d{2})\.png$")
MAT_KEYS = {"detected", "labeled", "testsets", "#refs#", "#subsystem#"}
PROTOCOL_KEYS = {"filelist", "labels", "camId", "train_idx", "query_idx", "gallery_idx"}


def _parse_name(name: str) -> tuple[int, int, int, int] | None:
    """(campair, pid, view, column), all 1-based as in the name, or None when it does not match."""
    match = PNG_NAME.match(name)
    return None if match is None else tuple(int(g) for g in match.groups())


class _MatImages:
    """Reads crops out of cuhk-03.mat the way public re-ID code does (through object references)."""

    def __init__(self, path: Path, image_type: str, skips: SkipCounter):
        import h5py

        self.path = path
        try:
            self.file = h5py.File(path, "r")
        except OSError as error:
            raise DataFormatError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({error})") from error
        try:
            self.pairs = self._camera_pairs(image_type, skips)
        except BaseException:
            self.file.close()
            raise

    def _camera_pairs(self, image_type: str, skips: SkipCounter) -> list[np.ndarray]:
        """The (num_ids, 10) reference array of each camera pair; any other layout raises (it cannot be read
        by position: a transposed cell array would silently give the wrong identity to most crops)."""
        import h5py

        for key in self.file.keys():
            if key not in MAT_KEYS:
                skips.skip(UNKNOWN_KEY, f"{self.path} key {key!r}", f"expected keys among {sorted(MAT_KEYS)}")
        if image_type not in self.file:
            raise DataFormatError(f"{self.path}: no key {image_type!r}; keys are {sorted(self.file.keys())}")
        pairs = []
        try:
            top = self.file[image_type][:]
            for campair, ref in enumerate(top.reshape(-1)):
                cell = self.file[ref][:].T  # stored transposed, as MATLAB writes arrays
                if cell.ndim != 2 or cell.shape[1] != 10 or cell.dtype != h5py.ref_dtype:
                    raise DataFormatError(
                        f"{self.path}: key {image_type!r} camera pair {campair + 1}: expected a (num_ids, 10) cell "
                        f"array of references (stored as (10, num_ids)), got {cell.dtype} {cell.shape}"
                    )
                pairs.append(cell)
        except (KeyError, ValueError, TypeError, OSError) as error:
            raise DataFormatError(f"{self.path}: key {image_type!r}: not MATLAB cells of crops ({error})") from error
        return pairs

    def names(self) -> list[str]:
        """The png name of every non-empty cell, camera pair by pair, identity by identity (a cell that
        is neither MATLAB's empty marker nor a crop is listed, so that reading it reports it as corrupt)."""
        names = []
        for campair, cell in enumerate(self.pairs):
            for pid in range(cell.shape[0]):
                for column in range(10):
                    name = f"{campair + 1}_{pid + 1:03d}_{1 if column < 5 else 2}_{column + 1:02d}.png"
                    try:
                        data = self.file[cell[pid, column]]
                        empty = data.attrs.get("MATLAB_empty", 0) or data.ndim == 1  # MATLAB's empty cell marker
                    except (KeyError, ValueError, TypeError, OSError, AttributeError):
                        empty = False  # listed: reading it reports the broken reference
                    if not empty:
                        names.append(name)
        return names

    def image(self, campair: int, pid: int, column: int) -> np.ndarray | None:
        """The H x W x 3 uint8 crop of a 1-based (campair, pid, column), or None if absent/empty."""
        if not (1 <= campair <= len(self.pairs) and 1 <= pid <= self.pairs[campair - 1].shape[0]):
            return None
        try:
            data = self.file[self.pairs[campair - 1][pid - 1, column - 1]][:]
        except (KeyError, ValueError, TypeError, OSError, AttributeError):
            return None
        return data.T if data.ndim == 3 else None

    def offsets(self) -> list[int]:
        return [0, *np.cumsum([cell.shape[0] for cell in self.pairs]).tolist()]


def find_mat(root: Path) -> Path | None:
    for candidate in (root / "cuhk-03.mat", root / "cuhk03_release" / "cuhk-03.mat"):
        if candidate.is_file():
            return candidate
    return None


@reports_skips(NAME)
def parse(
    data_dir: str | Path,
    split: str,
    *,
    strict: bool = False,
    skips: SkipCounter | None = None,
    image_type: str = "detected",
    layout: str = "auto",
    verify_images: bool = True,
) -> Iterator[dict]:
    """Yield one re-ID record per crop of ``split``.

    Args:
        image_type: "detected" (default: the crops of a pedestrian detector, the harder and more
            commonly reported setting) or "labeled" (hand-drawn boxes).
        layout: "png", "mat" or "auto" (png folder when present, else cuhk-03.mat).
        verify_images: decode every png once (see ``read_image_size``; mat crops are always decoded).
    """
    check_split(split, SPLITS, NAME)
    if image_type not in IMAGE_TYPES or layout not in LAYOUTS:
        raise ValueError(f"{NAME}: image_type must be in {IMAGE_TYPES} and layout in {LAYOUTS}")
    root = check_data_dir(data_dir, NAME, HOW_TO_OBTAIN, "cuhk03_release/cuhk-03.mat or images_<type>/ pngs")
    png_dir = root / f"images_{image_type}"
    mat_path = find_mat(root)
    use_png = layout == "png" or (layout == "auto" and png_dir.is_dir())
    if use_png and not png_dir.is_dir():
        raise FileNotFoundError(f"{NAME}: missing folder {png_dir}. {HOW_TO_OBTAIN}")
    if not use_png and mat_path is None:
        raise FileNotFoundError(f"{NAME}: neither {png_dir} nor cuhk-03.mat found in {root}. {HOW_TO_OBTAIN}")
    mat = None if use_png else _MatImages(mat_path, image_type, skips)
    try:
        for name, label, where in _entries(root, split, image_type, png_dir, mat, skips):
            record = _record(root, name, label, split, where, png_dir, mat, skips, verify_images)
            if record is not None:
                yield record
    finally:
        if mat is not None:
            mat.file.close()


def _entries(root: Path, split: str, image_type: str, png_dir: Path, mat, skips) -> Iterator[tuple[str, int, str]]:
    """(png name, 1-based global label, where) of every crop of the split."""
    if split != "full":
        protocol = root / f"cuhk03_new_protocol_config_{image_type}.mat"
        yield from _protocol_entries(protocol, split, skips)
        return
    if mat is not None:
        names, offsets, where = mat.names(), mat.offsets(), str(mat.path)
    else:
        names, where = sorted(p.name for p in png_dir.glob("*.png")), str(png_dir)
        max_pid = {}
        for name in names:
            parsed = _parse_name(name)
            if parsed is not None:
                max_pid[parsed[0]] = max(max_pid.get(parsed[0], 0), parsed[1])
        offsets = [0]
        for campair in range(1, max(max_pid, default=0) + 1):
            offsets.append(offsets[-1] + max_pid.get(campair, 0))
    for name in names:
        parsed = _parse_name(name)
        if parsed is None:
            skips.skip(BAD_LINE, f"{where}/{name}", "expected a name {campair}_{pid:03d}_{view}_{img:02d}.png")
            continue
        yield name, offsets[parsed[0] - 1] + parsed[1], f"{where}/{name}"


def _protocol_entries(path: Path, split: str, skips) -> Iterator[tuple[str, int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{NAME}: split {split!r} needs the new-protocol file {path}. {HOW_TO_OBTAIN}")
    config = read_mat(path)
    keys = {key for key in config if not key.startswith("__")}
    for key in sorted(keys - PROTOCOL_KEYS):
        skips.skip(UNKNOWN_KEY, f"{path} key {key!r}", f"expected keys {sorted(PROTOCOL_KEYS)}")
    needed = {"filelist", "labels", f"{split}_idx"}
    if not needed <= keys:
        raise DataFormatError(f"{path}: missing key(s) {sorted(needed - keys)}; keys are {sorted(keys)}")
    filelist = config["filelist"].reshape(-1)
    labels = config["labels"].reshape(-1)
    if len(labels) != len(filelist):
        raise DataFormatError(f"{path}: {len(filelist)} entries in 'filelist' but {len(labels)} in 'labels'")
    for position, index in enumerate(config[f"{split}_idx"].reshape(-1)):
        where = f"{path} {split}_idx[{position}]"
        checked = json_integer(index, 1, len(filelist))
        if checked is None:
            skips.skip(BAD_LINE, where, f"index {index} outside 1..{len(filelist)}")
            continue
        index = checked
        entry = filelist[index - 1]
        name = str(entry.reshape(-1)[0] if isinstance(entry, np.ndarray) and entry.size else entry)
        label = json_integer(labels[index - 1], 0, INT64_MAX)
        if label is None:
            skips.skip(BAD_LINE, f"{path} labels[{index - 1}]", f"expected an integer label, got {labels[index - 1]}")
            continue
        yield name, label, f"{where} ({name})"


def _record(root: Path, name: str, label: int, split: str, where: str, png_dir: Path, mat, skips, verify: bool):
    parsed = _parse_name(name)
    if parsed is None:
        skips.skip(BAD_LINE, where, "expected a name {campair}_{pid:03d}_{view}_{img:02d}.png")
        return None
    campair, pid, view, column = parsed
    if mat is None:
        size = read_image_size(png_dir / name, where, skips, verify=verify)
        if size is None:
            return None
        image = str(png_dir / name)
        width, height = size
    else:
        pixels = mat.image(campair, pid, column)
        if pixels is None or pixels.dtype != np.uint8 or pixels.shape[2] != 3:
            skips.skip(CORRUPT_IMAGE, where, f"no H x W x 3 uint8 crop in {mat.path} for this cell")
            return None
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
        image = {"bytes": buffer.getvalue(), "path": name}
        height, width = pixels.shape[:2]
    return make_record(
        image=image,
        image_id=name,
        width=width,
        height=height,
        boxes=[[0, 0, width, height]],
        person_ids=[label],
        camera_id=2 * (campair - 1) + (view - 1),
        source=NAME,
        task="reid",
        split=split,
    )


SPEC = DatasetSpec(
    name=NAME,
    display_name="CUHK03",
    builder_name="CUHK03",
    task="reid",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.cuhk03",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
)
