"""A Cloud-Optimized GeoTIFF read from the moto S3 server, window by window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import PUBLIC_BUCKET

rasterio = pytest.importorskip("rasterio")


def test_cog_on_s3_predicts_like_the_local_file(s3, runner, tmp_path: Path) -> None:
    from helpers import make_run, rgb_raster

    cog = rgb_raster(tmp_path / "shore.tif", size=160, driver="COG")
    s3.client().put_object(Bucket=PUBLIC_BUCKET, Key="rasters/shore.tif", Body=cog.read_bytes())
    run = make_run(tmp_path / "run")
    cache = tmp_path / "cache"
    remote_out, local_out = tmp_path / "remote", tmp_path / "local"
    result = runner("predict", "--run", run, f"s3://{PUBLIC_BUCKET}/rasters/shore.tif",
                    "--out", remote_out, "--set", f"data.endpoint_url={s3.endpoint}",
                    "--set", f"data.cache_dir={cache}", "--set", "predict.tile_size=64")
    assert result.exit_code == 0, result.output
    local = runner("predict", "--run", run, cog, "--out", local_out,
                   "--set", "predict.tile_size=64")
    assert local.exit_code == 0, local.output
    for name in ("shore_water_prob.tif", "shore_water_mask.tif"):
        with rasterio.open(remote_out / name) as a, rasterio.open(local_out / name) as b:
            assert a.crs == b.crs and a.transform == b.transform
            np.testing.assert_array_equal(a.read(), b.read())
    # read by ranged requests: no copy of the raster in the whole-file cache
    cached = [p for p in cache.rglob("*") if p.is_file() and "listings" not in p.parts]
    assert not [p for p in cached if p.stat().st_size >= cog.stat().st_size // 2]


def test_missing_raster_on_s3_is_one_line(s3, runner, tmp_path: Path) -> None:
    from helpers import make_run

    run = make_run(tmp_path / "run")
    result = runner("predict", "--run", run, f"s3://{PUBLIC_BUCKET}/rasters/nothing.tif",
                    "--set", f"data.endpoint_url={s3.endpoint}",
                    "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nothing.tif" in result.output.strip().splitlines()[-1]


def test_gdal_environments_may_close_in_any_order(tmp_path: Path) -> None:
    """Two rasters in flight in one thread (the Dask client's): the first to finish closed
    the GDAL environment under the second, which failed with 'No GDAL environment exists'."""
    from helpers import rgb_raster

    from segmenter.config import DataConfig
    from segmenter.data.raster import Window, open_raster

    data = DataConfig.model_validate({})
    paths = [rgb_raster(tmp_path / f"r{i}.tif", size=64) for i in range(2)]
    first, second = (open_raster(str(p), data) for p in paths)
    a, b = first.__enter__(), second.__enter__()
    first.__exit__(None, None, None)  # the first raster finishes before the second
    pixels, _ = b.read(Window(0, 0, 8, 8))
    assert pixels.shape == (8, 8, 3)
    second.__exit__(None, None, None)
    del a
