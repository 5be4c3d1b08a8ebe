"""A picture of a search: the query crop, then the top-k gallery images with the matched box and its scores.

PIL only, so it runs wherever the pipeline runs (no matplotlib / OpenCV).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw, ImageFont

TILE_HEIGHT = 256
"""Height of every tile in pixels: big enough to see a person in a gallery scene, small enough that ten
tiles fit a screen width (about 10 x 340 px for 4:3 scenes)."""
CAPTION_HEIGHT = 18
"""Strip above each tile for its caption (one line of PIL's default bitmap font, 11 px, plus margins)."""
GAP = 6
"""White space between tiles."""
QUERY_COLOUR = (0, 120, 255)
MATCH_COLOUR = (0, 200, 0)
BOX_WIDTH = 3
"""Line width of the drawn boxes: visible at tile scale without hiding a small person."""
BACKGROUND = (255, 255, 255)


def _resized_to_height(image: Image.Image, height: int) -> tuple[Image.Image, float]:
    scale = height / image.height
    width = max(1, round(image.width * scale))
    return image.resize((width, height), Image.Resampling.BILINEAR), scale


def render_search_result(
    query_image: Image.Image,
    query_box: Sequence[float],
    matches: Sequence[dict],
    load_gallery_image: Callable[[dict], Image.Image],
    tile_height: int = TILE_HEIGHT,
) -> Image.Image:
    """One row: the query crop (its box drawn around it), then one tile per match with the matched box.

    Args:
        query_image: the query's full image; query_box: its xyxy box in that image's pixels.
        matches: ranked matches as the pipeline returns them ({"rank", "image", "box", "similarity", "score"}).
        load_gallery_image: returns the full gallery image of a match (e.g. opens ``match["image"]``).
        tile_height: height of every tile in pixels.

    Captions: "query", then "#rank sim 0.873 det 0.99" (cosine similarity and detection score).
    """
    query_image = query_image.convert("RGB")
    x1, y1, x2, y2 = (round(v) for v in query_box)
    crop, _ = _resized_to_height(query_image.crop((x1, y1, x2, y2)), tile_height)
    tiles: list[tuple[Image.Image, str]] = [(crop, "query")]
    for match in matches:
        tile, scale = _resized_to_height(load_gallery_image(match).convert("RGB"), tile_height)
        draw = ImageDraw.Draw(tile)
        draw.rectangle([v * scale for v in match["box"]], outline=MATCH_COLOUR, width=BOX_WIDTH)
        caption = f"#{match['rank']} sim {match['similarity']:.3f} det {match['score']:.2f}"
        tiles.append((tile, caption))
    width = sum(tile.width for tile, _ in tiles) + GAP * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, CAPTION_HEIGHT + tile_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = 0
    for index, (tile, caption) in enumerate(tiles):
        canvas.paste(tile, (x, CAPTION_HEIGHT))
        if index == 0:
            draw.rectangle(
                [x, CAPTION_HEIGHT, x + tile.width - 1, CAPTION_HEIGHT + tile_height - 1], outline=QUERY_COLOUR
            )
        draw.text((x + 2, 2), caption, fill=(0, 0, 0), font=font)
        x += tile.width + GAP
    return canvas
