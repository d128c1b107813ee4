"""Benchmark of `segmenter predict` on a Dask cluster (issue 11): 1 vs 2 local workers.

Measures in one run, side by side (rounds alternate between the two clusters, so the load of
the machine falls on both alike):

(a) the same ``--photos`` generated shoreline photos (``--photo-size`` pixels wide) predicted
    through :func:`segmenter.predict.cluster.run_job` on a LocalCluster of 1 worker process and
    on one of 2 worker processes, each worker pinned to one thread (TensorFlow, BLAS); workers have
    loaded the run's models and predicted one photo before any round is timed;
    ``scale_efficiency`` = throughput with 2 workers / (2 x throughput with 1); goal >= 0.8;
(b) a generated GeoTIFF (``--raster-size`` pixels, 512-pixel tiles) on the 2 workers: the share
    of the wall time the client spends fitting the whole raster's Gaussian mixture, the one
    serial step of a raster job (``gmm_share``), and the output written per second
    (``output_mb_per_s``, what an S3 bucket would have to absorb per 2 workers); with the
    client's COG writing, the raster job's serial part (``serial_share``).

Usage::

    python scripts/bench_scale.py [--run RUN_DIR] [--photos 12] [--photo-size 768]
                                  [--rounds 2] [--raster-size 2048]

Without ``--run`` an untrained run of ``configs/default.yaml``'s architecture (widths 32, 64,
128) is made: speed does not depend on the weights. The last line is
``scale_efficiency=<..> gmm_share=<..> serial_share=<..> output_mb_per_s=<..>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_run(path: Path) -> Path:
    from segmenter.config import load_config
    from segmenter.model.network import build_model
    from segmenter.training.plan import RunPlan, prepare_run

    cfg = load_config(REPO / "configs" / "default.yaml")
    run = prepare_run(RunPlan(path, cfg, list(cfg.train.widths)))
    for width in cfg.train.widths:
        run.model_path(width).parent.mkdir(parents=True, exist_ok=True)
        build_model(cfg.model).save(run.model_path(width))
        run.write_status(width, {"status": "finished", "final_val_water_iou": 0.5})
    return path


def make_photos(folder: Path, count: int, size: int) -> None:
    from PIL import Image

    from segmenter.data.sample import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = make_scene(index, size, seed=11)
        Image.fromarray(scene.image).save(folder / f"shore_{index:03d}.jpg", quality=92)


def make_raster(path: Path, size: int) -> None:
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    from segmenter.data.sample import make_scene

    scene = make_scene(0, 1024, seed=7).image
    pixels = np.asarray(Image.fromarray(scene).resize((size, size), Image.Resampling.BICUBIC))
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32617", "transform": from_origin(612_000.0, 4_846_000.0, 0.1, 0.1),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))


def warm(run: str, config: str, photo: str) -> int:
    """On a worker: load the run's models and predict one photo (tracing), untimed."""
    import os

    from segmenter.data.images import decode_photo
    from segmenter.predict import tasks
    from segmenter.predict.photo import predict_photo

    job = {"run": run, "config": config, "out": ""}
    cfg = tasks._config(job)
    loaded = tasks.worker_models(job, cfg)
    image, _ = decode_photo(Path(photo).read_bytes(), photo)
    predict_photo(loaded, image, cfg)
    return os.getpid()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--photo-size", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--raster-size", type=int, default=2048)
    args = parser.parse_args()

    import logging

    from distributed import Client

    from segmenter.config import load_config
    from segmenter.data.storage import expand_inputs
    from segmenter.outputs.store import open_output
    from segmenter.predict import cluster, jobs
    from segmenter.runs import open_run

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        run_dir = args.run or make_run(tmp / "run")
        run = open_run(run_dir)
        photos = tmp / "photos"
        make_photos(photos, args.photos, args.photo_size)
        cfg = load_config(None, base=run.config)
        widths = run.finished_widths()
        if cfg.predict.widths:
            widths = [w for w in widths if w in cfg.predict.widths]
        refs = expand_inputs([str(photos)], cfg.data)
        megapixels = args.photos * args.photo_size * (args.photo_size * 3 // 4) / 1e6
        print(f"{args.photos} photos of {args.photo_size} px, widths {widths}, "
              f"{args.rounds} round(s) per cluster", flush=True)

        clusters = {n: cluster.start_local_cluster(n, dashboard_address=":0") for n in (1, 2)}
        try:
            first = str(sorted(photos.iterdir())[0])
            for n, local in clusters.items():
                with Client(local) as client:
                    pids = client.run(warm, str(Path(run_dir).resolve()), cfg.to_yaml(), first)
                print(f"{n} worker(s) ready: pids {sorted(pids.values())}", flush=True)
            seconds: dict[int, list[float]] = {1: [], 2: []}
            for round_ in range(args.rounds):
                for n, local in clusters.items():
                    job_cfg = cfg.model_copy(update={"predict": cfg.predict.model_copy(
                        update={"scheduler": local.scheduler_address})})
                    out = tmp / f"out-{n}-{round_}"
                    started = time.perf_counter()
                    summary = cluster.run_job(
                        jobs.plan_job(open_output(out, cfg.data), refs, job_cfg, widths=widths),
                        job_cfg, str(Path(run_dir).resolve()), widths)
                    took = time.perf_counter() - started
                    assert summary.predicted == args.photos, summary.failures
                    seconds[n].append(took)
                    print(f"round {round_ + 1}: {n} worker(s): {took:.1f} s, "
                          f"{megapixels / took:.3f} MP/s", flush=True)
            t1, t2 = statistics.median(seconds[1]), statistics.median(seconds[2])
            efficiency = (args.photos / t2) / (2 * args.photos / t1)
            print(f"throughput: 1 worker {megapixels / t1:.3f} MP/s, 2 workers "
                  f"{megapixels / t2:.3f} MP/s (medians)", flush=True)

            # (b) a raster on the 2 workers: how long the client's single GMM fit takes.
            tif = tmp / "mosaic.tif"
            make_raster(tif, args.raster_size)
            from segmenter.predict import raster

            serial: dict[str, float] = {"fit": 0.0, "finish": 0.0}
            originals = {name: getattr(raster.RasterJob, name) for name in serial}

            def timed(name):
                def method(self, *args):
                    started = time.perf_counter()
                    try:
                        return originals[name](self, *args)
                    finally:
                        serial[name] += time.perf_counter() - started
                return method

            for name in serial:
                setattr(raster.RasterJob, name, timed(name))
            job_cfg = cfg.model_copy(update={"predict": cfg.predict.model_copy(
                update={"scheduler": clusters[2].scheduler_address, "tile_size": 512})})
            out = tmp / "out-raster"
            started = time.perf_counter()
            summary = cluster.run_job(
                jobs.plan_job(open_output(out, cfg.data), expand_inputs([str(tif)], cfg.data),
                              job_cfg, widths=widths),
                job_cfg, str(Path(run_dir).resolve()), widths)
            raster_seconds = time.perf_counter() - started
            for name, method in originals.items():
                setattr(raster.RasterJob, name, method)
            assert summary.predicted == 1, summary.failures
            gmm_share = serial["fit"] / raster_seconds
            serial_share = (serial["fit"] + serial["finish"]) / raster_seconds
            raster_mp = args.raster_size ** 2 / 1e6
            print(f"raster {args.raster_size} px ({raster_mp:.1f} MP, 512-px tiles) on 2 "
                  f"workers: {raster_seconds:.1f} s; on the client: GMM fit {serial['fit']:.2f} s"
                  f", COGs/overlay {serial['finish']:.2f} s (serial_share "
                  f"{serial_share:.3f})", flush=True)
            written = folder_bytes(tmp / "out-2-0") / 1e6
            output_rate = written / seconds[2][0]
            print(f"photo outputs: {written:.1f} MB for {args.photos} photos", flush=True)
        finally:
            for local in clusters.values():
                local.close()
    print(f"scale_efficiency={efficiency:.2f} gmm_share={gmm_share:.3f} "
          f"serial_share={serial_share:.3f} output_mb_per_s={output_rate:.2f}")


if __name__ == "__main__":
    sys.exit(main())
