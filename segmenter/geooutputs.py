"""What ``segmenter predict`` writes for a raster input: GeoTIFFs, an overview PNG, GeoJSON.

Next to :mod:`segmenter.outputs` (the photo outputs). Every raster is written by tiles into a
hidden temporary GeoTIFF in the output folder, then copied to a Cloud-Optimized GeoTIFF (GDAL's
COG driver: tiled 512 x 512, DEFLATE, overviews) under a temporary name and renamed into place,
so an interrupted run never leaves a file that looks finished. Each output carries the input's
CRS and geotransform.

* ``<stem>_water_prob.tif``: float32 probability of water in [0, 1]; nodata is the input's
  nodata value when it lies outside [0, 1], else NaN.
* ``<stem>_water_mask.tif``: uint8, 2 = water, 1 = not water (the classes of the Ontario
  labels); nodata is the input's nodata value when it is an integer 0-255 other than 1 and 2,
  else 0.
* ``<stem>_water.geojson`` / ``<stem>_shoreline.geojson`` (``--vector``): water polygons and the
  water/land boundary as lines, in the raster's CRS, simplified to ``predict.vector_tolerance``
  map units.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.data.raster import Raster, gdal_env
from segmenter.errors import SegmenterError
from segmenter.fileio import atomic_path, write_text

log = logging.getLogger(__name__)

BLOCK = 512
MASK_LAND, MASK_WATER = 1, 2
#: longest side of the mask grid that vectors are traced on (memory of the polygonisation).
VECTOR_MAX_SIDE = 8192


def raster_output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Every file a raster prediction may write (vectors only with ``--vector``)."""
    out = Path(out_dir)
    return {
        "water_prob": out / f"{stem}_water_prob.tif",
        "water_mask": out / f"{stem}_water_mask.tif",
        "overlay": out / f"{stem}_overlay.png",
        "water_vector": out / f"{stem}_water.geojson",
        "shoreline_vector": out / f"{stem}_shoreline.geojson",
    }


def prob_nodata(raster: Raster) -> float | None:
    """Nodata value of the probability raster (None when the input has no nodata at all)."""
    if not raster.has_mask:
        return None
    value = raster.nodata
    if value is not None and math.isfinite(value) and not 0.0 <= value <= 1.0:
        return float(value)
    return float("nan")


def mask_nodata(raster: Raster) -> int | None:
    """Nodata value of the mask raster (None when the input has no nodata at all)."""
    if not raster.has_mask:
        return None
    value = raster.nodata
    if (value is not None and math.isfinite(value) and float(value).is_integer()
            and 0 <= value <= 255 and int(value) not in (MASK_LAND, MASK_WATER)):
        return int(value)
    return 0


def scratch_raster(out_dir: Path, stem: str, raster: Raster, dtype: str,
                   nodata: float | None) -> tuple[Path, dict[str, Any]]:
    """A hidden file name in ``out_dir`` and the profile of a tiled one-band GeoTIFF on the
    raster's grid (CRS, transform), for writing tile by tile; :func:`finish_raster` removes it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".scratch.tif", dir=out_dir)
    os.close(fd)
    profile = {
        "driver": "GTiff", "width": raster.width, "height": raster.height, "count": 1,
        "dtype": dtype, "crs": raster.crs, "transform": raster.transform, "nodata": nodata,
        "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "zstd",
        "zstd_level": 1, "bigtiff": "IF_SAFER",
    }
    return Path(name), profile


def finish_raster(scratch: Path, target: Path, cog: bool, resampling: str) -> None:
    """Copy a scratch GeoTIFF to ``target`` (COG or tiled GeoTIFF) atomically; drop the scratch."""
    import rasterio.shutil

    try:
        with atomic_path(target) as tmp, gdal_env():
            if cog:
                rasterio.shutil.copy(
                    str(scratch), str(tmp), driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES",
                    BLOCKSIZE=BLOCK, BIGTIFF="IF_SAFER", OVERVIEW_RESAMPLING=resampling,
                    NUM_THREADS="ALL_CPUS",
                )
            else:
                os.replace(scratch, tmp)
    except Exception as exc:
        if isinstance(exc, SegmenterError):
            raise
        raise SegmenterError(f"{target}: cannot write ({exc})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()


def write_vectors(mask_path: Path, paths: dict[str, Path], crs: Any, transform: Any,
                  tolerance: float | None) -> dict[str, str]:
    """Water polygons and the water/land boundary of a mask GeoTIFF, as GeoJSON files.

    The mask is traced at its own resolution, or on a coarser grid (its overviews) when its
    longest side is above :data:`VECTOR_MAX_SIDE`; the tolerance defaults to one pixel of the
    grid traced.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.features import shapes
    from shapely import geometry, ops

    with gdal_env(), rasterio.open(mask_path) as src:
        factor = max(1.0, max(src.height, src.width) / VECTOR_MAX_SIDE)
        out_h, out_w = max(1, round(src.height / factor)), max(1, round(src.width / factor))
        mask = src.read(1, out_shape=(out_h, out_w), resampling=Resampling.nearest)
    grid = transform * transform.scale(src.width / out_w, src.height / out_h)
    pixel = math.hypot(grid.a, grid.b)
    tolerance = pixel if tolerance is None else float(tolerance)
    water = [geometry.shape(g) for g, _ in shapes(
        np.uint8(mask == MASK_WATER), mask=mask == MASK_WATER, transform=grid)]
    land = [geometry.shape(g) for g, _ in shapes(
        np.uint8(mask == MASK_LAND), mask=mask == MASK_LAND, transform=grid)]
    shoreline = None
    if water and land:
        water_union, land_union = ops.unary_union(water), ops.unary_union(land)
        shoreline = ops.linemerge(water_union.boundary.intersection(land_union.boundary))
        shoreline = shoreline.simplify(tolerance, preserve_topology=False)
    polygons = [p.simplify(tolerance, preserve_topology=True) for p in water]
    polygons = [p for p in polygons if not p.is_empty]
    member = _crs_member(crs)
    features = [
        {"type": "Feature", "properties": {"class": "water", "area": round(p.area, 3)},
         "geometry": geometry.mapping(p)} for p in polygons
    ]
    written = {}
    write_text(paths["water_vector"], json.dumps(
        {"type": "FeatureCollection", **member, "features": features}))
    written["water_vector"] = str(paths["water_vector"])
    lines = []
    if shoreline is not None and not shoreline.is_empty:
        parts = getattr(shoreline, "geoms", [shoreline])
        lines = [{"type": "Feature",
                  "properties": {"class": "shoreline", "length": round(line.length, 3)},
                  "geometry": geometry.mapping(line)} for line in parts if not line.is_empty]
    write_text(paths["shoreline_vector"], json.dumps(
        {"type": "FeatureCollection", **member, "features": lines}))
    written["shoreline_vector"] = str(paths["shoreline_vector"])
    return written


def _crs_member(crs: Any) -> dict[str, Any]:
    """GeoJSON's (pre-RFC 7946) ``crs`` member naming the raster's CRS, which GIS tools read."""
    if crs is None:
        return {}
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"crs": {"type": "name", "properties": {"name": name}}}
