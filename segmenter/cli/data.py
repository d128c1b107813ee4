"""``segmenter data``: load the configured data source and print a one-line summary."""

from __future__ import annotations

from pathlib import Path

import click

from segmenter.cli.options import config_options, resolve_config


@click.command("data")
@config_options
@click.option(
    "--refresh",
    is_flag=True,
    help="List remote folders again instead of using the cached listings.",
)
def data(config_path: Path | None, overrides: tuple[str, ...], refresh: bool) -> None:
    """Load data.source (folder, s3:// or sample) and summarise it.

    Pairs photos with labels by stem, decodes and resizes them exactly as training does, and
    prints: pairs found, skipped, total pixels and the water fraction; then how
    ``data.upright: auto`` reads the training labels (oblique photos with a horizon, or aerial).
    Remote files are cached, so running this once before training also downloads the data set.
    """
    from segmenter.data.ontario import load_dataset
    from segmenter.data.orientation import detect_upright

    cfg = resolve_config(config_path, overrides)
    dataset = load_dataset(cfg.data, refresh=refresh)
    click.echo(dataset.summary())
    orientation = detect_upright(dataset.train)
    if cfg.data.upright == "auto":
        click.echo(f"data.upright auto: {orientation.describe()}")
    else:
        click.echo(f"data.upright: {str(cfg.data.upright).lower()} (set in the config; auto "
                   f"would read the labels as {orientation.describe(hint=False)})")
