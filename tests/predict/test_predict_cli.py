"""`segmenter predict` end to end on tiny photos with a real (untrained, tiny) run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, make_run, write_photos
from PIL import Image

from segmenter.config import load_config
from segmenter.model.network import build_model
from segmenter.training.plan import RunPlan, prepare_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def test_predict_writes_masks_overlays_and_summary(runner, run_dir, tmp_path):
    photos = write_photos(tmp_path / "photos")
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tmp_path / "photos", "--out", out)
    assert result.exit_code == 0, result.output
    for stem, (height, width) in {"shore": (40, 56), "grey": (40, 56), "alpha": (40, 56),
                                  "photo": (20, 24)}.items():
        prob = np.asarray(Image.open(out / f"{stem}_water_prob.png"))
        mask = np.asarray(Image.open(out / f"{stem}_water_mask.png"))
        over = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert prob.shape == (height, width) and prob.dtype == np.uint8
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        assert over.ndim == 3 and over.shape[0] > height and over.shape[1] >= width
        assert f"{stem}: {width}x{height} px, water " in result.output
    summary = json.loads((out / "predictions.json").read_text())
    assert [r["stem"] for r in summary["images"]] == ["alpha", "grey", "photo", "shore"]
    assert all(r["status"] == "ok" for r in summary["images"])
    assert summary["widths"] == [16, 32]
    csv_lines = (out / "predictions.csv").read_text().splitlines()
    assert csv_lines[0].startswith("input,stem,status") and len(csv_lines) == 5
    assert "4 of 4 photo(s) predicted" in result.output
    assert re.search(r"^4 photo\(s\) in [\d.]+ s: [\d.]+ s per photo \(prediction median "
                     r"[\d.]+ s, slowest [\d.]+ s; mask step [\d.]+ s per photo\)$",
                     result.output, re.M), result.output
    assert all(0 <= r["gmm_seconds"] <= r["seconds"] for r in summary["images"])
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    del photos


def test_corrupt_photo_is_named_and_others_still_predicted(runner, run_dir, tmp_path):
    write_photos(tmp_path / "photos")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tmp_path / "photos", "--out", out)
    assert result.exit_code == 1
    assert "broken.jpg" in result.output.splitlines()[-1]
    assert "1 photo(s) failed" in result.output
    assert (out / "shore_water_mask.png").is_file()
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert [r["status"] for r in records if r["stem"] == "broken"] == ["failed"]
    # photos are decoded ahead and written behind; records stay in input order
    assert [r["stem"] for r in records] == ["alpha", "broken", "grey", "photo", "shore"]


def test_never_overwrites_without_flag_and_default_out(runner, run_dir, tmp_path):
    photos = write_photos(tmp_path / "photos")
    first = runner("predict", "--run", run_dir, photos["rgb"])
    assert first.exit_code == 0, first.output
    default_out = run_dir / "predictions"
    assert (default_out / "shore_water_mask.png").is_file()
    stamp = (default_out / "predictions.json").stat().st_mtime_ns
    again = runner("predict", "--run", run_dir, photos["rgb"])
    assert again.exit_code == 1
    assert "--overwrite" in again.output and str(default_out) in again.output
    assert (default_out / "predictions.json").stat().st_mtime_ns == stamp
    forced = runner("predict", "--run", run_dir, photos["rgb"], "--overwrite",
                    "--set", "predict.widths=[16]", "--set", "predict.save_float=true",
                    "--set", "predict.save_scales=true", "--set", "postprocess.method=otsu")
    assert forced.exit_code == 0, forced.output
    water = np.load(default_out / "shore_water_prob.npy", allow_pickle=False)
    assert water.shape == (40, 56) and water.dtype == np.float32
    assert (default_out / "shore_water_prob_pw16.png").is_file()
    summary = json.loads((default_out / "predictions.json").read_text())
    assert summary["widths"] == [16] and summary["images"][0]["method"] == "otsu"


def test_run_without_models_and_missing_width_are_clear_errors(runner, tmp_path):
    photos = write_photos(tmp_path / "photos")
    empty = make_run(tmp_path / "empty", finished=False)
    result = runner("predict", "--run", empty, photos["rgb"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert "no finished models" in result.output
    run = make_run(tmp_path / "run", widths=(16,))
    result = runner("predict", "--run", run, photos["rgb"], "--set", "predict.widths=[32]")
    assert result.exit_code == 1 and "width 32" in result.output
    result = runner("predict", "--run", tmp_path / "nowhere", photos["rgb"])
    assert result.exit_code == 1 and "run directory not found" in result.output


def test_config_file_overrides_run_config(runner, tmp_path):
    photos = write_photos(tmp_path / "photos")
    run = make_run(tmp_path / "run", widths=(16,))
    config = tmp_path / "predict.yaml"
    config.write_text("postprocess:\n  method: global\n  threshold: 0.3\n")
    out = tmp_path / "out"
    result = runner("predict", "--run", run, photos["rgb"], "--out", out, "--config", config,
                    "--set", "postprocess.threshold=0.4")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "predictions.json").read_text())["images"][0]
    assert record["method"] == "global" and record["threshold"] == 0.4


@pytest.mark.parametrize("name", ["predictions.csv", "shore_water_prob.npy",
                                  "shore_water_prob_pw32.png", "shore_water_prob_pw32.npy"])
def test_check_overwrite_sees_every_file_a_prediction_writes(tmp_path, name):
    from segmenter.errors import RunError
    from segmenter.predict.jobs import check_overwrite

    (tmp_path / name).write_bytes(b"earlier")
    if name.startswith("shore"):
        check_overwrite(tmp_path, ["other"], overwrite=False)  # another photo's files: fine
    with pytest.raises(RunError, match=name.replace(".", r"\.")):
        check_overwrite(tmp_path, ["shore"], overwrite=False)
    check_overwrite(tmp_path, ["shore"], overwrite=True)


def test_grey_passes_change_the_map_and_warn_for_models_trained_without_grey(runner, run_dir,
                                                                             tmp_path):
    """predict.grey on a run trained without grey patches: predicted, with a warning naming
    the run; a grey-trained run predicts without one."""
    write_photos(tmp_path / "photos")
    maps = {}
    for grey in ("false", "true"):
        out = tmp_path / f"out_{grey}"
        result = runner("predict", "--run", run_dir, tmp_path / "photos", "--out", out,
                        "--set", f"predict.grey={grey}")
        assert result.exit_code == 0, result.output
        warned = f"predict.grey: {run_dir} trained without grey patches" in result.output
        assert warned == (grey == "true"), result.output
        maps[grey] = np.asarray(Image.open(out / "shore_water_prob.png"), np.int16)
        # A grey photo reads the same in colour and in grey.
        maps[grey + "_grey"] = np.asarray(Image.open(out / "grey_water_prob.png"), np.int16)
    assert np.abs(maps["true"] - maps["false"]).max() > 0
    assert np.abs(maps["true_grey"] - maps["false_grey"]).max() <= 1
    result = runner("predict", "--run", run_dir, tmp_path / "photos", "--out", tmp_path / "auto",
                    "--set", "predict.grey=auto")
    assert result.exit_code == 0 and "trained without grey patches" in result.output
    result = runner("predict", "--run", run_dir, tmp_path / "photos", "--out", tmp_path / "bad",
                    "--set", "predict.grey=sometimes")
    assert result.exit_code != 0 and "predict.grey" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "bad").exists()
    cfg = load_config(None, [*TINY, "train.augment.greyscale=0.3"])
    run = prepare_run(RunPlan(tmp_path / "grey_run", cfg, [16]))
    run.model_path(16).parent.mkdir(parents=True, exist_ok=True)
    build_model(cfg.model).save(run.model_path(16))
    run.write_status(16, {"status": "finished", "final_val_water_iou": 0.5})
    result = runner("predict", "--run", run.path, tmp_path / "photos", "--out",
                    tmp_path / "out_grey_run", "--set", "predict.grey=true")
    assert result.exit_code == 0 and "predict.grey" not in result.output, result.output
