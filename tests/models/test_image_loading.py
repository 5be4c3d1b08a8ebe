"""The one image loader: sources, EXIF orientation, pixel modes, decompression bombs (files written in tmp_path)."""

import numpy as np
import pytest
from PIL import Image

from hf_personsearch import PersonSearchImageProcessor
from hf_personsearch.data.errors import SkipCounter
from hf_personsearch.data.formats._common import read_image_header_size
from hf_personsearch.data.formats._common import read_image_size as read_verified_size
from hf_personsearch.image_loading import ImageTooLargeError, load_image, read_image_size

RED = (255, 0, 0)


def _pixels(image: Image.Image) -> list:
    assert image.mode == "RGB"
    return np.asarray(image).reshape(-1, 3).tolist()


def test_every_source_form_gives_the_same_rgb_image(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    forms = [array, Image.fromarray(array), str(path), path, path.read_bytes()]
    forms += [{"path": str(path), "bytes": None}, {"bytes": path.read_bytes(), "path": None}]
    for source in forms:
        image = load_image(source)
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), array)
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(load_image(grey))[..., 1], grey)


def test_bad_sources_raise_naming_the_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="query image: image file .*missing.jpg does not exist"):
        load_image(tmp_path / "missing.jpg", "query image")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(OSError, match=r"gallery image 0 \(.*broken.jpg\): cannot be read as an image"):
        load_image(broken, "gallery image 0")
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), RED).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(OSError, match="truncated.png"):
        load_image(truncated, "record 3")
    with pytest.raises(ValueError, match=r"record 3: expected an \(H, W, 3\) or \(H, W\) uint8 array"):
        load_image(np.zeros((4, 4, 3), np.float32), "record 3")
    with pytest.raises(TypeError, match="record 3: expected a path"):
        load_image(3.5, "record 3")
    with pytest.raises(ValueError, match="'bytes' or 'path'"):
        load_image({"bytes": None, "path": None}, "record 3")


# Where the stored top-left corner is displayed for each EXIF orientation, and the displayed size.
ORIENTATIONS = {
    1: ("top-left", (60, 40)),
    3: ("bottom-right", (60, 40)),  # rotated 180 degrees
    6: ("top-right", (40, 60)),  # stored sideways, displayed rotated 90 degrees clockwise
    8: ("bottom-left", (40, 60)),  # displayed rotated 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_gives_the_displayed_grid(tmp_path, orientation):
    stored = np.zeros((40, 60, 3), np.uint8)  # 60 wide, 40 high as stored
    stored[:16, :16] = RED  # a JPEG-block-aligned red corner, so compression keeps it red
    path = tmp_path / f"phone_{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    corner, size = ORIENTATIONS[orientation]
    image = load_image(path)
    assert image.size == size
    width, height = size
    x = 4 if corner.endswith("left") else width - 5
    y = 4 if corner.startswith("top") else height - 5
    assert np.allclose(image.getpixel((x, y)), RED, atol=24)
    assert np.allclose(image.getpixel((width - 1 - x, height - 1 - y)), (0, 0, 0), atol=24)  # opposite corner
    # Sizes for annotations agree with the pixels: header reads and verified reads.
    assert read_image_size(path) == size
    assert read_image_header_size(path, SkipCounter()) == size
    assert read_verified_size(path, "line 1", SkipCounter()) == size
    # Applying the loader twice, or the processor to the raw file, does not rotate twice.
    assert load_image(image).size == size
    with Image.open(path) as raw:
        assert PersonSearchImageProcessor(min_size=40, max_size=60)([raw])["original_sizes"].tolist() == [
            [height, width]
        ]


def test_16_bit_greyscale_is_scaled_to_8_bits(tmp_path):
    ramp = np.arange(256, dtype=np.uint16) * 257  # 0, 257, ..., 65535: exactly 0..255 in 8 bits
    values = np.concatenate([ramp, np.array([128, 129, 32767, 65534], np.uint16)]).reshape(4, 65)
    expected = np.concatenate([np.arange(256), [0, 1, 127, 255]]).reshape(4, 65)  # v / 257 rounded
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I;16")  # really a 16-bit PNG
    for source in (path, Image.fromarray(values.astype(np.int32))):  # I;16 from the file, I in memory
        image = np.asarray(load_image(source))
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], expected)


def test_palette_cmyk_and_alpha_modes_become_rgb(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "palette.png")
    assert _pixels(load_image(tmp_path / "palette.png")) == [[255, 0, 0], [0, 0, 255]]

    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0)])  # no ink = white; full cyan = (0, 255, 255)
    cmyk.save(tmp_path / "print.tif")
    assert _pixels(load_image(tmp_path / "print.tif")) == [[255, 255, 255], [0, 255, 255]]

    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(10, 20, 30, 0), (40, 50, 60, 255)])  # alpha dropped, stored colours kept
    rgba.save(tmp_path / "cutout.png")
    assert _pixels(load_image(tmp_path / "cutout.png")) == [[10, 20, 30], [40, 50, 60]]

    grey_alpha = Image.new("LA", (1, 1), (100, 7))
    grey_alpha.save(tmp_path / "grey.png")
    assert _pixels(load_image(tmp_path / "grey.png")) == [[100, 100, 100]]


@pytest.mark.parametrize("size", [(40, 30), (50, 50)])  # Pillow's warning range (1-2x the limit), its error range
def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch, size):
    path = tmp_path / "huge.png"
    Image.new("RGB", size).save(path)
    pixels = size[0] * size[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for read in (load_image, read_image_size):
        with pytest.raises(ImageTooLargeError, match=rf"huge.png.*{pixels} pixels.*MAX_IMAGE_PIXELS"):
            read(path, "gallery image 2")
    assert read_image_header_size(path, SkipCounter()) is None  # an OSError: parsers count and skip it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the documented way to read trusted large images
    assert load_image(path).size == size
