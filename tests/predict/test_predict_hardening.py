"""Predict/evaluate hardening (issue 9): tiny photos, concurrent runs, corrupt models, --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_run, png_declaring, write_photos
from PIL import Image


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "run")


def test_one_pixel_photo_does_not_abort_the_batch(runner, run_dir, tmp_path):
    """A 1x1 photo used to stop the whole batch (GaussianMixture on 1 sample): no later photo
    predicted, no predictions.json. It is now predicted (global threshold) and named."""
    photos = tmp_path / "photos"
    write_photos(photos)
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(photos / "aaa_dot.png")
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, photos, "--out", out)
    assert result.exit_code == 0, result.output
    records = {r["stem"]: r for r in json.loads((out / "predictions.json").read_text())["images"]}
    assert set(records) == {"aaa_dot", "shore", "grey", "alpha", "photo"}
    assert records["aaa_dot"]["status"] == "ok" and records["aaa_dot"]["method"] == "global"
    assert (out / "shore_water_mask.png").is_file()


def test_decompression_bomb_among_photos_is_named_and_the_others_are_predicted(
        runner, run_dir, tmp_path):
    """A 2 KB PNG declaring 40000 x 40000 pixels used to be decoded until memory ran out,
    with no file named and the good photos of the folder not done."""
    photos = tmp_path / "photos"
    write_photos(photos)
    (photos / "bomb.png").write_bytes(png_declaring(40_000, 40_000))
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, photos, "--out", out)
    assert result.exit_code == 1
    failed = [x for x in result.output.splitlines() if x.startswith("FAILED")]
    assert len(failed) == 1 and "bomb.png: declares 40000x40000 pixels" in failed[0], failed
    records = {r["stem"]: r for r in json.loads((out / "predictions.json").read_text())["images"]}
    assert records["bomb"]["status"] == "failed"
    assert all(records[s]["status"] == "ok" for s in ("shore", "grey", "alpha", "photo"))


def test_failure_line_names_the_file_once(runner, run_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.png").write_bytes(b"not a png")
    result = runner("predict", "--run", run_dir, photos, "--out", tmp_path / "out")
    assert result.exit_code == 1
    line = [x for x in result.output.splitlines() if x.startswith("FAILED")][0]
    assert line.count("broken.png") == 1, line


def test_corrupt_model_file_is_called_corrupt_not_missing(runner, tmp_path):
    run = make_run(tmp_path / "run", widths=(16,))
    photos = write_photos(tmp_path / "photos")
    for content in (b"", b"0123456789"):
        (run / "models" / "pw16.keras").write_bytes(content)
        result = runner("predict", "--run", run, photos["rgb"], "--out", tmp_path / "out")
        assert result.exit_code == 1
        error = result.output.strip().splitlines()[-1]
        assert "pw16.keras" in error and "corrupt" in error, error
        assert "not found" not in error.lower()


def test_unwritable_out_is_refused_before_any_work(runner, run_dir, tmp_path):
    photos = write_photos(tmp_path / "photos")
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    out = blocker / "out"
    result = runner("predict", "--run", run_dir, photos["rgb"], "--out", out)
    assert result.exit_code == 1
    assert f"Error: {out}: cannot write" in result.output, result.output
    assert "FAILED" not in result.output and "predicting" not in result.output
    result = runner("evaluate", "--run", run_dir, "--out", out)
    assert result.exit_code == 1
    assert f"Error: {out}: cannot write" in result.output, result.output
    assert "evaluating" not in result.output


@pytest.mark.parametrize("flag", ["--overwrite", "--skip-existing"])
def test_two_predicts_into_one_out_at_once_keep_both_summaries(run_dir, tmp_path, flag):
    """Two calls into one folder at once: each call's rows are merged into the summary under
    the folder's lock (two --skip-existing calls used to keep only the last call's rows)."""
    out = tmp_path / "out"
    folders = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        for index in range(3):
            rng = np.random.default_rng([index, len(name)])
            pixels = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}{index}.png")
        folders.append(folder)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        # With a flag: neither may refuse because the other already wrote its summary.
        subprocess.Popen([sys.executable, "-m", "segmenter", "-q", "predict", "--run",
                          str(run_dir), str(folder), "--out", str(out), flag],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for folder in folders
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    stems = sorted(r["stem"] for r in json.loads((out / "predictions.json").read_text())["images"])
    assert stems == ["one0", "one1", "one2", "two0", "two1", "two2"]
    csv_rows = (out / "predictions.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 7


def test_revised_threshold_line_names_the_photo(runner, run_dir, tmp_path):
    photos = write_photos(tmp_path / "photos")
    # A threshold below every component's median: the GMM step must revise it.
    # (the notebook's unbounded revision: the default bound would keep a sure photo all land)
    result = runner("predict", "--run", run_dir, photos["rgb"], "--out", tmp_path / "out",
                    "--set", "postprocess.threshold=0.0001", "--set", "postprocess.one_class=0")
    assert result.exit_code == 0, result.output
    revised = [x for x in result.output.splitlines() if "threshold revised" in x]
    assert revised and all(x.startswith("shore: ") for x in revised), result.output


@pytest.mark.parametrize(("kind", "invented"), [("land", "water"), ("water", "land")])
def test_a_photo_kept_one_class_is_named_with_what_was_not_invented(caplog, kind, invented):
    from segmenter.predict.threshold import log_threshold_decision

    with caplog.at_level("INFO", logger="segmenter.predict"):
        log_threshold_decision("dune", {"one_class": kind, "revised": False, "threshold": 0.5})
    assert caplog.messages == [
        f"dune: all {kind}: every GMM component's median probability of land was beyond the "
        f"bound of postprocess.one_class, so no {invented} was invented"]


def test_an_earlier_summary_is_read_as_typed_records(tmp_path):
    """Merging with another predict's summary: its records are validated; one that is not
    a prediction record (hand-edited) is dropped rather than written back as is."""
    from segmenter.outputs.store import open_output

    (tmp_path / "predictions.json").write_text(json.dumps({"images": [
        {"input": "a.png", "stem": "a", "status": "ok", "size": [2, 3], "tiles": 4},
        {"stem": "b", "status": "maybe"},
    ]}))
    records = open_output(tmp_path, None).records()
    assert list(records) == ["a"]
    assert records["a"] == {"input": "a.png", "stem": "a", "status": "ok", "size": [2, 3],
                            "tiles": 4}


# ------------------------------------------------------------- issue 33: where outputs go


@pytest.mark.parametrize("out", ["s3://", "s3:///", "memory://x", ""])
@pytest.mark.parametrize("scheduler", [[], ["--scheduler", "local:2"]])
def test_an_output_that_would_keep_nothing_is_refused(runner, run_dir, tmp_path, monkeypatch,
                                                      out, scheduler):
    """--out s3:// used to write a local folder named 's3:' and report 'predicted into
    s3://'; memory:// exited 0 and kept nothing; '' silently meant the run's folder."""
    photos = write_photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    result = runner("predict", "--run", run_dir, photos["rgb"], "--out", out, *scheduler)
    assert result.exit_code == 1, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: ") and "Traceback" not in result.output
    expected = {"s3://": "no bucket", "s3:///": "no bucket", "memory://x": "nothing written",
                "": "--out: empty"}[out]
    assert expected in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    assert not (run_dir / "predictions").exists()


def test_scheduler_with_more_local_workers_than_sensible_is_one_line(runner, run_dir, tmp_path):
    photos = write_photos(tmp_path / "photos")
    result = runner("predict", "--run", run_dir, photos["rgb"], "--out", tmp_path / "out",
                    "--scheduler", "local:100000")
    assert result.exit_code == 1
    assert "predict.scheduler: 'local:100000': local:N needs 1 <= N <= " in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("link", [".predictions.lock", ".records"])
def test_links_in_the_output_folder_are_not_followed(runner, run_dir, tmp_path, link):
    """A .predictions.lock symlink made a file outside --out; a .records symlink had the
    records written outside it."""
    photos = write_photos(tmp_path / "photos")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / link).symlink_to(elsewhere / "target", target_is_directory=link == ".records")
    if link == ".records":
        (elsewhere / "target").mkdir()
    result = runner("predict", "--run", run_dir, photos["rgb"], "--out", out)
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert f"{out / link}: is a symbolic link" in error, error
    assert not [p for p in elsewhere.rglob("*") if p.is_file()]


def test_after_a_killed_plain_predict_skip_existing_keeps_what_was_finished(runner, run_dir,
                                                                            tmp_path):
    """The plain loop commits each photo's record as it goes: killed before its summary,
    --skip-existing predicts only what was not finished (it used to predict everything)."""
    photos = write_photos(tmp_path / "photos")
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, tmp_path / "photos", "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("predictions.json", "predictions.csv"):  # as if killed before the summary
        (out / name).unlink()
    (out / "shore_overlay.png").unlink()  # ... and while writing shore's files
    (out / ".records" / "shore.json").unlink()
    result = runner("predict", "--run", run_dir, tmp_path / "photos", "--out", out,
                    "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "3 input(s) already predicted" in result.output
    assert "1 of 4 photo(s) predicted" in result.output and "shore: 56x40 px" in result.output
    rows = json.loads((out / "predictions.json").read_text())["images"]
    assert sorted(r["stem"] for r in rows) == ["alpha", "grey", "photo", "shore"]
    assert all(r["status"] == "ok" and r["source"] == str(photos[k].resolve())
               for r, k in zip(sorted(rows, key=lambda r: r["stem"]),
                               ["rgba", "grey", "jpg", "rgb"], strict=True))


def test_vector_on_photos_only_says_it_writes_none(runner, run_dir, tmp_path):
    photos = write_photos(tmp_path / "photos")
    result = runner("predict", "--run", run_dir, photos["rgb"], "--out", tmp_path / "out",
                    "--vector")
    assert result.exit_code == 0, result.output
    assert "--vector: only rasters (GeoTIFF inputs) get GeoJSON vectors" in result.output


def test_a_model_with_an_unknown_layer_names_the_model_file(runner, tmp_path):
    """A .keras file using a custom layer this segmenter does not know: one line naming the
    file (it was 'unexpected TypeError ... could not be deserialized')."""
    import keras

    @keras.saving.register_keras_serializable(package="elsewhere")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    run = make_run(tmp_path / "run", widths=(16,))
    inputs = keras.Input((None, None, 3))
    hidden = keras.layers.Conv2D(1, 1, activation="sigmoid")(Doubler()(inputs))
    keras.Model(inputs, hidden).save(run / "models" / "pw16.keras")
    keras.saving.get_custom_objects().pop("elsewhere>Doubler")
    photos = write_photos(tmp_path / "photos")
    result = runner("predict", "--run", run, photos["rgb"], "--out", tmp_path / "out")
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: {run / 'models' / 'pw16.keras'}: cannot load") \
        and "elsewhere>Doubler" in error, error
    assert "unexpected" not in error and len(result.output.strip().splitlines()) == 1


def test_a_run_at_a_url_is_fetched_again_when_its_files_change(s3, tmp_path):
    """--run s3://... was cached by file size: a run retrained and uploaded over the same keys
    (same sizes) was never fetched again, and predictions came from the old models."""
    from segmenter.config import DataConfig
    from segmenter.data.remote import fetch_run

    client = s3.client()
    prefix = "runs/retrained"
    data = DataConfig.model_validate({"endpoint_url": s3.endpoint})
    cache = tmp_path / "cache"
    client.put_object(Bucket="masks", Key=f"{prefix}/config.yaml", Body=b"model: {}\n")
    for body in (b"first model bytes", b"later model bytes"):  # same size, other content
        client.put_object(Bucket="masks", Key=f"{prefix}/models/pw16.keras", Body=body)
        local = fetch_run(f"s3://masks/{prefix}", data, cache=cache)
        assert (local / "models" / "pw16.keras").read_bytes() == body
    fetched = local / "models" / "pw16.keras"
    stamp = fetched.stat().st_mtime_ns
    fetch_run(f"s3://masks/{prefix}", data, cache=cache)  # unchanged: not fetched again
    assert fetched.stat().st_mtime_ns == stamp


def test_ctrl_c_on_a_local_cluster_is_one_line_and_a_rerun_finishes(run_dir, tmp_path):
    """Ctrl-C in a terminal reaches every process of the job: the worker processes used to
    print four tracebacks (76 lines). Now: one line saying what is kept and how to go on."""
    import signal
    import threading
    import time

    from segmenter.data.sample import write_sample

    # 60 photos: enough that the job is still running when its first photo is reported, also
    # on a loaded machine (with 30 the workers once finished them all before Ctrl-C arrived).
    write_sample(tmp_path / "sample", n=80, size=160, seed=0)
    photos, out = tmp_path / "sample" / "train", tmp_path / "out"
    command = [sys.executable, "-m", "segmenter", "predict", "--run", str(run_dir), str(photos),
               "--out", str(out), "--scheduler", "local:2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # A shell starts a command with Ctrl-C at its default; a test process may carry an ignored
    # SIGINT from earlier in-process tests, which the child would inherit and never see Ctrl-C.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not any(" px, water " in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, "the job ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert err.strip().splitlines()[-1].startswith(
        f"Error: interrupted: the inputs finished so far are kept in {out}; run the command "
        "again with --skip-existing added to predict the rest")
    rerun = subprocess.run([*command[:-2], "--skip-existing"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "input(s) already predicted" in rerun.stdout
    rows = json.loads((out / "predictions.json").read_text())["images"]
    assert len(rows) == len(list(photos.glob("*.JPG"))) and all(r["status"] == "ok"
                                                               for r in rows)


def test_s3_rasters_and_photos_on_a_local_cluster_quietly(run_dir, s3, tmp_path):
    """Rasters read from S3 by Dask workers failed in their second task ("'cell' object has
    no attribute 'seek'", tiles called truncated) or printed GDAL 'I/O error' lines and a
    ContextVar traceback at exit; a successful job prints nothing of the kind."""
    from helpers import rgb_raster

    from segmenter.data.sample import write_sample

    client = s3.client()
    prefix = f"inputs-{tmp_path.name}"
    for index in range(3):
        tif = rgb_raster(tmp_path / f"r{index}.tif", size=120)
        client.put_object(Bucket="masks", Key=f"{prefix}/r{index}.tif", Body=tif.read_bytes())
    write_sample(tmp_path / "sample", n=2, size=96, seed=0)
    photo = sorted((tmp_path / "sample").rglob("*.JPG"))[0]
    client.put_object(Bucket="masks", Key=f"{prefix}/p.JPG", Body=photo.read_bytes())
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "segmenter", "predict", "--run", str(run_dir),
         f"s3://masks/{prefix}/", "--out", f"s3://masks/{prefix}-out", "--scheduler", "local:2",
         "--set", f"data.endpoint_url={s3.endpoint}", "--set", "predict.tile_size=64"],
        env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 of 4 photo(s) predicted" in result.stdout
    noise = [line for line in result.stderr.splitlines()
             if any(word in line for word in ("Traceback", "ERROR", "Error", "Exception",
                                              "Warning"))]
    assert not noise, result.stderr
    summary = json.loads(client.get_object(Bucket="masks", Key=f"{prefix}-out/predictions.json")
                         ["Body"].read())
    assert sorted(r["stem"] for r in summary["images"]) == ["p", "r0", "r1", "r2"]
    assert all(r["status"] == "ok" for r in summary["images"])
