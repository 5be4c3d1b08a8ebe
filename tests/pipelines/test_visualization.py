"""The search picture: a grid, query first, each tile a window on the matched person (or the whole image with
every detection), captioned with rank, scores and the file name."""

import numpy as np
import pytest
from PIL import Image

from hf_personsearch.pipelines import render_search_result
from hf_personsearch.pipelines.visualization import (
    CAPTION_HEIGHT,
    DETECTION_COLOUR,
    GAP,
    MATCH_COLOUR,
    QUERY_COLOUR,
    _fitted_text,
)


def _scene(width=1920, height=1080, person=(900, 400, 960, 560), colour=(250, 0, 0)):
    image = Image.new("RGB", (width, height), (90, 90, 90))
    image.paste(colour, person)
    return image


def _match(rank, image, box, similarity=0.8, score=0.9):
    return {"rank": rank, "image": image, "box": list(box), "similarity": similarity, "score": score}


def test_grid_layout_query_first_and_person_windows():
    scenes = {f"/photos/street_{i}.jpg": _scene() for i in range(6)}
    matches = [_match(i + 1, name, (900, 400, 960, 560)) for i, name in enumerate(scenes)]
    picture = render_search_result(
        _scene(), (900, 400, 960, 560), matches, lambda m: scenes[m["image"]], tile_size=(120, 90), columns=3
    )
    # 7 tiles (query + 6) in rows of 3 -> 3 rows
    cell_w, cell_h = 120 + GAP, 90 + CAPTION_HEIGHT + GAP
    assert picture.size == (3 * cell_w - GAP, 3 * cell_h - GAP)
    pixels = np.asarray(picture)
    # a 60x160 person in a 1920x1080 photo: the window (2.5 x its height = 400 px) shows it 90/400 = 0.225 x:
    # about 13 x 36 px at the tile centre, its box drawn around it, instead of 4 x 13 px in the whole photo
    query_tile = pixels[:90, :120]
    red = (query_tile == [250, 0, 0]).all(axis=2)
    assert 8 <= red.any(axis=0).sum() <= 14 and 25 <= red.any(axis=1).sum() <= 37
    assert (query_tile == QUERY_COLOUR).all(axis=2).sum() > 50
    for position in range(1, 7):
        x, y = (position % 3) * cell_w, (position // 3) * cell_h
        assert (pixels[y : y + 90, x : x + 120] == MATCH_COLOUR).all(axis=2).sum() > 50, position
        assert (pixels[y + 90 : y + 90 + CAPTION_HEIGHT, x : x + 120] < 100).any(), position  # caption text


def test_whole_images_with_every_detection():
    scene = _scene(400, 300, person=(100, 100, 140, 200))
    matches = [_match(1, "a.jpg", (100, 100, 140, 200))]
    others = [{"box": [250.0, 50.0, 300.0, 150.0], "score": 0.55}]
    picture = render_search_result(
        scene,
        (100, 100, 140, 200),
        matches,
        lambda m: scene,
        tile_size=(200, 150),
        detections=lambda m: [{"box": m["box"], "score": m["score"]}, *others],
    )
    tile = np.asarray(picture)[:150, 200 + GAP :]
    # the whole 400x300 image at scale 0.5: the other detection's left edge at x = 125, y from 25 to 75
    assert tuple(tile[50, 125]) == DETECTION_COLOUR
    assert tuple(tile[75, 51]) == MATCH_COLOUR  # match box left edge x = 50 (3 px wide), y from 50 to 100


def test_long_file_names_keep_their_end_and_bad_columns():
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = ImageFont.load_default(size=13)
    name = "a_very_long_camera_folder_name_2024_05_01_frame_000123.jpg"
    short = _fitted_text(name, draw, font, 120)
    assert (
        short.startswith("...")
        and short.endswith("frame_000123.jpg"[-8:])
        and draw.textlength(short, font=font) <= 120
    )
    with pytest.raises(ValueError, match="columns must be >= 1"):
        render_search_result(_scene(), (900, 400, 960, 560), [], lambda m: None, columns=0)
