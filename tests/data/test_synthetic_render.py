"""The synthetic renderer: identities visible, boxes tight, domains different, all deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from hf_personsearch.data.synthetic import generate
from hf_personsearch.data.synthetic.render import (
    DOMAINS,
    NUM_DISTINCT_APPEARANCES,
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


def test_render_person_fills_crop_and_identity_is_recognisable():
    rng = np.random.default_rng(0)
    crop = np.asarray(render_person(3, 100, 40, rng)).astype(int)
    assert crop.shape == (100, 40, 3)
    drawn = np.abs(crop - 128).sum(-1) > 0
    rows, cols = np.nonzero(drawn)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 99, 0, 39)
    # identity 4 wears a plain shirt: the torso centre has the shirt colour (lighting jitter 0.9..1.1)
    assert person_appearance(4)["pattern"] == "plain"
    plain = np.asarray(render_person(4, 100, 40, rng)).astype(int)
    shirt = np.array(person_appearance(4)["shirt"])
    assert np.all(np.abs(plain[36, 20] - shirt) <= 0.1 * shirt + 1), (plain[36, 20], shirt)
    # Nearest-mean classification of fresh crops separates 20 identities perfectly.
    means = np.stack([np.asarray(render_person(i, 64, 26, rng), np.float32).reshape(-1) for i in range(20)])
    for i in range(20):
        fresh = np.asarray(render_person(i, 64, 26, rng), np.float32).reshape(-1)
        assert int(np.argmin(((means - fresh) ** 2).sum(1))) == i


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


def test_scene_is_deterministic_and_domains_differ():
    first = render_scene([1, 2], width=160, height=120, domain=0, rng=np.random.default_rng(9))
    second = render_scene([1, 2], width=160, height=120, domain=0, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(second[0]))
    np.testing.assert_array_equal(first[1], second[1])
    street = np.asarray(render_background(160, 120, 0, np.random.default_rng(0)), np.float32)
    night = np.asarray(render_background(160, 120, 1, np.random.default_rng(0)), np.float32)
    assert street.mean() > 100 > 50 > night.mean()
    with pytest.raises(ValueError, match="domain must be in"):
        render_background(10, 10, DOMAINS, np.random.default_rng(0))


def test_scene_that_cannot_fit_raises_clearly():
    with pytest.raises(ValueError, match="could not place person"):
        render_scene(
            list(range(30)), width=64, height=64, domain=0, rng=np.random.default_rng(0), min_person_height=50
        )


def test_generate_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'coco'; expected one of .*'crowdhuman'"):
        generate("coco", tmp_path)
