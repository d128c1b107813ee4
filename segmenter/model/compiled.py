"""The compiled inference function of a model: windows in, probabilities of land out.

One compiled function per (model, window size, passes, output) on the Keras backend in use
(TensorFlow, JAX or PyTorch), with the test-time augmentation passes (flips, grey) stacked into
one batch and averaged back; and how many windows one call takes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from segmenter.model.introspect import input_channels

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
#: 1)``, ``d`` the window's mean absolute difference between its colour and grey maps: between
#: the differences measured on photos in their training photos' colours and on photos in new
#: colours (docs/quality.md).
AUTO_GREY_RAMP = (0.03, 0.10)
#: model -> {(h, w, passes, output, auto grey): compiled function}. The functions reach the model
#: only through a weak reference, so the cache entry, its traced graphs and the model's
#: weights go away with the model (a function closing over the model itself would keep it
#: alive for ever).
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: what :func:`compiled_infer` does to the model's raw output.
OUTPUTS = ("raw", "sigmoid", "clip")


def compiled_infer(model: Any, size: tuple[int, int], tta: bool = False,
                   output: str = "raw", upright: bool = False,
                   grey: bool | str = False) -> Callable[[np.ndarray], np.ndarray]:
    """One compiled function per (model, window size, passes, output): float32 (B, h, w, c)
    windows in, a float32 numpy (B, h, w) probability of land out, on every Keras backend.

    ``c`` is the model's input channels: 3, or 4 with the row channel (``model.row_channel``).
    TensorFlow: a ``tf.function`` whose batch size is free, so the last, shorter batch is not
    traced again. JAX: a ``jax.jit`` of the model's stateless call with its variables as
    arguments, so BatchNorm statistics set on the model (:mod:`segmenter.model.norm`) are
    seen, and batches padded to the largest seen, so nothing is compiled again per photo.
    PyTorch: the model called eagerly without gradients.

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
    import keras

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
    shape = (key[0], key[1], input_channels(model))

    def probabilities(call: Callable[[Any], Any], windows: Any) -> Any:
        return _combine_passes(call, windows, passes, output, grey == "auto")

    backend = keras.backend.backend()
    if backend == "tensorflow":
        infer = _tensorflow_infer(model_ref, shape, probabilities)
    elif backend == "jax":
        infer = _jax_infer(model_ref, probabilities)
    else:
        infer = _eager_infer(model_ref, probabilities)
    cache[key] = infer
    return infer


def _combine_passes(call: Callable[[Any], Any], windows: Any,
                    passes: tuple[tuple[bool, bool, bool], ...], output: str,
                    auto_grey: bool) -> Any:
    """The probability of land of ``windows`` from the model's ``call``, over the passes of
    :func:`inference_passes`, in ``keras.ops`` (traced once by each backend's compiler)."""
    import keras

    ops = keras.ops

    def run(batch: Any) -> Any:
        out = ops.cast(call(batch), "float32")[..., 0]
        if output == "sigmoid":
            out = ops.sigmoid(out)
        elif output == "clip":
            out = ops.clip(out, 0.0, 1.0)
        return out

    if len(passes) == 1:
        return run(windows)
    batch = ops.shape(windows)[0]
    shown = [_flip(_grey(windows) if grey_pass else windows, up_down, left_right)
             for up_down, left_right, grey_pass in passes]
    # Each flip is its own inverse: flipping a pass's output back aligns it with the input.
    out = run(ops.concatenate(shown, axis=0))
    parts = [_flip(out[i * batch : (i + 1) * batch], up_down, left_right)
             for i, (up_down, left_right, _) in enumerate(passes)]
    if not auto_grey:
        return _sum(parts) / float(len(passes))
    colour = _sum([p for p, (*_, g) in zip(parts, passes, strict=True) if not g])
    grey_map = _sum([p for p, (*_, g) in zip(parts, passes, strict=True) if g])
    colour, grey_map = colour / (len(passes) // 2), grey_map / (len(passes) // 2)
    low, high = AUTO_GREY_RAMP
    apart = ops.mean(ops.abs(colour - grey_map), axis=(1, 2), keepdims=True)
    weight = 0.5 * ops.clip((apart - low) / (high - low), 0.0, 1.0)
    return (1.0 - weight) * colour + weight * grey_map


def _tensorflow_infer(model_ref: Any, shape: tuple[int, int, int],
                      probabilities: Callable[..., Any]) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    # Plain Python control flow on constants only: AutoGraph has nothing to convert (and warns
    # that it cannot convert the closure).
    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)], autograph=False)
    def infer(windows):
        return probabilities(lambda x: model_ref()(x, training=False), windows)

    def run(windows: np.ndarray) -> np.ndarray:
        return infer(windows).numpy()

    run.compiled = infer  # the tf.function itself (its traces can be counted)
    return run


def _jax_infer(model_ref: Any, probabilities: Callable[..., Any]
               ) -> Callable[[np.ndarray], np.ndarray]:
    import jax

    def stateless(trainable: list[Any], non_trainable: list[Any], windows: Any) -> Any:
        def call(x: Any) -> Any:
            out, _ = model_ref().stateless_call(trainable, non_trainable, x, training=False)
            return out

        return probabilities(call, windows)

    jitted = jax.jit(stateless)
    padded_to = [0]

    def infer(windows: np.ndarray) -> np.ndarray:
        model = model_ref()
        count = len(windows)
        padded_to[0] = max(padded_to[0], count)
        if count < padded_to[0]:  # one batch shape per function: nothing compiled again
            windows = np.concatenate(
                [windows, np.zeros((padded_to[0] - count, *windows.shape[1:]), windows.dtype)])
        out = jitted([v.value for v in model.trainable_variables],
                     [v.value for v in model.non_trainable_variables], windows)
        return np.array(out[:count])  # writable: the stitch scales it in place

    infer.compiled = jitted
    return infer


def _eager_infer(model_ref: Any, probabilities: Callable[..., Any]
                 ) -> Callable[[np.ndarray], np.ndarray]:
    import keras

    def infer(windows: np.ndarray) -> np.ndarray:
        with no_gradients():
            out = probabilities(lambda x: model_ref()(x, training=False),
                                keras.ops.convert_to_tensor(windows))
        return np.array(keras.ops.convert_to_numpy(out))  # writable

    return infer


def no_gradients() -> Any:
    """PyTorch's ``no_grad`` (nothing to record for inference); a null context elsewhere."""
    import contextlib

    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _sum(parts: list[Any]) -> Any:
    """The sum of tensors, left to right."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


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
    import keras

    if up_down:
        batch = keras.ops.flip(batch, axis=1)
    if left_right:
        batch = keras.ops.flip(batch, axis=2)
    return batch


def _grey(batch: Any) -> Any:
    """``batch`` (B, h, w, c) with its RGB channels replaced by their luma (:data:`GREY_LUMA`);
    channels after the third (the row channel) pass unchanged."""
    import keras

    ops = keras.ops
    luma = ops.sum(batch[..., :3] * ops.convert_to_tensor(GREY_LUMA, "float32"), axis=-1,
                   keepdims=True)
    return ops.concatenate([luma, luma, luma, batch[..., 3:]], axis=-1)


def effective_batch_size(batch_size: int, window: int) -> int:
    """Windows per inference call: ``batch_size``, raised to hold :data:`MIN_BATCH_PIXELS`."""
    return max(int(batch_size), -(-MIN_BATCH_PIXELS // (window * window)))


def windows_per_call(batch_size: int, window: int, tta: bool = False,
                     upright: bool = False, grey: bool | str = False) -> int:
    """Windows cut per inference call, so that a call runs :func:`effective_batch_size` windows.

    Each window goes through the model once per pass of :func:`inference_passes` (with
    ``tta``, a flip of :data:`TTA_FLIPS`, or of :data:`UPRIGHT_TTA_FLIPS` if ``upright``),
    stacked in one batch, so a call takes that many times fewer windows: the model then runs
    the same batches with and without TTA. (Stacking the flips onto full
    batches made large batches that ran slower per window: TTA cost more than its passes.)
    """
    size = effective_batch_size(batch_size, window)
    return max(1, size // len(inference_passes(tta, upright, grey)))
