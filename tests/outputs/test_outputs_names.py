"""Which files an input owns in an output folder, its stem, and the summary files."""

from __future__ import annotations

import csv
import json

from segmenter.outputs.names import (
    assign_stems,
    input_source,
    output_paths,
    owned_by,
    owned_files,
    owner_of,
    raster_output_paths,
    record_source,
    safe_stem,
)
from segmenter.outputs.summary import CSV_FIELDS, SUMMARY_CSV, SUMMARY_JSON, write_summary


def test_output_names_stay_inside_out():
    assert safe_stem("s3://bucket/../../etc/passwd.jpg") == "passwd"
    assert safe_stem("..") == "image"
    assert safe_stem("..\\..\\evil.png") == "evil"
    assert safe_stem("dir/.hidden.JPG") == "hidden"
    assert safe_stem("a b/c d?.tif") == "c_d_"
    assert safe_stem("flight.01.JPG") == "flight.01"
    for name in ("../x.jpg", "a/../../b.png", "/abs/c.tif", "..", "../..", "..."):
        stem = safe_stem(name)
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".")


def test_every_file_a_photo_or_raster_writes_is_owned_by_its_stem():
    written = [p.name for p in output_paths("out", "shore").values()]
    written += [p.name for p in raster_output_paths("out", "shore").values()]
    written += ["shore_water_prob.npy", "shore_water_prob_pw32.png", "shore_water_prob_pw128.npy"]
    assert {owner_of(name) for name in written} == {"shore"}
    assert all(owned_by(name, "shore") for name in written)
    # a stem that ends like another's file names is still told apart
    assert owner_of("shore_overlay_overlay.png") == "shore_overlay"
    assert not owned_by("shore-2_water_mask.png", "shore")
    for other in ("predictions.csv", "shore.jpg", "_overlay.png", "notes.txt", "shore_pw32.png"):
        assert owner_of(other) is None


def test_owned_files_groups_a_folder_by_the_stems_asked_for():
    present = {"a_water_mask.png", "a_overlay.png", "b_water_prob.tif", "c_overlay.png",
               "predictions.json"}
    assert owned_files(present, ["a", "b", "z"]) == {
        "a": ["a_overlay.png", "a_water_mask.png"], "b": ["b_water_prob.tif"]}


def test_stems_are_unique_case_insensitively_and_known_inputs_keep_theirs(tmp_path):
    assert assign_stems(["x/a.jpg", "y/a.png", "A.tif"]) == ["a", "a-2", "A-3"]
    photo = tmp_path / "a.jpg"
    known = {input_source(str(photo)): "a-7"}
    # the input the folder already holds keeps its stem; a new one never takes a stem in use
    assert assign_stems([str(photo), "elsewhere/a.jpg"], known, taken={"a-7", "a"}) == [
        "a-7", "a-2"]
    assert input_source("s3://bucket/a.jpg") == "s3://bucket/a.jpg"
    assert input_source("file://" + str(photo)) == str(photo)
    assert record_source({"input": str(photo)}) == str(photo)
    assert record_source({"source": "s3://b/k.jpg", "input": "k.jpg"}) == "s3://b/k.jpg"


def test_summary_has_every_record_and_a_csv_row_each(tmp_path):
    records = [
        {"input": "a.jpg", "stem": "a", "status": "ok", "size": [30, 40], "method": "gmm",
         "water_fraction": 0.25, "threshold": 0.5, "seconds": 1.5},
        {"input": "b.jpg", "stem": "b", "status": "failed", "error": "b.jpg: unreadable"},
    ]
    json_path, csv_path = write_summary(tmp_path, records, {"run": "r1"})
    assert (json_path.name, csv_path.name) == (SUMMARY_JSON, SUMMARY_CSV)
    assert json.loads(json_path.read_text()) == {"run": "r1", "images": records}
    rows = list(csv.DictReader(csv_path.open()))
    assert tuple(rows[0]) == CSV_FIELDS
    assert (rows[0]["height"], rows[0]["width"], rows[0]["water_fraction"]) == ("30", "40", "0.25")
    assert (rows[1]["status"], rows[1]["error"], rows[1]["height"]) == (
        "failed", "b.jpg: unreadable", "")
    assert not list(tmp_path.glob("*.tmp*"))  # written under a temporary name, then renamed

