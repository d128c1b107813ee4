"""Predicting a raster of any size tile by tile, with the same result as one piece.

A mosaic is cut into tiles of ``predict.tile_size`` pixels (the *core*); each tile is read with a
halo wide enough for every prediction window that touches its core, so the stitched result is
the one :func:`segmenter.inference.predict_land` gives for the raster in one piece, up to float
rounding (``tests/test_mosaic.py`` checks it):

* the raster is shrunk by ``data.scale`` on the *global* grid: each tile's part of the scaled
  raster is an area average over exactly the source pixels the whole-raster resize would use
  (Pillow's box filter with the tile's fractional ``box``);
* windows lie on the global grid of the whole scaled raster (reflection padding at the
  raster's edges, ``predict.overlap``), and a tile predicts every window that overlaps its part
  of the scaled map, accumulating them in the same order with the same centre-heavy weights;
* the merged map is enlarged back bilinearly, again on the global grid, with a margin of scaled
  pixels around the tile.

Memory is set by the tile: one tile's pixels and maps at a time (plus the GMM subsample).
Windows that overlap two tiles are predicted by both (the cost of the halo: with 2048-pixel
tiles at scale 0.5, 7 % more 32-pixel windows and 30 % more 128-pixel ones than in one piece;
4096-pixel tiles: 2 % and 9 %, for about 600 MB more peak memory).

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
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.config import Config
from segmenter.data import patches
from segmenter.data.images import scaled_shape
from segmenter.data.raster import (
    Raster,
    Window,
    gdal_env,
    is_raster_name,
    no_georeference_warning,
    open_raster,
)
from segmenter.errors import ConfigError, SegmenterError

log = logging.getLogger(__name__)

#: scaled pixels kept around a tile's part of the scaled map for the bilinear enlargement.
UPSAMPLE_MARGIN = 2
#: GeoTIFF block size of every raster written.
BLOCK = 512
#: mask values: as the Ontario labels' classes (land 1, water 2), so 0 stays free for nodata.
MASK_LAND, MASK_WATER = 1, 2


# --------------------------------------------------------------------------------------------
# Geometry of the global grid


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Indices into an axis of ``length`` as ``np.pad(mode="symmetric")`` maps padded ones."""
    period = 2 * length
    wrapped = np.mod(index, period)
    return np.where(wrapped >= length, period - 1 - wrapped, wrapped)


@dataclass(frozen=True)
class ScaleGrid:
    """One width's global window grid on the scaled raster (as predict_scale lays it out)."""

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


def plan_tiles(height: int, width: int, scale: float, windows: list[int], overlap: float,
               tile_size: int) -> MosaicPlan:
    """Cut a ``height x width`` raster into tiles with the halo each needs."""
    small_h, small_w = scaled_shape((height, width), scale)
    grids: dict[int, ScaleGrid] = {}
    for window in windows:
        pad = patches.pad_width(window)
        pad_y = max(pad, int(math.ceil((window - small_h) / 2)))
        pad_x = max(pad, int(math.ceil((window - small_w) / 2)))
        stride = patches.grid_stride(window, overlap)
        grids[window] = ScaleGrid(
            window, pad_y, pad_x,
            tuple(patches.grid_starts(small_h + 2 * pad_y, window, stride)),
            tuple(patches.grid_starts(small_w + 2 * pad_x, window, stride)),
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
            plan.tiles.append(TilePlan(index, core, small, need, _source_window(plan, need)))
            index += 1
    return plan


def _source_window(plan: MosaicPlan, need: Window) -> Window:
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
# Resizing on the global grid


def _resize(values: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float],
            resample: str) -> np.ndarray:
    """Pillow resize of a float (h, w) or (h, w, C) array's ``box`` to ``size`` (rows, cols)."""
    from PIL import Image

    method = Image.Resampling.BOX if resample == "box" else Image.Resampling.BILINEAR

    def one(channel: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
        return np.asarray(pil.resize((size[1], size[0]), method, box=box), dtype=np.float32)

    if values.ndim == 2:
        return np.array(one(values))
    out = np.empty((size[0], size[1], values.shape[2]), np.float32)
    for channel in range(values.shape[2]):
        out[..., channel] = one(values[..., channel])
    return out


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
    small_image = _resize(image, need.shape, box, "box")
    np.clip(small_image, 0.0, 1.0, out=small_image)
    small_valid = (_resize(valid.astype(np.float32), need.shape, box, "box") > 0
                   if has_nodata else None)
    return small_image, small_valid


def raster_statistics(models: Mapping[int, Any], raster: Raster, plan: MosaicPlan,
                      cfg: Config) -> dict[int, Any] | None:
    """``predict.adapt_norm`` for a raster: each model's BatchNorm statistics adapted to the
    whole raster, once, before any tile is predicted (None when off).

    The windows are those :func:`segmenter.inference.predict_scale` would take from the raster
    in one piece (up to :data:`~segmenter.inference.ADAPT_WINDOWS` of the global grid, spread
    evenly), read one by one; windows with a nodata pixel are left out. So every tile, on any
    worker, predicts with the same statistics, and a raster without nodata gets those of the
    photo path.
    """
    share = cfg.predict.adapt_norm
    if share <= 0:
        return None
    from segmenter.inference import ADAPT_WINDOWS, adapted_statistics, spread

    small_h, small_w = plan.small_shape
    stats: dict[int, Any] = {}
    for width, model in models.items():
        grid = plan.grids[width]
        windows = []
        for top, left in spread([(r, c) for r in grid.rows for c in grid.cols], ADAPT_WINDOWS):
            rows = reflect_index(np.arange(top, top + width) - grid.pad_y, small_h)
            cols = reflect_index(np.arange(left, left + width) - grid.pad_x, small_w)
            need = Window(int(rows.min()), int(cols.min()), int(rows.max()) + 1,
                          int(cols.max()) + 1)
            read = _source_window(plan, need)
            image, valid = raster.read(read)
            small_image, small_valid = _scaled(image, valid, plan, read, need)
            if small_valid is not None:
                continue
            windows.append(np.take(np.take(small_image, rows - need.top, axis=0),
                                   cols - need.left, axis=1))
        if not windows:
            log.info("%s: no window of width %d free of nodata; its statistics are the "
                     "training photos'", raster.name, width)
            continue
        stats[width] = adapted_statistics(model, np.stack(windows), share)
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
    from segmenter.inference import UNCOVERED_VALUE

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
    merged = np.zeros(small.shape, np.float32)
    merged_weight = np.zeros(small.shape, np.float32)
    from segmenter.inference import norm_statistics, output_transform

    for patch_width, model in models.items():
        grid = plan.grids[patch_width]
        with norm_statistics(model, stats.get(patch_width) if stats else None):
            scale_map, count = _stitch(model, small_image, small_valid, grid, plan, tile, cfg,
                                       output_transform(model, cfg))
        counts[patch_width] = count
        covered = ~np.isnan(scale_map)
        merged += np.where(covered, scale_map * weights[patch_width], 0.0)
        merged_weight += covered * np.float32(weights[patch_width])
        del scale_map, covered
    uncovered = merged_weight <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        merged = np.where(uncovered, np.float32(np.nan), merged / merged_weight)
    merged[uncovered] = UNCOVERED_VALUE  # scaled pixels of nodata only: never written
    del small_image

    if plan.scaled:
        sy, sx = plan.small_shape[0] / plan.height, plan.small_shape[1] / plan.width
        box = (tile.core.left * sx - small.left, tile.core.top * sy - small.top,
               tile.core.right * sx - small.left, tile.core.bottom * sy - small.top)
        land = _resize(merged, (core_h, core_w), box, "bilinear")
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
    from segmenter.inference import compiled_infer, window_weight, windows_per_call

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
    total = np.zeros(padded.shape[:2], np.float32)
    weight_sum = np.zeros(padded.shape[:2], np.float32)
    if positions:
        pcfg = cfg.predict
        upright = cfg.data.is_upright
        infer = compiled_infer(model, (window, window), tta=pcfg.tta, output=output,
                               upright=upright, grey=pcfg.grey)
        batch_size = windows_per_call(pcfg.batch_size, window, pcfg.tta, upright, pcfg.grey)
        weight = window_weight(window)
        size = min(batch_size, len(positions))
        buffers = [np.empty((size, window, window, 3), np.float32) for _ in range(2)]

        def accumulate(predicted: np.ndarray, chunk: list[tuple[int, int]]) -> None:
            if not np.isfinite(predicted).all():
                raise SegmenterError(
                    f"the model of width {window} predicted non-finite values (NaN or inf); "
                    f"its weights are probably corrupt (retrain that width)"
                )
            predicted *= weight
            for i, (top, left) in enumerate(chunk):
                total[top : top + window, left : left + window] += predicted[i]
                weight_sum[top : top + window, left : left + window] += weight

        # As predict_scale: TensorFlow predicts one batch while numpy accumulates the last.
        with ThreadPoolExecutor(max_workers=1) as runner:
            pending = None
            for number, chunk in enumerate(patches.batched(positions, batch_size)):
                batch = buffers[number % 2][: len(chunk)]
                for i, (top, left) in enumerate(chunk):
                    batch[i] = padded[top : top + window, left : left + window]
                running = runner.submit(lambda b=batch: infer(b).numpy())
                if pending is not None:
                    accumulate(pending[0].result(), pending[1])
                pending = (running, chunk)
            if pending is not None:
                accumulate(pending[0].result(), pending[1])
    crop = (slice(small.top + grid.pad_y - top0, small.bottom + grid.pad_y - top0),
            slice(small.left + grid.pad_x - left0, small.right + grid.pad_x - left0))
    total, weight_sum = total[crop], weight_sum[crop]
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(weight_sum > 0, total / weight_sum, np.float32(np.nan))
    return result.astype(np.float32, copy=False), len(positions)


# --------------------------------------------------------------------------------------------
# The whole raster: two passes, outputs


@dataclass
class RasterResult:
    """What :func:`predict_raster` did: files written and numbers for the summary."""

    files: dict[str, str]
    size: tuple[int, int]
    water_fraction: float
    threshold: dict[str, Any]
    notes: list[str]
    windows: dict[int, int]
    tiles: int
    seconds: float


def row_channel_refusal(location: str) -> ConfigError:
    """The one line refusing a raster to a run whose models read each pixel's row."""
    return ConfigError(
        f"{location}: this run's models read each pixel's row in an upright photo "
        f"(model.row_channel), which a raster predicted tile by tile does not have; "
        f"predict rasters with a run trained with model.row_channel: false"
    )


def check_supported(cfg: Config, location: str = "") -> None:
    """Settings that only make sense for a whole photo in memory are refused for rasters.

    ``model.row_channel: true`` (the run's decided value) is refused here, in the piece the
    one-process and the Dask paths share, naming the raster ``location``.
    """
    if cfg.model.row_channel is True:
        raise row_channel_refusal(location or "this raster")
    if cfg.predict.sampling != "grid":
        raise ConfigError("predict.sampling: rasters are predicted on the grid only (not random)")
    if cfg.predict.rescale != "none":
        raise ConfigError("predict.rescale: minmax needs the whole map at once; not for rasters")


def predict_raster(location: str, stem: str, loaded: Any, cfg: Config, out_dir: Path, *,
                   storage: Any = None, relpath: str = "", vector: bool = False,
                   tile_size: int | None = None) -> RasterResult:
    """Predict a GeoTIFF/COG tile by tile and write its georeferenced outputs into ``out_dir``.

    Args:
        location: local path or ``s3://`` URL (for messages and opening).
        stem: output file stem.
        loaded: the run's models (:class:`segmenter.predictor.LoadedModels`).
        cfg: the effective config (``data.bands``, ``data.nodata``, ``predict.*``,
            ``postprocess.*``).
        out_dir: output folder.
        storage, relpath: where :func:`segmenter.data.storage.expand_inputs` found the file.
        vector: also write the GeoJSON vectors.
        tile_size: override of ``predict.tile_size`` (tests).

    Raises:
        SegmenterError: unreadable raster, bad bands, unsupported settings, a write failure.
    """
    from segmenter.inference import _merge_weights, input_channels, select_models

    models = select_models(loaded.models, cfg)
    if any(input_channels(model) != 3 for model in models.values()):
        raise row_channel_refusal(location)
    weights = _merge_weights(models, cfg.predict.merge, loaded.scores)
    with RasterJob(location, stem, list(models), cfg, out_dir, storage=storage,
                   relpath=relpath, tile_size=tile_size) as job:
        raster = job.raster
        stats = raster_statistics(models, raster, job.plan, cfg)
        for tile in job.plan.tiles:  # pass 1: probabilities and the GMM subsample
            job.add_probs(tile, tile_pass1(models, raster, job.plan, tile, cfg, weights,
                                           job.rate, job.prob_nodata, stats))
        job.fit()
        for tile in job.plan.tiles:  # pass 2: every pixel assigned, the overview
            water_prob = job.read_probs(tile)
            job.add_mask(tile, tile_pass2(raster, tile.core, water_prob, job.decision,
                                          job.mask_nodata, job.overview_index))
        return job.finish(vector)


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


class RasterJob:
    """One raster's prediction, driven tile by tile by whoever computes the tiles.

    The serial :func:`predict_raster` and the Dask job (:mod:`segmenter.cluster`) both use it:
    open (plan, scratch GeoTIFFs), :meth:`add_probs` per tile in any order, :meth:`fit` the
    whole raster's rule on the subsample gathered in pixel order, :meth:`add_mask` per tile,
    :meth:`finish` (COGs, overlay, vectors). A context manager: the raster is closed and the
    scratch files removed on the way out, whatever happened.
    """

    def __init__(self, location: str, stem: str, widths: list[int], cfg: Config,
                 out_dir: Path, *, storage: Any = None, relpath: str = "",
                 tile_size: int | None = None) -> None:
        check_supported(cfg, location)
        self.location, self.stem, self.cfg = location, stem, cfg
        self.out_dir = Path(out_dir)
        self.widths = widths
        self._opener = open_raster(location, cfg.data, storage=storage, relpath=relpath)
        self._tile_size = tile_size or cfg.predict.tile_size
        self.started = time.perf_counter()
        self._scratch: list[Path] = []
        self._dst: Any = None

    def __enter__(self) -> RasterJob:
        import rasterio

        from segmenter import geooutputs

        self.raster = raster = self._opener.__enter__()
        try:
            cfg = self.cfg
            self.notes: list[str] = []
            for note in raster.notes:  # no CRS is a warning: the outputs are not on a map
                level = logging.WARNING if "no coordinate" in note else logging.INFO
                self._note(level, note)
            if cfg.predict.save_scales or cfg.predict.save_float:
                self._note(logging.INFO, "predict.save_scales / save_float do not apply to "
                           "rasters (the probability GeoTIFF is float32)")
            if cfg.postprocess.fill_holes > 0 or cfg.postprocess.remove_specks > 0:
                self._note(logging.WARNING, "postprocess.fill_holes / remove_specks are not "
                           "applied to rasters (they are shares of one photo; a mosaic's mask "
                           "is written tile by tile)")
            self.plan = plan_tiles(raster.height, raster.width, cfg.data.scale, self.widths,
                                   cfg.predict.overlap, self._tile_size)
            self.prob_nodata = geooutputs.prob_nodata(raster)
            self.mask_nodata = geooutputs.mask_nodata(raster)
            self.rate = sample_rate(cfg.postprocess, raster.height, raster.width)
            self.overview_index = OverviewIndex(raster.height, raster.width,
                                                cfg.predict.overview_size)
            self.overview = _Overview(self.overview_index)
            self.paths = geooutputs.raster_output_paths(self.out_dir, self.stem)
            stale = geooutputs.remove_stale_scratch(self.out_dir)
            if stale:
                log.info("%s: removed %d scratch file(s) that a killed run left",
                         self.out_dir, len(stale))
            self.prob_path, prob_profile = geooutputs.scratch_raster(
                self.out_dir, self.stem, raster, "float32", self.prob_nodata)
            self._scratch.append(self.prob_path)
            self.mask_path, self._mask_profile = geooutputs.scratch_raster(
                self.out_dir, self.stem, raster, "uint8", self.mask_nodata)
            self._scratch.append(self.mask_path)
            self._samples: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            self.windows: dict[int, int] = dict.fromkeys(self.widths, 0)
            self.valid_pixels = 0
            self.water_pixels = 0
            self._env = gdal_env()
            self._env.__enter__()
            with no_georeference_warning():  # said once, as a note
                self._dst = rasterio.open(self.prob_path, "w", **prob_profile)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _note(self, level: int, note: str) -> None:
        """Log a note about this raster and keep it for ``predictions.json``."""
        log.log(level, "%s: %s", self.location, note)
        self.notes.append(note)

    def __exit__(self, *exc: Any) -> None:
        import contextlib

        if self._dst is not None:
            with contextlib.suppress(Exception):
                self._dst.close()
            self._dst = None
        if getattr(self, "_env", None) is not None:
            self._env.__exit__(None, None, None)
            self._env = None
        for scratch in self._scratch:
            scratch.unlink(missing_ok=True)
        self._opener.__exit__(None, None, None)

    def add_probs(self, tile: TilePlan, probs: TileProbs) -> None:
        """Write a tile's probability of water; keep its share of the subsample."""
        for width, count in probs.counts.items():
            self.windows[width] += count
        self._dst.write(probs.water[None], window=tile.core.rio())
        self.valid_pixels += probs.n_valid
        if probs.n_valid:
            self._samples[tile.index] = (probs.sample_index, probs.sample_land,
                                         probs.sample_rgb)

    def fit(self) -> Decision:
        """The whole raster's rule, fitted on the subsample of every tile (in pixel order)."""
        import rasterio

        self._dst.close()
        self._dst = None
        if not self.valid_pixels:
            raise SegmenterError(f"{self.location}: every pixel is nodata; nothing to predict")
        pp = self.cfg.postprocess
        parts = [self._samples[i] for i in sorted(self._samples)]
        self._samples.clear()
        # In the order of the raster's pixels, whatever the tiles: the sample, its order and so
        # the fit are the same for every predict.tile_size and in one piece.
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        sample_land = np.concatenate([p[1] for p in parts])[order]
        sample_rgb = np.concatenate([p[2] for p in parts])[order]
        del parts, order
        if sample_land.size > pp.subsample:
            keep = np.sort(np.random.default_rng(pp.seed).choice(
                sample_land.size, pp.subsample, replace=False))
            sample_land, sample_rgb = sample_land[keep], sample_rgb[keep]
        self.decision = fit_decision(sample_land, sample_rgb, pp)
        if "note" in self.decision.info:
            self._note(logging.INFO, f"{self.decision.info['note']} "
                       f"({sample_land.size} pixel(s) sampled)")
        with no_georeference_warning():
            self._probs = rasterio.open(self.prob_path)
            self._dst = rasterio.open(self.mask_path, "w", **self._mask_profile)
        return self.decision

    def read_probs(self, tile: TilePlan) -> np.ndarray:
        """A tile's probability of water as pass 1 wrote it (the serial pass 2 reads it back)."""
        return self._probs.read(1, window=tile.core.rio())

    def add_mask(self, tile: TilePlan, result: TileMask) -> None:
        """Write a tile's mask and its pixels of the overview."""
        self._dst.write(result.mask[None], window=tile.core.rio())
        self.water_pixels += result.water_pixels
        self.overview.put(result.overview)

    def finish(self, vector: bool = False) -> RasterResult:
        """The COGs, the overview overlay and (``vector``) the GeoJSON files, all in place."""
        from segmenter import geooutputs, outputs
        from segmenter.fileio import write_bytes

        self._dst.close()
        self._dst = None
        self._probs.close()
        cfg, paths = self.cfg, self.paths
        files: dict[str, str] = {}
        geooutputs.finish_raster(self.prob_path, paths["water_prob"], cfg.predict.cog, "AVERAGE")
        files["water_prob"] = str(paths["water_prob"])
        geooutputs.finish_raster(self.mask_path, paths["water_mask"], cfg.predict.cog, "NEAREST")
        files["water_mask"] = str(paths["water_mask"])
        fraction = self.water_pixels / self.valid_pixels
        overview = self.overview
        write_bytes(paths["overlay"], outputs.png_bytes(outputs.overlay(
            overview.image, overview.water_prob, overview.water, cfg.postprocess.method)))
        files["overlay"] = str(paths["overlay"])
        raster = self.raster
        if vector:
            files.update(geooutputs.write_vectors(
                paths["water_mask"], paths, raster.crs, raster.transform,
                cfg.predict.vector_tolerance))
        threshold = dict(self.decision.info)
        threshold["water_fraction"] = fraction
        return RasterResult(files=files, size=(raster.height, raster.width),
                            water_fraction=fraction, threshold=threshold, notes=self.notes,
                            windows=self.windows, tiles=len(self.plan.tiles),
                            seconds=time.perf_counter() - self.started)


class OverviewIndex:
    """Which pixels of the raster make the overview (nearest pixel, overview-sized)."""

    def __init__(self, height: int, width: int, longest: int) -> None:
        factor = max(1.0, max(height, width) / longest)
        self.shape = (max(1, round(height / factor)), max(1, round(width / factor)))
        self.rows = np.minimum(((np.arange(self.shape[0]) + 0.5) * height / self.shape[0])
                               .astype(int), height - 1)
        self.cols = np.minimum(((np.arange(self.shape[1]) + 0.5) * width / self.shape[1])
                               .astype(int), width - 1)

    def part(self, core: Window, image: np.ndarray, water_prob: np.ndarray,
             water: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The overview's rows, columns, image, probability and mask that ``core`` holds."""
        r = np.nonzero((self.rows >= core.top) & (self.rows < core.bottom))[0]
        c = np.nonzero((self.cols >= core.left) & (self.cols < core.right))[0]
        if not r.size or not c.size:
            return None
        at = np.ix_(self.rows[r] - core.top, self.cols[c] - core.left)
        return r, c, image[at], water_prob[at], water[at]


class _Overview:
    """An overview-sized copy of the image, probability of water and mask (nearest pixel)."""

    def __init__(self, index: OverviewIndex) -> None:
        shape = index.shape
        self.image = np.zeros((*shape, 3), np.float32)
        self.water_prob = np.zeros(shape, np.float32)
        self.water = np.zeros(shape, bool)

    def put(self, part: tuple[np.ndarray, ...] | None) -> None:
        if part is None:
            return
        r, c, image, water_prob, water = part
        into = np.ix_(r, c)
        self.image[into] = image
        self.water_prob[into] = water_prob
        self.water[into] = water


@dataclass
class Decision:
    """How every pixel is called water: fitted mixtures, or a threshold."""

    method: str
    threshold: float
    info: dict[str, Any]
    # (GaussianMixture, segmenter.postprocess.ComponentNames) per mixture, with gmm
    mixtures: list[tuple[Any, Any]] = field(default_factory=list)

    def water(self, land: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Water (True) for pixels of probability of land ``land`` (n,) and colour (n, 3)."""
        if not self.mixtures:
            return land <= self.threshold
        from threadpoolctl import threadpool_limits

        from segmenter.postprocess import assign_components, majority_water

        votes = np.zeros(land.shape[0], np.uint8)
        with threadpool_limits(1, user_api="blas"):
            for gmm, names in self.mixtures:
                votes += names.water(assign_components(gmm, land, rgb), land)
        return majority_water(votes, len(self.mixtures), land, self.threshold)


def fit_decision(land: np.ndarray, rgb: np.ndarray, pp: Any) -> Decision:
    """The whole raster's rule, from a subsample of its valid pixels.

    ``gmm``: the mixtures of :func:`segmenter.postprocess.gmm_water_mask` (same features,
    settings, naming rule and vote, :func:`segmenter.postprocess.name_components`), fitted on
    the subsample, their medians and purities taken over the subsample. ``otsu``: Otsu's
    threshold of the subsample's probabilities. ``global``: ``postprocess.threshold``, also
    for ``gmm`` when the subsample has fewer than two pixels (a raster of one valid pixel), as
    :func:`segmenter.postprocess.gmm_water_mask` does for a photo of one pixel (the info's
    ``note`` says so).
    """
    if pp.method == "global":
        return Decision("global", pp.threshold, {"method": "global", "threshold": pp.threshold})
    if pp.method == "otsu":
        from skimage.filters import threshold_otsu

        if land.size == 0 or float(land.max() - land.min()) < 1e-6:
            value = 0.5
        else:
            value = float(threshold_otsu(land, nbins=256))
        return Decision("otsu", value, {"method": "otsu", "threshold": value,
                                        "fitted_on": int(land.size)})
    if land.size < 2:  # a mixture needs two pixels (a 1 x 1 raster), as for a photo
        return Decision("global", pp.threshold, {
            "method": "global", "threshold": pp.threshold, "fitted_on": int(land.size),
            "note": "too few pixels for the GMM; global threshold used"})
    from segmenter.postprocess import decision_info, gmm_features, named_mixtures

    mixtures = [(gmm, names) for gmm, _, names
                in named_mixtures(gmm_features(land, rgb), land, rgb, pp)]
    info = decision_info([(names, None) for _, names in mixtures], pp, int(land.size))
    if info["revised"]:
        log.info("GMM: every component median is on one side of %.3f; threshold revised to "
                 "%.3f", pp.threshold, info["threshold"])
    return Decision("gmm", info["threshold"], info, mixtures=mixtures)


def is_raster_ref(ref: Any) -> bool:
    """Whether a ``predict`` input is read as a raster (GeoTIFF / COG) rather than a photo."""
    return is_raster_name(str(ref.path))


def predict_raster_ref(ref: Any, stem: str, loaded: Any, cfg: Config, out_dir: Path,
                       vector: bool = False) -> tuple[dict[str, Any], str]:
    """:func:`predict_raster` for a ``predict`` input: summary fields and the report line."""
    storage = getattr(ref, "storage", None)
    result = predict_raster(str(ref.path), stem, loaded, cfg, out_dir, storage=storage,
                            relpath=getattr(ref, "relpath", ""), vector=vector)
    return raster_fields(stem, result)


def raster_fields(stem: str, result: RasterResult) -> tuple[dict[str, Any], str]:
    """A raster's fields in ``predictions.json`` and its report line."""
    height, width = result.size
    fields = {
        "status": "ok",
        "size": [height, width],
        "water_fraction": round(result.water_fraction, 6),
        "method": result.threshold["method"],
        "threshold": round(float(result.threshold["threshold"]), 6),
        "threshold_revised": bool(result.threshold.get("revised", False)),
        "seconds": round(result.seconds, 3),
        "notes": result.notes,
        "tiles": result.tiles,
        "windows": {str(k): v for k, v in result.windows.items()},
        "outputs": {k: Path(v).name for k, v in result.files.items()},
    }
    line = (f"{stem}: {width}x{height} px raster in {result.tiles} tile(s), water "
            f"{result.water_fraction:.1%} of valid pixels, {result.seconds:.1f} s")
    return fields, line
