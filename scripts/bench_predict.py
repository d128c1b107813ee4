"""Benchmarks of `segmenter predict`: one 25-megapixel photo (issue 4), many small ones (issue 12).

One large photo (default), measured in one run:

(a) the ceiling: the compiled models on exactly the windows predict uses (same widths, same
    count, TTA passes included), cut beforehand and already in memory, in full batches of
    predict's batch size: T_w seconds for width w. (Until issue 12 the ceiling was one
    whole-image pass per width times its coverage; that pass ran at very different speeds on
    machines of one kind, and a ceiling that predict can beat is no ceiling.)
(b) prediction with the default settings (windows, stitching, merge, resize back, GMM),
    photo megapixels per second;
(c) the coverage factor: c_w, window pixels of width w computed per scaled-photo pixel, and
    its sum over widths;
(d) peak resident memory of predicting that photo from its file in a fresh child process
    (decode + predict + GMM + the three PNGs), from /proc (VmHWM) or ``resource.getrusage``;
(e) the GMM step's share of the predict time in (b).

``predict_ratio = sum_w(T_w) / T_predict``; 1.0 means the windowing, stitching, merging and GMM
add no overhead of their own.

Many photos (``--photos 40``): that many JPEGs of 0.56-0.98 MP (the photos of
``--photo-source`` enlarged, or generated scenes) predicted in one call of the library behind
`segmenter predict` (``local.predict_inputs``, in a fresh process, first-photo tracing
included), once with ``predict.tta=true`` and once with ``false``:

* ``photos_ratio``: the ceiling as in (a) for all the photos' windows over the measured time of
  the whole loop (decode, predict, GMM, writing the PNGs), with TTA;
* ``photos_gmm_share``: time in the GMM step over the loop's time, with TTA;
* ``tta_cost``: loop time with TTA / without / 4 (the flips' pass count).

Usage::

    python scripts/bench_predict.py [--run RUN_DIR] [--size 5000] [--backend jax]
    python scripts/bench_predict.py --run RUN_DIR --photos 40 \
        [--photo-source DIR] [--set data.scale=0.5]

Without ``--run`` a run is trained first with ``configs/default.yaml`` (a couple of minutes).
The last line is ``predict_ratio=<..> peak_rss_mb=<..> gmm_share=<..>``, or with ``--photos``
``photos_ratio=<..> photos_gmm_share=<..> tta_cost=<..> photos_ratio_no_tta=<..>``.
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
from typing import Any

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
    from segmenter.data.images import decode_photo
    from segmenter.outputs import photo as photo_outputs
    from segmenter.predict import models
    from segmenter.predict.photo import predict_photo
    from segmenter.runs import open_run

    run = open_run(run_dir)
    loaded = models.load_models(run, run.config)
    started = time.perf_counter()
    image, _ = decode_photo(Path(photo).read_bytes(), photo)
    result = predict_photo(loaded, image, run.config)
    photo_outputs.write_prediction(out_dir, "bench", image, result.land_prob, result.water)
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


# ---- many-photos mode (issue 12) ----


#: sizes (width, height) the photos are enlarged to, in turn: 0.56 to 0.98 megapixels, the
#: size of the aerial photos in issue 12 and a little above.
PHOTO_SIZES = ((920, 614), (1024, 768), (1152, 768), (1200, 816), (960, 640))


def many_photos(count: int, folder: Path, source: str | None) -> list[Path]:
    """``count`` JPEGs of 0.5-1 MP: the photos of ``source`` (a folder) enlarged, or scenes.

    Real photos (the dev set) give the GMM real colours; without ``source`` the built-in
    generated scenes are used.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if source:
        found = sorted(p for p in Path(source).iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")
                       and "_label" not in p.stem)
        if not found:
            raise SystemExit(f"{source}: no photos")
    paths = []
    for number in range(count):
        size = PHOTO_SIZES[number % len(PHOTO_SIZES)]
        if source:
            pil = Image.open(found[number % len(found)]).convert("RGB")
        else:
            from segmenter.data.sample import make_scene

            pil = Image.fromarray(make_scene(number, 512, seed=11).image)
        path = folder / f"photo_{number:03d}.jpg"
        pil.resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
        paths.append(path)
    return paths


def grid_window_count(shape: tuple[int, int], window: int, overlap: float) -> int:
    """Windows ``predict`` puts on a scaled photo of ``shape`` (as photo.predict_scale)."""
    from segmenter.predict import windows

    pad_y, pad_x = windows.padding(window, *shape)
    return len(windows.grid_windows(shape[0] + 2 * pad_y, shape[1] + 2 * pad_x, window,
                                    overlap))


def n_windows(shape: tuple[int, int], cfg: Any, window: int) -> int:
    """Windows ``predict`` cuts of width ``window`` on a photo of ``shape`` (grid sampling)."""
    from segmenter.data.images import scaled_shape

    if cfg.predict.sampling != "grid":
        return int(cfg.predict.random_windows.get(window, 1000))
    return grid_window_count(scaled_shape(shape, cfg.data.scale), window, cfg.predict.overlap)


def window_batch_seconds(loaded: Any, cfg: Any, windows: dict[int, int], passes: int,
                         repeats: int = 2, cpu: bool = False) -> dict[int, Any]:
    """The ceiling: seconds each compiled model needs for ``windows[w] * passes`` windows.

    The windows are cut beforehand and already in memory (random pixels: the compute does not
    depend on them) and run in full batches of the size ``predict`` uses for that width, the
    last batch only as long as needed. The best of ``repeats`` timings (the ceiling is what the
    machine can do; a neighbour's load only slows it). With TTA or grey passes (``passes``:
    :func:`segmenter.model.compiled.inference_passes`, 4 for TTA) every window runs once per pass
    in the same full batches, so the windows are timed once and the time is multiplied by
    ``passes`` (timing all 4 copies took as long as predicting, twice over).
    With ``cpu`` each width gives (wall seconds, process CPU seconds).
    """
    from segmenter.model import compiled

    rng = np.random.default_rng(0)
    out: dict[int, float] = {}
    for patch_width in windows:
        model = loaded.models[patch_width]
        infer = compiled.compiled_infer(model, (patch_width, patch_width))
        size = compiled.effective_batch_size(cfg.predict.batch_size, patch_width)
        total = windows[patch_width]
        full, rest = divmod(total, size)
        channels = int(model.inputs[0].shape[-1])  # 4 with model.row_channel
        batch = rng.random((size, patch_width, patch_width, channels), dtype=np.float32)
        infer(batch)  # trace and warm up
        if rest:
            infer(batch[:rest])
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeats):
            tick, cpu_tick = time.perf_counter(), time.process_time()
            for _ in range(full):
                infer(batch)
            if rest:
                infer(batch[:rest])
            best = min(best, time.perf_counter() - tick)
            best_cpu = min(best_cpu, time.process_time() - cpu_tick)
        out[patch_width] = (best * passes, best_cpu * passes) if cpu else best * passes
    return out


def photos_child(run_dir: str, photo_dir: str, out_dir: str, overrides: list[str]) -> None:
    """`segmenter predict` on a folder, as the command runs it, timed; then the ceiling.

    Prints one JSON line: seconds of the whole prediction loop (decode, tracing on the first
    photo, predict, GMM, writing), the GMM's seconds (timed around the library's
    ``water_mask``), start-up seconds (TensorFlow import and model loading), window counts and
    the ceiling's seconds per width.
    """
    started = time.perf_counter()
    from segmenter.config import load_config
    from segmenter.data.images import scaled_shape
    from segmenter.data.storage import expand_inputs
    from segmenter.outputs.store import open_output
    from segmenter.predict import jobs, local, models, photo
    from segmenter.runs import open_run
    from segmenter.tfenv import start_tensorflow

    run = open_run(run_dir)
    cfg = load_config(None, overrides, base=run.config)
    refs = expand_inputs([photo_dir], cfg.data)
    start_tensorflow()
    loaded = models.load_models(run, cfg)
    startup = time.perf_counter() - started

    from PIL import Image

    windows = {w: 0 for w in loaded.models}
    pixels = 0
    for ref in refs:
        with Image.open(ref.path) as pil:
            shape = scaled_shape((pil.height, pil.width), cfg.data.scale)
        pixels += pil.height * pil.width
        for patch_width in windows:
            windows[patch_width] += grid_window_count(shape, patch_width, cfg.predict.overlap)
    from segmenter.model import compiled, norm

    passes = len(compiled.inference_passes(cfg.predict.tta, cfg.data.is_upright,
                                            cfg.predict.grey))
    # The ceiling is timed just before and just after the loop and the faster kept: on a
    # machine shared with other jobs the load drifts, and this brackets the loop in time.
    before = window_batch_seconds(loaded, cfg, windows, passes, repeats=1, cpu=True)
    compiled._COMPILED.clear()  # the loop traces its own functions, as `segmenter predict`
    norm._ADAPT_PASSES.clear()

    gmm = [0.0]
    original = photo.water_mask  # as predict_photo calls it

    def timed_water_mask(*args: Any, **kwargs: Any) -> Any:
        tick = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            gmm[0] += time.perf_counter() - tick

    photo.water_mask = timed_water_mask
    tick, cpu_tick = time.perf_counter(), time.process_time()
    plan = jobs.plan_job(open_output(out_dir, cfg.data), refs, cfg,
                         widths=sorted(loaded.models))
    records, failures = local.predict_inputs(plan, loaded, cfg, run_path=run_dir)
    loop, loop_cpu = time.perf_counter() - tick, time.process_time() - cpu_tick
    photo.water_mask = original
    if failures:
        raise SystemExit(f"{len(failures)} photo(s) failed: {failures[0]}")
    after = window_batch_seconds(loaded, cfg, windows, passes, repeats=1, cpu=True)
    ceiling = {w: min(before[w][0], after[w][0]) for w in windows}
    ceiling_cpu = {w: min(before[w][1], after[w][1]) for w in windows}
    print(json.dumps({
        "photos": len(records), "megapixels": pixels / 1e6, "loop_seconds": loop,
        "gmm_seconds": gmm[0], "startup_seconds": startup, "windows": windows,
        "passes": passes, "ceiling_seconds": ceiling, "loop_cpu_seconds": loop_cpu,
        "ceiling_cpu_seconds": ceiling_cpu, "load": os.getloadavg()[0],
    }))


def run_photos_child(run_dir: Path, photo_dir: Path, out_dir: Path,
                     overrides: list[str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--photos-child", str(run_dir), str(photo_dir),
               str(out_dir)]
    for item in overrides:
        command += ["--set", item]
    measured = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(measured.stdout.strip().splitlines()[-1])


def photos_main(args: argparse.Namespace) -> None:
    """Many small photos in one predict call: photos_ratio, photos_gmm_share, tta_cost."""
    with tempfile.TemporaryDirectory(prefix="bench_photos_") as tmp:
        workdir = Path(tmp)
        run_dir = ensure_run(args.run, workdir)
        photo_dir = workdir / "photos"
        many_photos(args.photos, photo_dir, args.photo_source)
        sets = list(args.set or [])
        with_tta = run_photos_child(run_dir, photo_dir, workdir / "out_tta",
                                    [*sets, "predict.tta=true"])
        without = run_photos_child(run_dir, photo_dir, workdir / "out_plain",
                                   [*sets, "predict.tta=false"])

    count = with_tta["photos"]
    rows = [("photos", f"{count} photos, {with_tta['megapixels'] / count:.2f} MP each on "
                       f"average, overrides {sets or 'none'}")]
    figures = {}
    for label, result in (("TTA", with_tta), ("no TTA", without)):
        ideal = sum(result["ceiling_seconds"].values())
        loop = result["loop_seconds"]
        rows += [
            (f"{label}: windows per width (x{result['passes']} passes)",
             ", ".join(f"pw{w} {n}" for w, n in sorted(result["windows"].items()))),
            (f"{label}: ceiling, pre-cut full batches",
             f"{ideal:.1f} s ({ideal / count:.2f} s per photo)"),
            (f"{label}: predict loop", f"{loop:.1f} s ({loop / count:.2f} s per photo; "
                                       f"start-up {result['startup_seconds']:.1f} s apart)"),
            (f"{label}: GMM", f"{result['gmm_seconds']:.1f} s "
                              f"(share {result['gmm_seconds'] / loop:.3f})"),
            (f"{label}: ceiling / predict", f"{ideal / loop:.3f}"),
            (f"{label}: same in process CPU seconds",
             f"{sum(result['ceiling_cpu_seconds'].values()):.1f} / "
             f"{result['loop_cpu_seconds']:.1f} = "
             f"{sum(result['ceiling_cpu_seconds'].values()) / result['loop_cpu_seconds']:.3f}"),
            (f"{label}: load average at the end", f"{result['load']:.1f}"),
        ]
        figures[label] = (ideal / loop, result["gmm_seconds"] / loop)
    tta_cost = with_tta["loop_seconds"] / without["loop_seconds"] / with_tta["passes"]
    rows.append(("TTA loop / no-TTA loop / passes", f"{tta_cost:.3f}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ratio, gmm_share = figures["TTA"]
    print(f"photos_ratio={ratio:.3f} photos_gmm_share={gmm_share:.3f} tta_cost={tta_cost:.3f} "
          f"photos_ratio_no_tta={figures['no TTA'][0]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory (default: train one on configs/default.yaml)")
    parser.add_argument("--size", type=int, default=5000, help="photo width and height")
    parser.add_argument("--photos", type=int, default=0,
                        help="many-photos mode: predict this many 0.5-1 MP photos (e.g. 40)")
    parser.add_argument("--photo-source", help="folder of photos to enlarge for --photos "
                        "(default: generated scenes)")
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="config override for --photos (repeatable), e.g. data.scale=0.5")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "PHOTO", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--photos-child", nargs=3, metavar=("RUN", "PHOTOS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["KERAS_BACKEND"] = args.backend  # before Keras is imported; children inherit it
    if args.child:
        child(*args.child)
        return
    if args.photos_child:
        photos_child(*args.photos_child, args.set or [])
        return
    if args.photos:
        photos_main(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        workdir = Path(tmp)
        run_dir = ensure_run(args.run, workdir)
        photo = workdir / "photo.jpg"
        generated_photo(args.size, photo)

        from segmenter.data.images import decode_photo
        from segmenter.predict import models
        from segmenter.predict.photo import predict_photo
        from segmenter.runs import open_run

        run = open_run(run_dir)
        cfg = run.config
        loaded = models.load_models(run, cfg)
        image, _ = decode_photo(photo.read_bytes(), str(photo))
        megapixels = image.shape[0] * image.shape[1] / 1e6

        # (b, c, e) default prediction, after a warm-up that traces each width's function.
        predict_photo(loaded, image[:600, :600], cfg)
        from segmenter.model.compiled import inference_passes
        from segmenter.predict.models import select_models

        windows = {w: n_windows(image.shape[:2], cfg, w) for w in select_models(loaded.models, cfg)}
        passes = len(inference_passes(cfg.predict.tta, cfg.data.is_upright, cfg.predict.grey))
        # (a) is timed just before and just after (b), the faster kept: the machine is shared
        # and its load drifts; this brackets the prediction in time.
        before = window_batch_seconds(loaded, cfg, windows, passes, repeats=1, cpu=True)
        cpu_tick = time.process_time()
        result = predict_photo(loaded, image, cfg)
        predict_cpu = time.process_time() - cpu_tick
        predict_seconds = result.seconds
        predict_mps = megapixels / predict_seconds
        coverage = float(result.inference["coverage"])
        per_width = {int(w): float(info["coverage"])
                     for w, info in result.inference["widths"].items()}
        scale_seconds = {int(w): float(info["seconds"])
                         for w, info in result.inference["widths"].items()}
        gmm_share = result.gmm_seconds / predict_seconds
        assert windows == {int(w): int(info["windows"])
                           for w, info in result.inference["widths"].items()}
        del result

        # (a) ceiling: the compiled models on exactly these windows, pre-cut, full batches.
        after = window_batch_seconds(loaded, cfg, windows, passes, repeats=1, cpu=True)
        pass_seconds = {w: min(before[w][0], after[w][0]) for w in windows}
        ceiling_cpu = sum(min(before[w][1], after[w][1]) for w in windows)
        ceiling_seconds = sum(pass_seconds.values())
        ceiling = megapixels / ceiling_seconds

        # (d) peak RSS of predicting the photo from its file in a fresh process.
        measured = subprocess.run(
            [sys.executable, __file__, "--child", str(run_dir), str(photo),
             str(workdir / "out")],
            check=True, capture_output=True, text=True,
        )
        child_report = json.loads(measured.stdout.strip().splitlines()[-1])
        peak_rss = child_report["peak_rss_mb"]

    ideal_seconds = ceiling_seconds
    ratio = ideal_seconds / predict_seconds
    rows = [
        ("photo", f"{image.shape[1]} x {image.shape[0]} ({megapixels:.1f} MP), "
                  f"scale {cfg.data.scale:g}, widths {sorted(loaded.models)}"),
        ("(a) ceiling, pre-cut window batches", f"{ceiling:.2f} MP/s ({ceiling_seconds:.1f} s)"),
        ("(b) predict, default", f"{predict_mps:.2f} MP/s ({megapixels / predict_mps:.1f} s)"),
        ("(c) coverage factor", f"{coverage:.2f} ("
                                + ", ".join(f"pw{w} {per_width[w]:.2f}" for w in sorted(per_width))
                                + ")"),
        *[(f"    pw{w}: windows, ceiling, windowed",
           f"{windows[w]} x{passes}, {pass_seconds[w]:.2f} s, {scale_seconds[w]:.2f} s")
          for w in sorted(pass_seconds)],
        ("(d) peak RSS, child process", f"{peak_rss:.0f} MB "
                                       f"(end to end {child_report['seconds']:.1f} s)"),
        ("(e) GMM share of predict", f"{gmm_share:.3f}"),
        ("ideal / predict time", f"{ratio:.3f}"),
        ("same in process CPU seconds",
         f"{ceiling_cpu:.1f} / {predict_cpu:.1f} = {ceiling_cpu / predict_cpu:.3f}"),
        ("load average at the end", f"{os.getloadavg()[0]:.1f}"),
        ("Keras backend", args.backend),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"predict_ratio={ratio:.3f} peak_rss_mb={peak_rss:.0f} gmm_share={gmm_share:.3f}")


if __name__ == "__main__":
    main()
