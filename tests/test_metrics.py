"""Metrics from confusion counts, including images without water or without land."""

from __future__ import annotations

import numpy as np
import pytest

from segmenter import metrics


def test_known_counts():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    true = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], bool)
    counts = metrics.confusion(pred, true)
    assert counts == metrics.Confusion(tp=2, fp=1, fn=1, tn=4)
    s = counts.scores()
    assert s["water_iou"] == pytest.approx(2 / 4)
    assert s["mean_iou"] == pytest.approx((2 / 4 + 4 / 6) / 2)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(6 / 8)
    assert set(s) == set(metrics.METRIC_NAMES)


def test_no_water_anywhere_is_perfect():
    empty = np.zeros((5, 5), bool)
    s = metrics.scores(empty, empty)
    assert s == {name: 1.0 for name in metrics.METRIC_NAMES}


def test_missed_water_and_false_water():
    none = np.zeros((4, 4), bool)
    water = np.ones((4, 4), bool)
    missed = metrics.scores(none, water)  # no water predicted, all water in truth
    assert missed["water_iou"] == 0.0 and missed["recall"] == 0.0 and missed["precision"] == 0.0
    assert missed["accuracy"] == 0.0 and missed["mean_iou"] == 0.0
    invented = metrics.scores(water, none)
    assert invented["water_iou"] == 0.0 and invented["precision"] == 0.0
    assert invented["recall"] == 0.0
    all_water = metrics.scores(water, water)
    assert all_water["water_iou"] == 1.0 and all_water["mean_iou"] == 1.0


def test_pooled_counts_and_shapes():
    a = metrics.Confusion(1, 2, 3, 4)
    assert (a + a).total == 20
    assert metrics.water_from_land(np.array([0.0, 0.49, 0.5, 1.0])).tolist() == [
        True, True, False, False]
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion(np.zeros((2, 2)), np.zeros((2, 3)))
