"""sklearn-style average precision and the IoU rules, against literal hand computations."""

import numpy as np
import pytest

from hf_personsearch.evaluation.average_precision import (
    average_precision,
    box_iou,
    paired_box_iou,
    search_iou_threshold,
)


def test_average_precision_hand_computed():
    # ranks: P N P N -> precision 1/1 at recall 1/2, 2/3 at recall 2/2
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)


def test_average_precision_groups_tied_scores_into_one_threshold():
    # N(0.9) then a tie of P, P at 0.5: one threshold with precision 2/3 at recall 1 -> AP 2/3
    # (ranking the tie item by item would give 0.5 * 1/2 + 0.5 * 2/3 = 0.583)
    assert average_precision([0, 1, 1], [0.9, 0.5, 0.5]) == pytest.approx(2 / 3, abs=1e-12)
    # a positive tied with a negative: precision 1/2 at that threshold
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5, abs=1e-12)


def test_average_precision_does_not_interpolate():
    # P N N P: 11-point/interpolated AP would lift the second precision; step-wise gives 1/2 + 1/2 * 2/4
    assert average_precision([1, 0, 0, 1], [4, 3, 2, 1]) == pytest.approx(0.75, abs=1e-12)


def test_average_precision_without_positive_is_zero():
    assert average_precision([0, 0], [0.3, 0.1]) == 0.0


def test_average_precision_matches_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.integers(0, 2, 50)
        y_true[0] = 1
        y_score = rng.integers(0, 10, 50) / 10.0  # many ties
        assert average_precision(y_true, y_score) == pytest.approx(
            metrics.average_precision_score(y_true, y_score), abs=1e-12
        )


def test_box_iou_hand_computed_no_plus_one():
    # [0,0,10,10] vs [5,0,15,10]: intersection 50, union 150
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(1 / 3)
    assert paired_box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0] == pytest.approx(1 / 3)
    assert box_iou([[0, 0, 10, 10]], [[20, 20, 30, 30]])[0, 0] == 0.0


def test_search_iou_threshold_small_box_rule():
    # 10 x 20 box: 200 / (20 * 30) = 1/3; a large box is capped at 0.5
    np.testing.assert_allclose(search_iou_threshold(np.array([[0, 0, 10, 20], [0, 0, 100, 200]])), [1 / 3, 0.5])
