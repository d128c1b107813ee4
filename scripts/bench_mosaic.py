"""Benchmark of `segmenter predict` on a generated orthomosaic GeoTIFF (issue 10).

Measures in one run, each side in a fresh child process with the same run's models:

(a) a generated ``SIZE x SIZE`` GeoTIFF (UTM zone 17N, 512-pixel tiles, DEFLATE; the sample
    scene enlarged and mirrored, with fresh noise, written strip by strip) predicted end to end
    as `segmenter predict` does: tiled prediction, whole-raster GMM, the two COGs and the
    overview overlay; its megapixels per second and the child's peak resident memory;
(b) a ``PHOTO_SIZE x PHOTO_SIZE`` JPEG photo predicted end to end (decode, predict, GMM, the
    three PNGs): megapixels per second.

Both children first predict a 600 x 600 crop so TensorFlow's tracing is not timed.
``mosaic_rate_ratio`` = (a)'s megapixels per second / (b)'s; goals: ``mosaic_peak_rss_mb`` <=
2000 and ``mosaic_rate_ratio`` >= 0.9.

Usage::

    python scripts/bench_mosaic.py [--run RUN_DIR] [--size 32768] [--photo-size 5000]
                                   [--tile-size 4096]

Without ``--run`` a run is trained first with ``configs/default.yaml`` (a couple of minutes).
A 32768-pixel mosaic (1.07 gigapixels) takes a long time on a small CPU: ``--size`` chooses a
smaller one. The last line is ``mosaic_peak_rss_mb=<..> mosaic_rate_ratio=<..>``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STRIP = 512


def generated_mosaic(size: int, path: Path) -> None:
    """A size x size RGB GeoTIFF, written one 512-row strip at a time (flat memory)."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    from segmenter.data.sample import make_scene
    from segmenter.predict.windows import reflect_index

    scene = make_scene(0, 1024, seed=7).image
    base = np.asarray(Image.fromarray(scene).resize((2048, 1536), Image.Resampling.BICUBIC))
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32617", "transform": from_origin(612_000.0, 4_846_000.0, 0.05, 0.05),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "bigtiff": "IF_SAFER",
    }
    cols = reflect_index(np.arange(size), base.shape[1])
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, STRIP):
            rows = reflect_index(np.arange(top, min(size, top + STRIP)), base.shape[0])
            strip = base[rows][:, cols].astype(np.int16)
            strip += rng.integers(-6, 7, strip.shape, dtype=np.int16)
            pixels = np.clip(strip, 0, 255).astype(np.uint8)
            dst.write(np.moveaxis(pixels, -1, 0),
                      window=rasterio.windows.Window(0, top, size, rows.size))


def generated_photo(size: int, path: Path) -> None:
    """A size x size shoreline JPEG, as scripts/bench_predict.py makes it."""
    from PIL import Image

    from segmenter.data.sample import make_scene

    scene = make_scene(0, 1024, seed=7)
    big = Image.fromarray(scene.image).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(big, dtype=np.int16)
    pixels = pixels + np.random.default_rng(0).integers(-6, 7, pixels.shape, dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)


def ensure_run(run: str | None, workdir: Path) -> Path:
    if run:
        return Path(run)
    out = workdir / "run"
    print(f"training a run with configs/default.yaml into {out} ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "segmenter", "-q", "train", "--config",
         str(REPO / "configs" / "default.yaml"), "--out", str(out)],
        check=True,
    )
    return out


def child(kind: str, run_dir: str, source: str, out_dir: str, tile_size: str) -> None:
    """Predict one input end to end; print seconds, megapixels and peak RSS as JSON."""
    from segmenter.data.images import decode_photo
    from segmenter.outputs import photo as photo_outputs
    from segmenter.predict import models, photo, raster
    from segmenter.runs import open_run

    run = open_run(run_dir)
    cfg = run.config
    loaded = models.load_models(run, cfg)
    warm = np.random.default_rng(0).random((600, 600, 3), dtype=np.float32)
    photo.predict_photo(loaded, warm, cfg)  # trace every width's function first
    started = time.perf_counter()
    if kind == "photo":
        image, _ = decode_photo(Path(source).read_bytes(), source)
        result = photo.predict_photo(loaded, image, cfg)
        photo_outputs.write_prediction(out_dir, "bench", image, result.land_prob, result.water)
        megapixels = image.shape[0] * image.shape[1] / 1e6
        extra = {}
    else:
        result = raster.predict_raster(source, "bench", loaded, cfg, Path(out_dir),
                                       tile_size=int(tile_size) or None)
        megapixels = result.size[0] * result.size[1] / 1e6
        extra = {"tiles": result.tiles, "windows": result.windows}
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "megapixels": megapixels,
                      "peak_rss_mb": peak_rss_mb(), **extra}))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM, else getrusage)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(kind: str, run_dir: Path, source: Path, out: Path, tile_size: int) -> dict:
    measured = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(run_dir), str(source), str(out),
         str(tile_size)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(measured.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory (default: train one on configs/default.yaml)")
    parser.add_argument("--size", type=int, default=32768, help="mosaic width and height")
    parser.add_argument("--photo-size", type=int, default=5000, help="photo width and height")
    parser.add_argument("--tile-size", type=int, default=0,
                        help="predict.tile_size (default: the run's config)")
    parser.add_argument("--workdir", help="folder for the generated files (default: a temp one)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        child(*args.child)
        return

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_mosaic_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        run_dir = ensure_run(args.run, workdir)
        tick = time.perf_counter()
        mosaic_path = workdir / "mosaic.tif"
        generated_mosaic(args.size, mosaic_path)
        made = time.perf_counter() - tick
        photo_path = workdir / "photo.jpg"
        generated_photo(args.photo_size, photo_path)
        print(f"generated {args.size} x {args.size} mosaic "
              f"({mosaic_path.stat().st_size / 1e6:.0f} MB on disk) in {made:.0f} s", flush=True)
        photo = run_child("photo", run_dir, photo_path, workdir / "photo_out", args.tile_size)
        print(f"photo: {photo}", flush=True)
        big = run_child("mosaic", run_dir, mosaic_path, workdir / "mosaic_out", args.tile_size)
        print(f"mosaic: {big}", flush=True)

    photo_rate = photo["megapixels"] / photo["seconds"]
    mosaic_rate = big["megapixels"] / big["seconds"]
    ratio = mosaic_rate / photo_rate
    rows = [
        ("photo", f"{args.photo_size} x {args.photo_size} ({photo['megapixels']:.1f} MP): "
                  f"{photo['seconds']:.1f} s, {photo_rate:.3f} MP/s, "
                  f"peak RSS {photo['peak_rss_mb']:.0f} MB"),
        ("mosaic", f"{args.size} x {args.size} ({big['megapixels']:.1f} MP, {big['tiles']} "
                   f"tiles): {big['seconds']:.1f} s, {mosaic_rate:.3f} MP/s, "
                   f"peak RSS {big['peak_rss_mb']:.0f} MB"),
    ]
    for name, value in rows:
        print(f"{name:<7} {value}")
    print(f"mosaic_peak_rss_mb={big['peak_rss_mb']:.0f} mosaic_rate_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
