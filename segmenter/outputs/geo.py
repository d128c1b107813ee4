"""What ``segmenter predict`` writes for a raster input: GeoTIFFs, an overview PNG, GeoJSON.

Next to :mod:`segmenter.outputs` (the photo outputs). Every raster is written by tiles into a
hidden temporary GeoTIFF in the output folder, then copied to a Cloud-Optimized GeoTIFF (GDAL's
COG driver: tiled 512 x 512, DEFLATE, overviews) under a temporary name and renamed into place,
so an interrupted run never leaves a file that looks finished. Each output carries the input's
CRS and geotransform. The temporary GeoTIFFs are named for the process writing them; those of a
process that was killed are removed by the next raster job in the folder.

* ``<stem>_water_prob.tif``: float32 probability of water in [0, 1]; nodata is the input's
  nodata value when it lies outside [0, 1], else NaN.
* ``<stem>_water_mask.tif``: uint8, 2 = water, 1 = not water (the classes of the Ontario
  labels); nodata is the input's nodata value when it is an integer 0-255 other than 1 and 2,
  else 0.
* ``<stem>_water.geojson`` / ``<stem>_shoreline.geojson`` (``--vector``): water polygons and the
  water/land boundary as lines, in the raster's CRS, simplified to ``predict.vector_tolerance``
  map units. A polygon's ``area`` is that of its pixels; its outline is simplified only where
  that keeps its area within 5 % (small water bodies keep their pixels' outline).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.data.raster import Raster, gdal_env, no_georeference_warning
from segmenter.errors import SegmenterError
from segmenter.fileio import atomic_path, write_text
from segmenter.outputs.names import MASK_LAND, MASK_WATER

log = logging.getLogger(__name__)

BLOCK = 512
#: longest side of the mask grid that vectors are traced on (memory of the polygonisation).
VECTOR_MAX_SIDE = 8192
#: most a water polygon's area may change by its simplification (share of its area); a polygon
#: whose simplification changes it more (a few pixels: a triangle of half a pixel square's
#: area, or nothing) is written as traced.
SIMPLIFY_AREA_CHANGE = 0.05
#: end of every scratch GeoTIFF's name: ``.<stem>.<random>.pid<N>@<machine>.scratch.tif``.
SCRATCH_SUFFIX = ".scratch.tif"
_SCRATCH_NAME = re.compile(r"\.pid(?P<pid>\d+)@(?P<machine>[A-Za-z0-9-]+)\.scratch\.tif$")


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


def scratch_owner() -> str:
    """``pid<this process>@<this machine>``, as scratch file names carry it.

    The machine is its host name and, on Linux, its PID namespace (containers sharing a folder
    and a host name do not share PIDs), so a PID is only ever looked up where it means this
    process.
    """
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
    try:
        host += f"-{os.stat('/proc/self/ns/pid').st_ino:x}"
    except OSError:
        pass
    return f"pid{os.getpid()}@{host}"


def _process_alive(pid: int) -> bool:
    """Whether a process of this machine has ``pid`` (True when it cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no way to ask
        return True
    return True


def remove_stale_scratch(out_dir: Path) -> list[Path]:
    """Remove the scratch GeoTIFFs in ``out_dir`` that a process of this machine left when it
    was killed (``kill -9``, out of memory, a power cut): those named for a process that is
    no longer alive. A live process's, another machine's and unnamed ones are left alone.
    """
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return []
    this_machine = scratch_owner().partition("@")[2]
    removed = []
    try:
        candidates = sorted(Path(out_dir).glob(f".*{SCRATCH_SUFFIX}"))
    except OSError:
        return []
    for path in candidates:
        match = _SCRATCH_NAME.search(path.name)
        if match is None or match["machine"] != this_machine:
            continue
        pid = int(match["pid"])
        if pid <= 0 or pid == os.getpid() or _process_alive(pid):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.debug("%s: cannot remove a stale scratch file (%s)", path, exc)
            continue
        removed.append(path)
    return removed


def scratch_raster(out_dir: Path, stem: str, raster: Raster, dtype: str,
                   nodata: float | None) -> tuple[Path, dict[str, Any]]:
    """A hidden file name in ``out_dir`` and the profile of a tiled one-band GeoTIFF on the
    raster's grid (CRS, transform), for writing tile by tile; :func:`finish_raster` removes it.

    The name carries the writing process (:func:`scratch_owner`), so the file of a process
    that was killed is removed by the next raster job in the folder
    (:func:`remove_stale_scratch`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{scratch_owner()}{SCRATCH_SUFFIX}",
                                dir=out_dir)
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
        with atomic_path(target) as tmp, gdal_env(), no_georeference_warning():
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

    with gdal_env(), no_georeference_warning(), rasterio.open(mask_path) as src:
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
        touch = water_union.boundary.intersection(land_union.boundary)
        # Only the lines: water and land that meet at a corner only touch at a point.
        segments = [line for part in getattr(touch, "geoms", [touch])
                    for line in getattr(part, "geoms", [part])
                    if line.geom_type == "LineString" and not line.is_empty]
        if segments:
            shoreline = ops.linemerge(segments).simplify(tolerance, preserve_topology=False)
    member = _crs_member(crs)
    features = [
        {"type": "Feature", "properties": {"class": "water", "area": round(p.area, 3)},
         "geometry": geometry.mapping(_simplified(p, tolerance))} for p in water
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


def _simplified(polygon: Any, tolerance: float) -> Any:
    """``polygon`` simplified to ``tolerance`` (topology kept), or as traced where that would
    change its area by more than :data:`SIMPLIFY_AREA_CHANGE`: a water body of a few pixels
    keeps its pixels' outline instead of becoming a triangle of half its area, or nothing."""
    if tolerance <= 0:
        return polygon
    simple = polygon.simplify(tolerance, preserve_topology=True)
    if (simple.is_empty or not simple.is_valid
            or abs(simple.area - polygon.area) > SIMPLIFY_AREA_CHANGE * polygon.area):
        return polygon
    return simple


def _crs_member(crs: Any) -> dict[str, Any]:
    """GeoJSON's (pre-RFC 7946) ``crs`` member naming the raster's CRS, which GIS tools read."""
    if crs is None:
        return {}
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"crs": {"type": "name", "properties": {"name": name}}}
