"""`segmenter predict` on a Dask cluster: equal to one process, S3 outputs, failures.

One LocalCluster of 2 worker processes (one thread each, loopback only) is shared by the whole
module; the CLI reaches it with ``--scheduler tcp://127.0.0.1:PORT``, as it would reach a real
cluster. Workers import TensorFlow on their first task, so the first test pays for that.
The worker-killing test is last (the killed worker's replacement starts cold) and marked
slow: ``python -m pytest tests/test_cluster.py -m slow``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_run, rgb_raster, write_photos
from PIL import Image

pytest.importorskip("distributed")
rasterio = pytest.importorskip("rasterio")


def assert_masks_agree(mask, reference, what: str) -> None:
    """Equal masks, up to the last bits of float arithmetic: for outputs made with other
    thread settings than the reference's.

    Workers run TensorFlow and BLAS on one thread, this test process on several; sums then add
    up in another order, so a pixel whose probability sits on the GMM's decision boundary may
    fall on the other side (one CI run saw it). More than 0.5 % of pixels apart is a real
    difference.
    """
    mask, reference = np.asarray(mask), np.asarray(reference)
    assert mask.shape == reference.shape, what
    assert set(np.unique(mask)) <= set(np.unique(reference)) | {0, 1, 2, 255}, what
    assert (mask != reference).mean() <= 0.005, f"{what}: {(mask != reference).mean():.2%} apart"


def assert_same_photo_outputs(out: Path, single: Path, stem: str, exact: bool = True) -> None:
    """Outputs of one photo: byte-identical masks when both sides ran with the same thread
    settings (``exact``), else masks equal up to float noise; probabilities within 1 level."""
    mask, reference = out / f"{stem}_water_mask.png", single / f"{stem}_water_mask.png"
    if exact:
        assert mask.read_bytes() == reference.read_bytes(), stem
    else:
        assert_masks_agree(Image.open(mask), Image.open(reference), stem)
    a = np.asarray(Image.open(out / f"{stem}_water_prob.png"), dtype=int)
    b = np.asarray(Image.open(single / f"{stem}_water_prob.png"), dtype=int)
    assert np.abs(a - b).max() <= 1, stem


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """10 photos: the four odd ones of test_predict_cli and six generated sample scenes."""
    from segmenter.data.sample import write_sample

    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    sample = tmp_path_factory.mktemp("sample")
    write_sample(sample, n=6, size=96, seed=0)
    for path in sorted([*sample.glob("train/*.JPG"), *sample.glob("test/*.JPG")]):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def single(run_dir, photos, tmp_path_factory) -> Path:
    """The photos predicted by plain `segmenter predict` (no scheduler), in a process with the
    workers' one-thread settings: same arithmetic, so masks must match byte for byte."""
    import subprocess

    from segmenter.predict.cluster import WORKER_ENV

    out = tmp_path_factory.mktemp("single") / "out"
    code = "import sys; from segmenter.cli.main import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "predict", "--run", str(run_dir), str(photos),
         "--out", str(out)], env={**os.environ, **WORKER_ENV}, capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def stems_of(out: Path) -> list[str]:
    return [r["stem"] for r in json.loads((out / "predictions.json").read_text())["images"]]


def test_photos_on_two_workers_equal_one_process(runner, scheduler, run_dir, photos, single,
                                                 tmp_path):
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, photos, "--out", out,
                    "--scheduler", scheduler)
    assert result.exit_code == 0, result.output
    assert f"Dask scheduler {scheduler}, 2 worker(s)" in result.output
    assert "10 of 10 photo(s) predicted into" in result.output
    assert " megapixels in " in result.output and "on 2 worker(s), 0 failed" in result.output
    assert stems_of(out) == stems_of(single)
    for stem in stems_of(single):
        assert_same_photo_outputs(out, single, stem)
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert all(r["status"] == "ok" and r["worker"].startswith("worker tcp://127.0.0.1:")
               for r in records)
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 11 and rows[0].startswith("input,stem,status")
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("adapt", [[], ["--set", "predict.adapt_norm=0.5"]])
def test_raster_tiles_on_two_workers_equal_one_process(runner, scheduler, run_dir, tmp_path,
                                                       adapt):
    """With predict.adapt_norm every worker adapts to the whole raster, as one process does."""
    tif = rgb_raster(tmp_path / "shore.tif", size=200)  # 150 x 200: 12 tiles of 64
    settings = ["--set", "predict.tile_size=64", "--set", "predict.overview_size=100", *adapt]
    one, many = tmp_path / "one", tmp_path / "many"
    result = runner("predict", "--run", run_dir, tif, "--out", one, "--vector", *settings)
    assert result.exit_code == 0, result.output
    result = runner("predict", "--run", run_dir, tif, "--out", many, "--vector", *settings,
                    "--scheduler", scheduler)
    assert result.exit_code == 0, result.output
    assert "shore: 200x150 px raster in 12 tile(s)" in result.output
    with rasterio.open(one / "shore_water_mask.tif") as a, \
            rasterio.open(many / "shore_water_mask.tif") as b:
        assert a.crs == b.crs and a.transform == b.transform
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert_masks_agree(b.read(), a.read(), "shore.tif")
        assert set(np.unique(b.read(1))) == {1, 2}  # a real mask, not a blank one
        identical = np.array_equal(a.read(), b.read())
    with rasterio.open(one / "shore_water_prob.tif") as a, \
            rasterio.open(many / "shore_water_prob.tif") as b:
        np.testing.assert_allclose(b.read(), a.read(), atol=1e-5, rtol=0)
    first = json.loads((one / "predictions.json").read_text())["images"][0]
    second = json.loads((many / "predictions.json").read_text())["images"][0]
    assert second["water_fraction"] == pytest.approx(first["water_fraction"], abs=0.005)
    assert second["threshold"] == pytest.approx(first["threshold"], abs=1e-3)
    assert second["windows"] == first["windows"]
    vectors = [json.loads((folder / "shore_water.geojson").read_text()) for folder in (one, many)]
    assert vectors[1]["features"], "no water polygons"
    if identical:  # the vectors follow the mask exactly
        assert vectors[1] == vectors[0]
    assert not [p for p in many.iterdir() if "scratch" in p.name or ".tmp" in p.name]


# ------------------------------------------------------------------------------------ S3


def s3_objects(s3, prefix: str) -> dict[str, dict]:
    listing = s3.client().list_objects_v2(Bucket="masks", Prefix=prefix)
    return {o["Key"][len(prefix) + 1:]: o for o in listing.get("Contents", [])}


def test_outputs_on_s3_then_skip_existing(runner, scheduler, run_dir, photos, single, s3,
                                          tmp_path):
    url = "s3://masks/survey/run1"
    access = ["--set", f"data.endpoint_url={s3.endpoint}",
              "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    result = runner("predict", "--run", run_dir, photos, "--out", url, *access,
                    "--scheduler", scheduler)
    assert result.exit_code == 0, result.output
    objects = s3_objects(s3, "survey/run1")
    for stem in stems_of(single):
        for kind in ("water_mask.png", "water_prob.png", "overlay.png"):
            assert f"{stem}_{kind}" in objects, (stem, kind)
        body = s3.client().get_object(Bucket="masks", Key=f"survey/run1/{stem}_water_mask.png")
        assert body["Body"].read() == (single / f"{stem}_water_mask.png").read_bytes(), stem
        assert f".records/{stem}.json" in objects
    assert not [k for k in objects if ".tmp" in k or "write-test" in k]
    summary = json.loads(s3.client().get_object(
        Bucket="masks", Key="survey/run1/predictions.json")["Body"].read())
    assert [r["stem"] for r in summary["images"]] == stems_of(single)

    again = runner("predict", "--run", run_dir, photos, "--out", url, *access,
                   "--scheduler", scheduler)
    assert again.exit_code == 1 and "--skip-existing" in again.output  # never overwritten

    skip = runner("predict", "--run", run_dir, photos, "--out", url, *access,
                  "--scheduler", scheduler, "--skip-existing")
    assert skip.exit_code == 0, skip.output
    assert "10 input(s) already predicted" in skip.output
    assert "0 of 10 photo(s) predicted" in skip.output and "10 already there" in skip.output
    later = s3_objects(s3, "survey/run1")
    for name, meta in objects.items():
        if not name.startswith(("predictions.", ".records/.job")):
            assert later[name]["ETag"] == meta["ETag"] and \
                later[name]["LastModified"] == meta["LastModified"], name

    # After a crash some outputs are missing: only those photos are predicted again.
    s3.client().delete_object(Bucket="masks", Key="survey/run1/scene_003_overlay.png")
    resumed = runner("predict", "--run", run_dir, photos, "--out", url, *access,
                     "--scheduler", scheduler, "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    assert "1 of 10 photo(s) predicted" in resumed.output and "scene_003:" in resumed.output
    assert "scene_003_overlay.png" in s3_objects(s3, "survey/run1")
    rows = s3.client().get_object(Bucket="masks", Key="survey/run1/predictions.csv")
    lines = rows["Body"].read().decode().splitlines()[1:]
    assert sorted(line.split(",")[1] for line in lines) == sorted(stems_of(single))


def test_run_directory_on_s3(runner, scheduler, run_dir, photos, single, s3, tmp_path):
    s3.upload_folder(run_dir, "masks", "runs/r1")
    out = tmp_path / "out"
    result = runner("predict", "--run", "s3://masks/runs/r1", photos / "shore.png",
                    "--out", out, "--set", f"data.endpoint_url={s3.endpoint}",
                    "--scheduler", scheduler)
    assert result.exit_code == 0, result.output
    assert_same_photo_outputs(out, single, "shore")
    assert json.loads((out / "predictions.json").read_text())["run"] == "s3://masks/runs/r1"


# ------------------------------------------------------------------------------ bad input


def test_unreachable_scheduler_fails_fast_naming_it(runner, run_dir, photos, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody listens there
    started = time.monotonic()
    result = runner("predict", "--run", run_dir, photos / "shore.png", "--out", tmp_path / "o",
                    "--scheduler", f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - started < 20
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in last
    assert last.startswith("Error: predict.scheduler:")


@pytest.mark.parametrize("value", ["nonsense", "local:0", "http://x:1"])
def test_malformed_scheduler_is_one_line(runner, run_dir, photos, value):
    result = runner("predict", "--run", run_dir, photos / "shore.png",
                    "--set", f"predict.scheduler={value}")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: predict.scheduler:")


def test_run_a_worker_cannot_read_names_worker_and_path(runner, scheduler, photos, tmp_path):
    run = make_run(tmp_path / "broken-run")
    (run / "models" / "pw16.keras").write_bytes(b"not a keras file")  # the client reads no model
    result = runner("predict", "--run", run, photos, "--out", tmp_path / "out",
                    "--scheduler", scheduler)
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: worker tcp://127.0.0.1:")
    assert f"cannot read the run directory {run}" in last and "pw16.keras" in last


def test_skip_existing_in_one_process_after_a_plain_run(runner, run_dir, photos, single,
                                                        tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(single, out)  # a finished plain run: predictions.json, no records
    (out / "grey_water_mask.png").unlink()
    result = runner("predict", "--run", run_dir, photos, "--out", out, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "9 input(s) already predicted" in result.output
    assert "1 of 10 photo(s) predicted" in result.output and "9 already there" in result.output
    # predicted in this process (TF and BLAS on several threads): equal up to float noise
    assert_same_photo_outputs(out, single, "grey", exact=False)
    assert stems_of(out) == stems_of(single)


def test_plain_overwrite_rewrites_the_records_of_an_earlier_job(runner, run_dir, photos,
                                                                single, tmp_path):
    """A record vouches for outputs its job wrote: a plain --overwrite rewrites them, and
    each input's record with them (the plain path commits records too)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(single, out)
    (out / "grey_water_mask.png").unlink()
    first = runner("predict", "--run", run_dir, photos, "--out", out, "--skip-existing")
    assert first.exit_code == 0, first.output
    assert (out / ".records" / "grey.json").exists()
    before = (out / ".records" / "grey.json").read_text()
    again = runner("predict", "--run", run_dir, photos, "--out", out, "--overwrite")
    assert again.exit_code == 0, again.output
    marks = {p.stem: json.loads(p.read_text()) for p in (out / ".records").glob("[!.]*.json")}
    assert sorted(marks) == sorted(stems_of(single))
    assert (out / ".records" / "grey.json").read_text() != before  # this call's, not the old
    rerun = runner("predict", "--run", run_dir, photos, "--out", out, "--skip-existing")
    assert rerun.exit_code == 0, rerun.output
    assert "10 input(s) already predicted" in rerun.output


def test_bad_photo_is_a_failure_line_not_a_stop(runner, scheduler, run_dir, photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("shore.png", "scene_000.JPG"):
        (folder / name).write_bytes((photos / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    good = rgb_raster(tmp_path / "good.tif", size=120).read_bytes()
    (folder / "cut.tif").write_bytes(good[:300])  # a TIFF header, then nothing
    out = tmp_path / "out"
    result = runner("predict", "--run", run_dir, folder, "--out", out, "--scheduler", scheduler)
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.splitlines()[-1]
    assert "2 photo(s) failed" in last and "broken.jpg" in last and "cut.tif" in last
    assert "2 of 4 photo(s) predicted" in result.output
    assert not [p for p in out.iterdir() if p.suffix == ".tif"]  # no scratch left behind
    records = {r["stem"]: r for r in json.loads((out / "predictions.json").read_text())["images"]}
    assert records["broken"]["status"] == "failed" and records["shore"]["status"] == "ok"
    mark = json.loads((out / ".records" / "broken.json").read_text())
    assert mark["status"] == "failed"  # recorded as such: a --skip-existing rerun tries it again


# --------------------------------------------------------------------- a worker dies (last)


@pytest.mark.slow  # ~30 s on an idle 2-core machine, 96 s under load: `-m slow` runs it
def test_killed_worker_job_completes_nothing_lost_or_doubled(runner, cluster, scheduler,
                                                              run_dir, tmp_path):
    from distributed import Client

    from segmenter.data.sample import write_sample

    folder = tmp_path / "many"
    write_sample(folder, n=24, size=128, seed=5)
    out = tmp_path / "out"
    holder: dict = {}

    def job() -> None:
        holder["result"] = runner("predict", "--run", run_dir, folder / "train",
                                  folder / "test", "--out", out, "--scheduler", scheduler)

    thread = threading.Thread(target=job)
    thread.start()
    killed = None
    with Client(scheduler, timeout=10) as client:
        pids = client.run(os.getpid)
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and thread.is_alive():
            done = [p for p in out.glob(".records/[!.]*.json")
                    if '"status": "ok"' in p.read_text()] if out.exists() else []
            if len(done) >= 2:
                busy = [w for w, keys in client.processing().items() if keys]
                if busy:
                    killed = pids[busy[0]]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
    thread.join(timeout=600)
    assert killed is not None, "the job ended before a worker could be killed"
    result = holder["result"]
    assert result.exit_code == 0, result.output
    assert "24 of 24 photo(s) predicted" in result.output
    with Client(scheduler, timeout=10) as client:
        client.wait_for_workers(2, timeout=120)
        assert killed not in client.run(os.getpid).values()  # the nanny started a new one
    lines = (out / "predictions.csv").read_text().splitlines()[1:]
    stems = [line.split(",")[1] for line in lines]
    assert len(stems) == 24 and len(set(stems)) == 24
    assert all(line.split(",")[2] == "ok" for line in lines)
    for stem in stems:
        assert (out / f"{stem}_water_mask.png").is_file()
        assert (out / ".records" / f"{stem}.json").is_file()
