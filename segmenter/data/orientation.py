"""Whether the training photos have an up: ``data.upright: auto``.

Aerial photos have no up or down, so training turns patches every way and flip TTA averages all
four flips. Oblique photos (from ships, shores, drones) have a horizon: sky above, water below.
Turned upside down they teach the models that water may hang above the sky, which is how night
skies and haze end up marked as water; keeping them upright helps on oblique photos
(docs/quality.md).

``auto`` decides from the training labels. In oblique photos the top rows are sky (or far
shore) far more than the rest of the photo; in aerial photos water is as likely at the top as
anywhere, so over several photos the top quarter holds about the photo's average share of water.
The rule wants :data:`MIN_PHOTOS` photos with water, so one aerial photo whose pond happens to lie
low is not taken for a view with a horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from segmenter.config import Config

__all__ = ["MIN_PHOTOS", "TOP_RATIO", "Orientation", "detect_upright", "keep_saved_upright",
           "with_row_channel", "with_upright"]

#: photos with water that ``auto`` needs before it calls the photos upright.
MIN_PHOTOS = 5
#: upright when the top quarter's pooled water share is below this share of the rest's.
TOP_RATIO = 0.4
#: a photo counts when at least this share of it is water.
MIN_WATER_SHARE = 0.01


@dataclass(frozen=True)
class Orientation:
    """What ``auto`` decided and why.

    Attributes:
        upright: the decision.
        photos: training photos with water (those the rule looked at).
        top_share: pooled water share of their top quarters (NaN without photos).
        rest_share: pooled water share of the rest of them (NaN without photos).
    """

    upright: bool
    photos: int
    top_share: float
    rest_share: float

    def describe(self, hint: bool = True) -> str:
        """The decision and its figures; with ``hint``, how to overrule it."""
        if self.photos < MIN_PHOTOS:
            return (f"aerial: only {self.photos} training photo(s) with water, too few to tell "
                    f"a horizon (at least {MIN_PHOTOS})"
                    + ("; set data.upright: true for oblique photos" if hint else ""))
        shares = (f"water {self.top_share:.0%} in the top quarter of the {self.photos} training "
                  f"photos with water, {self.rest_share:.0%} below it")
        if self.upright:
            return (f"upright (oblique photos with a horizon): {shares}; patches are only "
                    f"mirrored left-right"
                    + (" (set data.upright: false to turn them every way)" if hint else ""))
        return (f"aerial: {shares}; patches are flipped and turned every way"
                + (" (set data.upright: true for oblique photos)" if hint else ""))


def detect_upright(items: Sequence[Any]) -> Orientation:
    """Decide ``data.upright: auto`` from training items (``land``: 1 land, 0 water)."""
    top = rest = 0.0
    photos = 0
    for item in items:
        water = np.asarray(item.land, np.float32) < 0.5
        if water.size == 0 or water.mean() < MIN_WATER_SHARE:
            continue
        quarter = max(1, water.shape[0] // 4)
        if water.shape[0] - quarter < 1:
            continue
        photos += 1
        top += float(water[:quarter].mean())
        rest += float(water[quarter:].mean())
    if not photos:
        return Orientation(False, 0, float("nan"), float("nan"))
    top, rest = top / photos, rest / photos
    upright = photos >= MIN_PHOTOS and top < TOP_RATIO * rest
    return Orientation(upright, photos, top, rest)


def with_upright(cfg: Config, upright: bool) -> Config:
    """``cfg`` with ``data.upright`` set to a decided ``upright``."""
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"upright": upright})})


def keep_saved_upright(cfg: Config, saved: Config) -> Config:
    """``cfg``, whose ``auto`` over a run's saved (decided) value becomes that value: the run's
    models only know the orientation they were trained in."""
    if cfg.data.upright == "auto" and saved.data.upright != "auto":
        return with_upright(cfg, saved.data.upright)
    return cfg


def with_row_channel(cfg: Config, saved: Config | None = None) -> Config:
    """``cfg`` with ``model.row_channel`` decided, once ``data.upright`` is.

    ``auto`` follows ``data.upright``: a photo's rows say where sky, horizon and water are only
    when the photo has an up. A continued run (``saved``) keeps what its models were built
    with; a run saved before the key existed has none.

    Raises:
        ConfigError: ``model.row_channel: true`` for photos that are not upright.
    """
    from segmenter.errors import ConfigError

    wanted = cfg.model.row_channel
    if wanted == "auto" and saved is not None:
        wanted = saved.model.row_channel if saved.model.row_channel != "auto" else False
    if wanted is True and not cfg.data.is_upright:
        raise ConfigError(
            "model.row_channel: true needs upright photos (data.upright: true, or auto "
            "deciding so); aerial photos have no up, so a pixel's row says nothing"
        )
    on = cfg.data.is_upright if wanted == "auto" else bool(wanted)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"row_channel": on})})
