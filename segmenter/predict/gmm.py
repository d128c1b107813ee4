"""The notebook's Gaussian mixture: pixels clustered on (probability, R, G, B), each cluster
called water or land as a whole.

Why a mixture (SPEC.md, Thresholding): a fixed 0.5 threshold on the network's output "probably
wouldn't generalize well"; clustering pixels on probability and colour groups them by colour as
well, so the mask follows colour edges such as a shoreline.

The probability enters the mixture as its logit, ``log(p / (1 - p))`` of ``p`` clipped to
[:data:`PROB_EPS`, 1 - :data:`PROB_EPS`]: a trained network's probabilities sit in two flat
spikes next to 0 and 1, which on the raw scale take components of their own while the uncertain
pixels of a shoreline share one broad component. The logit spreads the uncertain range out, so
components follow the uncertain band by colour. It is monotone: each component is still called
by the median of its pixels' ``p`` (:mod:`segmenter.predict.components`).

Several mixtures (``postprocess.n_components: [4, 5, 6]``) vote on each pixel
(:func:`majority_water`): which clusters one mixture finds depends on how many it may find, and
one cluster that mixes water with land can move a photo's whole water body.

The mixture is fitted on a seeded random subsample that follows the photo's size
(:func:`subsample_size`) and evaluated for every pixel in chunks (:func:`assign_components`).
Measurements behind these choices: docs/quality.md.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from segmenter.config import PostprocessConfig
from segmenter.predict.components import ComponentNames, name_components

log = logging.getLogger(__name__)

#: pixels per chunk when assigning every pixel to a component (~40 MB of float32 scores).
CHUNK_PIXELS = 1 << 19
#: probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] before their logit (|logit| <= 9.2).
PROB_EPS = 1e-4


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
    (:func:`segmenter.predict.threshold.fit_decision`)."""
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
            tol=pp_cfg.tol,
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

    Why several mixtures: see the module's docstring; measurements in docs/quality.md.
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
    faster with the same components (features span about +-9, far from float32's resolution
    limits).
    """
    out = np.empty((prob.shape[0], 4), dtype)
    out[:, 0] = prob_logit(prob)
    out[:, 1:] = rgb
    return out
