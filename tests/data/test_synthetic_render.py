"""The synthetic renderer: identities visible, crops cut from scenes, boxes tight, styles different, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from hf_personsearch.data.synthetic import generate
from hf_personsearch.data.synthetic.render import (
    APPEARANCE_BLOCKS,
    CROWD_PERSON_HEIGHT,
    DOMAINS,
    NUM_DISTINCT_APPEARANCES,
    STYLES,
    AppearancePool,
    person_appearance,
    render_background,
    render_person,
    render_scene,
)


def test_appearances_are_unique_and_consecutive_ids_differ_everywhere():
    seen = {tuple(sorted(person_appearance(i).items())) for i in range(NUM_DISTINCT_APPEARANCES)}
    assert len(seen) == NUM_DISTINCT_APPEARANCES == 4620
    for i in range(50):
        a, b = person_appearance(i), person_appearance(i + 1)
        assert all(a[key] != b[key] for key in a), (i, a, b)
    assert person_appearance(7) == person_appearance(7 + 4620)
    with pytest.raises(ValueError, match="identity must be >= 0"):
        person_appearance(-1)


def _colour_descriptor(crop: np.ndarray) -> np.ndarray:
    """Mean colour of the crop's centre at torso height and at leg height (inside any margin)."""
    h, w, _ = crop.shape
    centre = slice(int(0.35 * w), int(0.65 * w))
    return np.concatenate(
        [
            crop[int(0.3 * h) : int(0.5 * h), centre].mean((0, 1)),
            crop[int(0.65 * h) : int(0.85 * h), centre].mean((0, 1)),
        ]
    )


@pytest.mark.parametrize("domain", range(DOMAINS))
def test_render_person_identity_is_recognisable_in_every_style(domain):
    rng = np.random.default_rng(0)
    # identity 4 wears a plain shirt: the torso centre has the shirt colour (jitter 0.9..1.1, style gain);
    # row 40 / column 20 lies in the torso whatever the margins (CROP_MARGIN) are.
    assert person_appearance(4)["pattern"] == "plain"
    plain = np.asarray(render_person(4, 100, 40, rng, domain=domain)).astype(int)
    assert plain.shape == (100, 40, 3)
    shirt = np.array(person_appearance(4)["shirt"]) * np.array(STYLES[domain].gain)
    assert np.all(np.abs(plain[40, 20] - np.minimum(shirt, 255)) <= 0.1 * shirt + 1), (plain[40, 20], shirt)
    # Nearest-mean classification of fresh crops separates 20 identities perfectly.
    means = np.stack(
        [_colour_descriptor(np.asarray(render_person(i, 64, 26, rng, domain=domain), np.float32)) for i in range(20)]
    )
    for i in range(20):
        fresh = _colour_descriptor(np.asarray(render_person(i, 64, 26, rng, domain=domain), np.float32))
        assert int(np.argmin(((means - fresh) ** 2).sum(1))) == i


def test_render_person_is_cut_from_a_scene_with_a_background_margin():
    rng = np.random.default_rng(1)
    borders = []
    for identity in range(12):
        crop = np.asarray(render_person(identity, 80, 32, rng), np.float32)
        border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
        # Scene background (facades, brick courses, noise), not a uniform fill or a frame.
        assert border.std(0).min() > 5, border.std(0)
        borders.append(border.mean(0))
    # Crops come from different scenes: their borders differ from crop to crop.
    assert np.std(borders, axis=0).min() > 5, np.std(borders, axis=0)
    with pytest.raises(ValueError, match="height >= 12"):
        render_person(0, 10, 6, rng)


def test_render_person_deterministic():
    a = np.asarray(render_person(5, 64, 26, np.random.default_rng(1)))
    b = np.asarray(render_person(5, 64, 26, np.random.default_rng(1)))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("domain", range(DOMAINS))
def test_scene_boxes_are_tight_inside_and_disjoint(domain):
    identities = [0, 1, 2, 3, 4]
    image, boxes = render_scene(identities, width=320, height=240, domain=domain, rng=np.random.default_rng(4))
    background = render_background(320, 240, domain, np.random.default_rng(4))
    assert boxes.dtype == np.float32 and boxes.shape == (5, 4)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 320) and np.all(boxes[:, 3] <= 240)
    heights = boxes[:, 3] - boxes[:, 1]
    assert heights.min() >= 40 and heights.max() <= 216
    changed = np.any(np.asarray(image) != np.asarray(background), axis=-1)
    inside_any = np.zeros_like(changed)
    for x1, y1, x2, y2 in boxes.astype(int):
        rows, cols = np.nonzero(changed[y1:y2, x1:x2])
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, y2 - y1 - 1, 0, x2 - x1 - 1)
        inside_any[y1:y2, x1:x2] = True
    assert not np.any(changed & ~inside_any), "pixels drawn outside every box"
    for i in range(5):
        for j in range(i + 1, 5):
            a, b = boxes[i], boxes[j]
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)


def test_scene_is_deterministic_and_styles_differ_as_documented():
    first = render_scene([1, 2], width=160, height=120, domain=0, rng=np.random.default_rng(9))
    second = render_scene([1, 2], width=160, height=120, domain=0, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(second[0]))
    np.testing.assert_array_equal(first[1], second[1])
    mean = {
        style.name: np.asarray(render_background(160, 120, domain, np.random.default_rng(0)), np.float32).mean((0, 1))
        for domain, style in enumerate(STYLES)
    }
    brightness = {name: m.mean() for name, m in mean.items()}
    red_over_blue = {name: m[0] / m[2] for name, m in mean.items()}
    assert brightness["street"] > 150 and 0.9 < red_over_blue["street"] < 1.3  # bright, near neutral
    assert brightness["night"] < 50 and red_over_blue["night"] < 0.8  # dark, blue cast
    assert red_over_blue["warm"] > 1.5 and red_over_blue["cool"] < 0.85  # warm / cool tints
    assert brightness["dusk"] < 120 < brightness["warm"] and red_over_blue["dusk"] > 1.3  # dim, red-violet
    with pytest.raises(ValueError, match="domain must be in"):
        render_background(10, 10, DOMAINS, np.random.default_rng(0))


def test_crowds_are_small_persons_inside_a_tight_box_apart_from_the_persons():
    rng = np.random.default_rng(5)
    image, boxes = render_scene([0, 1, 2], width=320, height=240, domain=0, rng=rng, crowds=[[10, 11, 12, 13], [14]])
    background = render_background(320, 240, 0, np.random.default_rng(5))
    assert boxes.shape == (5, 4)
    changed = np.any(np.asarray(image) != np.asarray(background), axis=-1)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        rows, cols = np.nonzero(changed[y1:y2, x1:x2])
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, y2 - y1 - 1, 0, x2 - x1 - 1), k
        for other in boxes[k + 1 :]:
            assert min(x2, other[2]) <= max(x1, other[0]) or min(y2, other[3]) <= max(y1, other[1])
    crowd, single = boxes[3], boxes[4]
    tallest = CROWD_PERSON_HEIGHT[1] * 240 + 1
    assert single[3] - single[1] <= tallest and crowd[3] - crowd[1] <= 1.25 * tallest
    # four persons side by side, each hiding 30% of its neighbour: wider than two persons
    assert crowd[2] - crowd[0] > 2 * (single[2] - single[0])


def test_appearance_blocks_are_disjoint_and_fill_the_appearance_space():
    assert sum(size for _, size in APPEARANCE_BLOCKS) == NUM_DISTINCT_APPEARANCES
    ranges = []
    for name, size in APPEARANCE_BLOCKS:
        pool = AppearancePool(name, num_identities=10)
        ranges.append((pool.start, pool.stop))
        assert pool.stop - pool.start == size
        assert [pool.identity(k) for k in range(3)] == [pool.start, pool.start + 1, pool.start + 2]
        rng = np.random.default_rng(0)
        strangers = {pool.stranger(rng) for _ in range(200)}
        assert min(strangers) >= pool.start + 10 and max(strangers) < pool.stop  # never a labeled identity
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])) and ranges[0][0] == 0
    with pytest.raises(ValueError, match="identity index 10 outside 0..9"):
        AppearancePool("prw", num_identities=10).identity(10)
    with pytest.raises(ValueError, match="do not fit its block of 500"):
        AppearancePool("prw", num_identities=501)
    with pytest.raises(ValueError, match="no room left"):
        AppearancePool("prw", num_identities=500).stranger(np.random.default_rng(0))
    with pytest.raises(ValueError, match="no appearance block for dataset 'coco'"):
        AppearancePool("coco")


def test_scene_that_cannot_fit_raises_clearly():
    with pytest.raises(ValueError, match="could not place person"):
        render_scene(
            list(range(30)), width=64, height=64, domain=0, rng=np.random.default_rng(0), min_person_height=50
        )


def test_generate_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'coco'; expected one of .*'crowdhuman'"):
        generate("coco", tmp_path)
