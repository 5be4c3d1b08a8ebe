"""The checks every raw-format parser shares: data folder, split, required file, image size, boxes.

One implementation per check, so that a rule (what makes a box unusable, when a data folder is
missing) is written once. Two families of parsers grew side by side and report under different
reason strings, which users and tests already rely on (``SkipCounter.counts`` keys):

- the detection and re-ID parsers (CrowdHuman, ECP, MSMT17, CUHK03, LUPerson) use the reason
  constants below, :func:`read_image_size` and :func:`clean_box`;
- the person search parsers (PRW, CUHK-SYSU, PoseTrack21, custom) use
  :func:`read_image_header_size`, :func:`xywh_box` and the reasons of
  :data:`hf_personsearch.data.schema.BOX_ERRORS`.

Both box checks apply the same rule, :func:`hf_personsearch.data.schema.clip_box_xyxy`. Both size
reads go through the package's image loader (:mod:`hf_personsearch.image_loading`), so a record's
``width``/``height`` are those of the image training and search see (EXIF orientation applied).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ... import image_loading
from ..errors import SkipCounter
from ..schema import BOX_ERRORS, clip_box_xyxy

# One reason string per kind of bad input (the keys of SkipCounter.counts), detection / re-ID parsers.
MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt or truncated image"
BAD_LINE = "malformed annotation line"
NON_FINITE_BOX = "box with NaN or infinite coordinates"
EMPTY_BOX = "box with width or height <= 0"
OUTSIDE_BOX = "box entirely outside the image"
UNKNOWN_KEY = "unknown key or label"

# The same kinds of bad input as the person search parsers report them.
IMAGE_FILE_MISSING = "image file missing"
IMAGE_FILE_EMPTY = "image file empty"
IMAGE_FILE_UNREADABLE = "image file unreadable"
BOX_NOT_4_NUMBERS = "box is not 4 numbers"

_CLEAN_BOX_REASONS = {
    BOX_ERRORS[0]: (NON_FINITE_BOX, "box {box}"),
    BOX_ERRORS[1]: (EMPTY_BOX, "xyxy box {box}"),
    BOX_ERRORS[2]: (OUTSIDE_BOX, "xyxy box {box} in a {width}x{height} image"),
}
"""clip_box_xyxy's reasons -> the reason and detail :func:`clean_box` reports them under."""


def check_data_dir(data_dir: str | Path | None, name: str, how_to_obtain: str, expected: str | None = None) -> Path:
    """``data_dir`` as a Path, or a FileNotFoundError that says where to get the data.

    None of the datasets may be redistributed, so the error is the user's pointer to the download.

    Args:
        expected: what the folder should hold, named in the error ("a folder with Images/ ..."); None
            (the person search parsers, whose ``how_to_obtain`` already lists the layout) says
            "does not exist. To obtain <name>: ..." instead.
    """
    if expected is None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"{name}: data_dir {str(root)!r} does not exist. To obtain {name}: {how_to_obtain}"
            )
        return root
    if data_dir is None or not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"{name}: data_dir {str(data_dir)!r} is not a folder; expected {expected}. {how_to_obtain}"
        )
    return Path(data_dir)


def check_split(split: str, splits: tuple[str, ...], name: str) -> None:
    """Reject a split the dataset does not have, listing the ones it has."""
    if split not in splits:
        raise ValueError(f"{name}: unknown split {split!r}; expected one of {splits}")


def require_file(path: Path, name: str, how_to_obtain: str) -> Path:
    """``path`` if it exists; otherwise an error naming the file and where the dataset is obtained."""
    if not path.is_file():
        raise FileNotFoundError(f"{name}: expected file {str(path)!r} is missing. To obtain {name}: {how_to_obtain}")
    return path


END_MARKERS = {"JPEG": (b"\xff\xd8\xff", b"\xff\xd9"), "PNG": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82")}
"""Per format, how a file starts and the bytes a complete file ends with (the JPEG end-of-image marker, the
PNG IEND chunk)."""
END_WINDOW = 1024
"""How far from the end the marker may sit: cameras and editors append a few bytes after it, and a cut
inside the JPEG scan cannot contain FF D9 (the scan escapes 0xFF bytes), so a truncated scan never passes."""


def read_image_size(path: Path, where: str, skips: SkipCounter, *, verify: bool = True) -> tuple[int, int] | None:
    """``(width, height)`` of an image file, or None when it is missing or unreadable (skipped/raised).

    Reports under :data:`MISSING_IMAGE` / :data:`CORRUPT_IMAGE` at ``where`` (the annotation line).

    Args:
        verify: decode the whole image, not only its header, so a truncated file is found once at
            preparation time rather than during training. Default True: preparing runs once per dataset.
    """
    if not path.is_file():
        skips.skip(MISSING_IMAGE, where, f"no file {path}")
        return None
    try:
        if verify:
            return image_loading.load_image(path, str(path)).size
        return image_loading.read_image_size(path, str(path))
    except (OSError, ValueError) as error:
        skips.skip(CORRUPT_IMAGE, where, str(error))
        return None


def read_image_header_size(path: Path, skips: SkipCounter) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, or None after counting the skip.

    The person search parsers read thousands of full-HD frames, so a full decode is too slow; the header
    gives the size and :func:`ends_complete` checks that the file was not cut short (a truncated frame
    would otherwise pass here and crash training mid-epoch). Missing, empty and unreadable files are
    counted under their own reason at the image path (or raise when strict).
    """
    if not path.is_file():
        skips.skip(IMAGE_FILE_MISSING, str(path))
        return None
    if path.stat().st_size == 0:
        skips.skip(IMAGE_FILE_EMPTY, str(path))
        return None
    checked = "header"
    try:
        size = image_loading.read_image_size(path, str(path))
        if not ends_complete(path):
            checked = "no JPEG/PNG end marker, full decode"
            image_loading.load_image(path, str(path))  # only a full decode can tell (raises if truncated)
        return size
    except (OSError, ValueError) as error:
        skips.skip(IMAGE_FILE_UNREADABLE, str(path), f"{checked}: {error}")
        return None


def ends_complete(path: Path) -> bool:
    """True when a JPEG/PNG file ends with its end marker (within :data:`END_WINDOW` bytes of the end).

    Reads the first and last bytes instead of decoding the image. False for a file without the marker
    (truncated, or trailing data) and for other formats: the caller then decodes the image fully to decide.
    """
    with open(path, "rb") as file:
        head = file.read(8)
        marker = next((end for start, end in END_MARKERS.values() if head.startswith(start)), None)
        if marker is None:
            return False
        file.seek(0, 2)
        file.seek(max(file.tell() - END_WINDOW, 0))
        return marker in file.read()


def json_integer(value, low: int, high: int) -> int | None:
    """``value`` as an int when it is an integer (an integral float too, as JSON and MATLAB write numbers)
    within ``[low, high]``; None otherwise (strings, booleans, NaN, 1e20 for an int64 field ...)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value) if isinstance(value, (float, np.floating)) else int(value)
    if isinstance(value, float) and not value.is_integer():
        return None
    if not low <= value <= high:
        return None
    return int(value)


INT32_MAX = 2**31 - 1
"""The largest width, height and camera id the Arrow schema (int32 columns) stores."""
INT64_MAX = 2**63 - 1
"""The largest person id the Arrow schema (an int64 column) stores."""


def xywh_to_xyxy(box) -> list[float]:
    """``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` (no +1: pixel edges)."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def clean_box(xyxy, width: int, height: int, where: str, skips: SkipCounter) -> np.ndarray | None:
    """A valid float32 xyxy box clipped to the image, or None (skipped and counted / raised when strict).

    NaN/inf coordinates, width or height <= 0 and boxes entirely outside the image are bad input;
    a box partly outside (CrowdHuman full-body boxes) is clipped (:func:`clip_box_xyxy`).
    """
    try:
        box = [float(v) for v in xyxy]
        if len(box) != 4:
            raise ValueError
    except (TypeError, ValueError):
        skips.skip(BAD_LINE, where, f"expected 4 numbers for a box, got {xyxy!r}")
        return None
    clipped, reason = clip_box_xyxy(box, width, height)
    if clipped is None:
        own_reason, detail = _CLEAN_BOX_REASONS[reason]
        skips.skip(own_reason, where, detail.format(box=box, width=width, height=height))
    return clipped


def xywh_box(value, width: int, height: int, where: str, skips: SkipCounter) -> np.ndarray | None:
    """An ``[x, y, w, h]`` annotation as a clipped xyxy float32 box, or None after counting why it is bad.

    Reports under :data:`BOX_NOT_4_NUMBERS` or a reason of :data:`BOX_ERRORS` (PRW has negative
    coordinates: a box partly outside the image is clipped).
    """
    try:
        xyxy = xywh_to_xyxy(value)
    except (TypeError, ValueError):
        skips.skip(BOX_NOT_4_NUMBERS, where, f"got {value!r}")
        return None
    box, reason = clip_box_xyxy(xyxy, width, height)
    if box is None:
        skips.skip(reason, where, f"xywh={[float(v) for v in value]} in a {width}x{height} image")
    return box


NOT_UTF8 = "line is not UTF-8"
DUPLICATE_ID = "duplicate image id"


def utf8_lines(path: Path, skips: SkipCounter) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 text file; a line with bytes that are not UTF-8 is
    counted under :data:`NOT_UTF8` at ``file:line`` (one bad byte must not lose the whole file)."""
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, start=1):
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                skips.skip(NOT_UTF8, f"{path}:{line_number}", str(error))
