"""``segmenter predict``: water masks, probability maps and overlays for photos."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import click

from segmenter.cli.options import config_options, progress, resolve_config, run_option

log = logging.getLogger("segmenter")


@click.command()
@run_option
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: RUN_DIR/predictions).",
)
@config_options
@click.option("--overwrite", is_flag=True, help="Replace earlier predictions in --out.")
@click.option("--vector", is_flag=True,
              help="Rasters: also write water polygons and the shoreline as GeoJSON.")
def predict(
    run_dir: Path,
    inputs: tuple[str, ...],
    out_dir: Path | None,
    config_path: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
    vector: bool,
) -> None:
    """Predict water in photos: INPUT is any mix of files, folders, globs and s3:// URLs.

    Writes <stem>_water_prob.png, <stem>_water_mask.png and <stem>_overlay.png per photo, and
    predictions.json / predictions.csv. GeoTIFF inputs (.tif, .tiff) are predicted tile by
    tile into <stem>_water_prob.tif and <stem>_water_mask.tif (Cloud-Optimized GeoTIFFs on the
    input's grid) and an overview-sized <stem>_overlay.png. The config is the run's saved
    one, then --config, then --set. A photo that cannot be read is reported and skipped; the
    exit code is then 1.
    """
    from segmenter.data.inputs import expand_inputs
    from segmenter.runs import open_run

    run = open_run(run_dir)
    cfg = resolve_config(config_path, overrides, base=run.config)
    out_dir = out_dir or run.path / "predictions"
    refs = expand_inputs(list(inputs), cfg.data)

    from segmenter import outputs, predictor
    from segmenter.tfenv import start_tensorflow

    predictor.check_overwrite(out_dir, outputs.unique_stems([r.name for r in refs]), overwrite)
    predictor.check_writable(out_dir)
    start_tensorflow()
    loaded = predictor.load_models(run, cfg)
    log.info(
        "predicting %d photo(s) with widths %s -> %s",
        len(refs), ", ".join(map(str, sorted(loaded.models))), out_dir,
    )

    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        click.echo(line)

    started = time.perf_counter()
    records, failures = predictor.predict_inputs(
        refs, loaded, cfg, out_dir, run_path=str(run.path), report=report,
        progress=functools.partial(progress, label="photos"), vector=vector,
    )
    wall = time.perf_counter() - started
    done = len(refs) - len(failures)
    ok = [r for r in records if r.get("status") == "ok"]
    click.echo(predictor.seconds_summary([r["seconds"] for r in ok],
                                         [r.get("gmm_seconds", 0.0) for r in ok], wall))
    click.echo(f"{done} of {len(refs)} photo(s) predicted into {out_dir}")
    if failures:
        listing = "; ".join(failures)
        raise click.ClickException(f"{len(failures)} photo(s) failed: {listing}")
