"""Generated georeferenced rasters for the raster tests: sample scenes in UTM zone 17N."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CRS = "EPSG:32617"  # WGS 84 / UTM zone 17N (Lake Ontario)
ORIGIN = (612_345.0, 4_845_678.0)
PIXEL = 0.25  # metres


def transform(pixel: float = PIXEL):
    from rasterio.transform import from_origin

    return from_origin(ORIGIN[0], ORIGIN[1], pixel, pixel)


def scene_pixels(size: int = 160, index: int = 0, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A generated sample scene: uint8 (H, W, 3) RGB and bool (H, W) water."""
    from segmenter.data.sample import make_scene

    scene = make_scene(index, size, seed)
    return scene.image, scene.water


def write_raster(path: Path, bands: np.ndarray, *, crs: str | None = CRS, nodata=None,
                 pixel: float = PIXEL, driver: str = "GTiff", colorinterp=None,
                 **options) -> Path:
    """Write a (count, H, W) array as a tiled GeoTIFF (or a COG with driver='COG')."""
    import rasterio

    count, height, width = bands.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
               "dtype": bands.dtype.name, "crs": crs, "transform": transform(pixel),
               "nodata": nodata, "tiled": True, "blockxsize": 64, "blockysize": 64,
               "compress": "deflate", **options}
    target = path if driver == "GTiff" else path.with_suffix(".plain.tif")
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(bands)
        if colorinterp:
            dst.colorinterp = colorinterp
    if driver == "COG":
        import rasterio.shutil

        rasterio.shutil.copy(target, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=64)
        target.unlink()
    return path


def rgb_raster(path: Path, size: int = 160, **kwargs) -> Path:
    image, _ = scene_pixels(size)
    return write_raster(path, np.moveaxis(image, -1, 0).copy(), **kwargs)
