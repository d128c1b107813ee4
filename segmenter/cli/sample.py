"""``segmenter sample-data``: write the built-in generated scenes to a folder."""

from __future__ import annotations

import os
from pathlib import Path

import click

from segmenter.config import SampleConfig

_DEFAULTS = SampleConfig()


def _schema_range(key: str) -> click.IntRange:
    """The bounds of ``data.sample.<key>`` as the schema declares them (the one source)."""
    limits: dict[str, int] = {}
    for item in SampleConfig.model_fields[key].metadata:
        for bound in ("ge", "le"):
            if getattr(item, bound, None) is not None:
                limits[bound] = getattr(item, bound)
    return click.IntRange(limits.get("ge"), limits.get("le"))


@click.command("sample-data")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--n",
    "n",
    type=_schema_range("n"),
    default=_DEFAULTS.n,
    show_default=True,
    help="Number of scenes (about a quarter go to test/).",
)
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Scene seed.")
@click.option(
    "--size",
    type=_schema_range("size"),
    default=_DEFAULTS.size,
    show_default=True,
    help="Photo width in pixels (height is 3/4 of it).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace FOLDER if it is not empty (everything in it is deleted).",
)
def sample_data(folder: Path, n: int, seed: int, size: int, overwrite: bool) -> None:
    """Write generated shoreline / pond scenes to FOLDER in the Ontario layout.

    FOLDER/train and FOLDER/test receive <stem>.JPG photos with <stem>_mres.mat labels
    (key 'class': 1 = land, 2 = water; 'labels' = land, water); FOLDER/test_shifted holds as
    many test scenes in colours and light no training scene has (score colour robustness with
    --set data.test_dir=test_shifted). The same n, seed and size
    always give the same files; `data.source: sample` generates them into the cache instead.
    FOLDER must be new or empty unless --overwrite; it appears only once complete.
    """
    from segmenter.data.sample import write_sample
    from segmenter.errors import DataError

    target = Path(os.path.abspath(folder))  # "." and "sub/.." have no name of their own
    here = Path.cwd()
    if overwrite and (target == here or target in here.parents):
        raise DataError(
            f"{folder}: is the current folder (or holds it); --overwrite would replace it with "
            "everything in it: name a sub-folder instead"
        )
    counts = write_sample(target, n=n, size=size, seed=seed, overwrite=overwrite)
    click.echo(
        f"wrote {n} scenes ({size} px wide, seed {seed}) to {folder}: "
        f"train {counts['train']}, test {counts['test']}, "
        f"test_shifted {counts['test_shifted']} (colours no training scene has)"
    )
