"""Where prediction windows go and how much each of their pixels counts.

One geometry for photos and raster tiles: a regular grid that covers every pixel (or random
positions), on the image padded by :func:`padding`, and the centre-heavy weight of a window.

Window placement lives apart from the models and from the stitching (as torchgeo keeps its
samplers apart from its datasets), so it can be tested on plain integers. Positions are the
top-left corners of ``window x window`` squares in the coordinates of an image that has been
padded by :func:`pad_width` on every side.

Why a grid with overlap: every window's border pixels see little context and are predicted
worst, so neighbouring windows overlap (stride smaller than the window, 50 % by default) and the
stitcher weights each window towards its centre. Padding by half a window puts the photo's
outermost pixels at the centre of the first window instead of at its edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

#: smoothstep edges of the centre weight (SPEC.md): full weight inside r = 0.3, none beyond 1.3.
WEIGHT_EDGE0 = 1.3
WEIGHT_EDGE1 = 0.3
#: every pixel of a window keeps at least this weight, so corners of the padded image and pixels
#: seen only by window borders still get a value instead of 0 / 0.
MIN_WEIGHT = 1e-3


def pad_width(window: int) -> int:
    """Reflection padding on each side for windows of ``window`` pixels: half a window.

    Half a window is enough for a pixel on the photo's edge to sit at the centre of some window,
    and never more than one window per side (the notebook padded by a whole image per side).
    """
    return window // 2


def padding(window: int, height: int, width: int) -> tuple[int, int]:
    """Reflection padding (rows, columns) per side of a ``height x width`` image for windows of
    ``window`` pixels: :func:`pad_width`, more for an image smaller than a window (still at most
    one window per side) so that one window fits."""
    pad = pad_width(window)
    return (max(pad, int(math.ceil((window - height) / 2))),
            max(pad, int(math.ceil((window - width) / 2))))


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` as ``np.pad(mode="symmetric")`` maps padded ones."""
    period = 2 * length
    wrapped = np.mod(index, period)
    return np.where(wrapped >= length, period - 1 - wrapped, wrapped)


def grid_stride(window: int, overlap: float) -> int:
    """The step between neighbouring grid windows for a fractional ``overlap`` in ``[0, 1)``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, int(round(window * (1.0 - overlap))))


def grid_starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis of ``length`` pixels: evenly strided, the last one flush.

    The last window is moved back to end exactly at ``length`` so the far edge is covered without
    reading past the padded image. ``length`` must be at least ``window``.
    """
    if length < window:
        raise ValueError(f"axis of {length} pixels is shorter than the window ({window})")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def grid_windows(height: int, width: int, window: int, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners of a regular grid of windows covering a ``height x width`` padded image.

    Every pixel of the padded image lies in at least one window.
    """
    stride = grid_stride(window, overlap)
    rows = grid_starts(height, window, stride)
    cols = grid_starts(width, window, stride)
    return [(top, left) for top in rows for left in cols]


def spread(positions: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """At most ``count`` of ``positions``, evenly spread through the list (all if fewer)."""
    if len(positions) <= count:
        return list(positions)
    step = len(positions) / count
    return [positions[int(i * step)] for i in range(count)]


def adapt_windows(height: int, width: int, window: int, count: int) -> list[tuple[int, int]]:
    """Where ``predict.adapt_norm`` measures the statistics of a ``height x width`` photo: tiles
    that cover the photo itself once (the last flush with its far edge), not its padding, nor
    four times over as the prediction grid at overlap 0.5 does: the same statistics from a
    third to a quarter of the pixels. At most ``count`` of them, spread evenly. Top-left corners
    in the coordinates of the image padded by :func:`padding`; an axis shorter than the window
    gets one window centred on it. The photo and raster paths both take them from here, so a
    raster gets the statistics its pixels would get as a photo."""
    pad_y, pad_x = padding(window, height, width)

    def starts(length: int, pad: int) -> list[int]:
        if length < window:
            return [pad + (length - window) // 2]
        return [pad + start for start in grid_starts(length, window, window)]

    rows, cols = starts(height, pad_y), starts(width, pad_x)
    return spread([(top, left) for top in rows for left in cols], count)


def random_windows(
    height: int, width: int, window: int, count: int, seed: int = 0
) -> list[tuple[int, int]]:
    """``count`` uniformly random top-left corners in a ``height x width`` padded image.

    This is the notebook's sampling (random positions, a fixed count per width), kept for
    comparison with the grid; unlike the grid it may leave pixels uncovered.
    """
    if height < window or width < window:
        raise ValueError(f"image {height}x{width} is smaller than the window ({window})")
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, height - window + 1, size=count)
    lefts = rng.integers(0, width - window + 1, size=count)
    return list(zip(tops.tolist(), lefts.tolist(), strict=True))


def batched(
    positions: list[tuple[int, int]], batch_size: int
) -> Iterator[list[tuple[int, int]]]:
    """Consecutive chunks of ``batch_size`` positions (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(positions), batch_size):
        yield positions[start : start + batch_size]


def coverage_factor(
    positions: list[tuple[int, int]], window: int, height: int, width: int
) -> float:
    """Window pixels computed per pixel of a ``height x width`` image (a cost measure)."""
    return len(positions) * window * window / float(height * width)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """``t^2 (3 - 2t)`` with ``t = clip((x - edge0) / (edge1 - edge0), 0, 1)`` (as in GLSL)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def window_weight(window: int) -> np.ndarray:
    """The centre-heavy weight of a ``window x window`` prediction, float32 in (0, 1].

    ``r`` is the Euclidean distance from the window centre on a [-1, 1] grid; the weight is
    ``smoothstep(1.3, 0.3, r)`` clamped below at :data:`MIN_WEIGHT`, so borders count little
    but never nothing.
    """
    axis = np.linspace(-1.0, 1.0, window, dtype=np.float64)
    radius = np.hypot(axis[:, None], axis[None, :])
    weight = smoothstep(WEIGHT_EDGE0, WEIGHT_EDGE1, radius)
    return np.maximum(weight, MIN_WEIGHT).astype(np.float32)
