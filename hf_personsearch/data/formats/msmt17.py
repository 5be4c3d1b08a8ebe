"""MSMT17: ``list_{train,val,query,gallery}.txt`` + crops under ``train/`` and ``test/``.

Each line is ``"<pid>/<name>.jpg <label>"`` (REFERENCE.md 4), the path relative to ``train/`` (train,
val) or ``test/`` (query, gallery); labels are 0-based; the camera is
``int(name.split('_')[2]) - 1``. One record per crop: a re-ID record with the single box
``[0, 0, width, height]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import SkipCounter, reports_skips
from ..schema import make_record
from ._common import BAD_LINE, check_data_dir, check_split, read_image_size
from .spec import DatasetSpec

NAME = "msmt17"
SPLITS = ("train", "val", "query", "gallery")
IMAGE_FOLDER = {"train": "train", "val": "train", "query": "test", "gallery": "test"}
HOW_TO_OBTAIN = (
    "MSMT17 is not redistributable: request it from the authors (https://www.pkuvmc.com/dataset.html, "
    "signed release agreement) and unzip MSMT17_V1 (or V2); data_dir is the folder holding train/, test/ "
    "and list_{train,val,query,gallery}.txt."
)
DATA_URL = "https://www.pkuvmc.com/dataset.html"


def msmt17_root(data_dir: str | Path) -> Path:
    """``data_dir`` itself when it holds the list files, else its MSMT17_V1 / MSMT17_V2 sub-folder."""
    root = check_data_dir(data_dir, NAME, HOW_TO_OBTAIN, "a folder with train/, test/ and list_*.txt")
    for candidate in (root, root / "MSMT17_V1", root / "MSMT17_V2"):
        if (candidate / "list_train.txt").is_file():
            return candidate
    return root


@reports_skips(NAME)
def parse(
    data_dir: str | Path,
    split: str,
    *,
    strict: bool = False,
    skips: SkipCounter | None = None,
    verify_images: bool = True,
) -> Iterator[dict]:
    """Yield one re-ID record per line of ``list_<split>.txt``, in file order."""
    check_split(split, SPLITS, NAME)
    root = msmt17_root(data_dir)
    list_path = root / f"list_{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"{NAME}: missing {list_path}. {HOW_TO_OBTAIN}")
    folder = IMAGE_FOLDER[split]
    with open(list_path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{list_path}:{line_number}"
            fields = line.split()
            try:
                relative, label = fields
                label = int(label)
                camera = int(Path(relative).name.split("_")[2]) - 1
            except (ValueError, IndexError):
                skips.skip(
                    BAD_LINE, where, f"expected '<pid>/<pid>_<seq>_<cam>_..._<k>.jpg <label>', got {line.strip()!r}"
                )
                continue
            image_id = f"{folder}/{relative}"
            size = read_image_size(root / image_id, f"{where} ({image_id})", skips, verify=verify_images)
            if size is None:
                continue
            width, height = size
            yield make_record(
                image=str(root / image_id),
                image_id=image_id,
                width=width,
                height=height,
                boxes=[[0, 0, width, height]],
                person_ids=[label],
                camera_id=camera,
                source=NAME,
                task="reid",
                split=split,
            )


SPEC = DatasetSpec(
    name=NAME,
    display_name="MSMT17",
    builder_name="MSMT17",
    task="reid",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.msmt17",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
)
