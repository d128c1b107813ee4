"""``segmenter config``: show the effective configuration, or validate a file."""

from __future__ import annotations

from pathlib import Path

import click

from segmenter.cli.options import config_options, resolve_config, set_option
from segmenter.config import load_config


@click.group()
def config() -> None:
    """Show or validate a configuration."""


@config.command()
@config_options
def show(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Print the effective config (defaults < --config < --set) as YAML."""
    click.echo(resolve_config(config_path, overrides).to_yaml(), nl=False)


@config.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@set_option
def validate(path: Path, overrides: tuple[str, ...]) -> None:
    """Check a config file; exit 1 with one line naming the bad key."""
    load_config(path, overrides)
    click.echo(f"{path}: valid")
