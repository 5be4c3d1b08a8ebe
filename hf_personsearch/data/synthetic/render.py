"""Drawing synthetic persons, scenes and re-ID crops in one appearance space and a few visual styles.

The synthetic data stands in for the real datasets in tests and in the demo, so it has to carry the
same signal as the real thing, only simpler: a tiny detector must be able to find the persons (a
clear head / torso / legs silhouette against a background that has no person-like shapes) and a tiny
re-ID head must be able to tell identities apart (each appearance has its own shirt colour, trouser
colour, shirt pattern, pattern colour and hair colour).

Three properties make the pre-training of the paper meaningful on it:

- one appearance space: every dataset draws its persons from its own block of appearances
  (:data:`APPEARANCE_BLOCKS`, via :class:`AppearancePool`), so an identity is one appearance everywhere
  and no two datasets (pre-training or target) ever show the same clothing under different labels;
- re-ID crops are cut from rendered scenes (:func:`render_person`) with a margin of the scene's
  background, as a detector crop of a real frame is, instead of a person on a uniform fill;
- each dataset has the visual style of its real counterpart (:data:`STYLES`), so the domain classifiers
  of the intra-task alignment modules (IAMs) have a cue to remove, and the target mixes a seen style
  with an unseen one.

Everything is deterministic given the identity and the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw


class Style(NamedTuple):
    """A visual style: the background ``layout`` ("street": light facades and a road; "night": dark,
    noisy, a few lamps) and a per-channel ``gain`` applied to the background and the persons alike, as a
    camera's colour response and the light of the scene would."""

    name: str
    layout: str
    gain: tuple[float, float, float]


STYLES = (
    Style("street", "street", (1.0, 1.0, 1.0)),
    Style("night", "night", (0.75, 0.85, 1.15)),
    Style("warm", "street", (1.12, 0.95, 0.75)),
    Style("cool", "street", (0.8, 0.95, 1.15)),
    Style("dusk", "street", (0.8, 0.55, 0.6)),
)
"""The styles, indexed by ``domain``, and the datasets that use them (the real datasets' look):

=========  ==========================================  =================================================
style      look                                        synthetic datasets
=========  ==========================================  =================================================
street     daylight facades and road, neutral colour   CrowdHuman; CUHK03 (crops at half the pixel size
                                                       of MSMT17's, CUHK03's low resolution); half of the
                                                       PRW frames; CUHK-SYSU, PoseTrack21 and custom
                                                       (with night)
night      dark, noisy, street lamps, blue cast        ECP night (and half of CUHK-SYSU, PoseTrack21,
                                                       custom)
warm       street with a warm (orange) tint            MSMT17
cool       street with a cool (blue) tint              LUPerson; ECP day (ECP's camera has a blue cast)
dusk       street dimmed to a red-violet dusk light    the other half of the PRW frames: a style no
                                                       pre-training dataset has (the unseen domain)
=========  ==========================================  =================================================

Mean colour separates them: night is dark with blue > red, dusk is dim with red > blue, warm has
red >> blue, cool blue > red, street is bright and near neutral."""

STREET, NIGHT, WARM, COOL, DUSK = range(len(STYLES))
DOMAINS = len(STYLES)

APPEARANCE_BLOCKS = (
    ("crowdhuman", 900),
    ("ecp", 900),
    ("msmt17", 400),
    ("cuhk03", 300),
    ("luperson", 600),
    ("prw", 500),
    ("cuhk_sysu", 400),
    ("posetrack21", 300),
    ("custom", 320),
)
"""How many appearances each synthetic dataset owns, in order: blocks of consecutive appearance indices
that never overlap, so no clothing is shared between datasets (one identity = one appearance, and the
pre-training sets never show a target identity). The five pre-training sets come first, then the four
target sets. The sizes hold the labeled identities of the benchmark data set with room to spare (MSMT17 44,
CUHK03 40, LUPerson 160 crops, PRW 120 plus its unknown persons) and leave the detection sets hundreds of
appearances to draw their unlabeled persons from; they add up to :data:`NUM_DISTINCT_APPEARANCES`."""

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

PERSON_ASPECT = 0.4
"""Width / height of a drawn person, close to the 0.41 of the pedestrian datasets' average box."""

CROP_MARGIN = (0.04, 0.12)
"""Range of the background margin on each side of the person in a re-ID crop, as a fraction of the
crop's width (left, right) or height (top, bottom), drawn per side: a detector's box is a bit larger
than the person and not exactly centred on it."""

CROWD_PERSON_HEIGHT = (0.07, 0.11)
"""Height range of the persons of a far-away crowd, as a fraction of the image height: too small to
annotate one by one, which is why datasets mark the crowd as an ignore region."""


class AppearancePool:
    """The appearances one synthetic dataset may draw: its block of :data:`APPEARANCE_BLOCKS`.

    The dataset's labeled identities take the first ``num_identities`` appearances of the block in order
    (:meth:`identity`); persons without an identity (every person of a detection dataset, the unknown
    persons of a search dataset) are drawn at random from the rest of it (:meth:`stranger`), so they
    never look like a labeled identity.
    """

    def __init__(self, dataset: str, num_identities: int = 0):
        starts, start = {}, 0
        for name, size in APPEARANCE_BLOCKS:
            starts[name] = (start, start + size)
            start += size
        if dataset not in starts:
            raise ValueError(f"no appearance block for dataset {dataset!r}; expected one of {list(starts)}")
        self.dataset = dataset
        self.start, self.stop = starts[dataset]
        if not 0 <= num_identities <= self.stop - self.start:
            raise ValueError(
                f"{dataset}: {num_identities} identities do not fit its block of {self.stop - self.start} "
                f"appearances (APPEARANCE_BLOCKS); use fewer identities"
            )
        self.num_identities = num_identities

    def identity(self, index: int) -> int:
        """The appearance of the dataset's identity ``index`` (0-based, ``< num_identities``)."""
        if not 0 <= index < self.num_identities:
            raise ValueError(f"{self.dataset}: identity index {index} outside 0..{self.num_identities - 1}")
        return self.start + index

    def stranger(self, rng: np.random.Generator) -> int:
        """A random appearance of the block that no labeled identity of the dataset wears."""
        if self.start + self.num_identities >= self.stop:
            raise ValueError(f"{self.dataset}: its appearance block has no room left for unlabeled persons")
        return int(rng.integers(self.start + self.num_identities, self.stop))


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


def _style(domain: int) -> Style:
    if not 0 <= domain < DOMAINS:
        raise ValueError(f"domain must be in 0..{DOMAINS - 1} ({[s.name for s in STYLES]}), got {domain}")
    return STYLES[domain]


def _scaled(colour: tuple[int, int, int], gain) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * g)))) for c, g in zip(colour, gain))


def draw_person(
    image: Image.Image, x0: int, y0: int, w: int, h: int, identity: int, domain: int, rng: np.random.Generator
) -> None:
    """Draw ``identity`` in the light of style ``domain`` so that its pixels span exactly columns
    x0..x0+w-1 and rows y0..y0+h-1 (clipped by the image borders).

    The arms touch the left and right edges, the hair the top edge and the shoes the bottom edge, so
    the box ``[x0, y0, x0 + w, y0 + h]`` is tight around the drawn pixels.
    """
    appearance = person_appearance(identity)
    # A little brightness jitter per person: no two views of an identity have exactly the same colours.
    gain = np.asarray(_style(domain).gain) * rng.uniform(0.9, 1.1)
    shirt = _scaled(appearance["shirt"], gain)
    trousers = _scaled(appearance["trousers"], gain)
    pattern_colour = _scaled(appearance["pattern_colour"], gain)
    hair = _scaled(appearance["hair"], gain)
    skin = _scaled(SKIN_COLOUR, gain)
    shoes = _scaled(SHOE_COLOUR, gain)
    draw = ImageDraw.Draw(image)

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
    if tw < 4 or th < 4:  # a far-away person: too small to show four stripes
        return
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


def render_background(width: int, height: int, domain: int, rng: np.random.Generator) -> Image.Image:
    """A background of style ``domain`` (:data:`STYLES`) with no person-like shapes in it."""
    style = _style(domain)
    if style.layout == "street":
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
        pixels = np.full((height, width, 3), rng.uniform(20, 40), np.float32)
        pixels += rng.normal(0, 14, size=pixels.shape).astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):  # street lamps: soft bright blobs
            cy, cx = rng.uniform(0, height * 0.4), rng.uniform(0, width)
            radius = rng.uniform(0.03, 0.08) * min(width, height) + 1
            yy, xx = np.ogrid[:height, :width]
            pixels += (90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)))[..., None]
    pixels *= np.asarray(style.gain, np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def render_person(
    identity: int, height: int, width: int, rng: np.random.Generator, *, domain: int = STREET
) -> Image.Image:
    """An RGB re-ID crop of ``identity``, ``width`` x ``height``, cut from a scene of style ``domain``.

    The person stands inside the crop with a margin of the scene's background on every side (each side
    drawn from :data:`CROP_MARGIN`), as in a detector's crop of a real frame: no uniform fill, no frame.
    The scene is three crops wide and two high, so its background texture has the scale of a scene.
    """
    if height < 12 or width < 6:
        raise ValueError(f"a person crop needs height >= 12 and width >= 6 pixels, got {height}x{width}")
    left, right = (int(round(v * width)) for v in rng.uniform(*CROP_MARGIN, size=2))
    top, bottom = (int(round(v * height)) for v in rng.uniform(*CROP_MARGIN, size=2))
    scene_width, scene_height = 3 * width, 2 * height
    scene = render_background(scene_width, scene_height, domain, rng)
    x = int(rng.integers(0, scene_width - width + 1))
    y = int(rng.integers(0, scene_height - height + 1))
    draw_person(scene, x + left, y + top, width - left - right, height - top - bottom, identity, domain, rng)
    return scene.crop((x, y, x + width, y + height))


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


PERSON_ASPECT_JITTER = (0.85, 1.15)
"""Range of a person's width / height around :data:`PERSON_ASPECT` (thinner and broader persons)."""


def _place(
    width: int, height: int, w: int, h: int, occupied: np.ndarray, rng: np.random.Generator
) -> np.ndarray | None:
    """A random box of size w x h inside the image that touches none of ``occupied``, or None."""
    if w > width or h > height:
        return None
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
    return None if np.any(_iou(box, occupied) > 0) else box


def render_scene(
    identities: list[int],
    *,
    width: int,
    height: int,
    domain: int,
    rng: np.random.Generator,
    min_person_height: int = 40,
    max_person_height: int | None = None,
    crowds: list[list[int]] = (),
    max_tries: int = 200,
) -> tuple[Image.Image, np.ndarray]:
    """A scene image with one drawn person per entry of ``identities``, at several scales.

    Args:
        identities: appearances to draw (see :func:`person_appearance`); repeats allowed.
        width, height: image size in pixels.
        domain: visual style, an index of :data:`STYLES`.
        rng: the only source of randomness (positions, scales, background).
        min_person_height: smallest person in pixels; default 40 keeps the head/torso/legs and the shirt
            pattern visible (about 10 pixels of torso for the 4 stripes).
        max_person_height: largest person; default ``0.9 * height`` (a person close to the camera).
        crowds: far-away crowds, each a list of appearances drawn as small persons
            (:data:`CROWD_PERSON_HEIGHT`) side by side and partly hiding each other: what the datasets mark
            as an ignore region (a CrowdHuman "mask", an ECP "person-group-far-away"). A crowd of one is a
            single unclear far-away person.
        max_tries: placement attempts per person or crowd before giving up.

    Returns:
        the image and ``boxes`` (len(identities) + len(crowds), 4) float32 xyxy in pixels: one box per
        person, tight around it, in the order of ``identities``, then one box around each crowd. No two
        boxes overlap at all, so every person is fully visible and the ground truth needs no occlusion
        handling.
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
    boxes = np.zeros((0, 4), np.float32)
    for identity in identities:
        for _ in range(max_tries):
            h = int(rng.integers(min_person_height, max_person_height + 1))
            w = max(4, int(round(h * PERSON_ASPECT * rng.uniform(*PERSON_ASPECT_JITTER))))
            box = _place(width, height, w, h, boxes, rng)
            if box is not None:
                break
        else:
            raise ValueError(
                f"could not place person {len(boxes) + 1} of {len(identities)} without overlap in a "
                f"{width}x{height} image after {max_tries} tries: use fewer or smaller persons"
            )
        draw_person(image, int(box[0]), int(box[1]), w, h, identity, domain, rng)
        boxes = np.concatenate([boxes, box[None]])
    for crowd in crowds:
        box = _draw_crowd(image, crowd, boxes, domain, rng, max_tries)
        boxes = np.concatenate([boxes, box[None]])
    return image, boxes


def _draw_crowd(
    image: Image.Image, crowd: list[int], occupied: np.ndarray, domain: int, rng: np.random.Generator, max_tries: int
) -> np.ndarray:
    """Draw ``crowd`` as small persons in a free spot of ``image``; return the box around all of them."""
    if not crowd:
        raise ValueError("a crowd needs at least one person")
    h = max(8, int(round(image.height * rng.uniform(*CROWD_PERSON_HEIGHT))))
    w = max(4, int(round(h * PERSON_ASPECT)))
    step = max(1, int(round(0.7 * w)))  # neighbours hide 30% of each other: a crowd, not a row of persons
    # Not all at the same distance: the crowd's persons stand up to a quarter height apart.
    rise = h // 4 if len(crowd) > 1 else 0
    crowd_w, crowd_h = step * (len(crowd) - 1) + w, h + rise
    for _ in range(max_tries):
        box = _place(image.width, image.height, crowd_w, crowd_h, occupied, rng)
        if box is not None:
            break
    else:
        raise ValueError(
            f"could not place a crowd of {len(crowd)} ({crowd_w}x{crowd_h} px) in a {image.width}x{image.height} "
            f"image after {max_tries} tries: use fewer or smaller persons"
        )
    x0, y0 = int(box[0]), int(box[1])
    offsets = rng.integers(0, rise + 1, size=len(crowd))
    offsets[0] = 0  # the box is tight: someone's head touches its top
    offsets[-1] = rise  # and someone's feet its bottom
    for k, identity in enumerate(crowd):
        draw_person(image, x0 + k * step, y0 + int(offsets[k]), w, h, identity, domain, rng)
    return box
