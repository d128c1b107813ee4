"""Weighted multi-scale window stitching: one probability-of-land map per photo.

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
  photo's own (:func:`adapted_statistics`) while that photo is predicted, so the networks meet
  a photo in other light and colours partway.

The photo is resized by ``data.scale`` first (the resolution the models were trained at) and the
merged map is resized back, so the mask overlays the photo it came from.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmenter.config import Config
from segmenter.data import patches
from segmenter.data.images import scaled_shape
from segmenter.errors import ConfigError, SegmenterError

log = logging.getLogger(__name__)

#: smoothstep edges of the centre weight (SPEC.md): full weight inside r = 0.3, none beyond 1.3.
WEIGHT_EDGE0 = 1.3
WEIGHT_EDGE1 = 0.3
#: every pixel of a window keeps at least this weight, so corners of the padded image and pixels
#: seen only by window borders still get a value instead of 0 / 0.
MIN_WEIGHT = 1e-3
#: value of a pixel that no window of any scale covered (possible only with random sampling).
UNCOVERED_VALUE = 0.5
#: smallest number of pixels per inference call. A call carries a fixed overhead and small
#: batches of small windows run well below the CPU's throughput (16 windows of 32 px: half of
#: it), so ``predict.batch_size`` is raised for small widths until a batch holds this many
#: pixels (~3 MB of input, ~17 MB per activation of a 16-filter layer).
MIN_BATCH_PIXELS = 256 * 1024
#: flips of test-time augmentation, as (up-down, left-right): as is, left-right, up-down and
#: both; upright photos (``data.upright``) only the first two, as their models were trained.
TTA_FLIPS = ((False, False), (False, True), (True, False), (True, True))
UPRIGHT_TTA_FLIPS = TTA_FLIPS[:2]
#: luma weights of the grey passes (``predict.grey``): ITU-R BT.601's Y, the grey that
#: ``train.augment.greyscale`` turns training patches into.
GREY_LUMA = (0.299, 0.587, 0.114)
#: ``predict.grey: auto``: a window's grey passes weigh ``0.5 * clip((d - lo) / (hi - lo), 0,
#: 1)``, ``d`` the window's mean absolute difference between its colour and grey maps. Whole
#: photos measured: 0.015 on the real aerial photo and 0.005-0.11 (median 0.027) on the OASIs
#: test photos, which share their training photos' colours; 0.05-0.29 on the generated scenes
#: in colours no training scene has.
AUTO_GREY_RAMP = (0.03, 0.10)
#: fixed seed of the random window positions, as the notebook's ``np.random.seed(0)``.
RANDOM_SEED = 0
#: ``predict.adapt_norm``: the statistics of at most this many of a photo's windows per width,
#: spread evenly over its grid, adapt the BatchNorm layers (one forward pass of this batch:
#: about 100 MB per layer's activation for 128-pixel windows and 16 filters). Fewer are noisier:
#: with 32 windows drawn at random, one draw in six flipped a colour cluster of the real photo in
#: the GMM step (water IoU 0.962 -> 0.920); with 96, none of six did.
ADAPT_WINDOWS = 96

#: (moving mean, moving variance) of each BatchNorm layer of a model, in layer order.
NormStats = list[tuple[np.ndarray, np.ndarray]]


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


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """``t^2 (3 - 2t)`` with ``t = clip((x - edge0) / (edge1 - edge0), 0, 1)`` (as in GLSL)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def window_weight(window: int) -> np.ndarray:
    """The centre-heavy weight of a ``window x window`` prediction, float32 in (0, 1].

    ``r`` is the Euclidean distance from the window centre on a [-1, 1] grid; the weight is
    ``smoothstep(1.3, 0.3, r)`` clamped below at :data:`MIN_WEIGHT`, so borders count little
    but never nothing.
    """
    axis = np.linspace(-1.0, 1.0, window, dtype=np.float64)
    radius = np.hypot(axis[:, None], axis[None, :])
    weight = smoothstep(WEIGHT_EDGE0, WEIGHT_EDGE1, radius)
    return np.maximum(weight, MIN_WEIGHT).astype(np.float32)


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) float32 array: area averaging down, bilinear up.

    Shrinking goes through :func:`segmenter.data.images.resize_land` (area averaging, one
    float channel at a time), exactly what the data loader applies to training photos and
    labels, so the models see photos prepared the same way at prediction. Enlarging (the
    merged map back to the photo's size) is bilinear, a smooth map without blocks; Pillow
    works without TensorFlow's allocator, which keeps the peak memory of a 25-megapixel photo
    low.
    """
    from PIL import Image

    from segmenter.data.images import resize_land

    height, width = values.shape[:2]
    shape = (int(shape[0]), int(shape[1]))
    if (height, width) == shape:
        return values.astype(np.float32, copy=False)
    shrink = shape[0] <= height and shape[1] <= width

    def one(channel: np.ndarray) -> np.ndarray:
        if shrink:
            return resize_land(channel, shape)
        pil = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
        return np.asarray(pil.resize((shape[1], shape[0]), Image.Resampling.BILINEAR),
                          dtype=np.float32)

    if values.ndim == 2:
        return np.array(one(values))  # writable (Pillow's buffer is read-only)
    out = np.empty((shape[0], shape[1], values.shape[2]), np.float32)
    for channel in range(values.shape[2]):
        out[..., channel] = one(values[..., channel])
    return out


# --------------------------------------------------------------------------------------------
# The compiled inference function


#: model -> {(h, w, passes, output, auto grey): tf.function}. The functions reach the model
#: only through a weak reference, so the cache entry, its traced graphs and the model's
#: weights go away with the model (a function closing over the model itself would keep it
#: alive for ever).
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: what :func:`compiled_infer` does to the model's raw output.
OUTPUTS = ("raw", "sigmoid", "clip")


def input_channels(model: Any) -> int:
    """Channels a built or loaded model takes: 3 (RGB), or 4 with the row channel.

    A model without symbolic inputs (a subclassed one, as in tests) is taken as RGB.
    """
    try:
        return int(model.inputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError):
        return 3


def model_input(image: np.ndarray, model: Any) -> np.ndarray:
    """``image`` as ``model`` takes it: float32 RGB, with the row position of each pixel
    (:func:`segmenter.data.pipeline.row_position`) appended for a row-channel model."""
    image = image.astype(np.float32, copy=False)
    if input_channels(model) == 3:
        return image
    from segmenter.data.pipeline import row_position

    return np.concatenate([image, row_position(*image.shape[:2])], axis=-1)


def head_activation(model: Any) -> str | None:
    """Name of the activation of the model's last layer (``sigmoid``, ``linear``), if any."""
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return getattr(activation, "__name__", None)


def output_transform(model: Any, cfg: Config) -> str:
    """How to read ``model``'s output as a probability of land (one of :data:`OUTPUTS`).

    ``raw``: the model ends in a sigmoid (every model training saves now). A model with a
    linear head (an older run's, or a checkpoint) outputs logits when its loss works on logits
    (``bce``, ``dice``, ``bce_dice``): ``sigmoid``; trained with ``mse`` it outputs raw values
    as the notebook's did: ``clip`` to [0, 1].
    """
    from segmenter.losses import LOGIT_LOSSES

    head = head_activation(model) or cfg.model.activation
    if head != "linear":
        return "raw"
    return "sigmoid" if cfg.train.loss in LOGIT_LOSSES else "clip"


def compiled_infer(model: Any, size: tuple[int, int], tta: bool = False,
                   output: str = "raw", upright: bool = False, grey: bool | str = False):
    """One ``tf.function`` per (model, window size, passes, output): (B, h, w, c) -> (B, h, w).

    ``c`` is the model's input channels: 3, or 4 with the row channel (``model.row_channel``).

    The spatial size is part of the signature (Keras' bilinear upsampling needs it static) and
    the batch size is not, so the last, shorter batch does not trigger a second trace.

    The model is called with ``training=False`` (BatchNorm uses its moving statistics, dropout
    is off). ``output`` turns the raw output into a probability (:func:`output_transform`):
    ``sigmoid`` of logits, ``clip`` of a linear MSE model's values to [0, 1], or ``raw`` as
    is. With ``tta`` the batch is run once with its flipped copies stacked along the batch
    axis and the un-flipped probabilities are averaged: left-right, up-down and both, or only
    left-right for ``upright`` photos, whose models never saw anything upside down. With
    ``grey`` half the passes see the windows in grey (:func:`inference_passes`); ``"auto"``
    weighs the grey half per window by how far it disagrees with the colour half
    (:data:`AUTO_GREY_RAMP`): nothing where the two agree, half where they differ most.
    """
    import tensorflow as tf

    if output not in OUTPUTS:
        raise ValueError(f"compiled_infer: output must be one of {OUTPUTS}, got {output!r}")
    cache = _COMPILED.setdefault(model, {})
    if grey not in (False, True, "auto"):
        raise ValueError(f"compiled_infer: grey must be false, true or 'auto', got {grey!r}")
    passes = inference_passes(tta, upright, grey)
    key = (int(size[0]), int(size[1]), passes, output, grey == "auto")
    if key in cache:
        return cache[key]
    model_ref = weakref.ref(model)
    channels = input_channels(model)

    def run(windows):
        out = tf.cast(model_ref()(windows, training=False), tf.float32)[..., 0]
        if output == "sigmoid":
            out = tf.sigmoid(out)
        elif output == "clip":
            out = tf.clip_by_value(out, 0.0, 1.0)
        return out

    # Plain Python control flow on constants only: AutoGraph has nothing to convert (and warns
    # that it cannot convert the closure).
    @tf.function(
        input_signature=[tf.TensorSpec([None, key[0], key[1], channels], tf.float32)],
        autograph=False,
    )
    def infer(windows):
        if len(passes) == 1:
            return run(windows)
        batch = tf.shape(windows)[0]
        shown = [_flip(_grey(windows) if grey_pass else windows, up_down, left_right)
                 for up_down, left_right, grey_pass in passes]
        # Each flip is its own inverse: flipping a pass's output back aligns it with the input.
        out = run(tf.concat(shown, axis=0))
        parts = [_flip(out[i * batch : (i + 1) * batch], up_down, left_right)
                 for i, (up_down, left_right, _) in enumerate(passes)]
        if grey != "auto":
            return tf.add_n(parts) / float(len(passes))
        colour = tf.add_n([p for p, (*_, g) in zip(parts, passes, strict=True) if not g])
        grey_map = tf.add_n([p for p, (*_, g) in zip(parts, passes, strict=True) if g])
        colour, grey_map = colour / (len(passes) // 2), grey_map / (len(passes) // 2)
        low, high = AUTO_GREY_RAMP
        apart = tf.reduce_mean(tf.abs(colour - grey_map), axis=[1, 2], keepdims=True)
        weight = 0.5 * tf.clip_by_value((apart - low) / (high - low), 0.0, 1.0)
        return (1.0 - weight) * colour + weight * grey_map

    cache[key] = infer
    return infer


# --------------------------------------------------------------------------------------------
# BatchNorm statistics of the photo at hand (predict.adapt_norm)

_NORM_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NORM_LOCKS_LOCK = threading.Lock()


def _norm_lock(model: Any) -> threading.RLock:
    """One lock per model: its statistics are swapped in place, and threads may share it."""
    with _NORM_LOCKS_LOCK:
        lock = _NORM_LOCKS.get(model)
        if lock is None:
            lock = _NORM_LOCKS[model] = threading.RLock()
        return lock


def norm_layers(model: Any) -> list[Any]:
    """The model's BatchNormalization layers, in order (none for a model without them)."""
    import keras

    return [layer for layer in getattr(model, "layers", ())
            if isinstance(layer, keras.layers.BatchNormalization)]


def current_statistics(model: Any) -> NormStats:
    """A copy of the model's BatchNorm statistics (for :func:`norm_statistics`)."""
    return _current(norm_layers(model))


def _current(layers: list[Any]) -> NormStats:
    return [(np.array(layer.moving_mean), np.array(layer.moving_variance)) for layer in layers]


def _assign(layers: list[Any], stats: NormStats) -> None:
    for layer, (mean, variance) in zip(layers, stats, strict=True):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)


def spread(positions: list[Any], count: int) -> list[Any]:
    """At most ``count`` of ``positions``, evenly spread through the list (all if fewer)."""
    if len(positions) <= count:
        return list(positions)
    step = len(positions) / count
    return [positions[int(i * step)] for i in range(count)]


def _adapt_pass(model: Any, shape: tuple[int, ...], share: float):
    """The compiled training-mode pass of :func:`adapted_statistics` (one per model, window
    shape and share: the momentum ``1 - share`` is fixed when it is traced)."""
    import tensorflow as tf

    cache = _COMPILED.setdefault(model, {})
    key = ("adapt", *(int(d) for d in shape), float(share))
    if key not in cache:
        model_ref = weakref.ref(model)

        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)],
                     autograph=False)
        def run(windows):
            model_ref()(windows, training=True)

        cache[key] = run
    return cache[key]


def adapted_statistics(model: Any, windows: np.ndarray, share: float) -> NormStats:
    """Each BatchNorm layer's statistics moved ``share`` of the way to those of ``windows``.

    One forward pass in training mode over the ``windows`` (B, h, w, c): every BatchNorm layer
    normalises by the batch's own mean and variance, so a deeper layer sees the earlier ones
    already adapted, and, its momentum set to ``1 - share``, blends them into its moving
    statistics: ``(1 - share) * trained + share * photo``. The model is left as it was (its
    statistics and momentum are put back); apply the result with :func:`norm_statistics`.
    """
    layers = norm_layers(model)
    with _norm_lock(model):
        saved = _current(layers)
        if share <= 0 or not layers or not len(windows):
            return saved
        windows = np.asarray(windows, np.float32)
        momentum = [layer.momentum for layer in layers]
        try:
            for layer in layers:
                layer.momentum = 1.0 - share
            _adapt_pass(model, windows.shape[1:], share)(windows)
            return _current(layers)
        finally:
            for layer, value in zip(layers, momentum, strict=True):
                layer.momentum = value
            _assign(layers, saved)


def recalibrate_norm(model: Any, windows: np.ndarray) -> None:
    """Set each BatchNorm layer's moving statistics to those of ``windows`` (one pass).

    An average of weights (``train.ema``) never ran forward during training, so the moving
    statistics that training kept belong to the raw weights; the average's own are measured
    here, layer after layer, on ``windows`` (B, h, w, c), as for stochastic weight averaging.
    """
    layers = norm_layers(model)
    if layers and len(windows):
        with _norm_lock(model):
            _assign(layers, adapted_statistics(model, windows, 1.0))


@contextmanager
def norm_statistics(model: Any, stats: NormStats | None) -> Iterator[None]:
    """Within the block ``model``'s BatchNorm layers use ``stats`` (None: their own).

    Holds the model's lock, so another thread sharing the model waits rather than predicting
    with this photo's statistics; the model's own statistics are back on the way out.
    """
    if stats is None:
        yield
        return
    layers = norm_layers(model)
    with _norm_lock(model):
        saved = _current(layers)
        _assign(layers, stats)
        try:
            yield
        finally:
            _assign(layers, saved)


# --------------------------------------------------------------------------------------------
# One scale


def _tta_flips(upright: bool) -> tuple[tuple[bool, bool], ...]:
    return UPRIGHT_TTA_FLIPS if upright else TTA_FLIPS


def inference_passes(tta: bool = False, upright: bool = False,
                     grey: bool | str = False) -> tuple[tuple[bool, bool, bool], ...]:
    """The passes each window goes through, as (up-down, left-right, grey).

    ``tta``: the flips of :data:`TTA_FLIPS` (:data:`UPRIGHT_TTA_FLIPS` if ``upright``), else
    the window as is. ``grey`` (``predict.grey`` as configured; ``true`` and ``"auto"`` run
    the same passes): every other pass shows the window in grey, so colour and grey
    count half each at no extra cost under TTA (as is and up-down in colour, left-right and
    both in grey; upright: as is in colour, mirrored in grey); without TTA a second, grey pass.
    :func:`compiled_infer` averages the passes, or with ``predict.grey: auto`` weighs the grey
    ones per window.
    """
    flips = _tta_flips(upright) if tta else ((False, False),)
    if not grey:
        return tuple((up_down, left_right, False) for up_down, left_right in flips)
    if len(flips) == 1:
        return ((False, False, False), (False, False, True))
    return tuple((up_down, left_right, i % 2 == 1) for i, (up_down, left_right) in enumerate(flips))


def _flip(batch: Any, up_down: bool, left_right: bool) -> Any:
    """``batch`` (B, h, w[, c]) flipped along its rows and/or columns."""
    return batch[:, :: -1 if up_down else 1, :: -1 if left_right else 1]


def _grey(batch: Any) -> Any:
    """``batch`` (B, h, w, c) with its RGB channels replaced by their luma (:data:`GREY_LUMA`);
    channels after the third (the row channel) pass unchanged."""
    import tensorflow as tf

    luma = tf.reduce_sum(batch[..., :3] * tf.constant(GREY_LUMA, tf.float32), axis=-1,
                         keepdims=True)
    return tf.concat([luma, luma, luma, batch[..., 3:]], axis=-1)


def effective_batch_size(batch_size: int, window: int) -> int:
    """Windows per inference call: ``batch_size``, raised to hold :data:`MIN_BATCH_PIXELS`."""
    return max(int(batch_size), -(-MIN_BATCH_PIXELS // (window * window)))


def windows_per_call(batch_size: int, window: int, tta: bool = False,
                     upright: bool = False, grey: bool | str = False) -> int:
    """Windows cut per inference call, so that a call runs :func:`effective_batch_size` windows.

    Each window goes through the model once per pass of :func:`inference_passes` (with
    ``tta``, a flip of :data:`TTA_FLIPS`, or of :data:`UPRIGHT_TTA_FLIPS` if ``upright``),
    stacked in one batch, so a call takes that many times fewer windows: the model then runs
    the same batches with and without TTA. (Stacking the flips onto full batches made
    64-window batches of 256 px, 268 MB per activation of a 16-filter layer, which ran about
    twice as slow per window as 16-window ones on a 2-core CPU: TTA cost 8 passes' time
    instead of 4.)
    """
    size = effective_batch_size(batch_size, window)
    return max(1, size // len(inference_passes(tta, upright, grey)))


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
    share of the way to those of up to :data:`ADAPT_WINDOWS` of these windows, spread evenly
    over them, while the photo is predicted (:func:`adapted_statistics`).

    Returns:
        The map and a dict with the window count, the coverage factor and, with ``adapt``, the
        number of windows the statistics came from.

    Raises:
        SegmenterError: the model predicted NaN or an infinite value.
    """
    height, width = image.shape[:2]
    pad = patches.pad_width(window)
    # Photos smaller than a window: pad further (still at most one window per side) so one
    # window fits; the result is cropped back to the photo.
    pad_y = max(pad, int(math.ceil((window - height) / 2)))
    pad_x = max(pad, int(math.ceil((window - width) / 2)))
    padded = np.pad(
        model_input(image, model),
        ((pad_y, pad_y), (pad_x, pad_x), (0, 0)),
        mode="symmetric",
    )
    padded_h, padded_w = padded.shape[:2]
    if sampling == "grid":
        positions = patches.grid_windows(padded_h, padded_w, window, overlap)
    elif sampling == "random":
        positions = patches.random_windows(padded_h, padded_w, window, random_count, seed=seed)
    else:
        raise ConfigError(f"predict.sampling: unknown sampling {sampling!r}")

    stats = None
    if adapt > 0:
        sample = spread(positions, ADAPT_WINDOWS)
        stats = adapted_statistics(
            model, np.stack([padded[t : t + window, c : c + window] for t, c in sample]), adapt)
    infer = compiled_infer(model, (window, window), tta=tta, output=output, upright=upright,
                           grey=grey)
    batch_size = windows_per_call(batch_size, window, tta, upright, grey)
    weight = window_weight(window)
    total = np.zeros((padded_h, padded_w), np.float32)
    weight_sum = np.zeros((padded_h, padded_w), np.float32)
    # Two batch buffers: while TensorFlow predicts one batch (it releases the GIL), this thread
    # accumulates the previous batch and cuts the next one, so the model never waits on numpy.
    size = min(batch_size, len(positions))
    buffers = [np.empty((size, window, window, padded.shape[2]), np.float32) for _ in range(2)]

    def accumulate(predicted: np.ndarray, chunk: list[tuple[int, int]]) -> None:
        if not np.isfinite(predicted).all():
            raise SegmenterError(
                f"the model of width {window} predicted non-finite values (NaN or inf); "
                f"its weights are probably corrupt (retrain that width)"
            )
        predicted *= weight
        for i, (top, left) in enumerate(chunk):
            total[top : top + window, left : left + window] += predicted[i]
            weight_sum[top : top + window, left : left + window] += weight

    with norm_statistics(model, stats), ThreadPoolExecutor(max_workers=1) as runner:
        pending = None
        for number, chunk in enumerate(patches.batched(positions, batch_size)):
            batch = buffers[number % 2][: len(chunk)]
            for i, (top, left) in enumerate(chunk):
                batch[i] = padded[top : top + window, left : left + window]
            running = runner.submit(lambda b=batch: infer(b).numpy())
            if pending is not None:
                accumulate(pending[0].result(), pending[1])
            pending = (running, chunk)
        if pending is not None:
            accumulate(pending[0].result(), pending[1])
    del padded
    crop = (slice(pad_y, pad_y + height), slice(pad_x, pad_x + width))
    total, weight_sum = total[crop], weight_sum[crop]
    covered = weight_sum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(covered, total / weight_sum, np.float32(np.nan))
    info = {
        "windows": len(positions),
        "coverage": patches.coverage_factor(positions, window, height, width),
    }
    if stats is not None:
        info["adapted_on"] = len(sample)
    return result.astype(np.float32, copy=False), info


# --------------------------------------------------------------------------------------------
# All scales


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
    scale_weights = _merge_weights(chosen, pcfg.merge, weights)

    height, width = image.shape[:2]
    small_shape = scaled_shape((height, width), cfg.data.scale)
    small = resize_map(image, small_shape) if small_shape != (height, width) else image
    small = np.ascontiguousarray(small, dtype=np.float32)

    merged = np.zeros(small_shape, np.float32)
    merged_weight = np.zeros(small_shape, np.float32)
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
        covered = ~np.isnan(scale_map)
        merged += np.where(covered, scale_map * scale_weights[patch_width], 0.0)
        merged_weight += covered * np.float32(scale_weights[patch_width])
        scale_info["seconds"] = round(time.perf_counter() - tick, 3)
        scale_info["weight"] = scale_weights[patch_width]
        info["widths"][patch_width] = scale_info
        if keep_scales:
            scale_maps[patch_width] = scale_map
        del scale_map, covered

    uncovered = merged_weight <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        merged = np.where(uncovered, np.float32(np.nan), merged / merged_weight)
    if pcfg.rescale == "minmax":
        merged = _minmax(merged)
    n_uncovered = int(uncovered.sum())
    if n_uncovered:
        log.warning(
            "%d pixels were covered by no window (random sampling); set to %.1f",
            n_uncovered, UNCOVERED_VALUE,
        )
        merged[uncovered] = UNCOVERED_VALUE
    del merged_weight, uncovered, small

    land_prob = resize_map(merged, (height, width))
    np.clip(land_prob, 0.0, 1.0, out=land_prob)
    per_scale = {w: resize_map(m, (height, width)) for w, m in scale_maps.items()}
    info["coverage"] = round(sum(s["coverage"] for s in info["widths"].values()), 3)
    info["uncovered_pixels"] = n_uncovered
    info["seconds"] = round(time.perf_counter() - started, 3)
    return Prediction(land_prob=land_prob.astype(np.float32, copy=False),
                      per_scale=per_scale, info=info)


def _merge_weights(
    models: Mapping[int, Any], merge: str, weights: Mapping[int, float] | None
) -> dict[int, float]:
    """Per-width weight of the scale merge: 1 each for ``mean``, the validation score else."""
    if merge == "mean":
        return {w: 1.0 for w in models}
    if weights is None:
        raise ConfigError("predict.merge: 'weighted' needs each width's validation score")
    out: dict[int, float] = {}
    for patch_width in models:
        score = weights.get(patch_width)
        if score is None or not math.isfinite(score) or score <= 0:
            log.warning(
                "width %d has no usable validation score (%r); it gets the mean of the others",
                patch_width, score,
            )
            continue
        out[patch_width] = float(score)
    fallback = float(np.mean(list(out.values()))) if out else 1.0
    return {w: out.get(w, fallback) for w in models}


def _minmax(values: np.ndarray) -> np.ndarray:
    """Stretch finite values to [0, 1] (the notebook's rescale); a flat map becomes 0.5."""
    finite = np.isfinite(values)
    if not finite.any():
        return values
    low, high = float(values[finite].min()), float(values[finite].max())
    if high - low < 1e-12:
        return np.where(finite, np.float32(0.5), values)
    return ((values - low) / (high - low)).astype(np.float32)
