"""Every way `segmenter predict` runs names inputs, merges summaries and reports bad input alike.

The paths: ``plain`` (one process, a local folder), ``skip`` (``--skip-existing``), ``url`` (an
``s3://`` output on moto's S3 server) and ``cluster`` (``--scheduler`` on the session's
LocalCluster of 2 workers). Each test runs on every path.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import make_run
from PIL import Image

PATHS = ["plain", "skip", "url", "cluster"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


class Out:
    """An output folder of one path: where `--out` points, the path's flags, what is there."""

    def __init__(self, path: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.path = path
        self.flags: list[str] = []
        if path == "url":
            self.s3 = request.getfixturevalue("s3")
            self.prefix = f"out-{uuid.uuid4().hex[:8]}"
            self.location = f"s3://masks/{self.prefix}"
            self.flags = ["--set", f"data.endpoint_url={self.s3.endpoint}"]
        else:
            self.location = str(tmp_path / "out")
        if path == "skip":
            self.flags = ["--skip-existing"]
        if path == "cluster":
            self.flags = ["--scheduler", request.getfixturevalue("scheduler")]

    @property
    def again(self) -> list[str]:
        """The flags of a second call into the same folder (it holds a summary by then)."""
        return self.flags if self.path == "skip" else [*self.flags, "--overwrite"]

    def names(self) -> set[str]:
        if self.path != "url":
            folder = Path(self.location)
            return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
        listing = self.s3.client().list_objects_v2(Bucket="masks", Prefix=self.prefix + "/")
        return {o["Key"][len(self.prefix) + 1:] for o in listing.get("Contents", [])
                if "/" not in o["Key"][len(self.prefix) + 1:]}

    def read(self, name: str) -> bytes:
        if self.path != "url":
            return (Path(self.location) / name).read_bytes()
        body = self.s3.client().get_object(Bucket="masks", Key=f"{self.prefix}/{name}")["Body"]
        return body.read()

    def rows(self) -> list[dict]:
        """predictions.json's rows, checked against predictions.csv."""
        rows = json.loads(self.read("predictions.json"))["images"]
        table = list(csv.DictReader(io.StringIO(self.read("predictions.csv").decode())))
        assert [(r["stem"], r["input"]) for r in table] == [(r["stem"], r["input"])
                                                            for r in rows]
        return rows


@pytest.fixture(params=PATHS)
def out(request, tmp_path) -> Out:
    return Out(request.param, request, tmp_path)


def photo(path: Path, seed: int, size=(40, 56)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=92) if path.suffix.lower() == ".jpg" \
        else Image.fromarray(pixels).save(path)
    return path


def test_dotted_names_keep_their_stems_and_a_later_call_never_takes_them(runner, run_dir,
                                                                         out, tmp_path):
    """flight.01.JPG and flight.02.JPG are stems flight.01 / flight.02 (one suffix stripped);
    a later flight.03.JPG into the same folder gets its own files and leaves theirs alone."""
    first = [photo(tmp_path / "in" / f"flight.0{i}.JPG", seed=i) for i in (1, 2)]
    result = runner("predict", "--run", run_dir, *first, "--out", out.location, *out.flags)
    assert result.exit_code == 0, result.output
    assert [r["stem"] for r in out.rows()] == ["flight.01", "flight.02"]
    before = {n: out.read(n) for n in out.names() if n.startswith("flight.01_")}
    assert sorted(before) == ["flight.01_overlay.png", "flight.01_water_mask.png",
                              "flight.01_water_prob.png"]

    third = photo(tmp_path / "in" / "flight.03.JPG", seed=3)
    result = runner("predict", "--run", run_dir, third, "--out", out.location, *out.again)
    assert result.exit_code == 0, result.output
    assert "flight.03: 56x40 px" in result.output  # predicted, not "already predicted"
    rows = out.rows()
    assert [r["stem"] for r in rows] == ["flight.01", "flight.02", "flight.03"]
    assert rows[2]["input"] == str(third)
    assert {n: out.read(n) for n in before} == before
    assert "flight.03_water_mask.png" in out.names()


def test_same_file_name_from_another_folder_is_another_input(runner, run_dir, out, tmp_path):
    """IMG.png of folder b after IMG.png of folder a: predicted as IMG-2, never skipped as
    'already predicted' nor credited with a's masks; a's files untouched."""
    a = photo(tmp_path / "a" / "IMG.png", seed=1)
    b = photo(tmp_path / "b" / "IMG.png", seed=2, size=(24, 32))
    result = runner("predict", "--run", run_dir, a, "--out", out.location, *out.flags)
    assert result.exit_code == 0, result.output
    mask_a = out.read("IMG_water_mask.png")
    result = runner("predict", "--run", run_dir, b, "--out", out.location, *out.again)
    assert result.exit_code == 0, result.output
    assert "already predicted" not in result.output and "IMG-2: 32x24 px" in result.output
    rows = {r["stem"]: r for r in out.rows()}
    assert rows["IMG"]["input"] == str(a) and rows["IMG-2"]["input"] == str(b)
    assert rows["IMG-2"]["size"] == [24, 32]
    assert out.read("IMG_water_mask.png") == mask_a
    assert np.asarray(Image.open(io.BytesIO(out.read("IMG-2_water_mask.png")))).shape == (24, 32)

    # The same input again keeps its stem: --overwrite replaces its own files, nobody else's.
    flags = out.flags if out.path == "skip" else [*out.flags, "--overwrite"]
    result = runner("predict", "--run", run_dir, b, "--out", out.location, *flags)
    assert result.exit_code == 0, result.output
    assert [r["stem"] for r in out.rows()] == ["IMG", "IMG-2"]
    assert not [n for n in out.names() if n.startswith("IMG-3")]


def test_a_later_call_adds_its_rows_to_the_summary(runner, run_dir, out, tmp_path):
    """3 photos, then 1 new one: the summary has 4 rows, json and csv alike."""
    three = [photo(tmp_path / "in" / f"p{i}.png", seed=i) for i in range(3)]
    result = runner("predict", "--run", run_dir, *three, "--out", out.location, *out.flags)
    assert result.exit_code == 0, result.output
    new = photo(tmp_path / "later" / "q.png", seed=9)
    result = runner("predict", "--run", run_dir, new, "--out", out.location, *out.again)
    assert result.exit_code == 0, result.output
    rows = out.rows()
    assert [r["stem"] for r in rows] == ["p0", "p1", "p2", "q"]
    assert all(r["status"] == "ok" for r in rows)


def test_a_bad_photo_is_one_line_and_the_others_are_predicted(runner, run_dir, out, tmp_path):
    good = photo(tmp_path / "in" / "good.png", seed=1)
    bad = tmp_path / "in" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    result = runner("predict", "--run", run_dir, good, bad, "--out", out.location, *out.flags)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {bad}: ")
    assert failed[0].count(str(bad)) == 1 and "unexpected" not in failed[0]
    assert result.output.splitlines()[-1].startswith("Error: 1 photo(s) failed: ")
    assert "1 of 2 photo(s) predicted" in result.output
    rows = {r["stem"]: r for r in out.rows()}
    assert rows["good"]["status"] == "ok" and rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"] == failed[0].removeprefix("FAILED ")
    assert not [n for n in out.names() if n.startswith("broken_")]


def test_vectors_follow_the_call_that_wrote_the_mask(runner, run_dir, out, tmp_path):
    """--overwrite without --vector over a --vector result used to leave the old GeoJSON
    beside the new mask; --skip-existing --vector skipped a raster predicted without them."""
    from helpers import rgb_raster

    (tmp_path / "in").mkdir()
    tif = rgb_raster(tmp_path / "in" / "shore.tif", size=80)
    vectors = {"shore_water.geojson", "shore_shoreline.geojson"}
    skip = [f for f in out.flags if f != "--skip-existing"] + ["--skip-existing"]
    result = runner("predict", "--run", run_dir, tif, "--out", out.location, *out.flags)
    assert result.exit_code == 0, result.output
    assert not vectors & out.names()
    result = runner("predict", "--run", run_dir, tif, "--out", out.location, *skip, "--vector")
    assert result.exit_code == 0, result.output
    assert "shore: 80x60 px raster" in result.output and "already predicted" not in result.output
    assert vectors <= out.names()
    assert {"water_vector", "shoreline_vector"} <= set(out.rows()[0]["outputs"])
    if out.path == "skip":
        return
    result = runner("predict", "--run", run_dir, tif, "--out", out.location, *out.again)
    assert result.exit_code == 0, result.output
    assert not vectors & out.names(), "vectors of the earlier prediction left beside the mask"
    assert {"shore_water_mask.tif", "shore_water_prob.tif"} <= out.names()
    assert set(out.rows()[0]["outputs"]) == {"water_prob", "water_mask", "overlay"}


def test_bad_and_tiny_rasters_never_stop_the_job(runner, run_dir, out, tmp_path):
    """A 1 x 1 GeoTIFF stopped the --skip-existing and cluster jobs with no summary; a cut
    raster read 'unexpected Exception: DataError(...)' on a cluster."""
    from helpers import rgb_raster, write_raster

    folder = tmp_path / "in"
    photo(folder / "shore.png", seed=1)
    write_raster(folder / "dot.tif", np.full((3, 1, 1), 90, np.uint8))
    good = rgb_raster(tmp_path / "good.tif", size=80).read_bytes()
    (folder / "cut.tif").write_bytes(good[:300])  # a TIFF header, then nothing
    result = runner("predict", "--run", run_dir, folder, "--out", out.location, *out.flags)
    assert result.exit_code == 1 and "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {folder / 'cut.tif'}: ")
    assert "unexpected" not in failed[0] and "DataError(" not in failed[0], failed[0]
    assert "2 of 3 photo(s) predicted" in result.output
    rows = {r["stem"]: r for r in out.rows()}
    assert rows["dot"]["status"] == "ok" and rows["dot"]["size"] == [1, 1]
    assert rows["shore"]["status"] == "ok" and rows["cut"]["status"] == "failed"
    assert not [n for n in out.names() if "scratch" in n or ".tmp" in n]


# ------------------------------------------------------ the plan alone: claims and sources


class Ref:
    def __init__(self, path: Path) -> None:
        self.path = str(path)


def committed(plan, index: int) -> None:
    """What an engine does once an input's files are in place."""
    from segmenter.outputs.names import output_paths
    from segmenter.predict import jobs

    stem = plan.stems[index]
    for path in output_paths(plan.output.local, stem).values():
        path.write_bytes(b"png")
    record = {**jobs.base_record(plan.refs[index], stem), "status": "ok",
              "outputs": {k: p.name for k, p in output_paths(".", stem).items()}}
    jobs.commit(plan, record)


@pytest.fixture
def planner(tmp_path):
    from segmenter.config import load_config
    from segmenter.outputs.store import open_output
    from segmenter.predict import jobs

    cfg = load_config(None, [])

    def plan(*paths: Path, **flags):
        return jobs.plan_job(open_output(tmp_path / "out", cfg.data), [Ref(p) for p in paths],
                             cfg, widths=[16], **flags)

    return plan


def test_an_input_named_twice_is_one_input_and_never_vouches_for_another(planner, tmp_path):
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    first = planner(a, a)
    assert first.stems == ["x"]
    committed(first, 0)
    later = planner(b, skip_existing=True)
    assert later.stems == ["x-2"] and not later.done


def test_an_interrupted_overwrite_is_not_taken_for_finished(planner, tmp_path):
    """--overwrite claims the input before rewriting its files: killed midway, the earlier
    record (still in predictions.json) must not vouch for half-old, half-new files."""
    from segmenter.predict import jobs

    a = tmp_path / "a" / "x.jpg"
    first = planner(a)
    committed(first, 0)
    jobs.write_summary(first, [first.output.records()["x"]], {})
    planner(a, overwrite=True)  # ... then killed before its commit
    again = planner(a, skip_existing=True)
    assert again.stems == ["x"] and not again.done
    committed(again, 0)
    assert planner(a, skip_existing=True).done


def test_two_calls_at_once_never_share_a_stem(planner, tmp_path):
    b, c = tmp_path / "b" / "y.jpg", tmp_path / "c" / "y.jpg"
    one = planner(b, skip_existing=True)
    two = planner(c, skip_existing=True)  # before the first has committed anything
    assert one.stems == ["y"] and two.stems == ["y-2"]
