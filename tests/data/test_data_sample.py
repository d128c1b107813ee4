"""The generated sample: layout, determinism, and that brightness alone cannot separate water."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import data_cfg
from scipy.io import loadmat
from skimage.filters import threshold_otsu

from segmenter.data.ontario import load_dataset
from segmenter.data.sample import ensure_sample, make_scene, write_sample


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float((predicted & truth).sum() / max(1, (predicted | truth).sum()))


def _best_threshold_iou(feature: np.ndarray, water: np.ndarray) -> float:
    """The best water IoU of any global threshold, water taken on either side of it."""
    best = 0.0
    for threshold in np.quantile(feature, np.linspace(0.01, 0.99, 99)):
        best = max(best, _iou(feature < threshold, water), _iou(feature > threshold, water))
    return best


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(index, 256, seed=0) for index in range(12)]


def test_brightness_threshold_scores_water_iou_well_below_0_8(scenes) -> None:
    """Otsu on grey, and even the best threshold chosen per scene with the answer known."""
    otsu, oracle = [], []
    for scene in scenes:
        grey = scene.image.astype(np.float32).mean(axis=-1)
        cut = threshold_otsu(grey)
        otsu.append(max(_iou(grey < cut, scene.water), _iou(grey > cut, scene.water)))
        oracle.append(_best_threshold_iou(grey, scene.water))
    assert np.mean(otsu) < 0.5
    assert np.mean(oracle) < 0.6
    assert max(oracle) < 0.8


def test_water_is_learnable_from_colour(scenes) -> None:
    """A crude colour cue (blue minus green) already beats any brightness threshold."""
    colour, brightness = [], []
    for scene in scenes:
        pixels = scene.image.astype(np.float32)
        colour.append(_best_threshold_iou(pixels[..., 2] - pixels[..., 1], scene.water))
        brightness.append(_best_threshold_iou(pixels.mean(axis=-1), scene.water))
    assert np.mean(colour) > np.mean(brightness) + 0.2


def test_water_share_per_scene(scenes) -> None:
    shares = [scene.water.mean() for scene in scenes]
    assert 0.15 <= min(shares) and max(shares) <= 0.40
    assert scenes[0].image.shape == (192, 256, 3) and scenes[0].image.dtype == np.uint8


def test_generator_is_deterministic(tmp_path: Path) -> None:
    write_sample(tmp_path / "a", n=3, size=64, seed=5)
    write_sample(tmp_path / "b", n=3, size=64, seed=5)
    write_sample(tmp_path / "c", n=3, size=64, seed=6)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 6
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    photo = Path("train/scene_000.JPG")
    assert (tmp_path / "a" / photo).read_bytes() != (tmp_path / "c" / photo).read_bytes()
    # Scene i does not depend on how many scenes are written.
    one = make_scene(1, 64, seed=5)
    np.testing.assert_array_equal(one.water, make_scene(1, 64, seed=5).water)


def test_ontario_layout(tmp_path: Path) -> None:
    counts = write_sample(tmp_path, n=4, size=64, seed=0)
    assert counts == {"train": 3, "test": 1}
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == [
        "scene_003.JPG",
        "scene_003_mres.mat",
    ]
    mat = loadmat(tmp_path / "train" / "scene_000_mres.mat")
    assert mat["class"].dtype == np.uint8 and mat["class"].shape == (48, 64)
    assert set(np.unique(mat["class"])) == {1, 2}  # land 1, water 2
    assert [name.strip() for name in mat["labels"]] == ["land", "water"]


def test_sample_data_cli(runner, tmp_path: Path) -> None:
    result = runner("sample-data", tmp_path / "out", "--n", "3", "--seed", "2", "--size", "64")
    assert result.exit_code == 0, result.output
    assert "train 2, test 1" in result.output
    dataset = load_dataset(data_cfg(source=str(tmp_path / "out")), progress=False)
    assert len(dataset.train) == 2 and len(dataset.test) == 1


def test_sample_data_cli_rejects_bad_sizes(runner, tmp_path: Path) -> None:
    result = runner("sample-data", tmp_path, "--size", "10")
    assert result.exit_code == 2 and "--size" in result.output


def test_source_sample_is_generated_once_into_the_cache(tmp_path: Path) -> None:
    cfg = data_cfg(source="sample", cache_dir=str(tmp_path), sample={"n": 3, "size": 64})
    folder = Path(ensure_sample(cfg))
    assert folder.parent == tmp_path / "sample"
    stamp = (folder / "train" / "scene_000.JPG").stat().st_mtime_ns
    dataset = load_dataset(cfg, progress=False)
    assert dataset.source == "sample" and len(dataset.train) == 2
    assert Path(ensure_sample(cfg)) == folder
    assert (folder / "train" / "scene_000.JPG").stat().st_mtime_ns == stamp  # not rewritten
    other = data_cfg(
        source="sample", cache_dir=str(tmp_path), sample={"n": 3, "size": 64, "seed": 1}
    )
    assert Path(ensure_sample(other)) != folder
