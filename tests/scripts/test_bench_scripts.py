"""The benchmark scripts still run against the package as it is (they import its internals,
so an API change breaks them silently otherwise): tiny sizes, real end-to-end runs."""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_run

REPO = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, timeout: int = 600) -> str:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args],
                            capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def figure(text: str, name: str) -> float:
    match = re.search(rf"\b{name}=([0-9.]+)", text)
    assert match, f"{name}= missing from:\n{text[-1500:]}"
    return float(match.group(1))


def child_report(text: str, kind: str) -> dict:
    """What a child of bench_mosaic.py measured, as the script prints it (``kind: {...}``)."""
    import ast

    match = re.search(rf"^{kind}: (\{{.*\}})$", text, re.MULTILINE)
    assert match, f"{kind}: missing from:\n{text[-1500:]}"
    return ast.literal_eval(match.group(1))


def tile_windows(size: int, tile: int, scale: float, window: int, overlap: float = 0.5,
                 margin: int = 2) -> int:
    """Windows of width ``window`` a ``size`` x ``size`` raster in ``tile`` x ``tile`` tiles
    predicts. The grid is that of a photo (the scaled raster mirror-padded by half a window,
    starts every ``window * (1 - overlap)`` pixels); each tile computes its core's scaled
    pixels and ``margin`` more on each side (for the enlargement back to full size), so it
    predicts every window of the grid that reaches them, and no other."""
    small, pad, stride = round(size * scale), window // 2, round(window * (1 - overlap))
    starts = range(0, small + 2 * pad - window + 1, stride)
    per_axis = 0
    for top in range(0, size, tile):
        low = max(0, math.floor(top * scale) - margin) + pad
        high = min(small, math.ceil(min(size, top + tile) * scale) + margin) + pad
        per_axis += sum(1 for start in starts if start < high and start + window > low)
    return per_axis ** 2


def test_bench_scale_makes_a_run_that_predict_opens(tmp_path):
    script = REPO / "scripts" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", script)
    bench_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_scale)
    from segmenter.predict import models
    from segmenter.runs import open_run

    run = open_run(bench_scale.make_run(tmp_path / "run"))
    assert sorted(models.load_models(run, run.config).models) == \
        sorted(run.config.train.widths)


def test_bench_mosaic_prints_its_figures(tmp_path):
    pytest.importorskip("rasterio")
    run = make_run(tmp_path / "run")
    out = run_script("bench_mosaic.py", "--run", str(run), "--size", "256",
                     "--photo-size", "200", "--tile-size", "128",
                     "--workdir", str(tmp_path / "work"))
    photo, mosaic = child_report(out, "photo"), child_report(out, "mosaic")
    # Each child predicted the whole of its input: 200 x 200 photo, 256 x 256 mosaic in
    # 128-pixel tiles (2 x 2).
    assert photo["megapixels"] == 200 * 200 / 1e6
    assert mosaic["megapixels"] == 256 * 256 / 1e6 and mosaic["tiles"] == 4
    # ... computing only the windows its tiles need (make_run: data.scale 0.5, widths 16 and 32)
    assert mosaic["windows"] == {str(w): tile_windows(256, 128, 0.5, w) for w in (16, 32)}
    # The figures are the script's definitions of the children's measures: the mosaic child's
    # peak RSS in MB (hundreds of MB with TensorFlow loaded, not kB nor GB), and its MP/s over
    # the photo's.
    assert figure(out, "mosaic_peak_rss_mb") == round(mosaic["peak_rss_mb"]) > 100
    rate = (mosaic["megapixels"] / mosaic["seconds"]) / (photo["megapixels"] / photo["seconds"])
    assert figure(out, "mosaic_rate_ratio") == pytest.approx(rate, abs=6e-4)
