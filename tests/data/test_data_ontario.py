"""Pairing by stem, loading, splitting, and every bad input as one line naming the file."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import data_cfg
from PIL import Image
from scipy.io import loadmat, savemat

from segmenter.data.images import resize_land
from segmenter.data.ontario import find_pairs, load_dataset, split_by_seed
from segmenter.data.storage import open_storage
from segmenter.errors import DataError


def _write_photo(path: Path, shape: tuple[int, int] = (12, 16), value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*shape, 3), value, np.uint8)).save(path, format="PNG")


def _write_mat(path: Path, classes: np.ndarray, labels: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: dict[str, object] = {"class": classes.astype(np.uint8)}
    if labels is not None:
        keys["labels"] = labels
    savemat(path, keys)


def _run_data(runner, source: Path, *extra: str):
    args = ["data", "--set", f"data.source={source}"]
    for item in extra:
        args += ["--set", item]
    return runner(*args)


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


# --------------------------------------------------------------------------------------------
# Pairing


def test_pairing_is_by_stem_never_by_listing_order(tmp_path: Path) -> None:
    train = tmp_path / "train"
    # Sorted listings would pair "a.JPG" with "aa_mres.mat": stems must decide.
    for stem in ("a", "aa", "b"):
        _write_photo(train / f"{stem}.png")
    _write_mat(train / "aa_mres.mat", np.ones((12, 16)))
    _write_mat(train / "b.mat", np.ones((12, 16)))
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(train / "a_label.png")
    (train / "README.txt").write_text("ignored")
    pairs, problems = find_pairs(open_storage(str(tmp_path), data_cfg()), "train")
    assert [(p.stem, p.photo, p.label) for p in pairs] == [
        ("a", "train/a.png", "train/a_label.png"),
        ("aa", "train/aa.png", "train/aa_mres.mat"),
        ("b", "train/b.png", "train/b.mat"),
    ]
    assert problems == []


def test_photo_extensions_and_label_preference(tmp_path: Path) -> None:
    train = tmp_path / "train"
    _write_photo(train / "x.JPG")
    (train / "y.jpeg").write_bytes((train / "x.JPG").read_bytes())
    (train / "z.tif").write_bytes(b"")
    for stem in "xyz":
        _write_mat(train / f"{stem}_mres.mat", np.ones((12, 16)))
    _write_mat(train / "x.mat", np.ones((12, 16)))  # less preferred than x_mres.mat
    pairs, problems = find_pairs(open_storage(str(tmp_path), data_cfg()), "train")
    assert {p.stem: p.label for p in pairs} == {
        "x": "train/x_mres.mat",
        "y": "train/y_mres.mat",
        "z": "train/z_mres.mat",
    }
    assert len(problems) == 1 and "x.mat: the photo has a preferred label" in problems[0]


def test_each_label_pairs_with_one_photo(tmp_path: Path) -> None:
    """a_mres.mat is a.JPG's label (<stem>_mres.mat), not also a_mres.JPG's (<stem>.mat)."""
    train = tmp_path / "train"
    _write_photo(train / "a.JPG")
    _write_photo(train / "a_mres.JPG")
    _write_mat(train / "a_mres.mat", np.ones((12, 16)))
    pairs, problems = find_pairs(open_storage(str(tmp_path), data_cfg()), "train")
    assert [(p.stem, p.photo, p.label) for p in pairs] == [("a", "train/a.JPG", "train/a_mres.mat")]
    assert problems == [
        f"{tmp_path}/train/a_mres.JPG: photo has no label (a_mres.mat is the label of a.JPG); "
        "skipped"
    ]
    # With its own label the second photo pairs too.
    _write_mat(train / "a_mres_mres.mat", np.ones((12, 16)))
    pairs, problems = find_pairs(open_storage(str(tmp_path), data_cfg()), "train")
    assert {p.stem: p.label for p in pairs} == {
        "a": "train/a_mres.mat",
        "a_mres": "train/a_mres_mres.mat",
    }
    assert problems == []


def test_unpaired_files_are_reported_and_skipped(scenes_copy: Path, caplog) -> None:
    train = scenes_copy / "train"
    (train / "scene_000_mres.mat").unlink()  # a photo with no label
    (train / "scene_001.JPG").unlink()  # a label with no photo
    with caplog.at_level(logging.WARNING, logger="segmenter"):
        dataset = load_dataset(data_cfg(source=str(scenes_copy)), progress=False)
    assert [item.stem for item in dataset.train] == ["scene_002"]
    warnings = caplog.text
    assert "train/scene_000.JPG: photo has no label; skipped" in warnings
    assert "train/scene_001_mres.mat: label has no photo; skipped" in warnings


def test_nothing_paired_is_an_error(runner, tmp_path: Path) -> None:
    _write_photo(tmp_path / "train" / "lonely.png")
    line = _error_line(_run_data(runner, tmp_path))
    assert line == f"Error: {tmp_path}/train: no photo/label pairs found (see the warnings above)"
    assert "lonely.png: photo has no label" in _run_data(runner, tmp_path).output


# --------------------------------------------------------------------------------------------
# Loading


def test_scale_and_binarisation(scenes_dir: Path) -> None:
    full = load_dataset(data_cfg(source=str(scenes_dir), scale=1.0), progress=False)
    half = load_dataset(data_cfg(source=str(scenes_dir)), scale=0.5, progress=False)
    first = full.train[0]
    assert first.image.shape == (72, 96, 3) and first.land.shape == (72, 96)
    assert half.train[0].image.shape == (36, 48, 3) and half.train[0].land.shape == (36, 48)
    # Full size: exactly the .mat's class map, water (class 2) -> 0, land (class 1) -> 1.
    classes = loadmat(scenes_dir / "train" / "scene_000_mres.mat")["class"]
    np.testing.assert_array_equal(first.land, (classes != 2).astype(np.float32))
    # Half size: fractions of land that preserve the water share.
    assert half.train[0].land.min() >= 0 and half.train[0].land.max() <= 1
    assert half.train[0].water_fraction == pytest.approx(first.water_fraction, abs=1e-6)
    assert half.fingerprint != full.fingerprint
    # Photo and label stay aligned: the reduced photo is the full photo area-averaged
    # exactly as the label is (the JPEG decoded at reduced size, so not bit-identical).
    for scale in (0.5, 0.3):
        small = load_dataset(data_cfg(source=str(scenes_dir)), scale=scale, progress=False)
        for big, little in zip(full.train, small.train, strict=True):
            shape = little.land.shape
            np.testing.assert_array_equal(little.land, resize_land(big.land, shape))
            resized = np.stack([resize_land(big.image[..., c], shape) for c in range(3)], -1)
            inner = (slice(1, -1), slice(1, -1))
            error = {
                (dy, dx): np.abs(
                    np.roll(little.image, (dy, dx), (0, 1))[inner] - resized[inner]
                ).mean()
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            }
            assert error[0, 0] < 0.03 and min(error, key=error.get) == (0, 0), error


def test_water_class_by_name(scenes_dir: Path) -> None:
    by_number = load_dataset(data_cfg(source=str(scenes_dir)), progress=False)
    by_name = load_dataset(data_cfg(source=str(scenes_dir), water_class="water"), progress=False)
    np.testing.assert_array_equal(by_number.train[0].land, by_name.train[0].land)
    land_as_water = load_dataset(
        data_cfg(source=str(scenes_dir), water_class="land"), progress=False
    )
    np.testing.assert_allclose(land_as_water.train[0].land, 1 - by_number.train[0].land)


def test_label_png_pairs(scenes_copy: Path) -> None:
    train = scenes_copy / "train"
    classes = loadmat(train / "scene_000_mres.mat")["class"]
    (train / "scene_000_mres.mat").unlink()
    Image.fromarray(np.where(classes == 2, 9, 0).astype(np.uint8)).save(
        train / "scene_000_label.png"
    )
    dataset = load_dataset(
        data_cfg(source=str(scenes_copy), scale=1.0, label_water_value=9), progress=False
    )
    np.testing.assert_array_equal(dataset.train[0].land, (classes != 2).astype(np.float32))


def test_seeded_split_without_test_folder(scenes_copy: Path) -> None:
    for path in (scenes_copy / "test").iterdir():
        shutil.move(path, scenes_copy / "train" / path.name)
    shutil.rmtree(scenes_copy / "test")
    cfg = data_cfg(source=str(scenes_copy), test_ratio=0.25, seed=3)
    first = load_dataset(cfg, progress=False)
    again = load_dataset(cfg, progress=False)
    assert first.split == "seeded"
    assert len(first.train) == 3 and len(first.test) == 1
    assert [i.stem for i in first.test] == [i.stem for i in again.test]
    assert first.fingerprint == again.fingerprint
    explicit = load_dataset(data_cfg(source=str(scenes_copy), test_dir=""), progress=False)
    assert explicit.split == "seeded"


def test_split_depends_on_stems_not_order() -> None:
    class Item:
        def __init__(self, stem: str) -> None:
            self.stem = stem

    items = [Item(f"s{i:02d}") for i in range(20)]
    train, test = split_by_seed(items, 0.2, seed=0)
    train2, test2 = split_by_seed(list(reversed(items)), 0.2, seed=0)
    assert len(test) == 4 and [i.stem for i in test] == [i.stem for i in test2]
    assert split_by_seed(items, 0.2, seed=1)[1] != test
    assert split_by_seed(items[:1], 0.2, seed=0) == (items[:1], [])


def test_summary_line(scenes_dir: Path) -> None:
    summary = load_dataset(data_cfg(source=str(scenes_dir)), progress=False).summary()
    assert "4 pairs found, 0 skipped" in summary
    assert "train 3, test 1" in summary
    assert "6,912 pixels" in summary  # 4 x 48 x 36 at scale 0.5
    assert "water fraction" in summary and "%" in summary


def test_cli_data_prints_the_summary(runner, scenes_dir: Path) -> None:
    result = _run_data(runner, scenes_dir)
    assert result.exit_code == 0, result.output
    assert "4 pairs found, 0 skipped; train 3, test 1" in result.output
    # What data.upright: auto would make of the labels, and what the config sets instead.
    assert ("data.upright: false (set in the config; auto would read the labels as aerial: "
            "only 3 training photo(s) with water, too few to tell a horizon" in result.output)
    auto = _run_data(runner, scenes_dir, "data.upright=auto")
    assert "data.upright auto: aerial: only 3 training photo(s) with water" in auto.output


def test_default_source_is_the_generated_sample(runner) -> None:
    result = runner("data", "--set", "data.sample.n=3", "--set", "data.sample.size=64")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-2].startswith("sample: 3 pairs found")


def test_real_photo_loads(real_dir: Path) -> None:
    dataset = load_dataset(data_cfg(source=str(real_dir), scale=0.125), progress=False)
    assert [item.stem for item in dataset.train] == ["C26047181_north"]
    item = dataset.train[0]
    assert item.image.shape == (313, 626, 3) and item.land.shape == (313, 626)
    assert 0.15 < item.water_fraction < 0.25  # about 20 % water, per the README


# --------------------------------------------------------------------------------------------
# Bad input: one line naming the file, exit code 1


def test_missing_local_path(runner, tmp_path: Path) -> None:
    line = _error_line(_run_data(runner, tmp_path / "nowhere"))
    assert line == f"Error: {tmp_path / 'nowhere'}: folder not found"


def test_empty_folder(runner, tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    line = _error_line(_run_data(runner, tmp_path))
    assert line == f"Error: {tmp_path}/train: no photo/label pairs found"  # no warnings to see
    line = _error_line(_run_data(runner, tmp_path / "train"))
    assert line == f"Error: {tmp_path}/train/train: folder not found"


def test_corrupt_jpg(runner, scenes_copy: Path) -> None:
    photo = scenes_copy / "train" / "scene_001.JPG"
    photo.write_bytes(photo.read_bytes()[:40])
    line = _error_line(_run_data(runner, scenes_copy))
    assert line.startswith(f"Error: {photo}: not a readable image")


def test_mat_without_class(runner, scenes_copy: Path) -> None:
    label = scenes_copy / "test" / "scene_003_mres.mat"
    savemat(label, {"labels": ["land ", "water"]})
    assert _error_line(_run_data(runner, scenes_copy)) == (
        f"Error: {label}: no 'class' array in the .mat file"
    )


def test_label_size_differs_from_photo(runner, scenes_copy: Path) -> None:
    label = scenes_copy / "train" / "scene_002_mres.mat"
    _write_mat(label, np.ones((10, 10)), ["land ", "water"])
    line = _error_line(_run_data(runner, scenes_copy))
    assert line == (f"Error: {label}: label is 10x10 (WxH) but the photo scene_002.JPG is 96x72")


def test_water_class_absent_from_labels(runner, scenes_dir: Path) -> None:
    line = _error_line(_run_data(runner, scenes_dir, "data.water_class=lake"))
    assert line == (
        f"Error: {scenes_dir}/train/scene_000_mres.mat: water class 'lake' not in labels "
        "['land', 'water']"
    )


def test_skip_bad_skips_with_a_warning_listing_them(runner, scenes_copy: Path) -> None:
    bad_photo = scenes_copy / "train" / "scene_001.JPG"
    bad_photo.write_bytes(b"not an image")
    bad_label = scenes_copy / "train" / "scene_002_mres.mat"
    savemat(bad_label, {"labels": ["land"]})
    result = _run_data(runner, scenes_copy, "data.skip_bad=true")
    assert result.exit_code == 0, result.output
    assert "2 skipped; train 1, test 1" in result.output
    warning = next(line for line in result.output.splitlines() if "skipped 2 bad pair" in line)
    assert str(bad_photo) in warning and str(bad_label) in warning


def test_skip_bad_with_nothing_left_is_an_error(scenes_copy: Path) -> None:
    for photo in scenes_copy.rglob("*.JPG"):
        photo.write_bytes(b"junk")
    with pytest.raises(DataError, match="every pair was bad"):
        load_dataset(data_cfg(source=str(scenes_copy), skip_bad=True), progress=False)


def test_greyscale_photo_loads_with_a_note(scenes_copy: Path, caplog) -> None:
    photo = scenes_copy / "train" / "scene_000.JPG"
    grey = Image.open(io.BytesIO(photo.read_bytes())).convert("L")
    grey.save(photo, format="JPEG")
    with caplog.at_level(logging.INFO, logger="segmenter"):
        dataset = load_dataset(data_cfg(source=str(scenes_copy)), progress=False)
    assert dataset.train[0].image.shape[-1] == 3
    assert "scene_000.JPG: greyscale photo converted to RGB" in caplog.text


def test_empty_train_folder_with_test_pairs_is_an_error(runner, scenes_copy: Path) -> None:
    for path in (scenes_copy / "train").iterdir():
        path.unlink()
    line = _error_line(_run_data(runner, scenes_copy))
    assert line == f"Error: {scenes_copy}/train: no photo/label pairs found"


def test_every_training_pair_bad_under_skip_bad_is_an_error(runner, scenes_copy: Path) -> None:
    for photo in (scenes_copy / "train").glob("*.JPG"):
        photo.write_bytes(b"junk")  # test/ stays good
    result = _run_data(runner, scenes_copy, "data.skip_bad=true")
    line = _error_line(result)
    assert line == (
        f"Error: {scenes_copy}/train: no training images: every pair was bad "
        "(see the warnings above)"
    )
    assert "skipped 3 bad pair(s)" in result.output


@pytest.mark.parametrize("kind", ["mat", "png"])
def test_no_water_in_any_label_is_warned_naming_the_key(tmp_path: Path, caplog, kind) -> None:
    for split in ("train", "test"):
        _write_photo(tmp_path / split / "a.png")
        if kind == "mat":
            _write_mat(tmp_path / split / "a_mres.mat", np.full((12, 16), 2))  # no labels key
        else:
            Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / split / "a_label.png")
    with caplog.at_level(logging.WARNING, logger="segmenter"):
        load_dataset(data_cfg(source=str(tmp_path), water_class=5), progress=False)
    key = "data.water_class (now 5)" if kind == "mat" else "data.label_water_value (now 255)"
    assert f"no label contains any water (2 images): check {key}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segmenter"):
        load_dataset(data_cfg(source=str(tmp_path), water_class=2, label_water_value=0))
    assert "no label contains any water" not in caplog.text


def test_progress_bar_is_silent_off_a_terminal(scenes_dir: Path, capsys) -> None:
    load_dataset(data_cfg(source=str(scenes_dir)), progress=True)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_test_only_source_can_be_loaded_for_evaluation(scenes_copy: Path) -> None:
    """`segmenter evaluate --data` on a folder holding only test/ needs no train/."""
    shutil.rmtree(scenes_copy / "train")
    dataset = load_dataset(data_cfg(source=str(scenes_copy)), need=("test",))
    assert dataset.train == []
    assert len(dataset.test) == len(list((scenes_copy / "test").glob("*.JPG")))
    with pytest.raises(DataError, match=r"/train: folder not found"):
        load_dataset(data_cfg(source=str(scenes_copy)))


def test_evaluation_does_not_load_train_when_there_is_a_test_folder(scenes_copy: Path) -> None:
    for photo in (scenes_copy / "train").glob("*.JPG"):
        photo.write_bytes(b"junk")  # would fail if it were read
    dataset = load_dataset(data_cfg(source=str(scenes_copy)), need=("test",))
    assert dataset.test and dataset.train == []


def test_a_test_folder_with_only_bad_pairs_is_an_error_for_evaluation(scenes_copy: Path) -> None:
    for photo in (scenes_copy / "test").glob("*.JPG"):
        photo.write_bytes(b"junk")
    cfg = data_cfg(source=str(scenes_copy), skip_bad=True)
    with pytest.raises(DataError, match=r"/test: no test images: every pair was bad"):
        load_dataset(cfg, need=("test",))
    assert load_dataset(cfg).test == []  # training goes on, with validation off
