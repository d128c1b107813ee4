"""``segmenter predict``: water masks, probability maps and overlays for photos."""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import click

from segmenter.cli.options import config_options, progress, resolve_config

log = logging.getLogger("segmenter")


@click.command()
@click.option(
    "--run",
    "run_dir",
    required=True,
    help="Run directory written by `segmenter train` (a path, or a URL such as s3://...).",
)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    default=None,
    help="Output folder or fsspec URL such as s3://bucket/prefix (default: RUN/predictions).",
)
@config_options
@click.option("--overwrite", is_flag=True, help="Replace earlier predictions in --out.")
@click.option("--skip-existing", is_flag=True,
              help="Predict only the inputs whose outputs are not in --out yet (after a crash).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Predict on a Dask cluster: tcp://HOST:8786, or local:N for N local worker "
                   "processes (overrides predict.scheduler).")
@click.option("--vector", is_flag=True,
              help="Rasters: also write water polygons and the shoreline as GeoJSON.")
def predict(
    run_dir: str,
    inputs: tuple[str, ...],
    out_dir: str | None,
    config_path: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
    skip_existing: bool,
    scheduler: str | None,
    vector: bool,
) -> None:
    """Predict water in photos: INPUT is any mix of files, folders, globs and s3:// URLs.

    Writes <stem>_water_prob.png, <stem>_water_mask.png and <stem>_overlay.png per photo, and
    predictions.json / predictions.csv. GeoTIFF inputs (.tif, .tiff) are predicted tile by
    tile into <stem>_water_prob.tif and <stem>_water_mask.tif (Cloud-Optimized GeoTIFFs on the
    input's grid) and an overview-sized <stem>_overlay.png. The config is the run's saved
    one, then --config, then --set. A photo that cannot be read is reported and skipped; the
    exit code is then 1. With --scheduler (or predict.scheduler) the photos and raster tiles
    are predicted by the workers of a Dask cluster.
    """
    from segmenter.data.inputs import expand_inputs
    from segmenter.data.remote import fetch_run, is_url
    from segmenter.errors import ConfigError
    from segmenter.outputs.store import open_output
    from segmenter.predict import jobs, models
    from segmenter.runs import open_run

    if overwrite and skip_existing:
        raise ConfigError("--overwrite and --skip-existing cannot be used together")
    remote_run = is_url(run_dir)
    if remote_run:  # the S3 settings (--set data.endpoint_url=...) before the run's config
        access = resolve_config(config_path, overrides)
        run = open_run(fetch_run(run_dir, access.data))
    else:
        run = open_run(Path(run_dir))
    cfg = resolve_config(config_path, overrides, base=run.config)
    if scheduler is not None:
        cfg = cfg.model_copy(update={"predict": cfg.predict.model_copy(
            update={"scheduler": scheduler or None})})
    if cfg.predict.scheduler:
        from segmenter.predict.cluster import parse_scheduler

        parse_scheduler(cfg.predict.scheduler)  # a malformed address: one line, before any work
    default_out = f"{run_dir.rstrip('/')}/predictions" if remote_run else run.path / "predictions"
    output = open_output(str(default_out) if out_dir is None else out_dir, cfg.data)
    refs = expand_inputs(list(inputs), cfg.data)
    widths = models.run_widths(run, cfg, run_dir if remote_run else None)
    # Workers may run elsewhere: they get an absolute path (a shared file system) or the URL.
    run_location = run_dir if remote_run else os.path.abspath(run.path)
    try:
        plan = jobs.plan_job(output, refs, cfg, widths=widths, overwrite=overwrite,
                             skip_existing=skip_existing, vector=vector,
                             job={"run": run_location, "widths": widths,
                                  "scheduler": cfg.predict.scheduler})
        if plan.done:
            click.echo(f"{len(plan.done)} input(s) already predicted in {output}: skipped")
        _predict(plan, run, cfg, run_location, widths, vector)
    except KeyboardInterrupt:
        from segmenter.errors import Interrupted

        how = "in place of --overwrite" if overwrite else "" if skip_existing else "added"
        raise Interrupted(
            f"interrupted: the inputs finished so far are kept in {output}; run the command "
            f"again with --skip-existing {how}".rstrip() + " to predict the rest") from None


def _predict(plan, run, cfg, run_location, widths, vector) -> None:
    from segmenter.predict import jobs, local, models

    if cfg.predict.scheduler:
        _predict_on_cluster(plan, cfg, run_location, widths, vector)
        return

    from segmenter.tfenv import start_tensorflow

    start_tensorflow()
    loaded = models.load_models(run, cfg)
    log.info(
        "predicting %d input(s) with widths %s -> %s",
        len(plan.todo), ", ".join(map(str, sorted(loaded.models))), plan.output,
    )

    started = time.perf_counter()
    records, failures = local.predict_inputs(
        plan, loaded, cfg, run_path=run_location, report=click.echo,
        progress=functools.partial(progress, label="photos"), vector=vector,
    )
    wall = time.perf_counter() - started
    ok = [r for r in records if r.get("status") == "ok"]
    click.echo(jobs.seconds_summary([r["seconds"] for r in ok],
                                         [r.get("gmm_seconds", 0.0) for r in ok], wall))
    _closing(len(ok), len(plan.refs), plan.output, len(plan.done), failures)


def _closing(predicted: int, total: int, output, skipped: int, failures: list[str],
             details: str = "") -> None:
    """The closing line of every path, and the exit status: 1 when an input failed."""
    already = f", {skipped} already there" if skipped else ""
    click.echo(f"{predicted} of {total} photo(s) predicted into {output}{already}{details}")
    if failures:
        listing = "; ".join(failures)
        raise click.ClickException(f"{len(failures)} photo(s) failed: {listing}")


def _predict_on_cluster(plan, cfg, run_location, widths, vector) -> None:
    """Predict on the Dask cluster of ``predict.scheduler``
    (:func:`segmenter.predict.cluster.run_job`)."""
    from segmenter.predict import cluster

    log.info("predicting %d input(s) with widths %s on %s -> %s", len(plan.todo),
             ", ".join(map(str, widths)), cfg.predict.scheduler, plan.output)

    def bar(total: int):
        return click.progressbar(length=total, label="tasks",
                                 file=click.get_text_stream("stderr"), show_pos=True)

    summary = cluster.run_job(plan, cfg, run_location, widths, vector=vector,
                              report=click.echo, progress=bar, announce=click.echo)
    rate = summary.megapixels / summary.seconds if summary.seconds > 0 else 0.0
    _closing(summary.predicted, len(plan.refs), plan.output, summary.skipped, summary.failures,
             f": {summary.megapixels:.3g} megapixels in {summary.seconds:.1f} s "
             f"({rate:.3g} MP/s) on {summary.workers} worker(s), {len(summary.failures)} failed")
