"""LUPerson: unlabeled person crops, as a crop folder or as the released LMDB + keys.pkl.

Two layouts of the same crops (both distributed by the LUPerson authors):

- ``"folder"``: ``<country>/<city>/[<video>/]<frame:08d>_<obj:04d>.jpg`` files under ``data_dir``;
- ``"lmdb"``: the public release, an LMDB environment (``data.mdb``/``lock.mdb``, in ``data_dir/lmdb/``
  or in ``data_dir`` itself) plus ``data_dir/keys.pkl``, a pickled list of the keys (the crop names);
  each value is the JPEG bytes of one crop. Needs the optional ``lmdb`` package
  (``pip install hf-personsearch[lmdb]``); records carry the image as ``{"bytes": ..., "path": key}``.

No identities (every crop is ``NO_IDENTITY``; unification gives each a new one) and no cameras.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ... import image_loading
from ..errors import DataFormatError, SkipCounter, reports_skips
from ..schema import NO_IDENTITY, make_record
from ._common import BAD_LINE, CORRUPT_IMAGE, MISSING_IMAGE, check_data_dir, check_split, read_image_size
from .spec import DatasetSpec

NAME = "luperson"
SPLITS = ("train",)
LAYOUTS = ("auto", "folder", "lmdb")
HOW_TO_OBTAIN = (
    "LUPerson is not redistributable: follow https://github.com/DengpanFu/LUPerson (the authors' "
    "download scripts rebuild it from the YouTube videos) and point data_dir at the folder holding "
    "<country>/<city>/... crops, or at the released LMDB folder (lmdb/ with data.mdb, and keys.pkl) "
    "(the paper uses a 30k-crop subset)."
)
DATA_URL = "https://github.com/DengpanFu/LUPerson"
CROP_NAME = re.compile(r"^\d{8}_\d{4}\.(jpg|jpeg)$", re.IGNORECASE)
IMAGE_SUFFIXES = frozenset(Image.registered_extensions())
"""Suffixes (lower case) of the files counted as crops or, when not named like one, as misplaced images."""
LINKED_TWICE = "folder reached twice through symlinks"
UNREADABLE_FOLDER = "unreadable folder"
KEYS_FILE = "keys.pkl"
LMDB_FOLDER = "lmdb"
DUPLICATE_KEY = "duplicate key"
_SAFE_PICKLE_GLOBALS = {("builtins", "list"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "tuple")}
"""The only globals keys.pkl may name: a pickle can call anything it names, so anything else is refused."""


@reports_skips(NAME)
def parse(
    data_dir: str | Path,
    split: str = "train",
    *,
    strict: bool = False,
    skips: SkipCounter | None = None,
    verify_images: bool = True,
    layout: str = "auto",
) -> Iterator[dict]:
    """Yield one unlabeled re-ID record per crop, in sorted key order (the same order in both layouts).

    Args:
        verify_images: decode every crop, not only its header, so a truncated one is found here once.
        layout: one of :data:`LAYOUTS`; "auto" (default) reads the LMDB layout when ``keys.pkl`` and an
            LMDB environment are there, the crop folder otherwise, so one ``data_dir`` argument serves both.
    """
    check_split(split, SPLITS, NAME)
    if layout not in LAYOUTS:
        raise ValueError(f"{NAME}: unknown layout {layout!r}; expected one of {LAYOUTS}")
    root = check_data_dir(
        data_dir,
        NAME,
        HOW_TO_OBTAIN,
        "a folder of <country>/<city>/.../<frame>_<obj>.jpg crops, or an LMDB folder with keys.pkl",
    )
    if layout == "lmdb" or (layout == "auto" and find_lmdb(root) is not None):
        yield from _parse_lmdb(root, split, skips, verify_images)
        return
    for relative in image_files(root, skips):
        path = root / relative
        image_id = relative.as_posix()
        if not CROP_NAME.match(path.name) or len(relative.parts) not in (3, 4):
            skips.skip(BAD_LINE, str(path), "expected <country>/<city>/[<video>/]<frame:08d>_<obj:04d>.jpg")
            continue
        size = read_image_size(path, image_id, skips, verify=verify_images)
        if size is None:
            continue
        yield _crop_record(str(path), image_id, size, split)


def image_files(root: Path, skips: SkipCounter) -> list[Path]:
    """The image files under ``root`` (paths relative to it, sorted), whatever the case of their suffix.

    Symlinked folders are followed (crops are often spread over disks and linked in), each real folder once:
    a second way into a folder (a link to a folder already read, or a link loop) is counted under
    :data:`LINKED_TWICE` and not read again, so no crop is listed twice and a loop ends.
    """
    files, visited = [], set()

    def unreadable(error: OSError) -> None:
        skips.skip(UNREADABLE_FOLDER, str(error.filename), str(error))

    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        subfolders.sort()
        stat = os.stat(folder)
        identity = (stat.st_dev, stat.st_ino)
        if identity in visited:
            skips.skip(LINKED_TWICE, folder, "this folder was already read through another path; not read again")
            subfolders.clear()
            continue
        visited.add(identity)
        relative = Path(folder).relative_to(root)
        files.extend(relative / name for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(files)


def find_lmdb(root: Path) -> Path | None:
    """The LMDB environment folder of the release under ``root`` (``root/lmdb`` or ``root``), or None.

    None unless ``root/keys.pkl`` exists too: the LMDB alone has no list of its crops.
    """
    if not (root / KEYS_FILE).is_file():
        return None
    for folder in (root / LMDB_FOLDER, root):
        if (folder / "data.mdb").is_file():
            return folder
    return None


class _KeysUnpickler(pickle.Unpickler):
    """Unpickles keys.pkl allowing only builtins list/str/bytes/tuple, never an arbitrary class."""

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # Python 2 pickles name it so
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refers to {module}.{name}; only builtins list/str/bytes/tuple are allowed "
                "(a pickle may run any code it names, so nothing else is loaded)"
            )
        return super().find_class(module, name)


def read_keys(path: str | Path) -> list[str]:
    """The crop keys listed in a LUPerson ``keys.pkl``, read without running arbitrary pickled code.

    Accepts a pickled list (or tuple) of str or UTF-8 bytes keys; anything else raises
    :class:`DataFormatError` naming the file and what was found. The opcodes are checked first (about 1.5 s
    per million keys), so a declared length the file does not hold is refused before anything is allocated.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        # Every length the pickle declares must be present in the file: the C unpickler allocates a declared
        # length before reading it (a 36-byte file declaring 300 MB takes 300 MB); genops reads what is there.
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        keys = _KeysUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataFormatError(f"{path}: not a safe pickled list of keys: {error}") from error
    if not isinstance(keys, (list, tuple)):
        raise DataFormatError(f"{path}: expected a pickled list of str keys, got {type(keys).__name__}")
    decoded = []
    for index, key in enumerate(keys):
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(f"{path}: key {index} {key!r} is not UTF-8: {error}") from error
        if not isinstance(key, str) or not key:
            raise DataFormatError(f"{path}: key {index} must be a non-empty str, got {key!r}")
        decoded.append(key)
    return decoded


def _open_lmdb(folder: Path):
    """A read-only LMDB environment, or an ImportError saying how to install the optional ``lmdb``."""
    try:
        import lmdb
    except ImportError as error:
        raise ImportError(
            f"{NAME}: reading the LMDB layout at {folder} needs the lmdb package: pip install hf-personsearch[lmdb]"
        ) from error
    data_file = folder / "data.mdb"
    try:
        # lock=False: the release is read-only and may sit on a read-only disk where lock.mdb cannot be written.
        environment = lmdb.open(str(folder), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as error:
        raise DataFormatError(f"{data_file}: not a readable LMDB environment ({error})") from error
    # LMDB maps the file into memory: reading a page past the end of a truncated data.mdb (an interrupted
    # download or copy) kills the process with SIGBUS, which no Python code can catch. The meta page says
    # how many pages the database uses, so check the file holds them all before anything is read.
    needed = (environment.info()["last_pgno"] + 1) * environment.stat()["psize"]
    size = data_file.stat().st_size
    if size < needed:
        environment.close()
        raise DataFormatError(
            f"{data_file}: truncated LMDB file: {size} bytes, but its database uses {needed} "
            "(an interrupted download or copy?); fetch or copy it again"
        )
    return environment


def _parse_lmdb(root: Path, split: str, skips: SkipCounter, verify_images: bool) -> Iterator[dict]:
    folder = find_lmdb(root)
    if folder is None:
        raise FileNotFoundError(
            f"{NAME}: {root} has no LMDB layout: expected {root / KEYS_FILE} and {root / LMDB_FOLDER}/data.mdb "
            f"(or data.mdb in {root}). {HOW_TO_OBTAIN}"
        )
    keys_path = root / KEYS_FILE
    keys = read_keys(keys_path)
    environment = _open_lmdb(folder)
    try:
        with environment.begin(buffers=False) as transaction:
            seen = set()
            for key in sorted(keys):
                where = f"{keys_path}: key {key!r}"
                if key in seen:
                    skips.skip(DUPLICATE_KEY, where, "listed twice in keys.pkl; kept once")
                    continue
                seen.add(key)
                value = transaction.get(key.encode("utf-8"))
                if value is None:
                    skips.skip(MISSING_IMAGE, where, f"no value for this key in the LMDB at {folder}")
                    continue
                try:
                    if verify_images:
                        size = image_loading.load_image(bytes(value), where).size
                    else:
                        size = image_loading.read_image_size(bytes(value), where)
                except (OSError, ValueError) as error:
                    skips.skip(CORRUPT_IMAGE, where, f"value in the LMDB at {folder} is not a readable image: {error}")
                    continue
                yield _crop_record({"bytes": bytes(value), "path": key}, key, size, split)
    finally:
        environment.close()


def _crop_record(image, image_id: str, size: tuple[int, int], split: str) -> dict:
    width, height = size
    return make_record(
        image=image,
        image_id=image_id,
        width=width,
        height=height,
        boxes=[[0, 0, width, height]],
        person_ids=[NO_IDENTITY],
        source=NAME,
        task="reid",
        split=split,
    )


SPEC = DatasetSpec(
    name=NAME,
    display_name="LUPerson",
    builder_name="LUPerson",
    task="reid",
    splits=SPLITS,
    parse=parse,
    synthetic_writer="hf_personsearch.data.synthetic.luperson",
    how_to_obtain=HOW_TO_OBTAIN,
    data_url=DATA_URL,
)
