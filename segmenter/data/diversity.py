"""Warnings about training data too small or too uniform to generalise.

A model trained on one photo, or on photos whose water all has one colour, scores well on its
own validation pixels and then fails on the next flight (grey-brown training ponds, dark navy
ponds in the new photo; docs/quality.md). These checks cannot prove data good enough;
they name the two cheap-to-detect ways it is not, so a user knows before the minutes of training
are spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MIN_PHOTOS", "MIN_WATER_SPREAD", "diversity_warnings", "water_colours"]

#: fewer training photos than this draws a warning.
MIN_PHOTOS = 3
#: the water of every training photo within this distance in (Y, I, Q) draws a warning
#: (0.06 is about the step from grey-brown to dark navy water at ordinary exposure).
MIN_WATER_SPREAD = 0.06
#: a photo's water is compared only when at least this share of it is water.
MIN_WATER_SHARE = 0.01

_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def _grey_hint(greyscale: float) -> str:
    """The remedy both warnings suggest when more varied photos cannot be had: grey patches,
    or, when they are already on, that they do not replace photos."""
    if greyscale > 0:
        return (f"; grey patches (train.augment.greyscale {greyscale:g}) help but do not "
                f"replace them")
    return ", or at least turn some patches grey (train.augment.greyscale, 0.3 in photo.yaml)"


def water_colours(items: Sequence[Any]) -> dict[str, np.ndarray]:
    """Mean (Y, I, Q) colour of each item's water, for items with enough water.

    Args:
        items: objects with ``stem``, ``image`` (H, W, 3) in [0, 1] and ``land`` (H, W).
    """
    colours = {}
    for item in items:
        water = np.asarray(item.land) < 0.5
        if water.mean() < MIN_WATER_SHARE:
            continue
        rgb = np.asarray(item.image)[..., :3][water].astype(np.float64).mean(axis=0)
        colours[item.stem] = _RGB_TO_YIQ @ rgb
    return colours


def diversity_warnings(items: Sequence[Any], greyscale: float = 0.0) -> list[str]:
    """One line per reason the training data may not generalise (empty when none is found).

    ``greyscale``: the run's ``train.augment.greyscale``, so the advice fits the config.
    """
    lines = []
    if not items:
        return lines
    if len(items) < MIN_PHOTOS:
        lines.append(
            f"only {len(items)} training photo{'s' if len(items) != 1 else ''}: masks on photos "
            f"of other days, light or places may fail; label a few more photos that differ "
            f"(water colour, light, site){_grey_hint(greyscale)}"
        )
    if all(float(np.mean(np.asarray(item.land) < 0.5)) == 0.0 for item in items):
        lines.append("no training photo has any water: the models can only learn land")
        return lines
    colours = water_colours(items)
    if len(colours) >= 2:
        points = np.stack(list(colours.values()))
        spread = float(np.max(np.linalg.norm(points[:, None] - points[None], axis=-1)))
        if spread < MIN_WATER_SPREAD:
            lines.append(
                f"the water of all {len(colours)} training photos has nearly one colour "
                f"(mean colours within {spread:.3f} in YIQ): the models may learn that colour "
                f"rather than water; add photos with other water (dark, brown, green, "
                f"glinting){_grey_hint(greyscale)}"
            )
    return lines
