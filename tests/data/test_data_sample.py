"""The generated sample: layout, determinism, and that brightness alone cannot separate water."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import data_cfg
from scipy.io import loadmat
from skimage.filters import threshold_otsu

from segmenter.data.ontario import load_dataset
from segmenter.data.sample import DRY_EVERY, ensure_sample, is_dry, make_scene, write_sample
from segmenter.errors import DataError


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
    """The scenes with water (the dry ones are tested on their own)."""
    return [make_scene(index, 256, seed=0) for index in range(12) if not is_dry(index)]


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


def _scene_colour_cue(scene) -> np.ndarray:
    """Within one scene, the projection of RGB that best separates water from land (LDA)."""
    pixels = scene.image.reshape(-1, 3).astype(np.float32)
    water = scene.water.reshape(-1)
    spread = np.cov(pixels[water].T) + np.cov(pixels[~water].T) + 1e-3 * np.eye(3)
    direction = np.linalg.solve(spread, pixels[water].mean(0) - pixels[~water].mean(0))
    return (pixels @ direction).reshape(scene.water.shape)


@pytest.mark.parametrize("look", ["train", "shifted"])
def test_water_is_learnable_within_a_scene(look: str) -> None:
    """Within a scene, colour separates water far better than brightness does."""
    colour, brightness = [], []
    for index in (i for i in range(8) if not is_dry(i)):
        scene = make_scene(index, 256, seed=0, look=look)
        colour.append(_best_threshold_iou(_scene_colour_cue(scene), scene.water))
        brightness.append(_best_threshold_iou(scene.image.mean(axis=-1), scene.water))
    assert np.mean(colour) > np.mean(brightness) + 0.15


def test_shifted_scenes_have_colours_no_training_scene_has() -> None:
    """Mean water colour (normalised to chromaticity) of shifted scenes lies outside training's."""

    def water_chroma(scene) -> np.ndarray:
        rgb = scene.image[scene.water].astype(np.float32).mean(axis=0)
        return rgb / rgb.sum()

    wet = [i for i in range(24) if not is_dry(i)]
    train = np.array([water_chroma(make_scene(i, 128, seed=0)) for i in wet])
    shifted = np.array([water_chroma(make_scene(i, 128, seed=0, look="shifted")) for i in wet])
    # Training water is bluish (blue share above red share); most shifted water is not.
    assert np.all(train[:, 2] >= train[:, 0] - 0.01)
    assert np.mean(shifted[:, 2] < shifted[:, 0] - 0.01) > 0.5
    nearest = np.min(np.linalg.norm(shifted[:, None] - train[None], axis=-1), axis=1)
    assert np.median(nearest) > 0.03
    with pytest.raises(ValueError, match="look must be one of"):
        make_scene(0, 64, seed=0, look="sunset")


def test_water_share_per_scene(scenes) -> None:
    shares = [scene.water.mean() for scene in scenes]
    assert 0.15 <= min(shares) and max(shares) <= 0.40
    assert scenes[0].image.shape == (192, 256, 3) and scenes[0].image.dtype == np.uint8


def test_generator_is_deterministic(tmp_path: Path) -> None:
    write_sample(tmp_path / "a", n=3, size=64, seed=5)
    write_sample(tmp_path / "b", n=3, size=64, seed=5)
    write_sample(tmp_path / "c", n=3, size=64, seed=6)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 8  # 3 scenes + 1 shifted, photo and label each
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    photo = Path("train/scene_000.JPG")
    assert (tmp_path / "a" / photo).read_bytes() != (tmp_path / "c" / photo).read_bytes()
    # Scene i does not depend on how many scenes are written: scene_001 is in train/ when
    # three are written and in test/ when two are; both equal a fresh generation.
    write_sample(tmp_path / "d", n=2, size=64, seed=5)
    fresh = make_scene(1, 64, seed=5)
    for written in (tmp_path / "a" / "train", tmp_path / "d" / "test"):
        classes = loadmat(written / "scene_001_mres.mat")["class"]
        np.testing.assert_array_equal(classes == 2, fresh.water)
        assert (written / "scene_001.JPG").read_bytes() == (
            tmp_path / "a" / "train" / "scene_001.JPG"
        ).read_bytes()
    assert not np.array_equal(make_scene(1, 64, seed=6).water, fresh.water)


def test_ontario_layout(tmp_path: Path) -> None:
    counts = write_sample(tmp_path, n=4, size=64, seed=0)
    assert counts == {"train": 3, "test": 1, "test_shifted": 1}
    assert sorted(p.name for p in (tmp_path / "test_shifted").iterdir()) == [
        "shifted_000.JPG",
        "shifted_000_mres.mat",
    ]
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
    assert "train 2, test 1, test_shifted 1" in result.output
    dataset = load_dataset(data_cfg(source=str(tmp_path / "out")), progress=False)
    assert len(dataset.train) == 2 and len(dataset.test) == 1


def test_sample_data_cli_rejects_bad_sizes(runner, tmp_path: Path) -> None:
    result = runner("sample-data", tmp_path, "--size", "10")
    assert result.exit_code == 2 and "--size" in result.output


def test_sample_limits_come_from_the_schema(runner, tmp_path: Path) -> None:
    """The CLI's ranges are the schema's, and write_sample reports the schema's key."""
    from segmenter.cli.sample import sample_data
    from segmenter.config import SampleConfig

    schema = SampleConfig.model_json_schema()["properties"]
    ranges = {
        p.name: (getattr(p.type, "min", None), getattr(p.type, "max", None))
        for p in sample_data.params
    }
    for key in ("n", "size"):
        assert ranges[key] == (schema[key]["minimum"], schema[key]["maximum"])
    with pytest.raises(DataError, match=r"^sample\.n: input should be greater than or equal to 2"):
        write_sample(tmp_path / "x", n=1, size=64, seed=0)
    with pytest.raises(DataError, match=r"^sample\.size: input should be less than or equal to"):
        write_sample(tmp_path / "x", n=2, size=10**6, seed=0)
    assert not (tmp_path / "x").exists()


def test_sample_data_refuses_a_non_empty_folder(runner, tmp_path: Path) -> None:
    """Old and new scenes would mix (same stems in train/ and test/): refused, one line."""
    out = tmp_path / "out"
    assert runner("sample-data", out, "--n", "4", "--size", "64").exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = runner("sample-data", out, "--n", "2", "--size", "64", "--seed", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {out}: folder is not empty")
    assert "--overwrite" in errors[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # untouched

    result = runner("sample-data", out, "--n", "2", "--size", "64", "--seed", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.rglob("*.JPG")) == [
        "scene_000.JPG", "scene_001.JPG", "shifted_000.JPG"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary leftovers
    dataset = load_dataset(data_cfg(source=str(out)), progress=False)
    assert [i.stem for i in dataset.train] == ["scene_000"]
    assert [i.stem for i in dataset.test] == ["scene_001"]


def test_sample_data_into_an_empty_folder(runner, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert runner("sample-data", tmp_path / "empty", "--n", "2", "--size", "64").exit_code == 0
    assert (tmp_path / "empty" / "train" / "scene_000.JPG").is_file()
    assert not (tmp_path / "empty" / "COMPLETE").exists()  # the cache's marker only


def test_interrupted_generation_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    """A failure part-way leaves neither a half-written folder nor a temporary one."""
    import segmenter.data.sample as sample_module

    calls = []

    def failing(index: int, size: int, seed: int):
        calls.append(index)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return make_scene(index, size, seed)

    monkeypatch.setattr(sample_module, "make_scene", failing)
    with pytest.raises(DataError, match=r"out: cannot write the sample \(No space left"):
        write_sample(tmp_path / "out", n=3, size=64, seed=0)
    assert list(tmp_path.iterdir()) == []
    cfg = data_cfg(source="sample", cache_dir=str(tmp_path / "cache"), sample={"n": 3, "size": 64})
    calls.clear()
    with pytest.raises(DataError, match="cannot write the sample"):
        ensure_sample(cfg)
    assert list((tmp_path / "cache" / "sample").iterdir()) == []


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


def test_one_scene_in_eight_is_dry_and_the_others_hold_water():
    dry = [i for i in range(2 * DRY_EVERY) if is_dry(i)]
    assert dry == [DRY_EVERY - 2, 2 * DRY_EVERY - 2]
    for index in range(2 * DRY_EVERY):
        scene = make_scene(index, 128, seed=0)
        if index in dry:
            assert not scene.water.any()
            # An inland scene still has the dark canopy and shadows that look like water.
            assert (scene.image.mean(axis=2) < 50).mean() > 0.05
        else:
            assert 0.1 < scene.water.mean() < 0.45, index


def test_written_sample_holds_a_dry_scene_in_train_and_in_test(tmp_path):
    counts = write_sample(tmp_path / "sample", n=16, size=96, seed=0)
    assert counts["train"] == 12 and counts["test"] == 4
    for split, stem in (("train", "scene_006"), ("test", "scene_014")):
        classes = loadmat(tmp_path / "sample" / split / f"{stem}_mres.mat")["class"]
        assert classes.shape == (72, 96) and (classes == 1).all()
    wet = loadmat(tmp_path / "sample" / "train" / "scene_005_mres.mat")["class"]
    assert (wet == 2).any()
