"""Training pairs from rasters: an image GeoTIFF and a label GeoTIFF, put on one grid.

In the Ontario layout a raster photo ``<stem>.tif`` pairs with ``<stem>_label.tif``, a
single-band raster whose water pixels have the value ``data.label_water_value``. The label may
have another resolution or extent than the image: it is resampled onto the image's grid with
nearest-neighbour (classes are never averaged before the land fraction is taken), and the
image is cropped to the part the label covers. Both are read by strips and shrunk by
``data.scale`` on the fly, so memory follows the scaled size, not the raster's.

Refused, each as one line naming the files: a label of more than one band (which band holds
the classes cannot be guessed), image and label in different CRSs (or one without a CRS while
the other has one), a label that does not overlap the image, two rasters without CRS and of
different sizes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from segmenter.data.images import scaled_shape
from segmenter.data.raster import Window, open_raster
from segmenter.errors import DataError

log = logging.getLogger(__name__)

#: full-resolution rows read at a time.
STRIP_ROWS = 1024
LABEL_RASTER_SUFFIXES = ("_label.tif", "_label.tiff")


def is_label_raster(name: str) -> bool:
    return name.lower().endswith(LABEL_RASTER_SUFFIXES)


def load_raster_pair(storage: Any, photo: str, label: str, data_cfg: Any,
                     scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The image (float32 RGB) and land fraction of a raster pair at ``scale``.

    Raises:
        DataError: unreadable rasters, mismatched CRS, no overlap, bands (names the files).
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import from_bounds

    from segmenter.data.images import resize_box as _resize

    photo_name, label_name = storage.display(photo), storage.display(label)
    label_cfg = data_cfg.model_copy(update={"bands": [1, 1, 1], "nodata": None,
                                            "raster_max": 1.0})
    with open_raster(photo_name, data_cfg, storage=storage, relpath=photo) as image, \
            open_raster(label_name, label_cfg, storage=storage, relpath=label) as lab:
        for note in image.notes:
            log.info("%s: %s", photo_name, note)
        src = lab.dataset
        if src.count != 1:
            raise DataError(
                f"{label_name}: a label raster must have one band (the class of each pixel), "
                f"this one has {src.count} bands; write the class band alone "
                f"(e.g. gdal_translate -b 1)"
            )
        if (image.crs is None) != (src.crs is None) or (
                image.crs is not None and image.crs != src.crs):
            raise DataError(
                f"{label_name}: its CRS ({_crs_name(src.crs)}) differs from the image "
                f"{photo_name}'s ({_crs_name(image.crs)}); reproject one onto the other"
            )
        if image.crs is None:
            if (src.height, src.width) != (image.height, image.width):
                raise DataError(
                    f"{label_name}: no CRS and {src.width}x{src.height} pixels, but the image "
                    f"is {image.width}x{image.height}: without a CRS the grids must match"
                )
            region = Window(0, 0, image.height, image.width)
            grid = src
        else:
            left = max(image.dataset.bounds.left, src.bounds.left)
            right = min(image.dataset.bounds.right, src.bounds.right)
            bottom = max(image.dataset.bounds.bottom, src.bounds.bottom)
            top = min(image.dataset.bounds.top, src.bounds.top)
            if left >= right or bottom >= top:
                raise DataError(
                    f"{label_name}: does not overlap the image {photo_name} (label bounds "
                    f"{tuple(round(v, 3) for v in src.bounds)}, image bounds "
                    f"{tuple(round(v, 3) for v in image.dataset.bounds)})"
                )
            win = from_bounds(left, bottom, right, top, transform=image.transform)
            row0, col0 = max(0, math.floor(win.row_off + 1e-6)), max(0, math.floor(
                win.col_off + 1e-6))
            row1 = min(image.height, math.ceil(win.row_off + win.height - 1e-6))
            col1 = min(image.width, math.ceil(win.col_off + win.width - 1e-6))
            region = Window(row0, col0, row1, col1)
            grid = WarpedVRT(src, crs=image.crs, transform=image.transform,
                             width=image.width, height=image.height,
                             resampling=Resampling.nearest)
        try:
            return _read_scaled(image, grid, region, data_cfg, scale, _resize)
        finally:
            if grid is not src:
                grid.close()


def _read_scaled(image: Any, grid: Any, region: Window, data_cfg: Any, scale: float,
                 resize: Any) -> tuple[np.ndarray, np.ndarray]:
    height, width = region.shape
    small_h, small_w = scaled_shape((height, width), scale)
    ry = height / small_h
    out_image = np.empty((small_h, small_w, 3), np.float32)
    out_land = np.empty((small_h, small_w), np.float32)
    step = max(1, int(STRIP_ROWS / ry))
    water_value = data_cfg.label_water_value
    for s0 in range(0, small_h, step):
        s1 = min(small_h, s0 + step)
        if (small_h, small_w) == (height, width):
            r0, r1 = s0, s1
        else:
            r0, r1 = max(0, math.floor(s0 * ry) - 1), min(height, math.ceil(s1 * ry) + 1)
        window = Window(region.top + r0, region.left, region.top + r1, region.right)
        rgb, _ = image.read(window)
        label = grid.read(1, window=window.rio())
        land = (label != water_value).astype(np.float32)
        if (small_h, small_w) == (height, width):
            out_image[s0:s1], out_land[s0:s1] = rgb, land
            continue
        box = (0.0, s0 * ry - r0, float(width), s1 * ry - r0)
        out_image[s0:s1] = np.clip(resize(rgb, (s1 - s0, small_w), box, "box"), 0, 1)
        out_land[s0:s1] = np.clip(resize(land, (s1 - s0, small_w), box, "box"), 0, 1)
    return out_image, out_land


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]
