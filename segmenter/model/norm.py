"""BatchNorm statistics: adapted to the photo at hand (``predict.adapt_norm``) or recalibrated
after weight averaging (``train.ema``).

Used by training (recalibration) and by prediction (adaptation), so it lives with the model.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

#: ``predict.adapt_norm``: the statistics of at most this many of a photo's windows per width,
#: tiles spread evenly over it (:func:`segmenter.predict.windows.adapt_windows`), adapt the
#: BatchNorm layers (one forward pass of this batch: about 100 MB per layer's activation for
#: 128-pixel windows and 16 filters). Fewer are noisier (docs/quality.md).
ADAPT_WINDOWS = 96

#: (moving mean, moving variance) of each BatchNorm layer of a model, in layer order.
NormStats = list[tuple[np.ndarray, np.ndarray]]

#: model -> {(window shape, share): tf.function} of :func:`_adapt_pass`, reaching the model only
#: through a weak reference (see :data:`segmenter.model.compiled._COMPILED`).
_ADAPT_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

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


def _adapt_pass(model: Any, shape: tuple[int, ...], share: float):
    """The training-mode pass of :func:`adapted_statistics`, which updates the BatchNorm
    layers' moving statistics in place. TensorFlow: compiled, one per model, window shape and
    share (the momentum ``1 - share`` is fixed when it is traced). JAX and PyTorch: the model
    called eagerly (without gradients), one pass per photo and width."""
    import keras

    if keras.backend.backend() != "tensorflow":
        from segmenter.model.compiled import no_gradients

        def eager(windows: np.ndarray) -> None:
            with no_gradients():
                model(windows, training=True)

        return eager
    import tensorflow as tf

    cache = _ADAPT_PASSES.setdefault(model, {})
    key = ("adapt", *(int(d) for d in shape), float(share))
    if key not in cache:
        model_ref = weakref.ref(model)

        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)],
                     autograph=False)
        def run(windows):
            model_ref()(windows, training=True)

        cache[key] = run
    return cache[key]


@contextmanager
def adapted_norm(model: Any, windows: np.ndarray, share: float) -> Iterator[None]:
    """Within the block each of ``model``'s BatchNorm layers uses statistics moved ``share`` of
    the way to those of ``windows``; its own are back on the way out.

    One forward pass in training mode over the ``windows`` (B, h, w, c): every BatchNorm layer
    normalises by the batch's own mean and variance, so a deeper layer sees the earlier ones
    already adapted, and, its momentum set to ``1 - share``, blends them into its moving
    statistics in place: ``(1 - share) * trained + share * photo``. Holds the model's lock, as
    :func:`norm_statistics` does, and reads and writes the statistics once each (a photo is
    predicted inside the block, so nothing is copied out and back in between).
    """
    layers = norm_layers(model)
    with _norm_lock(model):
        if share <= 0 or not layers or not len(windows):
            yield
            return
        windows = np.asarray(windows, np.float32)
        saved = _current(layers)
        momentum = [layer.momentum for layer in layers]
        try:
            for layer in layers:
                layer.momentum = 1.0 - share
            _adapt_pass(model, windows.shape[1:], share)(windows)
            del windows  # not held while the block runs
            for layer, value in zip(layers, momentum, strict=True):
                layer.momentum = value
            yield
        finally:
            for layer, value in zip(layers, momentum, strict=True):
                layer.momentum = value
            _assign(layers, saved)


def adapted_statistics(model: Any, windows: np.ndarray, share: float) -> NormStats:
    """The statistics :func:`adapted_norm` gives ``model`` for ``windows``, copied out, the
    model left as it was: for statistics applied later, elsewhere (a raster's tiles, with
    :func:`norm_statistics`), or kept (:func:`recalibrate_norm`)."""
    with adapted_norm(model, windows, share):
        return current_statistics(model)


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
