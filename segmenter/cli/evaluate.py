"""``segmenter evaluate``: score a run's water masks on labelled test images."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import click

from segmenter.cli.options import config_options, progress, resolve_config, run_option

log = logging.getLogger("segmenter")


@click.command()
@run_option
@click.option(
    "--data",
    "source",
    default=None,
    help="Labelled data: folder, s3:// URL or 'sample' (default: the run's data source).",
)
@click.option(
    "--split",
    type=click.Choice(["test", "train", "all"]),
    default="test",
    show_default=True,
    help="Which labelled images to score (a source with no test/ folder and too few pairs "
    "to hold any out falls back to all).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for evaluation.json / evaluation.csv (default: RUN_DIR/evaluation).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier evaluation.json / evaluation.csv in the output folder.")
@config_options
def evaluate(
    run_dir: Path,
    source: str | None,
    split: str,
    out_dir: Path | None,
    as_json: bool,
    overwrite: bool,
    config_path: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Predict the labelled images of a data source and report water IoU, mean IoU, F1,
    precision, recall and accuracy per image and overall, for the configured mask (GMM by
    default) and for the plain 0.5 threshold. Photos are scored at their own resolution.
    """
    from segmenter.data.ontario import load_dataset
    from segmenter.runs import open_run

    run = open_run(run_dir)
    cfg = resolve_config(config_path, overrides, base=run.config)
    if source is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": source})})
    out_dir = out_dir or run.path / "evaluation"

    from segmenter.fileio import ensure_writable
    from segmenter.predict import evaluation, jobs, models
    from segmenter.tfenv import start_tensorflow

    jobs.check_overwrite(
        out_dir, [], overwrite, names=(evaluation.EVALUATION_JSON, evaluation.EVALUATION_CSV),
        what="an evaluation",
    )
    ensure_writable(out_dir)
    start_tensorflow()
    loaded = models.load_models(run, cfg)
    need = {"test": ("test",), "train": ("train", "test"), "all": ("all",)}[split]
    dataset = load_dataset(cfg.data, scale=1.0, need=need)
    items = {"test": dataset.test, "train": dataset.train,
             "all": dataset.train + dataset.test}[split]
    used = split
    if not items and split == "test":
        log.warning("%s: no test images; scoring all %d labelled images instead "
                    "(they may include training images)", dataset.source, len(dataset.train))
        items, used = dataset.train, "all"
    if not items:
        raise click.ClickException(f"{dataset.source}: no labelled images in split '{split}'")
    log.info("evaluating %d image(s) of %s (%s)", len(items), dataset.source, used)

    report = evaluation.evaluate_images(
        loaded, items, cfg, progress=functools.partial(progress, label="images")
    )
    report = {"run": str(run.path), "data": dataset.source, "split": used,
              "widths": sorted(loaded.models), **report}
    json_path, csv_path = evaluation.write_report(out_dir, report)
    if as_json:
        click.echo(json.dumps(report))
        click.echo(evaluation.seconds_line(report), err=True)  # stdout stays one JSON object
    else:
        click.echo(evaluation.format_table(report))
        click.echo(f"per-image scores: {csv_path}")
        click.echo(evaluation.seconds_line(report))
