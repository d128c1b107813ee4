"""Hostile data (issue 9): bombs, empty labels, looping links, earlier outputs, S3 parameters."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from helpers import data_cfg, png_declaring
from PIL import Image

from segmenter.data.inputs import expand_inputs


def test_decompression_bomb_is_named_and_skipped_before_decoding(runner, scenes_copy):
    """A 40000 x 40000 photo declared in 2 KB is refused from its header (it used to be
    decoded until the machine ran out of memory); with skip_bad the others still load."""
    photo = sorted((scenes_copy / "train").glob("*.JPG"))[0]
    photo.write_bytes(png_declaring(40_000, 40_000))  # Pillow goes by content, not name
    result = runner("data", "--set", f"data.source={scenes_copy}")
    assert result.exit_code == 1
    assert f"{photo.name}: declares 40000x40000 pixels" in result.output
    assert "megapixel limit" in result.output and "Traceback" not in result.output
    result = runner("data", "--set", f"data.source={scenes_copy}", "--set", "data.skip_bad=true")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad pair" in result.output


def test_photo_larger_than_memory_is_refused_even_under_the_cap(monkeypatch):
    from segmenter.data.images import available_memory, decode_photo
    from segmenter.errors import DataError

    monkeypatch.setenv("SEGMENTER_MAX_PIXELS", "1e12")
    assert available_memory() is not None
    with pytest.raises(DataError, match=r"big\.png: .*GiB of memory available"):
        decode_photo(png_declaring(44_000, 44_000), "big.png")


@pytest.mark.parametrize("content", [b"", b"0123456789"])
def test_empty_or_truncated_mat_is_named_and_skip_bad_skips_it(runner, scenes_copy, content):
    label = sorted((scenes_copy / "train").glob("*.mat"))[0]
    label.write_bytes(content)
    result = runner("data", "--set", f"data.source={scenes_copy}")
    assert result.exit_code == 1
    assert f"{label.name}: not a readable .mat file" in result.output, result.output
    assert "unexpected" not in result.output
    result = runner("data", "--set", f"data.source={scenes_copy}", "--set", "data.skip_bad=true")
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad pair" in result.output


def test_self_looping_symlink_is_named_and_skipped(runner, scenes_copy):
    link = scenes_copy / "train" / "loop.png"
    os.symlink(link, link)
    result = runner("data", "--set", f"data.source={scenes_copy}")
    assert result.exit_code == 0, result.output
    assert f"{link}: cannot read" in result.output and "skipped" in result.output


def test_earlier_predictions_in_an_input_folder_are_not_photos(tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.zeros((8, 8, 3), np.uint8)
    for name in ("shore.png", "shore_water_prob.png", "shore_water_mask.png",
                 "shore_overlay.png", "shore_water_prob_pw32.png",
                 # a GeoTIFF input's outputs (segmenter.outputs.geo)
                 "shore_water_prob.tif", "shore_water_mask.tif"):
        Image.fromarray(pixels).save(folder / name)
    caplog.set_level("INFO", logger="segmenter")
    refs = expand_inputs([str(folder)], data_cfg())
    assert [ref.name for ref in refs] == ["shore"]
    assert "skipped 6 file(s) that segmenter predict wrote" in caplog.text
    assert [r.name for r in expand_inputs([str(folder / "*.png")], data_cfg())] == ["shore"]
    # Named explicitly, a file is taken as the user says.
    assert [r.name for r in expand_inputs([str(folder / "shore_overlay.png")],
                                          data_cfg())] == ["shore_overlay"]


def test_s3_parameter_errors_say_which_parameter(runner, s3):
    result = runner("data", "--set", "data.source=s3://bad!bucket/x",
                    "--set", f"data.endpoint_url={s3.endpoint}")
    assert result.exit_code == 1
    line = [x for x in result.output.splitlines() if x.startswith("Error:")][0]
    assert "Parameter validation failed:" in line
    assert "bad!bucket" in line.split("failed:", 1)[1], line


def test_lab_tiff_is_noted():
    import tifffile

    from segmenter.data.images import decode_photo

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((8, 8, 3), np.uint8), photometric="CIELAB")
    _, notes = decode_photo(buffer.getvalue(), "lab.tif")
    assert any("CIELAB" in note for note in notes), notes
