"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from segmenter.config import Config, load_config

T = TypeVar("T")

config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML config, layered over the defaults (predict, evaluate: over the run's config).",
)

run_option = click.option(
    "--run",
    "run_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Run directory written by `segmenter train`.",
)

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one config key (repeatable), e.g. --set train.steps=100.",
)


def progress(items: Iterable[T], label: str) -> Iterator[T]:
    """Iterate with a progress bar on stderr (click hides it when stderr is not a terminal)."""
    with click.progressbar(
        items, label=label, file=click.get_text_stream("stderr"), show_pos=True
    ) as bar:
        yield from bar


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config`` and ``--set`` to a command."""
    return config_option(set_option(func))


def resolve_config(
    config_path: Path | None, overrides: tuple[str, ...], base: Config | None = None
) -> Config:
    """The effective config of a command: base < --config < --set.

    ``data.upright: auto`` over a run's saved config keeps the run's value: training decided
    it from its labels, and its models only know that orientation.
    """
    from segmenter.data.orientation import keep_saved_upright

    cfg = load_config(config_path, overrides, base=base)
    return keep_saved_upright(cfg, base) if base is not None else cfg
