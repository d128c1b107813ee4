"""The benchmark scripts still run against the package as it is (they import its internals,
so an API change breaks them silently otherwise): tiny sizes, real end-to-end runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict_cli import make_run

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 600) -> str:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args],
                            capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def figure(text: str, name: str) -> float:
    match = re.search(rf"\b{name}=([0-9.]+)", text)
    assert match, f"{name}= missing from:\n{text[-1500:]}"
    return float(match.group(1))


def test_bench_scale_makes_a_run_that_predict_opens(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_scale
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from segmenter import predictor
    from segmenter.runs import open_run

    run = open_run(bench_scale.make_run(tmp_path / "run"))
    assert sorted(predictor.load_models(run, run.config).models) == \
        sorted(run.config.train.widths)


def test_bench_mosaic_prints_its_figures(tmp_path):
    pytest.importorskip("rasterio")
    run = make_run(tmp_path / "run")
    out = run_script("bench_mosaic.py", "--run", str(run), "--size", "256",
                     "--photo-size", "200", "--tile-size", "128",
                     "--workdir", str(tmp_path / "work"))
    assert 0 < figure(out, "mosaic_peak_rss_mb") < 20_000
    assert figure(out, "mosaic_rate_ratio") > 0
