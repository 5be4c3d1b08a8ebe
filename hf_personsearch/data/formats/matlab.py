"""Reading the MATLAB (.mat, v5) files of the PRW and CUHK-SYSU releases as scipy loads them.

scipy wraps MATLAB strings and structs in 1x1 object cells, sometimes several deep (a cell of structs in
CUHK-SYSU's Train.mat); these helpers unwrap them and name the file, key and entry when something is not
what the release holds. (CUHK03's cuhk-03.mat is MATLAB v7.3 = HDF5 and is read with h5py in its parser.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from ..errors import DataFormatError


def load_mat(path: Path, key: str) -> np.ndarray:
    """``loadmat(path)[key]``; an unreadable file or a missing key raises naming the file and key."""
    try:
        content = loadmat(str(path))
    except Exception as error:  # scipy raises ValueError/TypeError/OSError... for broken files
        raise DataFormatError(f"{path}: not a readable MATLAB file ({error})") from error
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
