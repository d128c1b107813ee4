"""Benchmark of `segmenter predict` on one generated 5000 x 5000 photo (issue 4).

Measures in one run:

(a) the ceiling: each model applied once to the whole scaled photo in one fully convolutional
    pass (no windows, no overlap): T_w seconds for width w; photo megapixels per second over
    all models;
(b) prediction with the default settings (windows, stitching, merge, resize back, GMM),
    photo megapixels per second;
(c) the coverage factor: c_w, window pixels of width w computed per scaled-photo pixel, and
    its sum over widths;
(d) peak resident memory of predicting that photo from its file in a fresh child process
    (decode + predict + GMM + the three PNGs), from /proc (VmHWM) or ``resource.getrusage``;
(e) the GMM step's share of the predict time in (b).

``predict_ratio = sum_w(c_w * T_w) / T_predict``: the ideal time (each width's whole-image pass
repeated as often as its windows cover a pixel) over the measured predict time; 1.0 means the
windowing, stitching, merging and GMM add no overhead of their own. (Multiplying the summed
coverage by the summed pass times instead, ``b / (a / c)``, counts every width's coverage
against every width's pass and inflated the ratio about as many times as there are widths.)

Usage::

    python scripts/bench_predict.py [--run RUN_DIR] [--size 5000]

Without ``--run`` a run is trained first with ``configs/default.yaml`` (a couple of minutes).
The last line is ``predict_ratio=<..> peak_rss_mb=<..> gmm_share=<..>``.
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


def generated_photo(size: int, path: Path) -> None:
    """A size x size shoreline photo: a generated sample scene enlarged, with fresh noise."""
    from PIL import Image

    from segmenter.data.sample import make_scene

    scene = make_scene(0, 1024, seed=7)
    big = Image.fromarray(scene.image).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(big, dtype=np.int16)
    rng = np.random.default_rng(0)
    pixels = pixels + rng.integers(-6, 7, pixels.shape, dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=92)


def ensure_run(run: str | None, workdir: Path) -> Path:
    """The run to benchmark: the one given, or one trained now on the default config."""
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


def child(run_dir: str, photo: str, out_dir: str) -> None:
    """Predict one photo from its file as `segmenter predict` does; print timings and RSS."""
    from segmenter import outputs, predictor
    from segmenter.data.images import decode_photo
    from segmenter.runs import open_run

    run = open_run(run_dir)
    loaded = predictor.load_models(run, run.config)
    started = time.perf_counter()
    image, _ = decode_photo(Path(photo).read_bytes(), photo)
    result = predictor.predict_photo(loaded, image, run.config)
    outputs.write_prediction(out_dir, "bench", image, result.land_prob, result.water)
    seconds = time.perf_counter() - started
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": seconds}))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    ``VmHWM`` from /proc where it exists: ``getrusage``'s ``ru_maxrss`` survives ``execve`` on
    Linux, so a child started by a large parent would report the parent's peak at fork time.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory (default: train one on configs/default.yaml)")
    parser.add_argument("--size", type=int, default=5000, help="photo width and height")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "PHOTO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        child(*args.child)
        return

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        workdir = Path(tmp)
        run_dir = ensure_run(args.run, workdir)
        photo = workdir / "photo.jpg"
        generated_photo(args.size, photo)

        from segmenter import inference, predictor
        from segmenter.data.images import decode_photo, scaled_shape
        from segmenter.runs import open_run

        run = open_run(run_dir)
        cfg = run.config
        loaded = predictor.load_models(run, cfg)
        image, _ = decode_photo(photo.read_bytes(), str(photo))
        megapixels = image.shape[0] * image.shape[1] / 1e6

        # (a) ceiling: one fully convolutional pass per model over the scaled photo.
        small_shape = scaled_shape(image.shape[:2], cfg.data.scale)
        small = inference.resize_map(image, small_shape)
        multiple = 2**cfg.model.depth
        pad = [(0, -s % multiple) for s in small_shape] + [(0, 0)]
        whole = np.pad(small, pad, mode="symmetric")[None]
        pass_seconds: dict[int, float] = {}
        for patch_width, model in loaded.models.items():
            infer = inference.compiled_infer(model, whole.shape[1:3])
            infer(whole).numpy()  # trace and warm up
            tick = time.perf_counter()
            infer(whole).numpy()
            pass_seconds[patch_width] = time.perf_counter() - tick
        del whole, small
        ceiling_seconds = sum(pass_seconds.values())
        ceiling = megapixels / ceiling_seconds

        # (b, c, e) default prediction, after a warm-up that traces each width's function.
        predictor.predict_photo(loaded, image[:600, :600], cfg)
        result = predictor.predict_photo(loaded, image, cfg)
        predict_seconds = result.seconds
        predict_mps = megapixels / predict_seconds
        coverage = float(result.inference["coverage"])
        per_width = {int(w): float(info["coverage"])
                     for w, info in result.inference["widths"].items()}
        scale_seconds = {int(w): float(info["seconds"])
                         for w, info in result.inference["widths"].items()}
        gmm_share = result.gmm_seconds / predict_seconds
        del result

        # (d) peak RSS of predicting the photo from its file in a fresh process.
        measured = subprocess.run(
            [sys.executable, __file__, "--child", str(run_dir), str(photo),
             str(workdir / "out")],
            check=True, capture_output=True, text=True,
        )
        child_report = json.loads(measured.stdout.strip().splitlines()[-1])
        peak_rss = child_report["peak_rss_mb"]

    ideal_seconds = sum(per_width[w] * pass_seconds[w] for w in pass_seconds)
    ratio = ideal_seconds / predict_seconds
    rows = [
        ("photo", f"{image.shape[1]} x {image.shape[0]} ({megapixels:.1f} MP), "
                  f"scale {cfg.data.scale:g}, widths {sorted(loaded.models)}"),
        ("(a) ceiling, whole image", f"{ceiling:.2f} MP/s ({ceiling_seconds:.1f} s)"),
        ("(b) predict, default", f"{predict_mps:.2f} MP/s ({megapixels / predict_mps:.1f} s)"),
        ("(c) coverage factor", f"{coverage:.2f} ("
                                + ", ".join(f"pw{w} {per_width[w]:.2f}" for w in sorted(per_width))
                                + ")"),
        *[(f"    pw{w}: pass T_w, c_w*T_w, windowed",
           f"{pass_seconds[w]:.2f} s, {per_width[w] * pass_seconds[w]:.2f} s, "
           f"{scale_seconds[w]:.2f} s") for w in sorted(pass_seconds)],
        ("ideal sum(c_w*T_w)", f"{ideal_seconds:.1f} s"),
        ("(d) peak RSS, child process", f"{peak_rss:.0f} MB "
                                       f"(end to end {child_report['seconds']:.1f} s)"),
        ("(e) GMM share of predict", f"{gmm_share:.3f}"),
        ("ideal / predict time", f"{ratio:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"predict_ratio={ratio:.3f} peak_rss_mb={peak_rss:.0f} gmm_share={gmm_share:.3f}")


if __name__ == "__main__":
    main()
