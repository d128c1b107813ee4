"""Prediction windows: the grid covers every pixel, random positions are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from segmenter.predict import windows as patches


@pytest.mark.parametrize("length,window,overlap", [(100, 32, 0.5), (32, 32, 0.5), (97, 16, 0.0),
                                                   (300, 64, 0.75), (33, 32, 0.5)])
def test_grid_covers_every_pixel_and_stays_inside(length, window, overlap):
    positions = patches.grid_windows(length, length + 5, window, overlap)
    covered = np.zeros((length, length + 5), int)
    for top, left in positions:
        assert 0 <= top <= length - window and 0 <= left <= length + 5 - window
        covered[top : top + window, left : left + window] += 1
    assert covered.min() >= 1


def test_grid_stride_follows_overlap():
    assert patches.grid_stride(64, 0.5) == 32
    assert patches.grid_stride(64, 0.0) == 64
    assert patches.grid_stride(64, 0.75) == 16
    assert patches.grid_starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    with pytest.raises(ValueError, match="overlap"):
        patches.grid_stride(64, 1.0)
    with pytest.raises(ValueError, match="shorter than the window"):
        patches.grid_starts(10, 32, 16)


@pytest.mark.parametrize("height,width,window", [(100, 70, 32), (64, 64, 32), (20, 90, 32),
                                                 (10, 10, 64)])
def test_adapt_windows_tile_the_photo_once(height, width, window):
    """predict.adapt_norm's windows cover every photo pixel, in padded coordinates, without
    overlap except the last tile of an axis (flush with the photo's far edge); the padding
    only where the photo is shorter than the window, one window centred on that axis."""
    pad_y, pad_x = patches.padding(window, height, width)
    positions = patches.adapt_windows(height, width, window, 1000)
    covered = np.zeros((height + 2 * pad_y, width + 2 * pad_x), int)
    for top, left in positions:
        covered[top : top + window, left : left + window] += 1
    photo = covered[pad_y : pad_y + height, pad_x : pad_x + width]
    assert photo.min() >= 1 and photo.max() <= 4
    rows = sorted({top for top, _ in positions})
    expected_rows = -(-height // window) if height >= window else 1
    assert len(rows) == expected_rows and len(positions) == expected_rows * len(
        {left for _, left in positions})
    if height >= window:  # inside the photo along this axis: no padding read
        assert rows[0] == pad_y and rows[-1] + window == pad_y + height
    else:
        assert covered[:pad_y].sum() > 0 and covered[pad_y + height :].sum() > 0
    assert patches.adapt_windows(height, width, window, 1) == positions[:1]


def test_padding_is_at_most_one_window():
    for window in (16, 32, 256):
        assert 0 < patches.pad_width(window) <= window


def test_random_windows_reproducible_and_inside():
    first = patches.random_windows(200, 150, 32, 50, seed=3)
    assert first == patches.random_windows(200, 150, 32, 50, seed=3)
    assert first != patches.random_windows(200, 150, 32, 50, seed=4)
    assert len(first) == 50
    assert all(0 <= t <= 168 and 0 <= left <= 118 for t, left in first)


def test_batched_streams_in_chunks():
    chunks = list(patches.batched(list(range(10)), 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    with pytest.raises(ValueError):
        list(patches.batched([1], 0))


def test_coverage_factor():
    positions = patches.grid_windows(64, 64, 32, 0.5)
    assert patches.coverage_factor(positions, 32, 64, 64) == pytest.approx(9 * 1024 / 4096)
