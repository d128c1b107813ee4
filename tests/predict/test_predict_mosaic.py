"""Rasters end to end: tiled prediction equals one piece, georeferenced outputs, bad rasters.

Every raster is a generated sample scene written as a GeoTIFF in UTM zone 17N; outputs are read
back with rasterio. The run is tiny and untrained (its maps still vary with the input).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import loaded_run, make_run, rgb_raster, scene_pixels, transform, write_raster

rasterio = pytest.importorskip("rasterio")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def whole_land(path: Path, loaded, cfg) -> np.ndarray:
    """The raster predicted in one piece by photo.predict_land."""
    from segmenter.data.raster import Window, open_raster
    from segmenter.predict.photo import predict_land

    with open_raster(str(path), cfg.data) as raster:
        image, _ = raster.read(Window(0, 0, raster.height, raster.width))
    return predict_land(loaded.models, image, cfg, weights=loaded.scores).land_prob


@pytest.mark.parametrize("scale,passes", [("0.5", ()), ("1.0", ()), ("0.3", ()),
                                          ("0.5", ("predict.tta=true", "predict.grey=true")),
                                          ("0.5", ("predict.tta=true", "predict.grey=auto")),
                                          ("0.5", ("predict.adapt_norm=0.5",)),
                                          ("1.0", ("predict.adapt_norm=1", "predict.tta=true"))])
def test_tiled_prediction_equals_one_piece(run_dir, tmp_path, scale, passes):
    from segmenter.predict import raster

    tif = rgb_raster(tmp_path / "m.tif", size=200)  # 150 x 200
    loaded, cfg = loaded_run(run_dir, [f"data.scale={scale}", *passes])
    result = raster.predict_raster(str(tif), "m", loaded, cfg, tmp_path / "out", tile_size=64)
    assert result.tiles == 12
    with rasterio.open(result.files["water_prob"]) as src:
        tiled = 1.0 - src.read(1)
    whole = whole_land(tif, loaded, cfg)
    assert whole.std() > 1e-3  # the maps vary, so a stitching error would show
    np.testing.assert_allclose(tiled, whole, atol=2e-6, rtol=0)
    if cfg.predict.adapt_norm:  # the raster's statistics changed the map
        plain = cfg.model_copy(update={"predict": cfg.predict.model_copy(
            update={"adapt_norm": 0.0})})
        assert np.abs(whole_land(tif, loaded, plain) - whole).max() > 1e-3


def test_naive_tiling_would_fail_the_comparison(run_dir, tmp_path):
    """Predicting each tile on its own (no halo, no global grid) is visibly different."""
    from segmenter.predict.photo import predict_land

    tif = rgb_raster(tmp_path / "m.tif", size=200)
    loaded, cfg = loaded_run(run_dir)
    whole = whole_land(tif, loaded, cfg)
    image = scene_pixels(200)[0].astype(np.float32) / 255
    naive = np.zeros_like(whole)
    for top in range(0, 150, 64):
        for left in range(0, 200, 64):
            part = image[top : top + 64, left : left + 64]
            naive[top : top + 64, left : left + 64] = predict_land(
                loaded.models, part, cfg).land_prob
    assert np.abs(naive - whole).max() > 1e-4


def collar_raster(path: Path) -> tuple[Path, np.ndarray]:
    """An RGB raster with a nodata value 0 on a collar and a hole; returns the nodata mask."""
    image, _ = scene_pixels(200)
    bands = np.moveaxis(image, -1, 0).copy()
    bands[bands == 0] = 1  # real pixels are never exactly the nodata value
    nodata = np.zeros(bands.shape[1:], bool)
    nodata[:, :23] = True
    nodata[100:, 150:] = True
    bands[:, nodata] = 0
    return write_raster(path, bands, nodata=0), nodata


def test_predict_cli_writes_georeferenced_cogs(runner, run_dir, tmp_path):
    tif, nodata = collar_raster(tmp_path / "shore.tif")
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tif, "--out", out, "--vector",
                    "--set", "predict.tile_size=64", "--set", "predict.overview_size=100")
    assert result.exit_code == 0, result.output
    assert "shore: 200x150 px raster in 12 tile(s)" in result.output
    with rasterio.open(tif) as src:
        crs, geotransform = src.crs, src.transform
    with rasterio.open(out / "shore_water_prob.tif") as prob, \
            rasterio.open(out / "shore_water_mask.tif") as mask:
        for dst in (prob, mask):
            assert dst.crs == crs and dst.crs.to_epsg() == 32617
            assert dst.transform == geotransform == transform()
            assert (dst.width, dst.height) == (200, 150)
            assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert dst.profile["tiled"]
        assert np.isnan(prob.nodata) and mask.nodata == 0  # the input's 0, kept for the mask
        water_prob, classes = prob.read(1), mask.read(1)
        assert (mask.read_masks(1) == 0).tolist() == nodata.tolist()
    assert np.isnan(water_prob[nodata]).all() and np.isfinite(water_prob[~nodata]).all()
    assert (classes[nodata] == 0).all() and set(np.unique(classes[~nodata])) <= {1, 2}
    assert ((water_prob[~nodata] >= 0) & (water_prob[~nodata] <= 1)).all()
    from PIL import Image

    overlay = Image.open(out / "shore_overlay.png")
    assert overlay.width == 640 and overlay.height > 75  # 100 x 75 map, legend at least 640
    summary = json.loads((out / "predictions.json").read_text())["images"][0]
    assert summary["status"] == "ok" and summary["size"] == [150, 200]
    water_share = float((classes == 2).sum() / (~nodata).sum())
    assert summary["water_fraction"] == pytest.approx(water_share, abs=1e-6)
    polygons = json.loads((out / "shore_water.geojson").read_text())
    assert polygons["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32617"
    left, top = transform() * (0, 0)
    right, bottom = transform() * (200, 150)
    for feature in polygons["features"]:
        xs, ys = np.array(feature["geometry"]["coordinates"][0]).T
        assert (xs >= left - 1e-6).all() and (xs <= right + 1e-6).all()
        assert (ys >= bottom - 1e-6).all() and (ys <= top + 1e-6).all()
    if (classes == 2).any() and (classes == 1).any():
        assert polygons["features"]
        assert json.loads((out / "shore_shoreline.geojson").read_text())["features"]
    again = runner("predict", "--run", run_dir, tif, "--out", out)
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_16_bit_four_band_raster_reads_like_the_8_bit_one(tmp_path):
    from segmenter.config import DataConfig
    from segmenter.data.raster import Window, open_raster

    image, _ = scene_pixels(120)
    rgb = np.moveaxis(image, -1, 0).astype(np.uint16)
    nir = np.full((1, *rgb.shape[1:]), 3000, np.uint16)
    twelve = np.concatenate([rgb * 16 + 7, nir])  # 12 bits used of 16
    write_raster(tmp_path / "rgbn.tif", twelve)
    rgb_raster(tmp_path / "rgb.tif", size=120)
    cfg = DataConfig()
    with open_raster(str(tmp_path / "rgb.tif"), cfg) as raster:
        eight, _ = raster.read(Window(0, 0, raster.height, raster.width))
    with open_raster(str(tmp_path / "rgbn.tif"), cfg) as raster:
        assert raster.value_max == 4095
        sixteen, valid = raster.read(Window(0, 0, raster.height, raster.width))
        notes = " ".join(raster.notes)
    assert "bands 1 (undefined), 2 (undefined), 3 (undefined) used" in notes or \
        "used as R, G, B" in notes
    assert "not used: 4" in notes and "4095" in notes and valid.all()
    assert np.abs(sixteen - eight).max() < 0.01  # not nearly black (65535 would give ~0.06)
    with open_raster(str(tmp_path / "rgbn.tif"), DataConfig(bands=[3, 2, 1])) as raster:
        swapped, _ = raster.read(Window(0, 0, raster.height, raster.width))
    np.testing.assert_array_equal(swapped, sixteen[..., ::-1])


def test_alpha_band_is_the_nodata_mask(tmp_path):
    from rasterio.enums import ColorInterp

    from segmenter.config import DataConfig
    from segmenter.data.raster import Window, open_raster

    image, _ = scene_pixels(120)
    alpha = np.full((1, *image.shape[:2]), 255, np.uint8)
    alpha[0, :10] = 0
    bands = np.concatenate([np.moveaxis(image, -1, 0), alpha])
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    write_raster(tmp_path / "rgba.tif", bands, colorinterp=interp)
    with open_raster(str(tmp_path / "rgba.tif"), DataConfig()) as raster:
        _, valid = raster.read(Window(0, 0, raster.height, raster.width))
        assert "4 (alpha: used as the nodata mask)" in " ".join(raster.notes)
    assert not valid[:10].any() and valid[10:].all()


def test_raster_statistics_leave_nodata_out(run_dir, tmp_path):
    """predict.adapt_norm on a raster with nodata: the statistics come from the windows of the
    whole raster's tiles (as on a photo) that hold no nodata pixel, and only from them."""
    from segmenter.data.raster import Window, open_raster
    from segmenter.model import norm
    from segmenter.predict import mosaic
    from segmenter.predict import windows as patches

    loaded, cfg = loaded_run(run_dir, ["predict.adapt_norm=1", "data.scale=1.0"])
    tif, nodata = collar_raster(tmp_path / "collar.tif")
    with open_raster(str(tif), cfg.data) as raster:
        image, valid = raster.read(Window(0, 0, raster.height, raster.width))
        plan = mosaic.plan_tiles(raster.height, raster.width, 1.0, list(loaded.models), 0.5, 64)
        found = mosaic.raster_statistics(loaded.models, raster, plan, cfg)
    assert (~valid == nodata).all() and set(found) == set(loaded.models)
    for width, model in loaded.models.items():
        pad = patches.pad_width(width)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
        ok = np.pad(valid, pad, mode="symmetric")
        spread = patches.adapt_windows(*valid.shape, width, norm.ADAPT_WINDOWS)
        clean = [(t, c) for t, c in spread if ok[t : t + width, c : c + width].all()]
        assert 0 < len(clean) < len(spread)
        expected = norm.adapted_statistics(
            model, np.stack([padded[t : t + width, c : c + width] for t, c in clean]), 1.0)
        for (mean, var), (want_mean, want_var) in zip(found[width], expected, strict=True):
            np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(var, want_var, rtol=1e-5, atol=1e-6)


def test_16_bit_four_band_raster_predicts(runner, run_dir, tmp_path):
    image, _ = scene_pixels(120)
    rgb = np.moveaxis(image, -1, 0).astype(np.uint16) * 16
    write_raster(tmp_path / "rgbn.tif", np.concatenate([rgb, rgb[:1]]), nodata=65535)
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tmp_path / "rgbn.tif", "--out", out)
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "rgbn_water_mask.tif") as mask:
        assert mask.nodata == 0 and set(np.unique(mask.read(1))) <= {1, 2}
    with rasterio.open(out / "rgbn_water_prob.tif") as prob:
        assert prob.nodata == 65535  # outside [0, 1]: the input's value is kept


def test_raster_without_crs_is_predicted_and_said_once(runner, run_dir, tmp_path):
    tif = rgb_raster(tmp_path / "plain.tif", size=120, crs=None)
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tif, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.count("no coordinate reference system") == 1
    with rasterio.open(out / "plain_water_mask.tif") as mask:
        assert mask.crs is None


def test_mask_clean_up_is_said_not_to_apply_to_rasters(runner, run_dir, tmp_path):
    tif = rgb_raster(tmp_path / "m.tif", size=120)
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tif, "--out", out,
                    "--set", "postprocess.fill_holes=0.002")
    assert result.exit_code == 0, result.output
    assert result.output.count("fill_holes / remove_specks are not applied to rasters") == 1
    summary = json.loads((out / "predictions.json").read_text())["images"][0]
    assert any("not applied to rasters" in note for note in summary["notes"])
    plain = runner("predict", "--run", run_dir, tif, "--out", tmp_path / "plain")
    assert plain.exit_code == 0 and "not applied" not in plain.output


@pytest.mark.parametrize("kind", ["corrupt", "one_band", "bad_bands"])
def test_bad_rasters_are_one_line(runner, run_dir, tmp_path, kind):
    path = tmp_path / f"{kind}.tif"
    extra = []
    if kind == "corrupt":
        good = rgb_raster(tmp_path / "good.tif", size=120).read_bytes()
        path.write_bytes(good[:300])  # a TIFF header, then nothing
    elif kind == "one_band":
        write_raster(path, scene_pixels(120)[0][None, ..., 0].copy())
    else:
        rgb_raster(path, size=120)
        extra = ["--set", "data.bands=[1, 2, 5]"]
    result = runner("predict", "--run", run_dir, path, "--out", tmp_path / "out", *extra)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    failure = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert len(failure) == 1 and f"{kind}.tif" in failure[0]
    expected = {"corrupt": "the file is corrupt or truncated", "one_band": "has 1 band(s)",
                "bad_bands": "has 3 band(s) but data.bands asks for bands 1, 2, 5"}[kind]
    assert expected in failure[0]
    assert not list((tmp_path / "out").glob("*.tif"))  # no half-written output, no scratch


def test_photos_and_a_raster_in_one_call_keep_their_order(runner, run_dir, tmp_path):
    """Photos go through the decode-ahead / write-behind loop; a raster between them is
    predicted on its own (the photo before it is finished first) and the records stay in
    input order."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = scene_pixels(120)
    Image.fromarray(image).save(folder / "a_photo.png")
    rgb_raster(folder / "b_shore.tif", size=120)
    Image.fromarray(image[:, ::-1].copy()).save(folder / "c_photo.png")
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, folder, "--out", out,
                    "--set", "predict.tile_size=64")
    assert result.exit_code == 0, result.output
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert [r["stem"] for r in records] == ["a_photo", "b_shore", "c_photo"]
    assert [r["status"] for r in records] == ["ok"] * 3
    assert "tiles" in records[1] and "tiles" not in records[0]
    assert (out / "a_photo_water_mask.png").is_file() and (out / "c_photo_water_mask.png").is_file()
    assert (out / "b_shore_water_mask.tif").is_file()
    assert "3 photo(s) in " in result.output and "s per photo" in result.output


def test_a_dry_mosaic_the_models_are_sure_of_has_no_water():
    """The whole-raster GMM follows the photos' rule: sure land everywhere stays land."""
    from segmenter.config import PostprocessConfig
    from segmenter.predict.threshold import fit_decision

    rng = np.random.default_rng(5)
    land = np.clip(0.96 + rng.normal(0, 0.01, 4000), 0.001, 0.999).astype(np.float32)
    rgb = rng.random((4000, 3), dtype=np.float32)  # fields, roofs, roads: many colours
    decision = fit_decision(land, rgb, PostprocessConfig(one_class=0.2))
    assert decision.info["one_class"] == "land" and not decision.info["revised"]
    assert not decision.water(land, rgb).any()
    notebook = fit_decision(land, rgb, PostprocessConfig(one_class=0.0))
    assert notebook.info["revised"] and notebook.water(land, rgb).any()


def test_a_run_that_reads_rows_refuses_rasters(run_dir, tmp_path):
    """model.row_channel models know where a window sits in an upright photo; a raster
    predicted tile by tile gives them no such row, so it is refused, by name, before work."""
    from dataclasses import replace

    from segmenter.config import ModelConfig
    from segmenter.errors import ConfigError
    from segmenter.model.network import build_model
    from segmenter.predict import raster

    tif = rgb_raster(tmp_path / "m.tif", size=64)
    loaded, cfg = loaded_run(run_dir)
    rows = {w: build_model(ModelConfig(depth=2, filters=4, row_channel=True))
            for w in loaded.models}
    with pytest.raises(ConfigError, match=r"m\.tif: this run's models read each pixel's row"):
        raster.predict_raster(str(tif), "m", replace(loaded, models=rows), cfg,
                              tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_whole_raster_rule_calls_mixed_components_pixel_by_pixel():
    """fit_decision follows postprocess.min_purity as a photo's GMM does."""
    from segmenter.config import PostprocessConfig
    from segmenter.predict.threshold import fit_decision

    rng = np.random.default_rng(2)
    water = rng.random(4000) < 0.4
    land = np.where(water, 0.1, 0.9).astype(np.float32)
    rgb = np.full((4000, 3), 0.12, np.float32) + rng.normal(0, 0.01, (4000, 3)).astype(np.float32)
    notebook = fit_decision(land, rgb, PostprocessConfig(n_components=1))
    assert not notebook.water(land, rgb).any()
    decision = fit_decision(land, rgb, PostprocessConfig(n_components=1, min_purity=0.7))
    assert decision.info["components"][0]["class"] == "per pixel"
    np.testing.assert_array_equal(decision.water(land, rgb), water)
    # purity_ramp: the same blend as a photo's GMM. Purity 0.6 sits in a ramp from 0.55 to
    # 0.75, so each pixel's own probability weighs 0.75 against the cluster's call, land.
    ramp = PostprocessConfig(n_components=1, min_purity=0.55, purity_ramp=0.2)
    decision = fit_decision(land, rgb, ramp)
    component = decision.info["components"][0]
    assert component["class"] == "land, blended"
    assert component["pixel_weight"] == pytest.approx(0.75, abs=0.01)
    np.testing.assert_array_equal(decision.water(land, rgb), water)  # 0.25 + 0.75 * 0.1 <= 0.5


def test_the_whole_raster_rule_votes_like_a_photo():
    """Several mixtures (n_components as a list): a raster's pixels are called by the same
    majority as a photo's, from the mixtures fitted on its subsample."""
    from segmenter.config import PostprocessConfig
    from segmenter.predict.threshold import fit_decision

    rng = np.random.default_rng(2)
    water = rng.random(4000) < 0.4
    land = np.where(water, 0.1, 0.9).astype(np.float32)
    rgb = np.full((4000, 3), 0.12, np.float32) + rng.normal(0, 0.01, (4000, 3)).astype(np.float32)
    singles = [fit_decision(land, rgb, PostprocessConfig(n_components=k)).water(land, rgb)
               for k in (1, 2, 3)]
    assert not singles[0].any() and np.array_equal(singles[1], water)
    decision = fit_decision(land, rgb, PostprocessConfig(n_components=[1, 2, 3]))
    assert [m["n_components"] for m in decision.info["mixtures"]] == [1, 2, 3]
    voted = decision.water(land, rgb)
    np.testing.assert_array_equal(voted, np.sum(singles, axis=0) >= 2)
    np.testing.assert_array_equal(voted, water)


def test_raster_with_several_mixtures_predicts(runner, run_dir, tmp_path):
    tif, nodata = collar_raster(tmp_path / "shore.tif")
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tif, "--out", out,
                    "--set", "predict.tile_size=64", "--set", "postprocess.n_components=[2,3,4]")
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "shore_water_mask.tif") as mask:
        classes = mask.read(1)
    assert (classes[nodata] == 0).all() and set(np.unique(classes[~nodata])) <= {1, 2}
    summary = json.loads((out / "predictions.json").read_text())["images"][0]
    water_share = float((classes == 2).sum() / (~nodata).sum())
    assert summary["water_fraction"] == pytest.approx(water_share, abs=1e-6)
    assert summary["method"] == "gmm" and 0 < summary["threshold"] < 1
