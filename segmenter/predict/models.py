"""A run's models for prediction: which widths, loaded once, with their validation scores."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segmenter.config import Config
from segmenter.errors import ConfigError, RunError, SegmenterError

log = logging.getLogger(__name__)


@dataclass
class LoadedModels:
    """A run's models for the widths to predict with, and each width's validation score."""

    models: dict[int, Any]
    scores: dict[int, float | None] = field(default_factory=dict)


def load_models(run: Any, cfg: Config) -> LoadedModels:
    """Load the finished models of ``run`` that ``predict.widths`` asks for (null = all).

    Raises:
        RunError: the run has no finished model.
        ConfigError: ``predict.widths`` names a width the run has not finished.
    """
    wanted = run_widths(run, cfg)
    if cfg.predict.grey and cfg.train.augment.greyscale <= 0:
        log.warning(
            "predict.grey: %s trained without grey patches (train.augment.greyscale: 0), so "
            "its models never saw a grey photo; the grey passes may lower the masks",
            run.path,
        )
    models = {w: run.load_model(w) for w in wanted}
    scores = {w: run.val_score(w) for w in models}
    return LoadedModels(models=models, scores=scores)


def run_widths(run: Any, cfg: Config, where: str | None = None) -> list[int]:
    """The finished widths of ``run`` that ``predict.widths`` asks for (null = all), sorted.

    Args:
        where: how the user named the run (a URL fetched to ``run.path``), for messages.

    Raises:
        RunError: the run has no finished model.
        ConfigError: ``predict.widths`` names a width the run has not finished.
    """
    finished = run.finished_widths()
    where = where or str(run.path)
    if not finished:
        raise RunError(
            f"{where}: no finished models (models/pw<W>.keras); train first with "
            f"`segmenter train --out {where}`"
        )
    return sorted(select_models({w: w for w in finished}, cfg))  # the one check of widths


def select_models(models: Mapping[int, Any], cfg: Config) -> dict[int, Any]:
    """The models of the widths ``predict.widths`` names (all of them when it is null)."""
    if not models:
        raise SegmenterError("no trained models to predict with")
    wanted = cfg.predict.widths
    if wanted is None:
        return {int(w): models[w] for w in sorted(models)}
    missing = [w for w in wanted if w not in models]
    if missing:
        have = ", ".join(str(w) for w in sorted(models))
        raise ConfigError(
            f"predict.widths: no trained model of width {', '.join(map(str, missing))} "
            f"(trained widths: {have})"
        )
    return {int(w): models[w] for w in sorted(set(wanted))}
