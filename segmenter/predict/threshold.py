"""From a probability-of-land map to a water mask: one rule fitted, then applied.

``postprocess.method`` picks the rule: ``global`` (``postprocess.threshold``), ``otsu`` (Otsu's
threshold of the map) or ``gmm`` (the notebook's Gaussian mixture over probability and colour,
:mod:`segmenter.predict.gmm`). A photo's mask is decided on the photo (:func:`water_mask`); a
raster's rule is fitted once on a subsample of the whole raster (:func:`fit_decision`) and then
applied to every tile, on any worker (:meth:`Decision.water`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmenter.config import PostprocessConfig
from segmenter.predict.gmm import (
    assign_components,
    decision_info,
    gmm_features,
    gmm_water_mask,
    majority_water,
    named_mixtures,
)

log = logging.getLogger(__name__)


def water_mask(
    land_prob: np.ndarray, image: np.ndarray | None, pp_cfg: PostprocessConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """The water mask of a photo from its probability-of-land map.

    Args:
        land_prob: float (H, W) probability of land in [0, 1].
        image: float (H, W, 3) RGB in [0, 1] of the same size (needed by ``gmm`` only).
        pp_cfg: ``postprocess`` section of the config.

    Returns:
        A bool (H, W) mask, True where water, and a dict describing how it was decided
        (method, threshold used, and for the GMM each component's median and class).

    Raises:
        ValueError: shapes that do not match.
    """
    land_prob = np.asarray(land_prob)
    if land_prob.ndim != 2:
        raise ValueError(f"land_prob must be (H, W), got shape {land_prob.shape}")
    if pp_cfg.method == "global":
        mask = land_prob <= pp_cfg.threshold
        info: dict[str, Any] = {"method": "global", "threshold": pp_cfg.threshold}
    elif pp_cfg.method == "otsu":
        threshold = otsu_threshold(land_prob)
        mask, info = land_prob <= threshold, {"method": "otsu", "threshold": threshold}
    elif pp_cfg.method == "gmm":
        if image is None:
            raise ValueError("the gmm method needs the photo (RGB) as well as the probabilities")
        mask, info = gmm_water_mask(land_prob, image, pp_cfg)
    else:
        raise ValueError(f"unknown postprocess.method {pp_cfg.method!r}")
    mask, cleaned = clean_mask(mask, pp_cfg.fill_holes, pp_cfg.remove_specks)
    if cleaned:
        info["cleaned"] = cleaned
    info["water_fraction"] = float(mask.mean()) if mask.size else 0.0
    return mask, info


def clean_mask(
    water: np.ndarray, fill_holes: float, remove_specks: float
) -> tuple[np.ndarray, dict[str, int]]:
    """Fill small land islands inside water and drop small water specks.

    Args:
        water: bool (H, W) mask, True where water.
        fill_holes: land regions enclosed by water and smaller than this share of the photo's
            pixels become water (sun glint, foam, a buoy); 0 leaves them.
        remove_specks: water regions smaller than this share become land (a dark roof, a
            shadow); 0 leaves them.

    Returns:
        The cleaned mask and ``{"holes_filled_px": n, "specks_removed_px": n}`` (empty when
        both are 0). 8-connectivity, so a diagonal channel stays one water body.
    """
    from skimage import morphology

    if fill_holes <= 0 and remove_specks <= 0:
        return water, {}
    water = np.asarray(water, bool)
    before = int(water.sum())
    out, stats = water, {}
    if remove_specks > 0:
        area = int(remove_specks * water.size)
        if area >= 1:
            out = morphology.remove_small_objects(out, max_size=area, connectivity=2)
        stats["specks_removed_px"] = before - int(out.sum())
    if fill_holes > 0:
        area = int(fill_holes * water.size)
        kept = int(out.sum())
        if area >= 1:
            out = morphology.remove_small_holes(out, max_size=area, connectivity=2)
        stats["holes_filled_px"] = int(out.sum()) - kept
    return out, stats


def otsu_threshold(land_prob: np.ndarray) -> float:
    """Otsu's threshold of the finite probabilities (0.5 for a flat or empty map)."""
    from skimage.filters import threshold_otsu

    finite = land_prob[np.isfinite(land_prob)]
    if finite.size == 0 or float(finite.max() - finite.min()) < 1e-6:
        return 0.5
    return float(threshold_otsu(finite, nbins=256))


@dataclass
class Decision:
    """How every pixel is called water: fitted mixtures, or a threshold."""

    method: str
    threshold: float
    info: dict[str, Any]
    # (GaussianMixture, segmenter.predict.components.ComponentNames) per mixture, with gmm
    mixtures: list[tuple[Any, Any]] = field(default_factory=list)

    def water(self, land: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Water (True) for pixels of probability of land ``land`` (n,) and colour (n, 3)."""
        if not self.mixtures:
            return land <= self.threshold
        from threadpoolctl import threadpool_limits

        votes = np.zeros(land.shape[0], np.uint8)
        with threadpool_limits(1, user_api="blas"):
            for gmm, names in self.mixtures:
                votes += names.water(assign_components(gmm, land, rgb), land)
        return majority_water(votes, len(self.mixtures), land, self.threshold)


def fit_decision(land: np.ndarray, rgb: np.ndarray, pp: PostprocessConfig) -> Decision:
    """The whole raster's rule, from a subsample of its valid pixels.

    ``gmm``: the mixtures of :func:`segmenter.predict.gmm.gmm_water_mask` (same features,
    settings, naming rule and vote, :func:`segmenter.predict.gmm.name_components`), fitted on
    the subsample, their medians and purities taken over the subsample. ``otsu``: Otsu's
    threshold of the subsample's probabilities. ``global``: ``postprocess.threshold``, also
    for ``gmm`` when the subsample has fewer than two pixels (a raster of one valid pixel), as
    :func:`segmenter.predict.gmm.gmm_water_mask` does for a photo of one pixel (the info's
    ``note`` says so).
    """
    if pp.method == "global":
        return Decision("global", pp.threshold, {"method": "global", "threshold": pp.threshold})
    if pp.method == "otsu":
        value = otsu_threshold(land)
        return Decision("otsu", value, {"method": "otsu", "threshold": value,
                                        "fitted_on": int(land.size)})
    if land.size < 2:  # a mixture needs two pixels (a 1 x 1 raster), as for a photo
        return Decision("global", pp.threshold, {
            "method": "global", "threshold": pp.threshold, "fitted_on": int(land.size),
            "note": "too few pixels for the GMM; global threshold used"})
    mixtures = [(gmm, names) for gmm, _, names
                in named_mixtures(gmm_features(land, rgb), land, rgb, pp)]
    info = decision_info([(names, None) for _, names in mixtures], pp, int(land.size))
    if info["revised"]:
        log.info("GMM: every component median is on one side of %.3f; threshold revised to "
                 "%.3f", pp.threshold, info["threshold"])
    return Decision("gmm", info["threshold"], info, mixtures=mixtures)


def log_threshold_decision(name: str, threshold: dict[str, Any]) -> None:
    """Say, naming the photo, that the GMM step revised its threshold or kept one class."""
    if threshold.get("one_class"):
        log.info("%s: all %s: every GMM component's median probability of land was beyond "
                 "the bound of postprocess.one_class, so no %s was invented", name,
                 threshold["one_class"], "water" if threshold["one_class"] == "land" else "land")
    if threshold.get("revised"):
        log.info("%s: threshold revised to %.3f: every GMM component's median was on one "
                 "side of %.3f", name, threshold["threshold"],
                 threshold.get("threshold_configured", float("nan")))
