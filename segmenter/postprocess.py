"""From a probability-of-land map to a water mask: GMM, global or Otsu threshold.

Pure numpy (and scikit-learn / scikit-image) in, numpy out, so it can be tested on synthetic
arrays and reused outside the CLI.

Why a Gaussian mixture (SPEC.md, Thresholding): a fixed 0.5 threshold on the network's output
"probably wouldn't generalize well"; clustering pixels on (probability, R, G, B) groups them by
colour as well, and each cluster is then called water or land as a whole by its median
probability, which follows colour edges such as a shoreline more closely.

The probability enters the mixture as its logit, ``log(p / (1 - p))`` of ``p`` clipped to
[:data:`PROB_EPS`, 1 - :data:`PROB_EPS`]. A trained network's probabilities are saturated:
most pixels sit in two flat spikes next to 0 and 1, which on the raw scale swallow components
of their own while all the uncertain pixels of a shoreline end up in one broad catch-all
component whose median straddles 0.5 (on the built-in sample the GMM then scored water IoU
0.71 against 0.88 for a plain 0.5 threshold). The logit spreads the uncertain range out and
squeezes the spikes, so components follow the uncertain band by colour as intended. It is a
monotone reparametrisation: each component is still called by the median of its pixels'
probability ``p`` against ``threshold``, and the revision rule is unchanged
(:func:`decide_threshold`).

A component is a colour cluster; calling it as a whole is right when the network mostly agrees
within it, and wrong when the cluster mixes both sides: at night or in haze the sky and the water
share one colour, and on photos unlike the training photos the network may be sure of water
that shares a cluster with land. ``postprocess.min_purity`` names such components (the share of
their pixels whose own probability agrees with the component's class, its *purity*, is below
it) and calls their pixels one by one by the threshold instead (:func:`call_pixels`). With 0.7
(``photo.yaml``) the full benchmark's water IoU rose on OASIs ship photos (0.866 -> 0.888) and
the generated shifted scenes (0.467 -> 0.513) and held on the real aerial photo (README,
"Quality"); on ``default.yaml``'s rougher maps it hurt, so the default is 0.

A hard cut at ``min_purity`` is a cliff: on the real aerial photo (a 32 px model beside
``photo.yaml``'s 64 and 128 px ones) one component of green pond water and grass had purity
0.706, so it was called land as a whole and the pond's greener half went with it (water IoU 0.63
against 0.92 for the network's own map). ``postprocess.purity_ramp`` softens the cut
(:func:`pixel_weights`): from ``min_purity`` to ``min_purity + purity_ramp`` a component's call
and each pixel's own probability are blended, so a pixel the network is sure of keeps its call
in a component that is nearly mixed, and an unsure one follows its colour cluster
(``photo.yaml``: 0.1).

The mixture is fitted on a seeded random subsample and evaluated for every pixel in chunks:
fitting on all pixels of a 25-megapixel photo would take minutes and gigabytes, and the fit does
not improve beyond a few hundred thousand samples. The subsample follows the photo's size
(``postprocess.subsample_share``, between ``subsample_min`` and ``subsample`` pixels), so a
small photo's fit does not cost as much as a large one's (:func:`subsample_size`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmenter.config import PostprocessConfig

log = logging.getLogger(__name__)

#: pixels per chunk when assigning every pixel to a component (~40 MB of float32 scores).
CHUNK_PIXELS = 1 << 19
#: probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before their logit (|logit| <= 9.2).
PROB_EPS = 1e-4
#: probability bins of the per-component histogram (medians, purities).
HISTOGRAM_BINS = 4096


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
        mask, info = _otsu(land_prob)
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


def _otsu(land_prob: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Otsu's threshold on the probability histogram (a flat map falls back to 0.5)."""
    from skimage.filters import threshold_otsu

    finite = land_prob[np.isfinite(land_prob)]
    if finite.size == 0 or float(finite.max() - finite.min()) < 1e-6:
        threshold = 0.5
    else:
        threshold = float(threshold_otsu(finite, nbins=256))
    return land_prob <= threshold, {"method": "otsu", "threshold": threshold}


def gmm_water_mask(
    land_prob: np.ndarray, image: np.ndarray, pp_cfg: PostprocessConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster pixels on (logit of probability, R, G, B); call each by its median probability.

    Components whose median probability of land is above ``threshold`` are land, the others
    water. If every median falls on the same side, a threshold of 0.5 would make the whole
    photo one class: the threshold is then revised to the mean of the medians (logged, and
    reported as ``revised`` in the info). With a list of component counts, one mixture per
    count is fitted on the same subsample and each pixel is called by their majority
    (:func:`majority_water`).
    """
    height, width = land_prob.shape
    if image.shape[:2] != (height, width) or image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(
            f"image of shape {image.shape} does not match probabilities of shape "
            f"{land_prob.shape}"
        )
    n_pixels = height * width
    flat_prob = land_prob.reshape(-1)
    flat_rgb = image[..., :3].reshape(-1, 3)
    rng = np.random.default_rng(pp_cfg.seed)
    fit_size = subsample_size(n_pixels, pp_cfg)
    if n_pixels > fit_size:
        sample_idx = np.sort(rng.choice(n_pixels, size=fit_size, replace=False))
    else:
        sample_idx = np.arange(n_pixels)
    if sample_idx.size < 2:  # a mixture needs two pixels (a 1x1 photo): the plain threshold
        mask = land_prob <= pp_cfg.threshold
        return mask, {"method": "global", "threshold": pp_cfg.threshold,
                      "note": "too few pixels for the GMM; global threshold used"}
    sample = gmm_features(flat_prob[sample_idx], flat_rgb[sample_idx])
    votes = np.zeros(n_pixels, np.uint8)
    members: list[tuple[ComponentNames, list[int]]] = []
    for gmm, labels, names in named_mixtures(sample, flat_prob, flat_rgb, pp_cfg):
        votes += names.water(labels, flat_prob)
        members.append((names, np.bincount(labels, minlength=gmm.n_components).tolist()))
        del labels
    info = decision_info(members, pp_cfg, int(sample_idx.size))
    if info["revised"]:
        log.debug(  # the caller names the photo (predictor, evaluation)
            "GMM: every component median is on one side of the threshold %.3f; threshold "
            "revised to %.3f", pp_cfg.threshold, info["threshold"],
        )
    mask = majority_water(votes, len(members), flat_prob, info["threshold"])
    return mask.reshape(height, width), info


def named_mixtures(sample: np.ndarray, prob: np.ndarray, rgb: np.ndarray,
                   pp_cfg: PostprocessConfig) -> Iterator[tuple[Any, np.ndarray, ComponentNames]]:
    """The mixtures of ``postprocess.n_components`` fitted on the (n, 4) feature ``sample``
    (:func:`gmm_features`), each with the component of every pixel of ``prob`` / ``rgb`` and the
    components' names: (mixture, labels, names), one mixture at a time, so only one set of
    labels is held. A sample with fewer distinct rows than a count gets that many components.
    Shared by photos (:func:`gmm_water_mask`) and whole rasters
    (:func:`segmenter.mosaic.fit_decision`)."""
    from threadpoolctl import threadpool_limits

    counts = pp_cfg.component_counts
    distinct = _distinct_rows(sample, max(counts))
    for gmm in fit_mixtures(sample, [min(count, distinct) for count in counts], pp_cfg):
        # Tall, skinny matrix products (n x 4 by 4 x 4) are many times slower with a
        # multi-threaded BLAS than with one thread; the assignment is made of nothing else.
        with threadpool_limits(1, user_api="blas"):
            labels = assign_components(gmm, prob, rgb)
        yield gmm, labels, name_components(labels, prob, gmm.n_components, pp_cfg)


def fit_mixtures(features: np.ndarray, counts: list[int], pp_cfg: PostprocessConfig) -> list[Any]:
    """One Gaussian mixture per entry of ``counts`` (at least 1 component each), fitted on
    (n, 4) ``features``; several fit side by side in threads, one per core (numpy releases
    the GIL in the EM steps, and each thread's BLAS stays single-threaded: the EM steps are
    tall, skinny matrix products, see :func:`named_mixtures`)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    def fit(count: int) -> Any:
        return GaussianMixture(
            n_components=max(1, count),
            covariance_type="full",
            max_iter=pp_cfg.max_iter,
            random_state=pp_cfg.seed,
            reg_covar=1e-5,
        ).fit(features)

    workers = min(len(counts), os.cpu_count() or 1)
    # The BLAS limit and the warning filter are process-wide, so both are set once here,
    # around all the threads. max_iter caps EM on purpose: a mixture that has not converged
    # by then is used as it is, so scikit-learn's warning (a source line on the user's
    # terminal for every photo) is replaced by a debug line (-v).
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        if workers <= 1:
            mixtures = [fit(count) for count in counts]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                mixtures = list(pool.map(fit, counts))
    for gmm in mixtures:
        if not gmm.converged_:
            log.debug("GMM of %d components: not converged in %d EM steps "
                      "(postprocess.max_iter); used as it is", gmm.n_components, gmm.n_iter_)
    return mixtures


def majority_water(votes: np.ndarray, n_mixtures: int, prob: np.ndarray,
                   threshold: float) -> np.ndarray:
    """Water (True) where most of ``n_mixtures`` mixtures call a pixel water.

    ``votes`` counts each pixel's water calls. With one mixture this is its call. An even
    number can tie; a tied pixel is called by its own probability of land against
    ``threshold``.

    Why several mixtures (``postprocess.n_components: [4, 5, 6]``): which colour clusters a
    mixture finds depends on how many it may find, and one cluster that mixes water with land
    can move a photo's whole water body. On the real aerial photo, seven runs' 5-component
    masks scored water IoU 0.862 to 0.965 over networks' maps that scored 0.915 to 0.935; the
    vote of three mixtures scored 0.962 to 0.964 on every run (README, "Quality").
    """
    if n_mixtures == 1:
        return votes.astype(bool)
    twice = votes.astype(np.int16) * 2
    water = twice > n_mixtures
    if n_mixtures % 2 == 0:
        tied = twice == n_mixtures
        water[tied] = prob[tied] <= threshold
    return water


def decision_info(members: list[tuple[ComponentNames, list[int] | None]],
                  pp_cfg: PostprocessConfig, fitted_on: int) -> dict[str, Any]:
    """How a GMM mask was decided, for ``predictions.json`` and the logs.

    One mixture: its threshold decision and components at the top level. Several: the mean of
    their thresholds (the tie-break), ``revised`` if any was revised, ``one_class`` if all
    agree, and each mixture's own decision under ``mixtures``.
    """
    head = {"method": "gmm", "features": "logit(p), R, G, B"}
    if len(members) == 1:
        names, counts = members[0]
        return {**head, **names.info(pp_cfg, counts), "fitted_on": fitted_on}
    kinds = {names.one_class for names, _ in members}
    return {
        **head,
        "threshold": float(np.mean([names.threshold for names, _ in members])),
        "threshold_configured": pp_cfg.threshold,
        "revised": any(names.revised for names, _ in members),
        "one_class": kinds.pop() if len(kinds) == 1 else None,
        "min_purity": pp_cfg.min_purity, "purity_ramp": pp_cfg.purity_ramp,
        "vote": "majority",
        "mixtures": [{"n_components": len(names.medians), **names.info(pp_cfg, counts)}
                     for names, counts in members],
        "fitted_on": fitted_on,
    }


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
    subsample (:func:`segmenter.mosaic.fit_decision`).
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


def subsample_size(n_pixels: int, pp_cfg: PostprocessConfig) -> int:
    """Pixels the mixture is fitted on for a photo of ``n_pixels``.

    ``subsample_share`` of the photo, at least ``subsample_min`` and at most ``subsample``
    (``subsample`` alone when the share is null). The fit's cost is linear in its sample, and
    a fixed 200 000 pixels was a third of a 0.6-megapixel photo and most of its time; a few
    tens of thousands of pixels pin five 4-D Gaussians as well.
    """
    if pp_cfg.subsample_share is None:
        return int(pp_cfg.subsample)
    wanted = max(int(pp_cfg.subsample_min), int(round(pp_cfg.subsample_share * n_pixels)))
    return int(min(pp_cfg.subsample, wanted))


def assign_components(gmm: Any, prob: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """The most likely component of every pixel, in chunks of :data:`CHUNK_PIXELS`, float32.

    ``prob`` is the probability itself; its logit (:func:`prob_logit`) is the feature, as in
    :func:`gmm_features`.

    Same rule as ``GaussianMixture.predict`` (argmax of log weight + log density, full
    covariances through their precision Cholesky factors), laid out for speed: features are
    rows (4 x n), all components are projected with one (4K x 4) @ (4 x n) product, squared
    distances are summed per component with a second product, and the argmax over K rows is a
    few vectorised comparisons. float32 is ample for an argmax and halves the memory. Calls
    to scikit-learn's ``predict`` took ~5x longer on 25 megapixels.
    """
    n_components, n_features = gmm.means_.shape
    chol = gmm.precisions_cholesky_.astype(np.float32)  # (K, F, F)
    project = np.ascontiguousarray(chol.transpose(0, 2, 1).reshape(-1, n_features))  # (K*F, F)
    shift = np.einsum("kf,kfg->kg", gmm.means_.astype(np.float32), chol).reshape(-1, 1)
    group_sum = np.kron(np.eye(n_components, dtype=np.float32),
                        np.ones((1, n_features), np.float32))  # (K, K*F)
    log_det = np.log(np.diagonal(gmm.precisions_cholesky_, axis1=1, axis2=2)).sum(axis=1)
    constant = (np.log(gmm.weights_) + log_det).astype(np.float32)[:, None]
    labels = np.empty(prob.shape[0], np.int16)

    def assign_chunk(start: int) -> None:
        stop = min(prob.shape[0], start + CHUNK_PIXELS)
        rows = np.empty((n_features, stop - start), np.float32)
        rows[0] = prob_logit(prob[start:stop])
        rows[1:] = rgb[start:stop].T
        projected = project @ rows
        projected -= shift
        np.square(projected, out=projected)
        score = group_sum @ projected
        score *= -0.5
        score += constant
        best = score[0].copy()
        chunk = labels[start:stop]
        chunk[:] = 0
        for comp in range(1, n_components):
            better = score[comp] > best
            np.maximum(best, score[comp], out=best)
            chunk[better] = comp

    # Chunks write disjoint slices and numpy releases the GIL in every step, so threads scale
    # with the cores (the BLAS itself is kept single-threaded, see gmm_water_mask).
    starts = range(0, prob.shape[0], CHUNK_PIXELS)
    workers = min(len(starts), os.cpu_count() or 1, 8)
    if workers <= 1:
        for start in starts:
            assign_chunk(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(assign_chunk, starts))
    return labels


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


def prob_logit(prob: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of ``p`` clipped to [PROB_EPS, 1 - PROB_EPS], float32."""
    p = np.clip(np.asarray(prob, np.float32), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p / (1.0 - p))


def _distinct_rows(sample: np.ndarray, enough: int) -> int:
    """How many distinct feature rows there are, counting exactly only when it matters.

    A flat photo (say, all one colour and probability) has fewer distinct pixels than
    components; a normal one has thousands in its first few hundred rows, so the full sort of
    the subsample (0.16 s for 200 k rows) is skipped.
    """
    head = len(np.unique(sample[:1000], axis=0))
    return head if head >= enough else len(np.unique(sample, axis=0))


def gmm_features(prob: np.ndarray, rgb: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """Per-pixel features (logit of probability, R, G, B).

    float32: scikit-learn's EM keeps the input's precision, and float32 makes each iteration
    about 20 % faster with the same components (features span about +-9, far from float32's
    resolution limits).
    """
    out = np.empty((prob.shape[0], 4), dtype)
    out[:, 0] = prob_logit(prob)
    out[:, 1:] = rgb
    return out
