"""Rasters, hardened (issue 33): the GMM subsample on the global grid, tiny rasters, runs that
read rows, plain TIFFs, small water polygons, scratch files of killed runs, label bands.

Every raster is generated (``raster_data``); the run is tiny and untrained.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import loaded_run, make_run, rgb_raster, scene_pixels, write_raster

rasterio = pytest.importorskip("rasterio")

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def read_band(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


# ------------------------------------------------------------------ 1: subsample on the grid


def test_the_mask_does_not_depend_on_the_tile_size(run_dir, tmp_path):
    """predict.tile_size is a memory setting: small tiles, other tiles and one piece give the
    same mask byte for byte (the GMM subsample is drawn on the raster's global pixel grid)."""
    from segmenter.predict import raster

    tif = rgb_raster(tmp_path / "m.tif", size=200)  # 150 x 200
    # 2000 of 30 000 pixels: the subsample is a real draw (all pixels would hide the bug)
    loaded, cfg = loaded_run(run_dir, ["postprocess.subsample=2000"])
    masks, infos = {}, {}
    for tile_size in (64, 100, 4096):
        result = raster.predict_raster(str(tif), "m", loaded, cfg, tmp_path / f"t{tile_size}",
                                       tile_size=tile_size)
        masks[tile_size] = read_band(result.files["water_mask"])
        infos[tile_size] = result.threshold
    assert infos[4096]["fitted_on"] == 2000
    assert set(np.unique(masks[4096])) == {1, 2}  # a real mask, not a blank one
    for tile_size in (64, 100):
        assert infos[tile_size] == infos[4096], tile_size
        assert masks[tile_size].tobytes() == masks[4096].tobytes(), (
            f"tile_size {tile_size}: {(masks[tile_size] != masks[4096]).mean():.2%} of pixels "
            f"differ from one piece")


def test_each_tile_draws_its_part_of_one_global_sample(run_dir, tmp_path):
    """A tile's share of the subsample is a pure function of the tile and the config (a Dask
    worker draws what this process draws): the pixels picked are the same whether the raster
    is cut in 12 tiles or predicted in one piece, and change with postprocess.seed."""
    import dataclasses

    from segmenter.data.raster import open_raster
    from segmenter.predict import mosaic
    from segmenter.predict.models import select_models
    from segmenter.predict.stitch import merge_weights as _merge_weights

    tif = rgb_raster(tmp_path / "m.tif", size=200)
    loaded, cfg = loaded_run(run_dir, ["postprocess.subsample=2000"])
    models = select_models(loaded.models, cfg)
    weights = _merge_weights(models, cfg.predict.merge, loaded.scores)

    def drawn(tile_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        run_cfg = cfg.model_copy(update={"postprocess": cfg.postprocess.model_copy(
            update={"seed": seed})})
        index, land = [], []
        with open_raster(str(tif), cfg.data) as raster:
            plan = mosaic.plan_tiles(raster.height, raster.width, cfg.data.scale,
                                     list(models), cfg.predict.overlap, tile_size)
            rate = mosaic.sample_rate(run_cfg.postprocess, raster.height, raster.width)
            bare = dataclasses.replace(plan, tiles=[])  # as the Dask job ships it
            for tile in reversed(plan.tiles):  # any order
                probs = mosaic.tile_pass1(models, raster, bare, tile, run_cfg, weights, rate,
                                          None)
                index.append(probs.sample_index)
                land.append(probs.sample_land)
        index, land = np.concatenate(index), np.concatenate(land)
        order = np.argsort(index)
        return index[order], land[order]

    tiled, tiled_land = drawn(64, 0)
    whole, whole_land = drawn(4096, 0)
    assert 3000 < tiled.size < 5000  # about 2 x subsample of 30 000 pixels
    np.testing.assert_array_equal(tiled, whole)
    np.testing.assert_allclose(tiled_land, whole_land, atol=2e-6, rtol=0)
    other, _ = drawn(64, 1)
    assert other.size and not np.array_equal(other, whole)


# --------------------------------------------------------------------- 3: tiny rasters


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (1, 3), (5, 4)])
def test_tiny_rasters_are_predicted(run_dir, tmp_path, shape):
    from segmenter.predict import raster

    rng = np.random.default_rng(sum(shape))
    bands = (rng.random((3, *shape)) * 255).astype(np.uint8)
    tif = write_raster(tmp_path / "tiny.tif", bands)
    loaded, cfg = loaded_run(run_dir)
    result = raster.predict_raster(str(tif), "tiny", loaded, cfg, tmp_path / "out",
                                   vector=True)
    mask = read_band(result.files["water_mask"])
    prob = read_band(result.files["water_prob"])
    assert mask.shape == prob.shape == shape
    assert set(np.unique(mask)) <= {1, 2} and np.isfinite(prob).all()
    assert result.water_fraction == pytest.approx((mask == 2).mean())
    threshold = result.threshold["threshold"]
    if result.threshold["method"] == "global":  # too few pixels for a mixture: said so
        assert any("too few pixels" in note for note in result.notes)
        np.testing.assert_array_equal(mask == 2, 1.0 - prob <= threshold)
    assert Path(result.files["water_vector"]).is_file()


def test_a_raster_with_one_valid_pixel_is_predicted(run_dir, tmp_path):
    from segmenter.predict import raster

    bands = np.zeros((3, 30, 40), np.uint8)
    bands[:, 12, 7] = (40, 90, 160)
    tif = write_raster(tmp_path / "one.tif", bands, nodata=0)
    loaded, cfg = loaded_run(run_dir)
    result = raster.predict_raster(str(tif), "one", loaded, cfg, tmp_path / "out")
    mask = read_band(result.files["water_mask"])
    assert mask[12, 7] in (1, 2) and (np.delete(mask.ravel(), 12 * 40 + 7) == 0).all()
    assert result.threshold["method"] == "global"
    assert result.water_fraction in (0.0, 1.0)


@pytest.mark.parametrize("size", [0, 1])
def test_the_whole_raster_rule_with_too_few_samples_is_the_threshold(size):
    """As a photo of one pixel: no mixture, the plain threshold, and a note that says so."""
    from segmenter.config import PostprocessConfig
    from segmenter.predict.threshold import fit_decision

    land = np.full(size, 0.3, np.float32)
    rgb = np.full((size, 3), 0.2, np.float32)
    decision = fit_decision(land, rgb, PostprocessConfig(threshold=0.4))
    assert decision.method == "global" and decision.threshold == 0.4
    assert "too few pixels" in decision.info["note"]
    np.testing.assert_array_equal(decision.water(np.array([0.3, 0.5], np.float32),
                                                 np.zeros((2, 3), np.float32)), [True, False])


# ---------------------------------------------------------------- 4: runs that read rows


@pytest.fixture(scope="module")
def row_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("rows") / "run",
                    extra=["data.upright=true", "model.row_channel=true"])


def test_a_run_that_reads_rows_refuses_rasters_on_every_path(runner, row_run, tmp_path):
    """The refusal is in RasterJob, which the one-process path and the Dask / --skip-existing
    path both use: one line naming the raster, before any work."""
    from segmenter.config import load_config
    from segmenter.errors import ConfigError
    from segmenter.predict import raster
    from segmenter.runs import open_run

    tif = rgb_raster(tmp_path / "m.tif", size=64)
    cfg = load_config(None, [], base=open_run(row_run).config)
    assert cfg.model.row_channel is True
    with pytest.raises(ConfigError, match=r"m\.tif: this run's models read each pixel's row"):
        raster.RasterJob(str(tif), "m", [16, 32], cfg, tmp_path / "direct")
    out = tmp_path / "out"
    result = runner("predict", "--run", row_run, tif, "--out", out, "--skip-existing")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "TypeError" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "m.tif" in failed[0] and "model.row_channel" in failed[0]
    assert not list(out.glob("*.tif"))


# ------------------------------------------------------------ 5: TIFFs without a georeference


def plain_tiff(path: Path, size: int = 120) -> Path:
    """A TIFF as any image tool writes it: no CRS, no geotransform."""
    from PIL import Image

    Image.fromarray(scene_pixels(size)[0]).save(path)
    return path


def test_a_plain_tiff_gets_one_note_and_no_raw_warning(runner, run_dir, tmp_path, recwarn):
    from rasterio.errors import NotGeoreferencedWarning

    from segmenter.predict import raster

    tif = plain_tiff(tmp_path / "plain.tif")
    loaded, cfg = loaded_run(run_dir)
    result = raster.predict_raster(str(tif), "plain", loaded, cfg, tmp_path / "direct",
                                   vector=True)
    assert sum("no coordinate" in note for note in result.notes) == 1
    out = tmp_path / "out"
    cli = runner("predict", "--run", run_dir, tif, "--out", out, "--vector")
    assert cli.exit_code == 0, cli.output
    assert cli.output.count("no coordinate reference system") == 1
    assert "NotGeoreferencedWarning" not in cli.output and "site-packages" not in cli.output
    raw = [w for w in recwarn if issubclass(w.category, NotGeoreferencedWarning)]
    assert not raw, [f"{w.filename}:{w.lineno}" for w in raw]
    assert read_band(out / "plain_water_mask.tif").shape == (90, 120)


# --------------------------------------------------------------------- 6: water polygons


def mask_tif(path: Path, water: np.ndarray, pixel: float = 1.0) -> Path:
    classes = np.where(water, 2, 1).astype(np.uint8)
    return write_raster(path, classes[None], pixel=pixel)


@pytest.mark.parametrize("tolerance", [None, 1.0, 2.0])
def test_water_polygons_keep_their_area(tmp_path, tolerance):
    """Simplifying never halves or drops a small water body: every polygon's geometry and
    its ``area`` are the pixels' area; a large one is still simplified."""
    from helpers import transform
    from shapely import geometry

    from segmenter.outputs.geo import write_vectors
    from segmenter.outputs.names import raster_output_paths

    water = np.zeros((60, 60), bool)
    water[2, 2] = True  # one pixel
    water[6, 6:8] = True  # two
    water[10, 10:12] = True  # an L of three
    water[11, 10] = True
    water[15:17, 15:17] = True  # a 2 x 2 square
    rows, cols = np.mgrid[:60, :60]
    disc = (rows - 38) ** 2 + (cols - 38) ** 2 <= 17**2
    water |= disc
    tif = mask_tif(tmp_path / "m.tif", water)
    paths = raster_output_paths(tmp_path, "m")
    write_vectors(tif, paths, None, transform(1.0), tolerance)
    features = json.loads(paths["water_vector"].read_text())["features"]
    areas = sorted(geometry.shape(f["geometry"]).area for f in features)
    assert areas[:4] == [1.0, 2.0, 3.0, 4.0]
    assert sorted(f["properties"]["area"] for f in features) == [1.0, 2.0, 3.0, 4.0,
                                                                 float(disc.sum())]
    big = geometry.shape(max(features, key=lambda f: f["properties"]["area"])["geometry"])
    assert abs(big.area - disc.sum()) <= 0.05 * disc.sum()
    from rasterio.features import shapes

    traced = [geometry.shape(g) for g, _ in shapes(np.uint8(disc), mask=disc,
                                                   transform=transform(1.0))]
    assert len(big.exterior.coords) < len(traced[0].exterior.coords) / 2  # still simplified


# ---------------------------------------------------------------- 8: scratch files


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_scratch_files_of_a_killed_run_are_removed_by_the_next(run_dir, tmp_path):
    """kill -9 during a raster leaves its scratch GeoTIFFs; the next raster job in that folder
    removes those whose process is gone, and leaves a live process's alone."""
    from segmenter.outputs.geo import scratch_owner
    from segmenter.predict import raster

    tif = rgb_raster(tmp_path / "m.tif", size=120)
    out = tmp_path / "out"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from segmenter.predict import raster\n"
        "from segmenter.config import load_config\n"
        "cfg = load_config(None, [])\n"
        "with raster.RasterJob(sys.argv[1], 'm', [16], cfg, Path(sys.argv[2])):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tif), str(out)],
                            cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 2 and all(".scratch" in name for name in left)  # the junk to clean
    machine = scratch_owner().partition("@")[2]
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = out / f".other.x1y2z3.pid{writer.pid}@{machine}.scratch.tif"
        live.write_bytes(b"being written")  # a live process's file
        dead = out / f".other.x1y2z3.pid{_dead_pid()}@{machine}.scratch.tif"
        dead.write_bytes(b"left behind")
        remote = out / f".other.x1y2z3.pid{_dead_pid()}@elsewhere-host.scratch.tif"
        remote.write_bytes(b"another machine's")  # its pid means nothing here

        loaded, cfg = loaded_run(run_dir)
        raster.predict_raster(str(tif), "n", loaded, cfg, out)
        names = {p.name for p in out.iterdir()}
    finally:
        writer.kill()
        writer.wait()
    assert not (set(left) | {dead.name}) & names
    assert live.name in names and remote.name in names
    assert {"n_water_mask.tif", "n_water_prob.tif", "n_overlay.png"} <= names


# ---------------------------------------------------------------- 9: label bands


def test_a_label_raster_of_three_bands_is_refused_by_name(tmp_path):
    from helpers import write_pair

    from segmenter.config import DataConfig
    from segmenter.data.ontario import load_dataset
    from segmenter.errors import DataError

    write_pair(tmp_path / "train", "a", 0)
    write_pair(tmp_path / "test", "b", 1)
    label = tmp_path / "train" / "a_label.tif"
    with rasterio.open(label) as src:
        profile, values = src.profile, src.read(1)
    profile["count"] = 3
    with rasterio.open(label, "w", **profile) as dst:
        dst.write(np.stack([values, 255 - values, values]))
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(source=str(tmp_path), scale=1.0), progress=False)
    message = str(info.value)
    assert "a_label.tif" in message and "\n" not in message
    assert "3 bands" in message and "one band" in message
