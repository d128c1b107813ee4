"""scripts/bench_quality.py: case folders, width checks, peers, table lines, and a tiny run.

The benchmark trains for many minutes; these check in seconds that each case's training source
and scored source hold the right pairs and never share a photo, that the reference is sized to
the recommended config's budget, that widths too large for a case stop it with one line, that
every peer yields full-size masks and sane scores, and (slow) the whole ``shifted`` case end to
end with a tiny config.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def _scene(height: int = 48, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured land with two dark smooth ponds, one in each part of the split."""
    rng = np.random.default_rng(0)
    image = 0.55 + 0.15 * rng.random((height, width, 3))
    yy, xx = np.mgrid[:height, :width]
    water = ((yy - 24) ** 2 + (xx - 30) ** 2 < 14**2) | ((yy - 24) ** 2 + (xx - 95) ** 2 < 12**2)
    image[water] = [0.15, 0.25, 0.3]
    return image.astype(np.float32), (~water).astype(np.float32)


def _stems(folder: Path) -> set[str]:
    return {p.name.removesuffix(".jpg") for p in folder.glob("*.jpg")}


def _write_oasis(root: Path, n_train: int, n_test: int) -> None:
    """An OASIs-like folder: <stem>.jpg with <stem>_label.png (0 land, 1 water, 2 sky)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for sub, count in (("train", n_train), ("test", n_test)):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            stem = f"type1_{sub}{i:03d}"
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
                root / sub / f"{stem}.jpg")
            label = np.zeros((24, 32), np.uint8)
            label[12:] = 1
            label[:4] = 2
            Image.fromarray(label).save(root / sub / f"{stem}_label.png")


# --------------------------------------------------------------------------------------------
# Case preparation


def test_oasis_case_never_trains_or_validates_on_scored_photos(bench, tmp_path):
    from segmenter.config import DataConfig
    from segmenter.data import ontario

    _write_oasis(tmp_path / "oasis", n_train=26, n_test=7)
    case = bench.prepare_oasis(tmp_path / "oasis", tmp_path / "work", quick=False)
    train = _stems(case.train_source / "train")
    validation = _stems(case.train_source / "test")
    scored = _stems(case.scored / "train")
    every = bench.OASIS_VALIDATION_EVERY
    assert validation == {f"type1_train{i:03d}" for i in range(every - 1, 26, every)}
    assert train == {f"type1_train{i:03d}" for i in range(26)} - validation
    assert scored == {f"type1_test{i:03d}" for i in range(7)}
    assert not (train | validation) & scored
    assert case.overrides == ["data.label_water_value=1"]
    # Every photo keeps its own label, read with water = 1 (row 12 onward is water).
    data = ontario.load_dataset(
        DataConfig(source=str(case.scored), label_water_value=1), scale=1.0, progress=False
    )
    assert len(data.train + data.test) == 7
    for item in data.train + data.test:
        np.testing.assert_array_equal(item.land[12:], 0.0)
        np.testing.assert_array_equal(item.land[:12], 1.0)


def test_oasis_quick_takes_even_subsets(bench, tmp_path):
    _write_oasis(tmp_path / "oasis", n_train=60, n_test=20)
    case = bench.prepare_oasis(tmp_path / "oasis", tmp_path / "work", quick=True)
    n_train, n_val, n_test = bench.QUICK_OASIS
    train = _stems(case.train_source / "train")
    validation = _stems(case.train_source / "test")
    scored = _stems(case.scored / "train")
    assert (len(train), len(validation), len(scored)) == (n_train, n_val, n_test)
    assert not (train | validation) & scored and not train & validation
    assert "type1_test000" in scored and "type1_test019" in scored  # spread, not the first 15


def test_oasis_leaves_out_blank_labels_everywhere(bench, tmp_path, caplog):
    """A label of one value over the whole frame (never drawn) is neither trained nor scored."""
    from PIL import Image

    _write_oasis(tmp_path / "oasis", n_train=26, n_test=7)
    for stem in ("test/type1_test003", "train/type1_train004"):
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "oasis" / f"{stem}_label.png")
    with caplog.at_level("WARNING", logger="bench_quality"):
        case = bench.prepare_oasis(tmp_path / "oasis", tmp_path / "work", quick=False)
    scored = _stems(case.scored / "train")
    fitted = _stems(case.train_source / "train") | _stems(case.train_source / "test")
    assert scored == {f"type1_test{i:03d}" for i in range(7)} - {"type1_test003"}
    assert "type1_train004" not in fitted and len(fitted) == 25
    assert "scored 6 test/ photos" in case.description
    assert "type1_test003_label.png" in case.description
    assert "type1_train004_label.png" in case.description
    assert sum("blank" in r.getMessage() for r in caplog.records) == 2


def test_shifted_case_scores_only_shifted_scenes(bench, tmp_path):
    case = bench.prepare_shifted(tmp_path, n=8, size=64)
    train = {p.stem for p in (case.train_source / "train").glob("*.JPG")}
    validation = {p.stem for p in (case.train_source / "test").glob("*.JPG")}
    scored = {p.stem for p in (case.scored / "train").glob("*.JPG")}
    assert len(train) == 6 and len(validation) == 2
    assert scored == {"shifted_000", "shifted_001"}
    assert all(s.startswith("scene_") for s in train | validation)
    # The scored files are the sample's test_shifted/ scenes themselves.
    for path in (case.scored / "train").iterdir():
        assert path.resolve().parent == (case.train_source / "test_shifted").resolve()
    assert "scored 2 scenes of test_shifted/" in case.description


def test_real_case_splits_columns_and_loads_through_segmenter(bench, tmp_path):
    from segmenter.config import DataConfig
    from segmenter.data import ontario

    image, land = _scene()
    bench.write_ontario(tmp_path / "real", "train", "tiny",
                        bench.Part("all", (0, 120), image, land))
    stem, loaded, loaded_land = bench.load_real(tmp_path / "real")
    assert stem == "tiny"
    assert np.abs(loaded - image).max() <= 0.5 / 255 + 1e-6
    case = bench.prepare_real(tmp_path / "real", tmp_path / "work")
    assert bench.real_columns(5008) == {
        "fit": (0, 3005), "monitor": (2254, 3005), "score": (3005, 5008)
    }
    train = ontario.load_dataset(DataConfig(source=str(case.train_source)), scale=1.0,
                                 progress=False)
    np.testing.assert_array_equal(train.train[0].land, land[:, :72])
    np.testing.assert_array_equal(train.test[0].land, land[:, 54:72])  # inside the fitted part
    scored = ontario.load_dataset(DataConfig(source=str(case.scored)), scale=1.0,
                                  progress=False)
    assert [item.stem for item in scored.train + scored.test] == ["tiny_score"]
    np.testing.assert_array_equal(scored.train[0].land, land[:, 72:])


def test_obx_case_splits_by_folder_and_cuts_dry_photos_from_scored_ones(bench, tmp_path,
                                                                        monkeypatch):
    """obx2018: train/ minus every 8th photo is fitted, those validate, test/ is scored; the
    dry photos are squares without water from the scored photos and the real photo only."""
    from segmenter.config import DataConfig
    from segmenter.data import ontario

    monkeypatch.setattr(bench, "DRY_SIDE", 16)
    image, land = _scene()
    for sub, count in (("train", 17), ("test", 3)):
        for i in range(count):
            bench.write_ontario(tmp_path / "obx", sub, f"{sub}{i:02d}",
                                bench.Part("all", (0, 120), image, land))
    bench.write_ontario(tmp_path / "real", "train", "aerial",
                        bench.Part("all", (0, 120), image, land))
    case = bench.prepare_obx(tmp_path / "obx", tmp_path / "work", quick=False,
                             real_dir=tmp_path / "real")
    stems = {sub: {p.stem for p in folder.glob("*.png")} for sub, folder in (
        ("fit", case.train_source / "train"), ("val", case.train_source / "test"),
        ("scored", case.scored / "train"))}
    assert stems["val"] == {"train07", "train15"} and len(stems["fit"]) == 15
    assert stems["scored"] == {"test00", "test01", "test02"}
    dry = ontario.load_dataset(DataConfig(source=str(case.dry)), scale=1.0, progress=False,
                               need=("all",)).train
    assert len(dry) == 4 * bench.DRY_PER_PHOTO  # two squares from each of the 4 photos
    assert {item.stem.rsplit("_dry", 1)[0] for item in dry} == {"test00", "test01", "test02",
                                                               "aerial"}
    assert all(item.image.shape[:2] == (16, 16) and (item.land == 1).all() for item in dry)


def test_dry_windows_hold_no_water_and_do_not_overlap(bench):
    _, land = _scene()
    corners = bench.dry_windows(land, 16, 5)
    assert len(corners) == 5
    for i, (top, left) in enumerate(corners):
        assert (land[top : top + 16, left : left + 16] == 1).all()
        assert all(abs(top - t) >= 16 or abs(left - c) >= 16 for t, c in corners[:i])
    assert bench.dry_windows(np.zeros((40, 40), np.float32), 16, 3) == []


def test_dry_line_reports_the_water_invented(bench):
    overall = {"images": 4, "accuracy": 0.97, "threshold_0.5": {"accuracy": 0.9}}
    assert bench.dry_line("obx2018", "segmenter photo.yaml", overall) == (
        "dry case=obx2018 method=segmenter photo.yaml images=4 water_fraction=0.0300 "
        "threshold_0.5=0.1000")


def test_absent_case_folders_are_named(bench, tmp_path):
    line = bench.case_folder_problem("oasis", tmp_path / "nowhere")
    assert line.startswith("case oasis: skipped:") and "--oasis DIR" in line
    assert "--real DIR" in bench.case_folder_problem("real", tmp_path / "nowhere")
    assert bench.case_folder_problem("shifted", tmp_path) is None
    with pytest.raises(bench.BenchError, match="unknown case nope"):
        bench.selected_cases("shifted,nope")
    assert bench.selected_cases("real, shifted,real") == ["real", "shifted"]


# --------------------------------------------------------------------------------------------
# Configs: widths that fit, the reference's budget


def test_width_too_large_for_a_case_stops_with_one_line(bench, tmp_path):
    from segmenter.config import load_config

    case = bench.prepare_shifted(tmp_path, n=4, size=128)  # 64 x 48 at scale 0.5
    fits = load_config(bench.DEFAULT_CONFIG, ["train.widths={32: 4}", "data.scale=0.5"])
    assert bench.width_problem(case, fits, "photo.yaml") is None
    wide = load_config(bench.DEFAULT_CONFIG, ["train.widths={32: 4, 64: 2, 128: 2}",
                                              "data.scale=0.5"])
    line = bench.width_problem(case, wide, "photo.yaml")
    assert line.startswith("case shifted: photo.yaml: train.widths 64, 128 do not fit")
    assert "64x48 px" in line and "\n" not in line


def test_reference_config_is_the_notebook_setup_at_the_same_budget(bench):
    from segmenter.config import load_config

    ref = load_config(bench.REFERENCE_CONFIG)
    assert ref.model.activation == "linear" and ref.train.loss == "mse"
    assert sorted(ref.train.widths) == [32, 64, 128]
    augment = ref.train.augment
    assert not augment.flip and not augment.rotate90
    assert augment.brightness == augment.contrast == augment.gain == augment.hue == 0.0
    assert augment.saturation == augment.gamma == augment.blur == augment.noise == 0.0
    assert ref.model.input_norm == "fixed" and ref.postprocess.remove_specks == 0.0
    assert ref.predict.sampling == "random" and ref.predict.rescale == "minmax"
    assert ref.postprocess.method == "gmm"

    rec = load_config(None, ["train.widths={128: 16, 256: 8}", "train.steps=400",
                             "data.scale=0.25"])
    items = bench.reference_overrides(rec, ref)
    assert items[0] == "data.scale=0.25"
    sized = load_config(bench.REFERENCE_CONFIG, items)
    assert sized.data.scale == 0.25
    # Same patch pixels, within one step's worth.
    per_step = bench.patch_pixels(sized) / sized.train.steps
    assert abs(bench.patch_pixels(sized) - bench.patch_pixels(rec)) <= per_step / 2


def test_quick_cuts_steps_before_the_users_overrides(bench, tmp_path):
    case = bench.Case("oasis", tmp_path, tmp_path, overrides=["data.label_water_value=1"])
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  steps: 400\n")
    quick = bench.Settings(config, [], quick=True)
    assert bench.recommended_overrides(case, quick) == [
        "data.label_water_value=1", "train.steps=100"]
    mine = bench.Settings(config, ["train.steps=8"], quick=True)
    assert bench.recommended_overrides(case, mine)[-1] == "train.steps=8"  # the user's wins
    assert bench.recommended_overrides(case, bench.Settings(config, [])) == [
        "data.label_water_value=1"]


# --------------------------------------------------------------------------------------------
# Peers, table and lines


def _photos(bench, image, land, scored: bool):
    water = land < 0.5
    return [bench.Photo("p", image, water, water if scored else None)]


def test_peers_fit_on_several_photos_and_score_full_size(bench):
    image, land = _scene()
    fit = _photos(bench, image[:, :60], land[:, :60], False) + _photos(
        bench, image[:, 30:90], land[:, 30:90], False)
    scored = _photos(bench, image[:, 60:], land[:, 60:], True)
    rows = bench.run_peers("tiny", fit, scored)
    assert [row.method for row in rows] == list(bench.PEERS)
    for row in rows:
        assert row.case == "tiny"
        assert set(row.scores) >= {"water_iou", "mean_iou"}
        assert all(0.0 <= v <= 1.0 for v in row.scores.values())
    by_name = {row.method: row for row in rows}
    # The pond is darker: Otsu picks the dark side on the training photos and finds it.
    assert by_name["Otsu on grey"].note == "water = darker side"
    assert by_name["Otsu on grey"].scores["water_iou"] > 0.9
    assert by_name["GMM on RGB (5 comps)"].scores["water_iou"] > 0.9


def test_otsu_side_follows_the_training_labels(bench):
    image, land = _scene()
    inverted = (1.0 - image).astype(np.float32)  # water now the brighter side
    predict, note = bench.fit_otsu(_photos(bench, inverted, land, False))
    assert note == "water = brighter side"
    assert bench.upsample_mask(predict(inverted), land.shape)[land < 0.5].mean() > 0.95


def test_upsample_mask_keeps_blocks(bench):
    small = np.array([[True, False], [False, True]])
    big = bench.upsample_mask(small, (4, 6))
    assert big.shape == (4, 6)
    assert big[:2, :3].all() and not big[:2, 3:].any() and big[2:, 3:].all()


def test_table_and_quality_lines(bench):
    scores = {"water_iou": 0.91234, "mean_iou": 0.85, "f1": 0.9}
    rows = [bench.Row("oasis", "Otsu on grey", scores, 0.0, "water = darker side"),
            bench.Row("real", "segmenter photo.yaml, gmm mask", scores, 6.5)]
    table = bench.format_table(rows).splitlines()
    assert table[0].split() == ["case", "method", "water", "IoU", "mean", "IoU", "train", "min"]
    assert set(table[1]) == {"-"}
    assert table[2].split()[:5] == ["oasis", "Otsu", "on", "grey", "0.9123"]
    assert table[3].split()[-3:] == ["0.9123", "0.8500", "6.50"]
    assert bench.quality_line("oasis", scores, 12.345) == (
        "quality case=oasis water_iou=0.9123 mean_iou=0.8500 train_minutes=12.35")


# --------------------------------------------------------------------------------------------
# End to end: the shifted case with a tiny config


TINY = ["train.widths={32: 4}", "train.steps=4", "train.validate_every=2",
        "model.filters=4", "predict.tta=false", "postprocess.subsample=1000"]


@pytest.mark.slow
def test_shifted_case_end_to_end(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(bench, "QUICK_SAMPLE_N", 6)
    monkeypatch.setattr(bench, "SAMPLE_SIZE", 128)
    monkeypatch.setattr(bench, "FOREST_PIXELS", 2000)
    # The reference shrunk alike (its widths 64 and 128 would not fit 64 x 48 px scenes).
    real_plan = bench.plan

    def tiny_plan(case, settings):
        settings.reference_extra = ["train.widths={32: 4}", "model.filters=4",
                                    "predict.random_windows={32: 20}"]
        return real_plan(case, settings)

    monkeypatch.setattr(bench, "plan", tiny_plan)
    args = ["--cases", "shifted", "--quick", "--work", str(tmp_path / "work"),
            "--real", str(tmp_path / "no-real"), "--oasis", str(tmp_path / "no-oasis")]
    for item in TINY:
        args += ["--set", item]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "quick: train.steps / 4" in out
    assert "scored 2 scenes of test_shifted/" in out
    methods = [line for line in out.splitlines() if line.startswith("shifted ")]
    assert len(methods) == len(bench.PEERS) + 3  # peers, mask, 0.5 threshold, reference
    assert any("reference notebook-small.yaml, gmm mask" in line for line in methods)
    match = re.search(r"^quality case=shifted water_iou=(\S+) mean_iou=(\S+) "
                      r"train_minutes=(\S+)$", out, re.M)
    assert match and all(0.0 <= float(v) <= 1.0 for v in match.groups()[:2])
    assert (tmp_path / "work" / "shifted" / "run_recommended" / "config.yaml").is_file()
    assert (tmp_path / "work" / "shifted" / "run_reference" / "config.yaml").is_file()


def test_full_width_problem_exits_before_training(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "SAMPLE_N", 4)
    monkeypatch.setattr(bench, "SAMPLE_SIZE", 128)
    code = bench.main(["--cases", "shifted", "--skip-peers", "--skip-reference",
                       "--work", str(tmp_path / "w"), "--set", "train.widths={128: 2}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bench_quality: case shifted: photo.yaml: train.widths 128 does not fit" in err
    assert not (tmp_path / "w" / "shifted" / "run_recommended").exists()
