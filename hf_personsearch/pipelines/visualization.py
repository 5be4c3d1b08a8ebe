"""A picture of a search: a grid of tiles, the query first, then the ranked matches, each captioned with its
rank, similarity, detection score and file name.

Two tile styles: by default a match tile is a window around the matched person (in a 1920x1080 street photo
a person is a few dozen pixels wide: the whole photo shrunk to a tile would show nothing); with
``show_detections`` it is the whole gallery image with every detection and its score drawn (as SeqNet's
demo does), the match in green. PIL only, so it runs wherever the pipeline runs (no matplotlib / OpenCV).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw, ImageFont

TILE_SIZE = (320, 240)
"""Width, height of every tile in pixels: a person stays recognisable, and five columns fit a laptop screen."""
COLUMNS = 5
"""Tiles per row: the query and 4 matches on the first row, 5 per row after it."""
CONTEXT = 2.5
"""The window around a person is this many times the person's height (clamped to the image), so that the
tile shows the person large and a bit of the scene to judge the match by."""
FONT_SIZE = 13
"""Caption font size (PIL's built-in scalable font): two lines of it fit under a tile."""
CAPTION_HEIGHT = 2 * (FONT_SIZE + 3) + 4
"""Two caption lines under each tile: scores, then the file name."""
GAP = 8
"""White space between tiles."""
QUERY_COLOUR = (0, 120, 255)
MATCH_COLOUR = (0, 200, 0)
DETECTION_COLOUR = (255, 190, 0)
BOX_WIDTH = 3
"""Line width of the query and match boxes: visible at tile scale without hiding a small person."""
BACKGROUND = (255, 255, 255)
TILE_BACKGROUND = (235, 235, 235)


def _window(box: Sequence[float], image_size: tuple[int, int], tile_size: tuple[int, int]) -> tuple[int, ...]:
    """A window of the tile's aspect ratio centred on ``box``, CONTEXT times its height, inside the image."""
    width, height = image_size
    x1, y1, x2, y2 = box
    aspect = tile_size[0] / tile_size[1]
    window_height = max(CONTEXT * (y2 - y1), (x2 - x1) * CONTEXT / aspect, 1.0)
    window_width = window_height * aspect
    scale = min(1.0, width / window_width, height / window_height)
    window_width, window_height = window_width * scale, window_height * scale
    left = min(max((x1 + x2 - window_width) / 2, 0), width - window_width)
    top = min(max((y1 + y2 - window_height) / 2, 0), height - window_height)
    return round(left), round(top), round(left + window_width), round(top + window_height)


def _fit(image: Image.Image, tile_size: tuple[int, int]) -> tuple[Image.Image, float, tuple[int, int]]:
    """``image`` scaled to fit the tile, centred on a grey tile; returns the tile, the scale and the offset."""
    scale = min(tile_size[0] / image.width, tile_size[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    tile = Image.new("RGB", tile_size, TILE_BACKGROUND)
    offset = ((tile_size[0] - size[0]) // 2, (tile_size[1] - size[1]) // 2)
    tile.paste(image.resize(size, Image.Resampling.BILINEAR), offset)
    return tile, scale, offset


def _person_tile(
    image: Image.Image,
    box: Sequence[float],
    colour: tuple[int, int, int],
    tile_size: tuple[int, int],
    detections: Sequence[dict] = (),
    font: ImageFont.ImageFont | None = None,
) -> Image.Image:
    """The window around ``box`` (or the whole image when ``detections`` are drawn), ``box`` in ``colour``."""
    image = image.convert("RGB")
    window = (0, 0, image.width, image.height) if detections else _window(box, image.size, tile_size)
    tile, scale, (dx, dy) = _fit(image.crop(window), tile_size)
    draw = ImageDraw.Draw(tile)

    def to_tile(b: Sequence[float]) -> list[float]:
        x1, y1, x2, y2 = (b[0] - window[0], b[1] - window[1], b[2] - window[0], b[3] - window[1])
        return [x1 * scale + dx, y1 * scale + dy, x2 * scale + dx, y2 * scale + dy]

    for detection in detections:
        corners = to_tile(detection["box"])
        draw.rectangle(corners, outline=DETECTION_COLOUR, width=1)
        draw.text((corners[0] + 2, corners[1] + 1), f"{detection['score']:.2f}", fill=DETECTION_COLOUR, font=font)
    draw.rectangle(to_tile(box), outline=colour, width=BOX_WIDTH)
    return tile


def _fitted_text(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    """``text`` cut from the left with "..." until it fits ``width`` pixels (a file name's end is its name)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def render_search_result(
    query_image: Image.Image,
    query_box: Sequence[float],
    matches: Sequence[dict],
    load_gallery_image: Callable[[dict], Image.Image],
    tile_size: tuple[int, int] = TILE_SIZE,
    columns: int = COLUMNS,
    detections: Callable[[dict], Sequence[dict]] | None = None,
) -> Image.Image:
    """A grid: the query (its box in blue), then one tile per match (its box in green), row by row.

    Args:
        query_image: the query's full image; query_box: its xyxy box in that image's pixels.
        matches: ranked matches as the pipeline returns them ({"rank", "image", "box", "similarity", "score"}).
        load_gallery_image: returns the full gallery image of a match (e.g. opens ``match["image"]``).
        tile_size: (width, height) of every tile in pixels.
        columns: tiles per row.
        detections: ``detections(match) -> [{"box", "score"}, ...]``, every detection of the match's image;
            given, each tile shows the whole image with all of them and their scores.

    Captions: "query" / "#rank  sim 0.873  det 0.99", then the image's file name.
    """
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    font = ImageFont.load_default(size=FONT_SIZE)
    tiles = [(_person_tile(query_image, query_box, QUERY_COLOUR, tile_size), "query", "")]
    for match in matches:
        tile = _person_tile(
            load_gallery_image(match),
            match["box"],
            MATCH_COLOUR,
            tile_size,
            detections=detections(match) if detections is not None else (),
            font=font,
        )
        caption = f"#{match['rank']}  sim {match['similarity']:.3f}  det {match['score']:.2f}"
        tiles.append((tile, caption, os.path.basename(str(match["image"]))))
    rows = -(-len(tiles) // columns)
    cell_width, cell_height = tile_size[0] + GAP, tile_size[1] + CAPTION_HEIGHT + GAP
    canvas = Image.new("RGB", (min(columns, len(tiles)) * cell_width - GAP, rows * cell_height - GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for position, (tile, caption, name) in enumerate(tiles):
        x, y = (position % columns) * cell_width, (position // columns) * cell_height
        canvas.paste(tile, (x, y))
        if position == 0:
            draw.rectangle([x, y, x + tile_size[0] - 1, y + tile_size[1] - 1], outline=QUERY_COLOUR, width=2)
        draw.text((x + 2, y + tile_size[1] + 2), caption, fill=(0, 0, 0), font=font)
        draw.text(
            (x + 2, y + tile_size[1] + FONT_SIZE + 5),
            _fitted_text(name, draw, font, tile_size[0] - 4),
            fill=(60, 60, 60),
            font=font,
        )
    return canvas
