"""Reading the MATLAB (.mat, v5) files of the PRW and CUHK-SYSU releases as scipy loads them.

scipy wraps MATLAB strings and structs in 1x1 object cells, sometimes several deep (a cell of structs in
CUHK-SYSU's Train.mat); these helpers unwrap them and name the file, key and entry when something is not
what the release holds. (CUHK03's cuhk-03.mat is MATLAB v7.3 = HDF5 and is read with h5py in its parser.)
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from ..errors import DataFormatError

MI_MATRIX, MI_COMPRESSED = 14, 15
"""The MAT v5 data element types that hold other elements (an array, a zlib-compressed element)."""
MI_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18})
"""The data element types of the MAT v5 format (8, 10 and 11 are reserved); scipy crashes on others."""
MAX_DECOMPRESSED = 2**30
"""The most bytes a compressed element may expand to (the released annotation files hold a few MB)."""


def read_mat(path: Path) -> dict:
    """``loadmat`` of a MATLAB v5 file, after :func:`check_mat_v5`; a broken file raises naming it.

    scipy's reader trusts the sizes the file declares: a single changed byte in a size field can crash the
    interpreter (found by the fuzz tests with scipy 1.17), so the element structure is checked first.
    """
    data = Path(path).read_bytes()
    try:
        check_mat_v5(data)
        return loadmat(io.BytesIO(data))
    except Exception as error:  # scipy raises ValueError/TypeError/OSError... for broken files
        raise DataFormatError(f"{path}: not a readable MATLAB v5 file ({error})") from error


def check_mat_v5(data: bytes) -> None:
    """Check that every data element of a MAT v5 file (nested ones and compressed ones included) fits in
    its container; raises ValueError naming the byte offset of the first one that does not."""
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        raise ValueError("no MATLAB v5 header (128 bytes ending in the 'IM' or 'MI' endian mark)")
    order = "<" if data[126:128] == b"IM" else ">"
    if struct.unpack_from(order + "H", data, 124)[0] != 0x0100:
        raise ValueError("not a MATLAB v5 file (version field is not 0x0100); v7.3 files are HDF5")
    _check_elements(data, 128, len(data), order, depth=0)


def _check_elements(data: bytes, start: int, end: int, order: str, depth: int) -> None:
    if depth > 64:
        raise ValueError("arrays nested more than 64 deep")
    position = start
    while position < end:
        if end - position < 8:
            raise ValueError(f"element tag at byte {position} cut short")
        kind, size = struct.unpack_from(order + "II", data, position)
        small = kind >> 16  # a small element: size and type in the first 4 bytes, data in the next 4
        kind &= 0xFFFF
        if kind not in MI_TYPES:
            raise ValueError(f"element at byte {position} has unknown type {kind}")
        if small:
            if small > 4:
                raise ValueError(f"small element at byte {position} declares {small} bytes (at most 4)")
            position += 8
            continue
        body = position + 8
        if size > end - body:
            raise ValueError(f"element at byte {position} declares {size} bytes, {end - body} remain")
        if kind == MI_MATRIX:
            _check_elements(data, body, body + size, order, depth + 1)
        elif kind == MI_COMPRESSED:
            inflater = zlib.decompressobj()
            inner = inflater.decompress(data[body : body + size], MAX_DECOMPRESSED)
            if inflater.unconsumed_tail:
                raise ValueError(f"compressed element at byte {position} expands beyond {MAX_DECOMPRESSED} bytes")
            _check_elements(inner, 0, len(inner), order, depth + 1)
        position = body + size if kind == MI_COMPRESSED else body + (size + 7) // 8 * 8


def load_mat(path: Path, key: str) -> np.ndarray:
    """``read_mat(path)[key]``; an unreadable file or a missing key raises naming the file and key."""
    content = read_mat(path)
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataFormatError(f"{path}: expected key {key!r}, found keys {found}")
    return content[key]


def unwrap_cells(value) -> np.ndarray:
    """``value`` out of the 1x1 object cells it may sit in (a string, a struct array, a number array)."""
    value = np.asarray(value)
    while value.dtype == object and value.size == 1:
        value = np.asarray(value.reshape(-1)[0])
    return value


def mat_string(value) -> str:
    """The text of a MATLAB char array as scipy loads it, however deep it sits in 1x1 cells."""
    value = unwrap_cells(value)
    if value.dtype.kind != "U" or value.size != 1:
        raise ValueError(f"expected a MATLAB string, got an array of dtype {value.dtype} and shape {value.shape}")
    return str(value.reshape(-1)[0])


def struct_entries(array: np.ndarray, fields: tuple[str, ...], where: str) -> np.ndarray:
    """The struct array flattened to 1-D after checking that it has ``fields`` (raises naming what is missing)."""
    names = array.dtype.names or ()
    missing = [field for field in fields if field not in names]
    if missing:
        raise DataFormatError(f"{where}: expected a struct array with fields {fields}, missing {missing}")
    return array.reshape(-1)
