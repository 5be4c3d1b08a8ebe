"""Drawing synthetic persons and scenes whose identities are visible in their appearance.

The synthetic data stands in for the real datasets in tests and in the demo, so it has to carry the
same signal as the real thing, only simpler: a tiny detector must be able to find the persons (a
clear head / torso / legs silhouette against a background that has no person-like shapes) and a tiny
re-ID head must be able to tell identities apart (each identity has its own shirt colour, trouser
colour, shirt pattern, pattern colour and hair colour). Backgrounds come in :data:`DOMAINS` visually
different styles so that the domain alignment of the paper (its IAMs) has domains to align.

Everything is deterministic given the identity and the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

DOMAINS = 2
"""Number of background styles: 0 = "street" (light, textured facades and a road), 1 = "night" (dark,
noisy, a few lamps). Two is the smallest number that gives the domain classifiers something to do."""

DOMAIN_NAMES = ("street", "night")

SHIRT_COLOURS = (
    (220, 30, 30),
    (30, 160, 40),
    (30, 70, 220),
    (240, 200, 20),
    (200, 40, 200),
    (20, 200, 210),
    (250, 130, 20),
    (120, 60, 20),
    (250, 250, 250),
    (130, 20, 90),
    (100, 230, 100),
)
TROUSER_COLOURS = (
    (20, 20, 90),
    (40, 40, 40),
    (150, 120, 80),
    (90, 20, 20),
    (20, 90, 40),
    (170, 170, 170),
    (80, 0, 110),
)
PATTERNS = ("plain", "horizontal_stripes", "vertical_stripes", "checks")
PATTERN_COLOURS = ((255, 255, 255), (0, 0, 0), (255, 255, 0))
HAIR_COLOURS = ((20, 15, 10), (120, 70, 20), (230, 200, 120), (160, 160, 160), (200, 60, 20))

NUM_DISTINCT_APPEARANCES = (
    len(SHIRT_COLOURS) * len(TROUSER_COLOURS) * len(PATTERNS) * len(PATTERN_COLOURS) * len(HAIR_COLOURS)
)
"""4620: the attribute list lengths (11, 7, 4, 3, 5) are pairwise coprime, so by the Chinese remainder
theorem identities 0..4619 all look different, and two consecutive identities differ in every
attribute. Larger identities repeat the appearance of ``identity % 4620``."""

SKIN_COLOUR = (225, 180, 140)
SHOE_COLOUR = (30, 30, 30)
NEUTRAL_BACKGROUND = (128, 128, 128)
"""Plain grey behind a re-ID crop: the same for everybody, so the crop's only signal is the person."""

NIGHT_LIGHTING = 0.75
"""Persons in the night domain are drawn darker (but still far brighter than the background), so that
the domain shift touches the persons too, as it does between real datasets."""


def person_appearance(identity: int) -> dict:
    """The clothing of ``identity``: a dict of RGB tuples ``shirt``, ``trousers``, ``pattern_colour``,
    ``hair`` and the ``pattern`` name. Deterministic; see :data:`NUM_DISTINCT_APPEARANCES`."""
    if identity < 0:
        raise ValueError(f"identity must be >= 0 to have an appearance, got {identity}")
    return {
        "shirt": SHIRT_COLOURS[identity % len(SHIRT_COLOURS)],
        "trousers": TROUSER_COLOURS[identity % len(TROUSER_COLOURS)],
        "pattern": PATTERNS[identity % len(PATTERNS)],
        "pattern_colour": PATTERN_COLOURS[identity % len(PATTERN_COLOURS)],
        "hair": HAIR_COLOURS[identity % len(HAIR_COLOURS)],
    }


def _scaled(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)


def _draw_person(
    draw: ImageDraw.ImageDraw, x0: int, y0: int, w: int, h: int, appearance: dict, lighting: float, rng
) -> None:
    """Draw a person whose drawn pixels span exactly columns x0..x0+w-1 and rows y0..y0+h-1.

    The arms touch the left and right edges, the hair the top edge and the shoes the bottom edge, so
    the box ``[x0, y0, x0 + w, y0 + h]`` is tight around the drawn pixels.
    """
    shirt = _scaled(appearance["shirt"], lighting)
    trousers = _scaled(appearance["trousers"], lighting)
    pattern_colour = _scaled(appearance["pattern_colour"], lighting)
    hair = _scaled(appearance["hair"], lighting)
    skin = _scaled(SKIN_COLOUR, lighting)
    shoes = _scaled(SHOE_COLOUR, lighting)

    def px(fx: float) -> int:
        return x0 + int(round(fx * (w - 1)))

    def py(fy: float) -> int:
        return y0 + int(round(fy * (h - 1)))

    # Small per-image pose jitter so that two crops of one identity are not pixel copies.
    neck = 0.17 + rng.uniform(-0.01, 0.01)
    hip = 0.55 + rng.uniform(-0.02, 0.02)
    gap = rng.uniform(0.02, 0.06)
    head_half = 0.2 + rng.uniform(-0.02, 0.02)

    draw.ellipse([px(0.5 - head_half), py(0.0), px(0.5 + head_half), py(neck)], fill=skin)
    draw.chord([px(0.5 - head_half), py(0.0), px(0.5 + head_half), py(neck)], 180, 360, fill=hair)
    torso = [px(0.2), py(neck), px(0.8), py(hip)]
    draw.rectangle(torso, fill=shirt)
    draw.rectangle([px(0.0), py(neck + 0.02), px(0.18), py(hip - 0.04)], fill=shirt)
    draw.rectangle([px(0.82), py(neck + 0.02), px(1.0), py(hip - 0.04)], fill=shirt)
    _draw_pattern(draw, torso, appearance["pattern"], pattern_colour)
    draw.rectangle([px(0.24), py(hip), px(0.5 - gap), py(0.94)], fill=trousers)
    draw.rectangle([px(0.5 + gap), py(hip), px(0.76), py(0.94)], fill=trousers)
    draw.rectangle([px(0.2), py(0.94), px(0.5 - gap), py(1.0)], fill=shoes)
    draw.rectangle([px(0.5 + gap), py(0.94), px(0.8), py(1.0)], fill=shoes)


def _draw_pattern(draw: ImageDraw.ImageDraw, torso: list[int], pattern: str, colour) -> None:
    """Four stripes (or a 4x4 check) whatever the size, so the pattern stays visible on small persons."""
    x1, y1, x2, y2 = torso
    tw, th = x2 - x1 + 1, y2 - y1 + 1
    if pattern == "horizontal_stripes":
        for k in range(4):
            top = y1 + (2 * k + 1) * th // 8
            draw.rectangle([x1, top, x2, top + max(0, th // 8 - 1)], fill=colour)
    elif pattern == "vertical_stripes":
        for k in range(4):
            left = x1 + (2 * k + 1) * tw // 8
            draw.rectangle([left, y1, left + max(0, tw // 8 - 1), y2], fill=colour)
    elif pattern == "checks":
        for row in range(4):
            for col in range(4):
                if (row + col) % 2 == 0:
                    left, top = x1 + col * tw // 4, y1 + row * th // 4
                    draw.rectangle(
                        [left, top, x1 + (col + 1) * tw // 4 - 1, y1 + (row + 1) * th // 4 - 1], fill=colour
                    )


def render_person(identity: int, height: int, width: int, rng: np.random.Generator) -> Image.Image:
    """An RGB re-ID crop of ``identity``: the person fills the whole ``width`` x ``height`` crop, on a
    plain neutral grey background (as a detector's crop of a real person would be tight around it)."""
    if height < 8 or width < 4:
        raise ValueError(f"a person crop needs height >= 8 and width >= 4 pixels, got {height}x{width}")
    image = Image.new("RGB", (width, height), NEUTRAL_BACKGROUND)
    lighting = rng.uniform(0.9, 1.1)
    _draw_person(ImageDraw.Draw(image), 0, 0, width, height, person_appearance(identity), lighting, rng)
    return image


def render_background(width: int, height: int, domain: int, rng: np.random.Generator) -> Image.Image:
    """A background of the given domain style with no person-like shapes in it."""
    if not 0 <= domain < DOMAINS:
        raise ValueError(f"domain must be in 0..{DOMAINS - 1} ({DOMAIN_NAMES}), got {domain}")
    if domain == 0:
        base = rng.uniform(170, 215)
        pixels = np.full((height, width, 3), base, np.float32)
        pixels *= np.array([1.0, 0.97, 0.9], np.float32)
        x = 0
        while x < width:  # facades of different tints and widths
            facade_w = int(rng.integers(width // 8 + 1, width // 3 + 2))
            pixels[: int(height * 0.7), x : x + facade_w] += rng.uniform(-25, 25, size=3).astype(np.float32)
            x += facade_w
        pixels[::12] -= 30  # brick courses
        pixels[int(height * 0.7) :] = rng.uniform(95, 125)  # road
        pixels += rng.normal(0, 6, size=pixels.shape).astype(np.float32)
    else:
        pixels = np.full((height, width, 3), rng.uniform(15, 35), np.float32)
        pixels *= np.array([0.8, 0.85, 1.2], np.float32)
        pixels += rng.normal(0, 14, size=pixels.shape).astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):  # street lamps: soft bright blobs
            cy, cx = rng.uniform(0, height * 0.4), rng.uniform(0, width)
            radius = rng.uniform(0.03, 0.08) * min(width, height) + 1
            yy, xx = np.ogrid[:height, :width]
            pixels += (90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)))[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


PERSON_ASPECT = 0.4
"""Width / height of a drawn person, close to the 0.41 of the pedestrian datasets' average box."""


def render_scene(
    identities: list[int],
    *,
    width: int,
    height: int,
    domain: int,
    rng: np.random.Generator,
    min_person_height: int = 40,
    max_person_height: int | None = None,
    max_tries: int = 200,
) -> tuple[Image.Image, np.ndarray]:
    """A scene image with one drawn person per entry of ``identities``, at several scales.

    Args:
        identities: who to draw (their appearance comes from :func:`person_appearance`); repeats allowed.
        width, height: image size in pixels.
        domain: background style, ``0 <= domain < DOMAINS``.
        rng: the only source of randomness (positions, scales, background).
        min_person_height: smallest person in pixels; default 40 keeps the head/torso/legs and the shirt
            pattern visible (about 10 pixels of torso for the 4 stripes).
        max_person_height: largest person; default ``0.9 * height`` (a person close to the camera).
        max_tries: placement attempts per person before giving up.

    Returns:
        the image and ``boxes`` (n, 4) float32 xyxy in pixels, tight around each drawn person, in the
        order of ``identities``. Persons do not overlap at all (IoU 0 < 0.3), so every box is fully
        visible and the ground truth needs no occlusion handling.
    """
    if max_person_height is None:
        max_person_height = int(0.9 * height)
    max_person_height = min(max_person_height, height)
    if not 8 <= min_person_height <= max_person_height:
        raise ValueError(
            f"need 8 <= min_person_height <= max_person_height <= height, got {min_person_height}, "
            f"{max_person_height}, image height {height}"
        )
    image = render_background(width, height, domain, rng)
    draw = ImageDraw.Draw(image)
    lighting = NIGHT_LIGHTING if domain == 1 else 1.0
    boxes = np.zeros((0, 4), np.float32)
    for identity in identities:
        for _ in range(max_tries):
            h = int(rng.integers(min_person_height, max_person_height + 1))
            w = max(4, int(round(h * PERSON_ASPECT * rng.uniform(0.85, 1.15))))
            if w > width:
                continue
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if not np.any(_iou(box, boxes) > 0):
                break
        else:
            raise ValueError(
                f"could not place person {len(boxes) + 1} of {len(identities)} without overlap in a "
                f"{width}x{height} image after {max_tries} tries: use fewer or smaller persons"
            )
        _draw_person(draw, x0, y0, w, h, person_appearance(identity), lighting * rng.uniform(0.9, 1.1), rng)
        boxes = np.concatenate([boxes, box[None]])
    return image, boxes
