"""Training pairs from rasters: image + label GeoTIFF, the label put on the image grid."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_pair

pytest.importorskip("rasterio")


def test_label_on_a_coarser_grid_is_resampled_nearest(tmp_path):
    from segmenter.config import DataConfig
    from segmenter.data.ontario import load_dataset

    labels = {f"s{i}": write_pair(tmp_path / "train", f"s{i}", i) for i in range(2)}
    labels["t0"] = write_pair(tmp_path / "test", "t0", 5)
    data = load_dataset(DataConfig(source=str(tmp_path), scale=1.0), progress=False)
    for item in data.train + data.test:
        expected = np.repeat(np.repeat(labels[item.stem] != 255, 2, 0), 2, 1)
        expected = expected[: item.land.shape[0], : item.land.shape[1]]
        assert item.land.shape == item.image.shape[:2] == (96, 128)
        np.testing.assert_array_equal(item.land, expected.astype(np.float32))
    half = load_dataset(DataConfig(source=str(tmp_path), scale=0.5), progress=False)
    assert half.train[0].land.shape == (48, 64)
    assert 0 < half.train[0].land.mean() < 1  # an area average of the nearest classes


def test_label_covering_part_of_the_image_crops_it(tmp_path):
    from segmenter.config import DataConfig
    from segmenter.data.ontario import load_dataset

    for folder in ("train", "test"):
        write_pair(tmp_path / folder, "a", 0, label_origin_shift=16.0)  # 64 image px east
    data = load_dataset(DataConfig(source=str(tmp_path), scale=1.0), progress=False)
    assert data.train[0].land.shape == (96, 64)


@pytest.mark.parametrize("problem", ["crs", "overlap"])
def test_bad_label_rasters_are_one_line(tmp_path, problem):
    from segmenter.config import DataConfig
    from segmenter.data.ontario import load_dataset
    from segmenter.errors import DataError

    kwargs = {"label_crs": "EPSG:32618"} if problem == "crs" else {"label_origin_shift": 1e4}
    write_pair(tmp_path / "train", "a", 0, **kwargs)
    write_pair(tmp_path / "test", "b", 1)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(source=str(tmp_path), scale=1.0), progress=False)
    message = str(info.value)
    assert "a_label.tif" in message and "\n" not in message
    assert ("EPSG:32618" in message and "differs" in message) if problem == "crs" else \
        "does not overlap" in message


def test_train_on_raster_pairs(runner, tmp_path):
    for i in range(2):
        write_pair(tmp_path / "data" / "train", f"s{i}", i)
    write_pair(tmp_path / "data" / "test", "t0", 5)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data: {{source: '{tmp_path / 'data'}', scale: 0.5}}\n"
        "model: {depth: 2, filters: 4}\n"
        "train: {widths: {16: 4}, steps: 4, validate_every: 2, validation_batches: 1}\n"
    )
    result = runner("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "models" / "pw16.keras").is_file()
