"""Windows through a model and back into one map: the stitch, the scale merge, the resizes.

One implementation for photos (:mod:`segmenter.predict.photo`) and raster tiles
(:mod:`segmenter.predict.mosaic`):

* :func:`stitch` runs the windows of one width through its compiled model in batches and
  accumulates the centre-weighted predictions (:func:`segmenter.predict.windows.window_weight`);
  :func:`weighted_mean` turns the sums into a map (NaN where no window reached);
* :class:`ScaleMerge` averages the widths' maps, each with its merge weight
  (:func:`merge_weights`);
* the resizes are :func:`segmenter.data.images.resize_map` and
  :func:`segmenter.data.images.resize_box` (the data loader's own).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from segmenter.errors import ConfigError, SegmenterError
from segmenter.predict.windows import batched, window_weight

log = logging.getLogger(__name__)

#: value of a pixel that no window of any scale covered (possible only with random sampling).
UNCOVERED_VALUE = 0.5

#: a window position: (top, left) in the padded image.
Position = tuple[int, int]


def stitch(infer: Callable[[np.ndarray], Any], padded: np.ndarray, positions: list[Position],
           window: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Predict the ``window`` x ``window`` windows of ``padded`` at ``positions`` and
    accumulate them: the weighted sum of predictions and the sum of weights per pixel, float32
    (H, W) each, over ``padded``'s (H, W).

    ``infer``: a compiled inference function, numpy (B, h, w, c) -> numpy (B, h, w)
    (:func:`segmenter.model.compiled.compiled_infer`); ``batch_size`` windows per call. Two
    batch buffers: while the model predicts one batch (the backends release the GIL), this thread
    accumulates the previous batch and cuts the next one, so the model never waits on numpy.

    Raises:
        SegmenterError: the model predicted NaN or an infinite value.
    """
    total = np.zeros(padded.shape[:2], np.float32)
    weight_sum = np.zeros(padded.shape[:2], np.float32)
    if not positions:
        return total, weight_sum
    weight = window_weight(window)
    size = min(batch_size, len(positions))
    buffers = [np.empty((size, window, window, padded.shape[2]), np.float32) for _ in range(2)]

    def accumulate(predicted: np.ndarray, chunk: list[Position]) -> None:
        if not np.isfinite(predicted).all():
            raise SegmenterError(
                f"the model of width {window} predicted non-finite values (NaN or inf); "
                f"its weights are probably corrupt (retrain that width)"
            )
        predicted *= weight
        for i, (top, left) in enumerate(chunk):
            total[top : top + window, left : left + window] += predicted[i]
            weight_sum[top : top + window, left : left + window] += weight

    with ThreadPoolExecutor(max_workers=1) as runner:
        pending = None
        for number, chunk in enumerate(batched(positions, batch_size)):
            batch = buffers[number % 2][: len(chunk)]
            for i, (top, left) in enumerate(chunk):
                batch[i] = padded[top : top + window, left : left + window]
            running = runner.submit(infer, batch)
            if pending is not None:
                accumulate(pending[0].result(), pending[1])
            pending = (running, chunk)
        if pending is not None:
            accumulate(pending[0].result(), pending[1])
    return total, weight_sum


def weighted_mean(total: np.ndarray, weight_sum: np.ndarray) -> np.ndarray:
    """``total / weight_sum`` as float32, NaN where the weight is zero (no window reached)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(weight_sum > 0, total / weight_sum, np.float32(np.nan))
    return result.astype(np.float32, copy=False)


class ScaleMerge:
    """The weighted mean of the widths' maps of one image (or tile), pixel by pixel.

    Each width's map may hold NaN where none of its windows reached; such pixels count only
    in the widths that reached them.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.merged = np.zeros(shape, np.float32)
        self.weight = np.zeros(shape, np.float32)

    def add(self, scale_map: np.ndarray, weight: float) -> None:
        covered = ~np.isnan(scale_map)
        self.merged += np.where(covered, scale_map * weight, 0.0)
        self.weight += covered * np.float32(weight)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The merged map (NaN where no width reached) and that uncovered mask."""
        uncovered = self.weight <= 0
        with np.errstate(invalid="ignore", divide="ignore"):
            merged = np.where(uncovered, np.float32(np.nan), self.merged / self.weight)
        return merged, uncovered


def merge_weights(
    models: Mapping[int, Any], merge: str, weights: Mapping[int, float] | None
) -> dict[int, float]:
    """Per-width weight of the scale merge: 1 each for ``mean``, the validation score else."""
    if merge == "mean":
        return {w: 1.0 for w in models}
    if weights is None:
        raise ConfigError("predict.merge: 'weighted' needs each width's validation score")
    out: dict[int, float] = {}
    for patch_width in models:
        score = weights.get(patch_width)
        if score is None or not math.isfinite(score) or score <= 0:
            log.warning(
                "width %d has no usable validation score (%r); it gets the mean of the others",
                patch_width, score,
            )
            continue
        out[patch_width] = float(score)
    fallback = float(np.mean(list(out.values()))) if out else 1.0
    return {w: out.get(w, fallback) for w in models}


def minmax(values: np.ndarray) -> np.ndarray:
    """Stretch finite values to [0, 1] (the notebook's rescale); a flat map becomes 0.5."""
    finite = np.isfinite(values)
    if not finite.any():
        return values
    low, high = float(values[finite].min()), float(values[finite].max())
    if high - low < 1e-12:
        return np.where(finite, np.float32(0.5), values)
    return ((values - low) / (high - low)).astype(np.float32)
