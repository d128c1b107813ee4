"""Scores of a water mask against a label: IoU, F1, precision, recall, accuracy (pure numpy).

Everything is computed from the four confusion counts with water as the positive class, so
per-image scores and an overall score (counts summed over images, i.e. every pixel counts
equally) come from the same code.

Empty classes: when a score's denominator is zero, nothing could be got wrong on that side, so
the score is 1.0 if the remaining counts it depends on are zero too (no water in the label and
none predicted: a perfect answer) and 0.0 otherwise. This keeps every score finite, which
matters for averages and JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the metric names, in the order reports print them.
METRIC_NAMES = ("water_iou", "mean_iou", "f1", "precision", "recall", "accuracy")


@dataclass(frozen=True)
class Confusion:
    """Pixel counts with water as the positive class."""

    tp: int  # water predicted water
    fp: int  # land predicted water
    fn: int  # water predicted land
    tn: int  # land predicted land

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def scores(self) -> dict[str, float]:
        """Every metric of :data:`METRIC_NAMES` from these counts."""
        water_iou = _ratio(self.tp, self.tp + self.fp + self.fn)
        land_iou = _ratio(self.tn, self.tn + self.fp + self.fn)
        precision = _ratio(self.tp, self.tp + self.fp, empty=1.0 if self.fn == 0 else 0.0)
        recall = _ratio(self.tp, self.tp + self.fn, empty=1.0 if self.fp == 0 else 0.0)
        f1 = _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)
        return {
            "water_iou": water_iou,
            "mean_iou": (water_iou + land_iou) / 2.0,
            "f1": f1,
            "precision": precision,
            "recall": recall,
            "accuracy": _ratio(self.tp + self.tn, self.total),
        }

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def confusion(pred_water: np.ndarray, true_water: np.ndarray) -> Confusion:
    """Confusion counts of a predicted water mask against the true one (same shape, bool).

    Raises:
        ValueError: the shapes differ.
    """
    pred = np.asarray(pred_water, dtype=bool)
    true = np.asarray(true_water, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shape {pred.shape} differs from label shape {true.shape}")
    tp = int(np.count_nonzero(pred & true))
    fp = int(np.count_nonzero(pred & ~true))
    fn = int(np.count_nonzero(~pred & true))
    return Confusion(tp=tp, fp=fp, fn=fn, tn=int(pred.size) - tp - fp - fn)


def water_from_land(land: np.ndarray) -> np.ndarray:
    """True where a label's land fraction is below 0.5 (labels are resized by area averaging)."""
    return np.asarray(land) < 0.5


def water_from_prob(land_prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The plain-threshold water mask of a probability-of-land map: ``land_prob <= threshold``.

    The one convention of predictions everywhere (``postprocess`` method ``global``, the
    evaluation's 0.5 baseline, the validation water IoU during training): a pixel exactly at
    the threshold is water.
    """
    return np.asarray(land_prob) <= threshold


def scores(pred_water: np.ndarray, true_water: np.ndarray) -> dict[str, float]:
    """All metrics of a predicted water mask against the true one."""
    return confusion(pred_water, true_water).scores()


def _ratio(numerator: int, denominator: int, empty: float | None = None) -> float:
    if denominator == 0:
        return 1.0 if empty is None else empty
    return float(numerator) / float(denominator)
