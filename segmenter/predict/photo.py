"""A photo's probability of land: every width's windows stitched, the scales merged.

The method is the notebook's (SPEC.md, Prediction) with its weaknesses fixed:

* the photo is padded by reflection by half a window per side, not copied into a 3H x 3W mirror;
* windows lie on a regular grid with overlap (``predict.overlap``), so every pixel is covered,
  instead of random positions that leave holes (``predict.sampling: random`` keeps those for
  comparison);
* each window's prediction is accumulated per pixel, weighted by a centre-heavy smoothstep
  window, instead of being replaced by its median and smeared over a 2w x 2w square;
* windows are predicted in batches through one compiled function per model (BatchNorm in
  inference mode) and streamed: only one batch of windows exists at a time, and the
  accumulators are two float32 maps per width;
* with ``predict.adapt_norm`` the BatchNorm layers' statistics are moved part of the way to the
  photo's own (:func:`segmenter.model.norm.adapted_norm`) while that photo is predicted,
  so the networks meet a photo in other light and colours partway.

The photo is resized by ``data.scale`` first (the resolution the models were trained at) and the
merged map is resized back, so the mask overlays the photo it came from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmenter.config import Config
from segmenter.data.images import resize_map, scaled_shape
from segmenter.errors import ConfigError, SegmenterError
from segmenter.model.compiled import compiled_infer, windows_per_call
from segmenter.model.introspect import model_input, output_transform
from segmenter.model.norm import ADAPT_WINDOWS, adapted_norm
from segmenter.predict import windows
from segmenter.predict.models import LoadedModels, select_models
from segmenter.predict.stitch import (
    UNCOVERED_VALUE,
    ScaleMerge,
    merge_weights,
    minmax,
    stitch,
    weighted_mean,
)
from segmenter.predict.threshold import water_mask

log = logging.getLogger(__name__)

#: fixed seed of the random window positions, as the notebook's ``np.random.seed(0)``.
RANDOM_SEED = 0


@dataclass
class Prediction:
    """The result of :func:`predict_land` for one photo.

    Attributes:
        land_prob: float32 (H, W) probability of land at the photo's own size.
        per_scale: width -> float32 (H, W) map of that width alone (NaN where no window of that
            width reached); filled only when asked for (``keep_scales``), to spare memory.
        info: numbers worth reporting: windows per width, coverage factor, seconds, the size
            the models saw, pixels that no window covered.
    """

    land_prob: np.ndarray
    per_scale: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def predict_scale(
    model: Any,
    image: np.ndarray,
    window: int,
    *,
    overlap: float = 0.5,
    batch_size: int = 16,
    sampling: str = "grid",
    random_count: int = 1000,
    tta: bool = False,
    output: str = "raw",
    seed: int = RANDOM_SEED,
    upright: bool = False,
    grey: bool | str = False,
    adapt: float = 0.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stitch one model's window predictions into a float32 (H, W) map of ``image``.

    The image is reflection-padded by half a window per side (symmetric mode, so even a photo
    smaller than the window can be padded), windows are taken on the padded image, and the
    weighted predictions are accumulated per pixel. Pixels that no window reached (random
    sampling only; zero weight sum) are NaN. A row-channel model's row position is appended
    before the padding and mirrored with the pixels: the padding shows mirrored photo, and
    the windows the model trained on never left their photo.

    With ``adapt`` > 0 (``predict.adapt_norm``) the model's BatchNorm statistics are moved that
    share of the way to those of the photo's tiles (:func:`windows.adapt_windows`), while the
    photo is predicted (:func:`segmenter.model.norm.adapted_norm`).

    Returns:
        The map and a dict with the window count, the coverage factor and, with ``adapt``, the
        number of windows the statistics came from.

    Raises:
        SegmenterError: the model predicted NaN or an infinite value.
    """
    height, width = image.shape[:2]
    pad_y, pad_x = windows.padding(window, height, width)
    padded = np.pad(
        model_input(image, model),
        ((pad_y, pad_y), (pad_x, pad_x), (0, 0)),
        mode="symmetric",
    )
    padded_h, padded_w = padded.shape[:2]
    if sampling == "grid":
        positions = windows.grid_windows(padded_h, padded_w, window, overlap)
    elif sampling == "random":
        positions = windows.random_windows(padded_h, padded_w, window, random_count, seed=seed)
    else:
        raise ConfigError(f"predict.sampling: unknown sampling {sampling!r}")

    sample = windows.adapt_windows(height, width, window, ADAPT_WINDOWS) if adapt > 0 else []
    infer = compiled_infer(model, (window, window), tta=tta, output=output, upright=upright,
                           grey=grey)
    adapt_on = (np.stack([padded[t : t + window, c : c + window] for t, c in sample])
                if sample else np.empty((0,)))
    with adapted_norm(model, adapt_on, adapt):
        del adapt_on  # the windows' memory is free while the photo is predicted
        total, weight_sum = stitch(infer, padded, positions, window,
                                   windows_per_call(batch_size, window, tta, upright, grey))
    del padded
    crop = (slice(pad_y, pad_y + height), slice(pad_x, pad_x + width))
    result = weighted_mean(total[crop], weight_sum[crop])
    info = {
        "windows": len(positions),
        "coverage": windows.coverage_factor(positions, window, height, width),
    }
    if sample:
        info["adapted_on"] = len(sample)
    return result, info


def predict_land(
    models: Mapping[int, Any],
    image: np.ndarray,
    cfg: Config,
    weights: Mapping[int, float] | None = None,
    keep_scales: bool | None = None,
) -> Prediction:
    """The probability of land of ``image`` at its own size, merged over every model's width.

    Args:
        models: width -> Keras model (as :meth:`segmenter.runs.Run.load_model` gives).
        image: float32 (H, W, 3) RGB in [0, 1] at the photo's own resolution.
        cfg: the run's config with any overrides; ``data.scale``, ``model.activation``,
            ``train.loss`` (how to read a linear output), ``predict.*`` are read.
        weights: width -> validation score, used when ``predict.merge`` is ``weighted`` (each
            width then counts in proportion to how well it did on held-out data).
        keep_scales: also return each width's map at the photo's size (default:
            ``predict.save_scales``).

    Raises:
        SegmenterError: no models, a requested width without a model, a bad image array, a
            model predicting NaN or inf.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise SegmenterError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    started = time.perf_counter()
    pcfg = cfg.predict
    chosen = select_models(models, cfg)
    keep_scales = pcfg.save_scales if keep_scales is None else keep_scales
    scale_weights = merge_weights(chosen, pcfg.merge, weights)

    height, width = image.shape[:2]
    small_shape = scaled_shape((height, width), cfg.data.scale)
    small = resize_map(image, small_shape) if small_shape != (height, width) else image
    small = np.ascontiguousarray(small, dtype=np.float32)

    scales = ScaleMerge(small_shape)
    scale_maps: dict[int, np.ndarray] = {}
    info: dict[str, Any] = {"scaled_size": list(small_shape), "widths": {}}
    for patch_width, model in chosen.items():
        tick = time.perf_counter()
        scale_map, scale_info = predict_scale(
            model,
            small,
            patch_width,
            overlap=pcfg.overlap,
            batch_size=pcfg.batch_size,
            sampling=pcfg.sampling,
            random_count=pcfg.random_windows.get(patch_width, 1000),
            tta=pcfg.tta,
            upright=cfg.data.is_upright,
            grey=pcfg.grey,
            output=output_transform(model, cfg),
            seed=RANDOM_SEED + patch_width,
            adapt=pcfg.adapt_norm,
        )
        # Model outputs are checked finite, so NaN marks exactly the zero weight sums.
        scales.add(scale_map, scale_weights[patch_width])
        scale_info["seconds"] = round(time.perf_counter() - tick, 3)
        scale_info["weight"] = scale_weights[patch_width]
        info["widths"][patch_width] = scale_info
        if keep_scales:
            scale_maps[patch_width] = scale_map
        del scale_map

    merged, uncovered = scales.result()
    del scales
    if pcfg.rescale == "minmax":
        merged = minmax(merged)
    n_uncovered = int(uncovered.sum())
    if n_uncovered:
        log.warning(
            "%d pixels were covered by no window (random sampling); set to %.1f",
            n_uncovered, UNCOVERED_VALUE,
        )
        merged[uncovered] = UNCOVERED_VALUE
    del uncovered, small

    land_prob = resize_map(merged, (height, width))
    np.clip(land_prob, 0.0, 1.0, out=land_prob)
    per_scale = {w: resize_map(m, (height, width)) for w, m in scale_maps.items()}
    info["coverage"] = round(sum(s["coverage"] for s in info["widths"].values()), 3)
    info["uncovered_pixels"] = n_uncovered
    info["seconds"] = round(time.perf_counter() - started, 3)
    return Prediction(land_prob=land_prob.astype(np.float32, copy=False),
                      per_scale=per_scale, info=info)


@dataclass
class PhotoResult:
    """One photo's prediction: probability of land, water mask, and how they were made."""

    land_prob: np.ndarray
    water: np.ndarray
    per_scale: dict[int, np.ndarray]
    inference: dict[str, Any]
    threshold: dict[str, Any]
    seconds: float
    gmm_seconds: float


def predict_photo(loaded: LoadedModels, image: np.ndarray, cfg: Config,
                  keep_scales: bool | None = None) -> PhotoResult:
    """Probability map (merged over widths) and water mask of one float32 RGB photo."""
    started = time.perf_counter()
    prediction = predict_land(loaded.models, image, cfg, weights=loaded.scores,
                              keep_scales=keep_scales)
    tick = time.perf_counter()
    water, threshold = water_mask(prediction.land_prob, image, cfg.postprocess)
    done = time.perf_counter()
    return PhotoResult(
        land_prob=prediction.land_prob,
        water=water,
        per_scale=prediction.per_scale,
        inference=prediction.info,
        threshold=threshold,
        seconds=done - started,
        gmm_seconds=done - tick,
    )
