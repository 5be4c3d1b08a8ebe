"""The one image loader of the data pipeline, the evaluation and search: any source -> an RGB PIL image.

Every image a model sees or an annotation refers to goes through :func:`load_image` (pixels) or
:func:`read_image_size` (size only), so the three agree on:

- EXIF orientation: a phone photo is stored sideways with an "Orientation" tag that viewers apply. The
  image is transposed to the displayed grid (``PIL.ImageOps.exif_transpose``), and box annotations
  refer to that transposed image, the one a person annotating it saw.
- Pixel modes: 16-bit greyscale (PNG ``I;16``, or ``I``) is scaled to 8 bits (v / 257 rounded, so
  0 -> 0 and 65535 -> 255; a plain ``convert("RGB")`` clips it to white), palette (``P``), CMYK, greyscale
  and alpha modes (``LA``, ``RGBA``, ``PA``: alpha dropped, the stored colours kept, as torchvision and
  ``datasets`` do) become RGB.
- Decompression bombs: Pillow refuses images above ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels by
  default, about 9459 x 9459) only with a warning, and above twice that with an error. Both are an
  :class:`ImageTooLargeError` here, naming the file and the pixel count: a 90-megapixel frame in a
  person search dataset is a broken file far more often than a real scene. To read trusted larger
  images, raise the limit before loading: ``PIL.Image.MAX_IMAGE_PIXELS = 200_000_000`` (or ``None`` to
  disable the check).

Flat in the package with no dependency beyond Pillow and numpy, as the image processor uses it and is
copied with the model as Hub remote code.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that swap width and height (the rotations by 90 degrees, with or without a mirror)."""


class ImageTooLargeError(OSError):
    """An image above Pillow's decompression-bomb limit (an ``OSError``, so datasets count and skip it)."""


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored), read from the header without decoding pixels."""
    return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)


def _open(source, where: str) -> tuple[Image.Image, str]:
    """``Image.open`` of a path, bytes or ``datasets.Image`` dict, with Pillow's bomb warning made an error.

    Returns the (not yet decoded) image and its name for errors: ``where``, with the path when it has one.
    """
    if isinstance(source, dict):
        if source.get("bytes"):
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise ValueError(f"{where}: a datasets.Image dict needs 'bytes' or 'path', got keys {sorted(source)}")
    if isinstance(source, (str, Path)):
        name = f"{where} ({source})" if str(source) not in where else where
        if not Path(source).is_file():
            raise FileNotFoundError(f"{where}: image file {source} does not exist")
        file = source
    elif isinstance(source, (bytes, bytearray)):
        name, file = where, io.BytesIO(source)
    else:
        raise TypeError(
            f"{where}: expected a path, bytes, a datasets.Image dict, a PIL image or an (H, W, 3) uint8 array, "
            f"got {type(source).__name__}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(file), name
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(
            f"{name}: {error} Raise PIL.Image.MAX_IMAGE_PIXELS (None disables the check) to read it if the file "
            "is trusted."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"{name}: cannot be read as an image: {error}") from error


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """``image`` in the displayed orientation (EXIF applied) and RGB mode; see the module docstring."""
    if _orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit data; mode "I" (32-bit) is how older Pillow and TIFF hand 16-bit greyscale over.
        values = np.asarray(image, dtype=np.float64)
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if image.mode == "F":
        raise ValueError(f"{where}: floating-point images (mode F) have no defined 8-bit range; convert it first")
    return image.convert("RGB")


def load_image(source, where: str = "image") -> Image.Image:
    """Decode any image source into an RGB PIL image in its displayed orientation.

    Args:
        source: a path, encoded bytes, a ``datasets.Image(decode=False)`` dict (``bytes``/``path``), a PIL
            image, or an (H, W, 3) or (H, W) uint8 array (taken as RGB / greyscale, no orientation).
        where: names the image in errors (e.g. "gallery image 3", "prw c1s1_000151.jpg").

    Raises:
        FileNotFoundError: the path does not exist.
        ImageTooLargeError: above the decompression-bomb limit (see the module docstring).
        OSError: a corrupt, truncated or unknown file (the training datasets count and skip these).
        ValueError / TypeError: an array of the wrong shape or dtype, an unsupported source.
    """
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] == 3)):
            raise ValueError(
                f"{where}: expected an (H, W, 3) or (H, W) uint8 array, got {source.shape} {source.dtype}"
            )
        return Image.fromarray(source).convert("RGB")
    if isinstance(source, Image.Image):
        return to_rgb(source, where)
    image, name = _open(source, where)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"{name}: corrupt or truncated image ({error})") from error
    return to_rgb(image, where)


def read_image_size(source, where: str = "image") -> tuple[int, int]:
    """``(width, height)`` of the image :func:`load_image` returns, from the header only (no decoding).

    The EXIF orientation is applied: a sideways-stored 4000x3000 phone photo is 3000x4000. Raises as
    :func:`load_image`.
    """
    image, _ = _open(source, where)
    with image:
        width, height = image.size
        if _orientation(image) in TRANSPOSING_ORIENTATIONS:
            return height, width
        return width, height
