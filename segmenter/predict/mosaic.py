"""A raster tile by tile, with the same result as in one piece: the grid, the tiles, the passes.

A mosaic is cut into tiles of ``predict.tile_size`` pixels (the *core*); each tile is read with a
halo wide enough for every prediction window that touches its core, so the stitched result is
the one :func:`segmenter.predict.photo.predict_land` gives for the raster in one piece, up to float
rounding (``tests/predict/test_predict_mosaic.py`` checks it):

* the raster is shrunk by ``data.scale`` on the *global* grid: each tile's part of the scaled
  raster is an area average over exactly the source pixels the whole-raster resize would use
  (Pillow's box filter with the tile's fractional ``box``);
* windows lie on the global grid of the whole scaled raster (reflection padding at the
  raster's edges, ``predict.overlap``), and a tile predicts every window that overlaps its part
  of the scaled map, accumulating them in the same order with the same centre-heavy weights;
* the merged map is enlarged back bilinearly, again on the global grid, with a margin of scaled
  pixels around the tile.

Memory is set by the tile: one tile's pixels and maps at a time (plus the GMM subsample).
Windows that overlap two tiles are predicted by both: the halo costs more windows the smaller
the tiles and the wider the windows (docs/benchmarks.md, ``bench_mosaic.py``).

Whole-raster water mask: pass 1 predicts every tile into a float32 GeoTIFF of the probability
of water and draws each tile's part of one seeded subsample of the valid pixels, chosen on the
raster's global pixel grid (:func:`sampled_pixels`, ``postprocess.subsample`` in all); the
Gaussian mixture is fitted on that subsample, in the order of the raster's pixels, and each
component named water or land by the median probability of its subsample pixels; pass 2 reads
each tile again and assigns every pixel. So the mask, not only the probabilities, does not
depend on ``predict.tile_size`` (a memory setting) nor on which worker predicted which tile.
Nodata pixels are never predicted into the outputs, never sampled, and are nodata in every
output.

With ``predict.adapt_norm`` the models' BatchNorm statistics are adapted to the whole raster once,
before pass 1 (:func:`raster_statistics`: the windows the raster in one piece would adapt on, read
one by one, those touching nodata left out), so every tile predicts with the same statistics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segmenter.config import Config
from segmenter.data.images import resize_box, scaled_shape
from segmenter.data.raster import Raster, Window
from segmenter.model.compiled import compiled_infer, windows_per_call
from segmenter.model.introspect import output_transform
from segmenter.model.norm import ADAPT_WINDOWS, adapted_statistics, norm_statistics
from segmenter.predict import windows
from segmenter.predict.stitch import (
    UNCOVERED_VALUE,
    ScaleMerge,
    stitch,
    weighted_mean,
)
from segmenter.predict.windows import reflect_index

if TYPE_CHECKING:
    from segmenter.predict.raster import OverviewIndex
    from segmenter.predict.threshold import Decision

log = logging.getLogger(__name__)

#: scaled pixels kept around a tile's part of the scaled map for the bilinear enlargement.
UPSAMPLE_MARGIN = 2
#: mask values: as the Ontario labels' classes (land 1, water 2), so 0 stays free for nodata.
MASK_LAND, MASK_WATER = 1, 2


# --------------------------------------------------------------------------------------------
# Geometry of the global grid


@dataclass(frozen=True)
class ScaleGrid:
    """One width's global window grid on the scaled raster (as
    :func:`segmenter.predict.photo.predict_scale` lays it out)."""

    window: int
    pad_y: int
    pad_x: int
    rows: tuple[int, ...]  # window tops in padded coordinates
    cols: tuple[int, ...]


@dataclass
class TilePlan:
    """Where one tile reads and what it computes (all ranges half-open)."""

    index: int
    core: Window  # full-resolution pixels this tile writes
    small: Window  # scaled pixels it computes (core's support for the enlargement)
    need: Window  # scaled pixels its windows read (after reflection)
    read: Window  # full-resolution pixels it reads


@dataclass
class MosaicPlan:
    """Tiles and grids of a raster of ``height x width`` for a config."""

    height: int
    width: int
    small_shape: tuple[int, int]
    grids: dict[int, ScaleGrid]
    tiles: list[TilePlan] = field(default_factory=list)

    @property
    def scaled(self) -> bool:
        return self.small_shape != (self.height, self.width)


def plan_tiles(height: int, width: int, scale: float, widths: list[int], overlap: float,
               tile_size: int) -> MosaicPlan:
    """Cut a ``height x width`` raster into tiles with the halo each needs."""
    small_h, small_w = scaled_shape((height, width), scale)
    grids: dict[int, ScaleGrid] = {}
    for window in widths:
        pad_y, pad_x = windows.padding(window, small_h, small_w)
        stride = windows.grid_stride(window, overlap)
        grids[window] = ScaleGrid(
            window, pad_y, pad_x,
            tuple(windows.grid_starts(small_h + 2 * pad_y, window, stride)),
            tuple(windows.grid_starts(small_w + 2 * pad_x, window, stride)),
        )
    plan = MosaicPlan(height, width, (small_h, small_w), grids)
    scaled = plan.scaled
    index = 0
    for top in range(0, height, tile_size):
        for left in range(0, width, tile_size):
            core = Window(top, left, min(height, top + tile_size), min(width, left + tile_size))
            if scaled:
                small = Window(
                    max(0, math.floor(core.top * small_h / height) - UPSAMPLE_MARGIN),
                    max(0, math.floor(core.left * small_w / width) - UPSAMPLE_MARGIN),
                    min(small_h, math.ceil(core.bottom * small_h / height) + UPSAMPLE_MARGIN),
                    min(small_w, math.ceil(core.right * small_w / width) + UPSAMPLE_MARGIN),
                )
            else:
                small = core
            need_rows = [small.top, small.bottom - 1]
            need_cols = [small.left, small.right - 1]
            for grid in grids.values():
                rows = _overlapping(grid.rows, grid.window, small.top + grid.pad_y,
                                    small.bottom + grid.pad_y)
                cols = _overlapping(grid.cols, grid.window, small.left + grid.pad_x,
                                    small.right + grid.pad_x)
                span_r = reflect_index(np.arange(rows[0], rows[-1] + grid.window) - grid.pad_y,
                                       small_h)
                span_c = reflect_index(np.arange(cols[0], cols[-1] + grid.window) - grid.pad_x,
                                       small_w)
                need_rows += [int(span_r.min()), int(span_r.max())]
                need_cols += [int(span_c.min()), int(span_c.max())]
            need = Window(min(need_rows), min(need_cols), max(need_rows) + 1, max(need_cols) + 1)
            plan.tiles.append(TilePlan(index, core, small, need, source_window(plan, need)))
            index += 1
    return plan


def source_window(plan: MosaicPlan, need: Window) -> Window:
    """The full-resolution pixels to read for the scaled pixels ``need`` (one more each side)."""
    if not plan.scaled:
        return need
    ry, rx = plan.height / plan.small_shape[0], plan.width / plan.small_shape[1]
    return Window(
        max(0, math.floor(need.top * ry) - 1), max(0, math.floor(need.left * rx) - 1),
        min(plan.height, math.ceil(need.bottom * ry) + 1),
        min(plan.width, math.ceil(need.right * rx) + 1),
    )


def _overlapping(starts: tuple[int, ...], window: int, low: int, high: int) -> list[int]:
    """The starts whose window ``[s, s + window)`` overlaps ``[low, high)``."""
    return [s for s in starts if s < high and s + window > low]


# --------------------------------------------------------------------------------------------
# One tile's probability of land


def _scaled(image: np.ndarray, valid: np.ndarray, plan: MosaicPlan, read: Window,
            need: Window) -> tuple[np.ndarray, np.ndarray | None]:
    """The scaled pixels ``need`` from the pixels ``image`` / ``valid`` read at ``read``, as the
    whole raster's resize gives them; their valid mask, or None when all are valid."""
    has_nodata = not bool(valid.all())
    if not plan.scaled:
        return image, (valid if has_nodata else None)
    ry, rx = plan.height / plan.small_shape[0], plan.width / plan.small_shape[1]
    box = (need.left * rx - read.left, need.top * ry - read.top,
           need.right * rx - read.left, need.bottom * ry - read.top)
    small_image = resize_box(image, need.shape, box, "box")
    np.clip(small_image, 0.0, 1.0, out=small_image)
    small_valid = (resize_box(valid.astype(np.float32), need.shape, box, "box") > 0
                   if has_nodata else None)
    return small_image, small_valid


def raster_statistics(models: Mapping[int, Any], raster: Raster, plan: MosaicPlan,
                      cfg: Config) -> dict[int, Any] | None:
    """``predict.adapt_norm`` for a raster: each model's BatchNorm statistics adapted to the
    whole raster, once, before any tile is predicted (None when off).

    The windows are those :func:`segmenter.predict.photo.predict_scale` would take from the raster
    in one piece (:func:`segmenter.predict.windows.adapt_windows` of the whole raster), read one
    by one; windows with a nodata pixel are left out. So every tile, on any
    worker, predicts with the same statistics, and a raster without nodata gets those of the
    photo path.
    """
    share = cfg.predict.adapt_norm
    if share <= 0:
        return None
    small_h, small_w = plan.small_shape
    stats: dict[int, Any] = {}
    for width, model in models.items():
        grid = plan.grids[width]
        cut = []
        for top, left in windows.adapt_windows(small_h, small_w, width, ADAPT_WINDOWS):
            rows = reflect_index(np.arange(top, top + width) - grid.pad_y, small_h)
            cols = reflect_index(np.arange(left, left + width) - grid.pad_x, small_w)
            need = Window(int(rows.min()), int(cols.min()), int(rows.max()) + 1,
                          int(cols.max()) + 1)
            read = source_window(plan, need)
            image, valid = raster.read(read)
            small_image, small_valid = _scaled(image, valid, plan, read, need)
            if small_valid is not None:
                continue
            cut.append(np.take(np.take(small_image, rows - need.top, axis=0),
                               cols - need.left, axis=1))
        if not cut:
            log.info("%s: no window of width %d free of nodata; its statistics are the "
                     "training photos'", raster.name, width)
            continue
        stats[width] = adapted_statistics(model, np.stack(cut), share)
    return stats


def predict_tile(models: Mapping[int, Any], raster: Raster, plan: MosaicPlan, tile: TilePlan,
                 cfg: Config, weights: Mapping[int, float],
                 stats: Mapping[int, Any] | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray, dict]:
    """Probability of land over ``tile.core`` (NaN at nodata), its RGB and its valid mask.

    ``stats``: width -> BatchNorm statistics to predict with (:func:`raster_statistics`).

    Returns:
        ``land`` float32 (h, w), ``image`` float32 (h, w, 3), ``valid`` bool (h, w) of the core,
        and counts (windows predicted per width).
    """
    image, valid = raster.read(tile.read)
    off_y, off_x = tile.core.top - tile.read.top, tile.core.left - tile.read.left
    core_h, core_w = tile.core.shape
    core_image = image[off_y : off_y + core_h, off_x : off_x + core_w]
    core_valid = valid[off_y : off_y + core_h, off_x : off_x + core_w]
    counts: dict[int, int] = {}
    if not core_valid.any():
        land = np.full((core_h, core_w), np.nan, np.float32)
        return land, np.array(core_image), np.array(core_valid), counts

    small_image, small_valid = _scaled(image, valid, plan, tile.read, tile.need)
    core_image = np.array(core_image)
    core_valid = np.array(core_valid)
    del image, valid

    small = tile.small
    scales = ScaleMerge(small.shape)
    for patch_width, model in models.items():
        grid = plan.grids[patch_width]
        with norm_statistics(model, stats.get(patch_width) if stats else None):
            scale_map, count = _stitch(model, small_image, small_valid, grid, plan, tile, cfg,
                                       output_transform(model, cfg))
        counts[patch_width] = count
        scales.add(scale_map, weights[patch_width])
        del scale_map
    merged, uncovered = scales.result()
    merged[uncovered] = UNCOVERED_VALUE  # scaled pixels of nodata only: never written
    del scales, uncovered
    del small_image

    if plan.scaled:
        sy, sx = plan.small_shape[0] / plan.height, plan.small_shape[1] / plan.width
        box = (tile.core.left * sx - small.left, tile.core.top * sy - small.top,
               tile.core.right * sx - small.left, tile.core.bottom * sy - small.top)
        land = resize_box(merged, (core_h, core_w), box, "bilinear")
    else:
        land = merged
    np.clip(land, 0.0, 1.0, out=land)
    land = land.astype(np.float32, copy=False)
    land[~core_valid] = np.nan
    return land, core_image, core_valid, counts


def _stitch(model: Any, small_image: np.ndarray, small_valid: np.ndarray | None,
            grid: ScaleGrid, plan: MosaicPlan, tile: TilePlan, cfg: Config,
            output: str) -> tuple[np.ndarray, int]:
    """One width's map over ``tile.small``: the global grid's windows that overlap it."""
    window = grid.window
    small, need = tile.small, tile.need
    rows = _overlapping(grid.rows, window, small.top + grid.pad_y, small.bottom + grid.pad_y)
    cols = _overlapping(grid.cols, window, small.left + grid.pad_x, small.right + grid.pad_x)
    top0, left0 = rows[0], cols[0]
    row_idx = reflect_index(np.arange(top0, rows[-1] + window) - grid.pad_y,
                            plan.small_shape[0]) - need.top
    col_idx = reflect_index(np.arange(left0, cols[-1] + window) - grid.pad_x,
                            plan.small_shape[1]) - need.left
    padded = np.take(np.take(small_image, row_idx, axis=0), col_idx, axis=1)
    positions = [(r - top0, c - left0) for r in rows for c in cols]
    if small_valid is not None:
        valid = np.take(np.take(small_valid, row_idx, axis=0), col_idx, axis=1)
        integral = np.pad(valid.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        positions = [
            (r, c) for r, c in positions
            if integral[r + window, c + window] - integral[r, c + window]
            - integral[r + window, c] + integral[r, c] > 0
        ]
    pcfg = cfg.predict
    upright = cfg.data.is_upright
    infer = compiled_infer(model, (window, window), tta=pcfg.tta, output=output, upright=upright,
                           grey=pcfg.grey) if positions else None
    total, weight_sum = stitch(infer, padded, positions, window,
                               windows_per_call(pcfg.batch_size, window, pcfg.tta, upright,
                                                pcfg.grey))
    crop = (slice(small.top + grid.pad_y - top0, small.bottom + grid.pad_y - top0),
            slice(small.left + grid.pad_x - left0, small.right + grid.pad_x - left0))
    return weighted_mean(total[crop], weight_sum[crop]), len(positions)


@dataclass
class TileProbs:
    """Pass 1 of one tile: its probability of water and its share of the GMM subsample."""

    water: np.ndarray  # float32 (h, w) over the core; the probability raster's nodata at nodata
    sample_land: np.ndarray  # float32 (n,) probability of land of the sampled pixels
    sample_rgb: np.ndarray  # float32 (n, 3) their colour
    counts: dict[int, int]  # windows predicted per width
    n_valid: int
    #: int64 (n,) their index on the raster's global grid (``row * width + col``)
    sample_index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


@dataclass
class TileMask:
    """Pass 2 of one tile: its mask and its pixels of the overview."""

    mask: np.ndarray  # uint8 (h, w): MASK_WATER / MASK_LAND / the mask's nodata
    water_pixels: int
    overview: tuple[np.ndarray, ...] | None


def sample_rate(pp: Any, height: int, width: int) -> float:
    """Share of valid pixels each tile contributes to the GMM subsample (before the final cut)."""
    return min(1.0, 2.0 * pp.subsample / (height * width))


_GOLDEN = 0x9E3779B97F4A7C15
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on a uint64 array (a bijection that scrambles bits)."""
    z ^= z >> np.uint64(30)
    z *= _MIX[0]
    z ^= z >> np.uint64(27)
    z *= _MIX[1]
    z ^= z >> np.uint64(31)
    return z


def sampled_pixels(core: Window, width: int, seed: int, rate: float) -> np.ndarray:
    """bool (h, w): which pixels of ``core`` belong to the GMM subsample, drawn on the raster's
    *global* grid.

    A pixel is drawn when a hash of its global index ``row * width + col`` and ``seed`` falls
    below ``rate``: a pure function of the pixel and the config, so the subsample is the same
    however the raster is tiled (``predict.tile_size``), in whatever order or on whichever
    worker tiles are predicted, and in one piece.
    """
    if rate >= 1.0:
        return np.ones(core.shape, bool)
    key = np.uint64(_splitmix(np.array([seed], np.uint64) + np.uint64(_GOLDEN))[0])
    picked = np.empty(core.shape, bool)
    cut = np.uint64(min(int(rate * 2.0**64), 2**64 - 1))
    cols = np.arange(core.left, core.right, dtype=np.uint64)
    for start in range(core.top, core.bottom, 256):  # a few MB of hashes at a time
        rows = np.arange(start, min(core.bottom, start + 256), dtype=np.uint64)
        z = rows[:, None] * np.uint64(width) + cols[None, :]
        z ^= key
        z += np.uint64(_GOLDEN)
        picked[start - core.top : start - core.top + len(rows)] = _splitmix(z) < cut
    return picked


def global_index(core: Window, width: int, picked: np.ndarray) -> np.ndarray:
    """int64 global index ``row * width + col`` of the ``picked`` pixels of ``core``."""
    rows, cols = np.nonzero(picked)
    return (rows.astype(np.int64) + core.top) * width + (cols.astype(np.int64) + core.left)


def tile_pass1(models: Mapping[int, Any], raster: Raster, plan: MosaicPlan, tile: TilePlan,
               cfg: Config, weights: Mapping[int, float], rate: float,
               prob_nodata: float | None, stats: Mapping[int, Any] | None = None) -> TileProbs:
    """Predict one tile and draw its share of the subsample (:func:`sampled_pixels`: the same
    on any machine, for any tiling)."""
    land, image, valid, counts = predict_tile(models, raster, plan, tile, cfg, weights, stats)
    water = 1.0 - land
    if prob_nodata is not None:
        water[~valid] = prob_nodata
    n_valid = int(valid.sum())
    if n_valid:
        picked = valid & sampled_pixels(tile.core, plan.width, cfg.postprocess.seed, rate)
        sample_land, sample_rgb = land[picked], image[picked]
        sample_index = global_index(tile.core, plan.width, picked)
    else:
        sample_land, sample_rgb = np.empty(0, np.float32), np.empty((0, 3), np.float32)
        sample_index = np.empty(0, np.int64)
    return TileProbs(water.astype(np.float32, copy=False), sample_land, sample_rgb, counts,
                     n_valid, sample_index)


def tile_pass2(raster: Raster, core: Window, water_prob: np.ndarray, decide: Decision,
               mask_nodata: int | None, overview_index: OverviewIndex) -> TileMask:
    """Assign every pixel of one tile by the whole raster's rule; its overview pixels."""
    image, valid = raster.read(core)
    water = np.zeros(valid.shape, bool)
    if valid.any():
        water[valid] = decide.water(1.0 - water_prob[valid], image[valid])
    mask = np.where(water, np.uint8(MASK_WATER), np.uint8(MASK_LAND))
    if mask_nodata is not None:
        mask[~valid] = mask_nodata
    water_prob = np.where(valid, water_prob, 0.0)
    part = overview_index.part(core, image, water_prob, water)
    return TileMask(mask, int(water.sum()), part)


