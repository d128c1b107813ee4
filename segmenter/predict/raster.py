"""A GeoTIFF / COG predicted into georeferenced outputs, whoever computes its tiles.

:class:`RasterJob` holds one raster's prediction: the tile plan (:mod:`segmenter.predict.mosaic`),
the scratch GeoTIFFs, the whole raster's rule (:mod:`segmenter.predict.threshold`), the overview
overlay and the finished files. :func:`predict_raster` drives it in one process; the Dask job
(:mod:`segmenter.predict.cluster`) drives the same object from its workers' results.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmenter.config import Config
from segmenter.data.raster import (
    Window,
    gdal_env,
    is_raster_name,
    no_georeference_warning,
    open_raster,
)
from segmenter.errors import ConfigError, SegmenterError
from segmenter.fileio import write_bytes
from segmenter.model.introspect import input_channels
from segmenter.outputs import geo, names, photo
from segmenter.predict.models import select_models
from segmenter.predict.mosaic import (
    TileMask,
    TilePlan,
    TileProbs,
    plan_tiles,
    raster_statistics,
    sample_rate,
    tile_pass1,
    tile_pass2,
)
from segmenter.predict.stitch import merge_weights
from segmenter.predict.threshold import Decision, fit_decision

if TYPE_CHECKING:
    from segmenter.data.inputs import PhotoRef
    from segmenter.predict.models import LoadedModels

log = logging.getLogger(__name__)


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


def predict_raster(location: str, stem: str, loaded: LoadedModels, cfg: Config, out_dir: Path, *,
                   storage: Any = None, relpath: str = "", vector: bool = False,
                   tile_size: int | None = None) -> RasterResult:
    """Predict a GeoTIFF/COG tile by tile and write its georeferenced outputs into ``out_dir``.

    Args:
        location: local path or ``s3://`` URL (for messages and opening).
        stem: output file stem.
        loaded: the run's models (:class:`segmenter.predict.models.LoadedModels`).
        cfg: the effective config (``data.bands``, ``data.nodata``, ``predict.*``,
            ``postprocess.*``).
        out_dir: output folder.
        storage, relpath: where :func:`segmenter.data.storage.expand_inputs` found the file.
        vector: also write the GeoJSON vectors.
        tile_size: override of ``predict.tile_size`` (tests).

    Raises:
        SegmenterError: unreadable raster, bad bands, unsupported settings, a write failure.
    """
    models = select_models(loaded.models, cfg)
    if any(input_channels(model) != 3 for model in models.values()):
        raise row_channel_refusal(location)
    weights = merge_weights(models, cfg.predict.merge, loaded.scores)
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




class RasterJob:
    """One raster's prediction, driven tile by tile by whoever computes the tiles.

    The serial :func:`predict_raster` and the Dask job (:mod:`segmenter.predict.cluster`) both
    use it: open (plan, scratch GeoTIFFs), :meth:`add_probs` per tile in any order, :meth:`fit` the
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
            self.prob_nodata = geo.prob_nodata(raster)
            self.mask_nodata = geo.mask_nodata(raster)
            self.rate = sample_rate(cfg.postprocess, raster.height, raster.width)
            self.overview_index = OverviewIndex(raster.height, raster.width,
                                                cfg.predict.overview_size)
            self.overview = _Overview(self.overview_index)
            self.paths = names.raster_output_paths(self.out_dir, self.stem)
            stale = geo.remove_stale_scratch(self.out_dir)
            if stale:
                log.info("%s: removed %d scratch file(s) that a killed run left",
                         self.out_dir, len(stale))
            self.prob_path, prob_profile = geo.scratch_raster(
                self.out_dir, self.stem, raster, "float32", self.prob_nodata)
            self._scratch.append(self.prob_path)
            self.mask_path, self._mask_profile = geo.scratch_raster(
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
        self._dst.close()
        self._dst = None
        self._probs.close()
        cfg, paths = self.cfg, self.paths
        files: dict[str, str] = {}
        geo.finish_raster(self.prob_path, paths["water_prob"], cfg.predict.cog, "AVERAGE")
        files["water_prob"] = str(paths["water_prob"])
        geo.finish_raster(self.mask_path, paths["water_mask"], cfg.predict.cog, "NEAREST")
        files["water_mask"] = str(paths["water_mask"])
        fraction = self.water_pixels / self.valid_pixels
        overview = self.overview
        write_bytes(paths["overlay"], photo.png_bytes(photo.overlay(
            overview.image, overview.water_prob, overview.water, cfg.postprocess.method)))
        files["overlay"] = str(paths["overlay"])
        raster = self.raster
        if vector:
            files.update(geo.write_vectors(
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


def is_raster_ref(ref: PhotoRef) -> bool:
    """Whether a ``predict`` input is read as a raster (GeoTIFF / COG) rather than a photo."""
    return is_raster_name(str(ref.path))


def predict_raster_ref(ref: PhotoRef, stem: str, loaded: LoadedModels, cfg: Config, out_dir: Path,
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
