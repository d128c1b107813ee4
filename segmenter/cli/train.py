"""``segmenter train``: one model per patch width into a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import click

from segmenter.cli.options import config_options, resolve_config
from segmenter.errors import SegmenterError


@click.command()
@config_options
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory (default: runs/<config stem>, or runs/default without --config).",
)
@click.option(
    "--patch-width",
    "patch_widths",
    type=int,
    multiple=True,
    metavar="W",
    help="Train only this width of train.widths (repeatable); lets widths run as separate jobs.",
)
@click.option(
    "--init-from",
    "init_from",
    default=None,
    metavar="RUN",
    help="Fine-tune: start each width from RUN's model (train.init_from; a folder or an "
    "s3:// URL); --out is a new run.",
)
@click.option("--resume", is_flag=True, help="Continue unfinished widths from their checkpoints.")
@click.option("--overwrite", is_flag=True, help="Start the run (or the given widths) again.")
def train(
    config_path: Path | None,
    overrides: tuple[str, ...],
    out: Path | None,
    patch_widths: tuple[int, ...],
    init_from: str | None,
    resume: bool,
    overwrite: bool,
) -> None:
    """Train one model per patch width (train.widths) into a run directory.

    The run directory receives config.yaml, models/pw<W>.keras, history/ (CSV per width),
    plots/ (loss curves) and manifest.json. With --resume, a run stopped at any moment (even by
    kill -9) continues from its last checkpoint; with --resume and no --config, the run's saved
    config is used. With --init-from, every width starts from another run's model of that width
    (fine-tuning it on this config's data) instead of random weights.
    """
    if out is None:
        out = Path("runs") / (config_path.stem if config_path is not None else "default")
    base = None
    if resume and not (out / "config.yaml").is_file():
        from segmenter.training.plan import RunPlan

        # Refuses (nothing to resume) before TensorFlow starts; changes nothing on disk.
        RunPlan(out, resolve_config(config_path, overrides), resume=True).check()
    if resume and config_path is None and (out / "config.yaml").is_file():
        from segmenter.runs import open_run

        base = open_run(out).config
    cfg = resolve_config(config_path, overrides, base=base)
    if init_from is not None:
        from segmenter.data.remote import is_url

        if not is_url(init_from):  # an absolute path: --resume works from any folder
            init_from = os.path.abspath(os.path.expanduser(init_from))
        cfg = cfg.model_copy(update={
            "train": cfg.train.model_copy(update={"init_from": init_from})})

    from segmenter.tfenv import start_tensorflow

    start_tensorflow()  # before training.py imports Keras: TensorFlow's start-up noise captured
    from segmenter.training import train as train_run

    results = train_run(
        cfg, out, widths=list(patch_widths) or None, resume=resume, overwrite=overwrite
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        first = failed[0]
        raise SegmenterError(
            f"{len(failed)} width(s) failed; pw{first.width}: {first.message}"
        )
    click.echo(f"run written to {out}")
