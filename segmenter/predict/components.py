"""Naming a Gaussian mixture's components water or land, and calling their pixels.

Each component (a colour cluster) is called by the median probability of land of its pixels
against ``postprocess.threshold``, revised within the bound of ``postprocess.one_class`` when
every median falls on one side (:func:`decide_threshold`). A component whose pixels disagree
with its call (its *purity* below ``postprocess.min_purity``) is called pixel by pixel, with a
blend over ``postprocess.purity_ramp`` (:func:`pixel_weights`). One rule for a photo's pixels and
for a raster's subsample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segmenter.config import PostprocessConfig

#: probability bins of the per-component histogram (medians, purities).
HISTOGRAM_BINS = 4096


@dataclass
class ComponentNames:
    """What each GMM component is called, and by which threshold (:func:`name_components`).

    Attributes:
        threshold, revised, one_class: as :func:`decide_threshold` returns them.
        medians, purities: per component (``None`` for an empty one).
        is_land: bool per component, its median above ``threshold``.
        own: float per component, the weight of each pixel's own probability against the
            component's call (:func:`pixel_weights`): 0 for a component called as a whole,
            1 for a mixed one (purity below ``min_purity``), between in ``purity_ramp``.
    """

    threshold: float
    revised: bool
    one_class: str | None
    medians: list[float | None]
    purities: list[float | None]
    is_land: np.ndarray
    own: np.ndarray

    def water(self, labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """Water (True) for pixels of component ``labels`` and probability of land ``prob``."""
        return call_pixels(labels, prob, self.is_land, self.own, self.threshold)

    def info(self, pp_cfg: PostprocessConfig, counts: list[int] | None = None) -> dict[str, Any]:
        """The threshold decision and each component's median, class, purity (and pixels)."""
        components = []
        for k, (median, land, purity, own) in enumerate(zip(
                self.medians, self.is_land.tolist(), self.purities, self.own.tolist(),
                strict=True)):
            component: dict[str, Any] = {"median_land_prob": median}
            if counts is not None:
                component["pixels"] = int(counts[k])
            side = "land" if land else "water"
            component["class"] = ("per pixel" if own >= 1 else
                                  f"{side}, blended" if own > 0 else side)
            component["purity"] = purity
            if 0 < own < 1:
                component["pixel_weight"] = round(float(own), 4)
            components.append(component)
        return {"threshold": self.threshold, "threshold_configured": pp_cfg.threshold,
                "revised": self.revised, "one_class": self.one_class,
                "min_purity": pp_cfg.min_purity, "purity_ramp": pp_cfg.purity_ramp,
                "components": components}


def name_components(labels: np.ndarray, prob: np.ndarray, n_components: int,
                    pp_cfg: PostprocessConfig) -> ComponentNames:
    """Call each component water or land by the median probability of its pixels.

    The threshold is ``postprocess.threshold`` or its revision (:func:`decide_threshold`);
    components that mix both sides, or nearly, get a weight for their pixels' own
    probabilities (:func:`pixel_weights`). One rule for a photo's pixels and for a raster's
    subsample (:func:`segmenter.predict.threshold.fit_decision`).
    """
    histogram = component_histogram(labels, prob, n_components)
    medians = medians_from_histogram(histogram)
    threshold, revised, one_class = decide_threshold(medians, pp_cfg)
    is_land = np.array([m is not None and m > threshold for m in medians])
    purities = purity_from_histogram(histogram, is_land, threshold)
    return ComponentNames(threshold, revised, one_class, medians, purities, is_land,
                          pixel_weights(purities, pp_cfg.min_purity, pp_cfg.purity_ramp))


def decide_threshold(
    medians: list[float | None], pp_cfg: PostprocessConfig
) -> tuple[float, bool, str | None]:
    """The threshold that names the GMM components: ``(threshold, revised, one_class)``.

    Components whose median probability of land is above ``postprocess.threshold`` are land.
    When every median falls on one side, that threshold would make the whole photo one class,
    so (the notebook's rule) it is revised to the mean of the medians: a poorly calibrated map
    still gets split, and water the models were unsure of (medians just above 0.5 beside land
    at 0.99) is found.

    ``postprocess.one_class`` (``s``) bounds the revision to ``[s, 1 - s]``: a component whose
    median is beyond ``1 - s`` is land the models are sure of, and no revision turns it to
    water (nor one below ``s`` to land). The revised threshold is then ``min(mean, 1 - s)``
    (``max(mean, s)`` when every median is on the water side), so only the components the
    models were unsure of change side. When every median is beyond the bound, the photo is all
    land (an inland frame) or all water (open sea): ``one_class`` is then ``"land"`` or
    ``"water"``, else ``None``. ``s = 0`` is the notebook's unbounded rule.
    """
    threshold = pp_cfg.threshold
    present = [m for m in medians if m is not None]
    if len(present) < 2:
        return threshold, False, None
    sure = pp_cfg.one_class
    revised = float(np.mean(present))
    if all(m > threshold for m in present):
        if sure > 0:
            if all(m > 1 - sure for m in present):
                return threshold, False, "land"
            revised = min(revised, 1 - sure)
    elif all(m <= threshold for m in present):
        if sure > 0:
            if all(m < sure for m in present):
                return threshold, False, "water"
            revised = max(revised, sure)
    else:
        return threshold, False, None
    return revised, True, None


def component_histogram(labels: np.ndarray, prob: np.ndarray, n_components: int,
                        bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """(n_components, bins) counts of each component's pixels by probability.

    One ``bincount`` over all pixels: linear in their number instead of a sort of 25 million
    values; medians and purities read from it are off by less than 1 / ``bins``.
    """
    index = np.clip((prob * bins).astype(np.int64), 0, bins - 1)
    index += labels.astype(np.int64) * bins
    histogram = np.bincount(index, minlength=n_components * bins).reshape(n_components, bins)
    return histogram


def medians_from_histogram(histogram: np.ndarray) -> list[float | None]:
    """Median probability per component row (``None`` for an empty one), interpolated in-bin."""
    bins = histogram.shape[1]
    medians: list[float | None] = []
    for row in histogram:
        total = int(row.sum())
        if total == 0:
            medians.append(None)
            continue
        cumulative = np.cumsum(row)
        half = total / 2.0
        b = int(np.searchsorted(cumulative, half))
        before = cumulative[b - 1] if b > 0 else 0
        inside = (half - before) / row[b] if row[b] else 0.5
        medians.append(float((b + inside) / bins))
    return medians


def purity_from_histogram(histogram: np.ndarray, is_land: np.ndarray,
                          threshold: float) -> list[float | None]:
    """Share of each component's pixels whose own probability agrees with the component's class.

    A land component's pixels agree when ``p > threshold``, a water component's when
    ``p <= threshold`` (to the histogram's bin). 1.0 means the component is the threshold's
    answer; a low purity shows a component that mixes both sides, which is where the GMM's
    colour evidence overrides the probability.
    """
    bins = histogram.shape[1]
    split = int(np.clip(np.floor(threshold * bins + 1e-9), 0, bins))
    out: list[float | None] = []
    for row, land in zip(histogram, is_land.tolist(), strict=True):
        total = int(row.sum())
        if total == 0:
            out.append(None)
            continue
        above = int(row[split:].sum())
        out.append(round((above if land else total - above) / total, 4))
    return out


def pixel_weights(purities: list[float | None], min_purity: float,
                  purity_ramp: float = 0.0) -> np.ndarray:
    """Float per component: how much its pixels' own probabilities count against its call.

    1 below ``min_purity`` (a mixed component, called pixel by pixel), 0 from
    ``min_purity + purity_ramp`` up (called as a whole), linear between; with no ramp the cut
    is hard, as the notebook-era rule was. Empty components get 0.
    """
    out = np.zeros(len(purities), np.float32)
    for k, purity in enumerate(purities):
        if purity is None or purity >= min_purity + purity_ramp:
            continue
        if purity < min_purity or purity_ramp <= 0:
            out[k] = 1.0
        else:
            out[k] = (min_purity + purity_ramp - purity) / purity_ramp
    return out


def call_pixels(labels: np.ndarray, prob: np.ndarray, is_land: np.ndarray,
                own: np.ndarray, threshold: float) -> np.ndarray:
    """Water (True) per pixel, from its component's call and its own probability of land.

    With ``w = own[component]`` the pixel is land when ``(1 - w) * call + w * prob`` is above
    ``threshold``, ``call`` being 1 for a land component and 0 for a water one: ``w = 0`` is the
    component's class, ``w = 1`` the pixel's own ``prob > threshold`` (:func:`pixel_weights`).
    """
    water = ~is_land[labels]
    if own.any():
        # Only the blended components' pixels get a float weight: a float per pixel of a
        # 25-megapixel photo would be 100 MB where the bool mask is 25.
        touched = (own > 0)[labels]
        w = own[labels[touched]]
        score = (1.0 - w) * ~water[touched] + w * prob[touched]
        water[touched] = score <= threshold
    return water
