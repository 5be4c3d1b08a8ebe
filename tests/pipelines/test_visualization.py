"""The search picture: query crop first, then each gallery image with its matched box and caption."""

import numpy as np
from PIL import Image

from hf_personsearch.pipelines import render_search_result
from hf_personsearch.pipelines.visualization import CAPTION_HEIGHT, GAP, MATCH_COLOUR


def test_picture_layout_crop_and_boxes():
    query = Image.new("RGB", (200, 100), (10, 20, 30))
    query.paste((250, 0, 0), (50, 20, 70, 60))  # the query person: a red 20x40 block
    gallery = {"g.png": Image.new("RGB", (100, 50), (90, 90, 90))}
    matches = [
        {"rank": 1, "image": "g.png", "box": [10.0, 10.0, 30.0, 40.0], "similarity": 0.9, "score": 0.8},
        {"rank": 2, "image": "g.png", "box": [50.0, 5.0, 90.0, 45.0], "similarity": 0.5, "score": 0.7},
    ]
    picture = render_search_result(query, [50, 20, 70, 60], matches, lambda m: gallery[m["image"]], tile_height=80)
    # query crop 20x40 -> 40x80; each 100x50 gallery image -> 160x80
    assert picture.size == (40 + 160 + 160 + 2 * GAP, CAPTION_HEIGHT + 80)
    pixels = np.asarray(picture)
    inner_crop = pixels[CAPTION_HEIGHT + 5 : CAPTION_HEIGHT + 75, 5:35]
    assert (inner_crop == [250, 0, 0]).all()
    # match 1: box x1=10 -> 16 px at scale 1.6, y from 16 to 64; its left edge is drawn in the match colour
    first = 40 + GAP
    assert tuple(pixels[CAPTION_HEIGHT + 40, first + 16 + 1]) == MATCH_COLOUR
    assert tuple(pixels[CAPTION_HEIGHT + 40, first + 40]) == (90, 90, 90)  # inside the box: untouched
    second = first + 160 + GAP
    assert tuple(pixels[CAPTION_HEIGHT + 40, second + 80 + 1]) == MATCH_COLOUR  # x1=50 -> 80
    # captions are drawn (dark text pixels in the white strip above every tile)
    for x0, width in ((0, 40), (first, 160), (second, 160)):
        assert (pixels[:CAPTION_HEIGHT, x0 : x0 + width] < 100).any()
