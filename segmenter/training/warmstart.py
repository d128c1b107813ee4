"""``train.init_from``: start each width from another run's finished model (fine-tuning).

A user with a trained run and a few labelled photos of a new flight, site or season trains a
new run from it instead of from random weights: every width starts from the source run's model
of the same width (its weights and BatchNorm statistics), with a fresh optimiser and the
learning-rate schedule of this config. The source run is only read; the new run is written to
its own ``--out``, and its ``config.yaml`` records where it started.

The architecture is the source run's: every ``model.*`` key must match it (``auto`` keys take
the source run's decided values, as a resumed run does), and so does ``data.upright``, which
decides the row channel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segmenter.config import Config
from segmenter.errors import ConfigError, RunError
from segmenter.runs import Run, flatten, open_run

log = logging.getLogger("segmenter.training")


def open_source(cfg: Config, out: Path, widths: list[int]) -> Run | None:
    """The run named by ``train.init_from``, checked to hold a finished model per width.

    ``widths`` are the widths that start from new weights: a resumed run's widths that are
    finished or hold a checkpoint do not need the source, so it is not read for them (it may
    have moved since). A URL (``s3://...``) is copied to the cache first, as ``predict --run``
    does; of a local run only the config and status files are read here (no model). Either
    way a bad source is refused before the data load.

    Raises:
        ConfigError: no such run, the run being written, or a width it has not finished.
    """
    where = cfg.train.init_from
    if where is None:
        return None
    if not widths:
        log.info("train.init_from: every width is finished or continues from its checkpoint; "
                 "%s is not read", where)
        return None
    from segmenter.data.remote import fetch_run, is_url

    try:
        if is_url(where):
            source = open_run(fetch_run(where, cfg.data))
        else:
            if Path(where).resolve() == Path(out).resolve():
                raise ConfigError(f"train.init_from: {where} is the run being written (--out); "
                                  "fine-tune into another folder")
            source = open_run(where)
    except RunError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    finished = source.finished_widths()
    missing = [width for width in widths if width not in finished]
    if missing:
        have = ", ".join(map(str, finished)) or "none"
        raise ConfigError(
            f"train.init_from: {where} has no finished model for patch width "
            f"{', '.join(map(str, missing))} (finished widths: {have}); train only those it "
            "has (--patch-width) or set train.widths to them"
        )
    return source


def _refusal(cfg: Config, differing: list[str]) -> ConfigError:
    return ConfigError(
        f"train.init_from: {cfg.train.init_from} was trained with other networks ("
        + "; ".join(differing) + "); fine-tuning keeps the architecture, so use its "
        "model settings"
    )


def check_upright(source: Run, cfg: Config) -> None:
    """Refuse a ``data.upright`` other than the source run's (it decides the row channel), before
    the row channel is decided from it.

    Raises:
        ConfigError: naming both values.
    """
    old, new = source.config.data.upright, cfg.data.upright
    if "auto" not in (old, new) and old != new:
        raise _refusal(cfg, [f"data.upright: {new!r} here, {old!r} in the source run"])


def check_architecture(source: Run, cfg: Config) -> None:
    """Refuse a config whose networks differ from the source run's (after ``auto`` decided).

    Raises:
        ConfigError: naming each differing key with both values.
    """
    old = flatten(source.config.model.model_dump(mode="json"), "model.")
    new = flatten(cfg.model.model_dump(mode="json"), "model.")
    if old["model.row_channel"] == "auto":  # saved before the key existed: built without it
        old["model.row_channel"] = False
    old["data.upright"] = source.config.data.upright
    new["data.upright"] = cfg.data.upright
    differing = [f"{key}: {new.get(key)!r} here, {old.get(key)!r} in the source run"
                 for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if differing:
        raise _refusal(cfg, differing)


def source_weights(source: Run, widths: list[int]) -> dict[int, list[Any]]:
    """The source run's weights (BatchNorm statistics included) of each of ``widths``, read
    before the new run is written.

    Raises:
        ConfigError: a source model cannot be read.
    """
    weights = {}
    for width in widths:
        try:
            weights[width] = source.load_model(width).get_weights()
        except RunError as exc:
            raise ConfigError(f"train.init_from: {exc}") from None
        log.info("pw%d: starts from %s", width, source.model_path(width))
    return weights


def copy_weights(weights: list[Any], model: Any, where: str) -> None:
    """Set ``model``'s weights to a source model's (from :func:`source_weights`).

    Raises:
        RunError: the weights do not fit ``model``.
    """
    shapes = [tuple(w.shape) for w in weights]
    wanted = [tuple(v.shape) for v in model.weights]
    if shapes != wanted:
        raise RunError(f"{where}: its weights do not fit this config's network "
                       f"({len(shapes)} arrays against {len(wanted)})")
    model.set_weights(weights)
