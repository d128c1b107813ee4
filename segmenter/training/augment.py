"""The random draws of one training step, and the augmentation applied to its patches.

Training patches are made in two halves, written once for every Keras backend:

- :func:`draw_step`, on the host with numpy: every random choice of a step (which photo,
  where, flips and quarter turns, zoom, tilt, colour, light, blur, noise), a few numbers per
  patch, from a generator keyed by ``(seed, width, step)``. A resumed run therefore draws what
  an uninterrupted one would, and every backend draws the same.
- :func:`photometric` (and the cut in :mod:`segmenter.training.pipeline`), on the device in
  ``keras.ops``: the per-pixel work, which is what costs.

Per-pixel noise is a window of a fixed, seeded noise field (:func:`noise_field`) placed at a
drawn offset, so no per-pixel random numbers cross from the host either.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from segmenter.config import AugmentConfig

# RGB <-> YIQ (NTSC): Y is brightness, I and Q the two chroma axes. A hue change is a rotation
# in the (I, Q) plane and a saturation change a scaling of it, so both become one 3x3 matrix.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)

#: side of the noise field that per-pixel noise windows are cut from (3 MB of float32).
NOISE_SIDE = 512


class StepDraw(NamedTuple):
    """Every random choice of one training step; arrays of one row per patch.

    A tuple of numpy arrays of fixed dtypes and shapes (for a batch size and augmentation), so
    it crosses into a ``tf.data`` map, a ``jax.jit`` or a torch call alike.
    """

    start: np.ndarray  # index of the patch's top-left pixel in the flat source (no zoom/tilt)
    stride: np.ndarray  # its photo's width: the flat distance of one row
    transpose: np.ndarray  # bool: the three flags that make the flips and quarter turns
    flip_lr: np.ndarray
    flip_ud: np.ndarray
    offset: np.ndarray  # index of the photo's first pixel (zoom/tilt)
    height: np.ndarray  # float32: the photo's size (zoom/tilt)
    wide: np.ndarray
    centre_y: np.ndarray  # float32: the patch footprint's centre in the photo (zoom/tilt)
    centre_x: np.ndarray
    scale: np.ndarray  # photo pixels per patch pixel (zoom)
    cos: np.ndarray  # the turn (tilt)
    sin: np.ndarray
    centre_row: np.ndarray  # the centre's row in the rolled camera's frame (tilt, row channel)
    colour: np.ndarray  # float32 (B, 3, 3): rgb' = rgb @ colour
    gamma: np.ndarray  # float32: exponent
    factor: np.ndarray  # contrast factor
    delta: np.ndarray  # brightness shift
    kernel: np.ndarray  # float32 (B, k): separable Gaussian blur taps, a delta without blur
    noise_std: np.ndarray
    noise_y: np.ndarray  # where the patch's noise window starts in the noise field
    noise_x: np.ndarray


def step_generator(seed: int, width: int, step: int) -> np.random.Generator:
    """The random generator of one step: the same ``(seed, width, step)``, the same draws."""
    return np.random.default_rng([seed % 2**63, width, step])


def blur_taps(augment: AugmentConfig) -> int:
    """Taps of the blur kernel: ``2 * ceil(2 * augment.blur) + 1``, 1 without blur."""
    return 2 * math.ceil(2.0 * augment.blur) + 1 if augment.blur > 0 else 1


def draw_step(rng: np.random.Generator, batch: int, width: int, augment: AugmentConfig,
              offsets: np.ndarray, heights: np.ndarray, widths: np.ndarray,
              upright: bool = False, index_type: type = np.int32) -> StepDraw:
    """Draw one step's patches: a random photo each, a random place in it, and its augmentation.

    Without zoom or tilt a patch is a square of ``width`` pixels at a uniform corner. With
    ``augment.scale`` the footprint is zoomed by ``s``, drawn log-uniform in ``[1/(1+zoom),
    1+zoom]`` (``s > 1`` shows more of the scene at a coarser ground resolution, a higher
    flight); with ``augment.tilt`` it is turned by an angle uniform in ``[-tilt, tilt]``
    degrees about its centre, as a camera rolled about its axis would see the scene. ``s`` is
    capped so the turned footprint fits its photo.

    Geometry: a quarter turn by k is k=1 transpose + up-down, k=2 left-right + up-down, k=3
    transpose + left-right; random flips are XOR-ed on top, which yields all 8 symmetries of
    the square when both are on. ``upright`` photos (``data.upright``) keep their up: only the
    left-right flip is drawn.

    Colour: channel gains, then hue and saturation (greyscale: saturation 0) as one 3x3
    matrix in YIQ space. Light: gamma, contrast and brightness. Then blur and noise.
    Every draw is made whatever the keys, so turning one key on does not change the others'.
    """
    count = len(offsets)
    index = rng.integers(0, count, size=batch)
    unit = rng.random((2, batch))
    quarter = rng.integers(0, 4, size=batch)
    coins = rng.random((2, batch)) < 0.5
    log_zoom = np.log1p(augment.scale)
    zoom = np.exp(rng.uniform(-log_zoom, log_zoom, size=batch))
    angle = np.radians(augment.tilt) * rng.uniform(-1.0, 1.0, size=batch)
    gains = rng.uniform(1.0 - augment.gain, 1.0 + augment.gain, size=(batch, 3))
    hue = np.radians(augment.hue) * rng.uniform(-1.0, 1.0, size=batch)
    saturation = rng.uniform(1.0 - augment.saturation, 1.0 + augment.saturation, size=batch)
    grey = rng.random(batch) < augment.greyscale
    log_gamma = rng.uniform(-np.log1p(augment.gamma), np.log1p(augment.gamma), size=batch)
    factor = rng.uniform(1.0 - augment.contrast, 1.0 + augment.contrast, size=batch)
    delta = rng.uniform(-augment.brightness, augment.brightness, size=batch)
    sigma = rng.uniform(0.0, augment.blur, size=batch)
    noise_std = rng.uniform(0.0, augment.noise, size=batch)
    noise_at = rng.integers(0, NOISE_SIDE - width + 1, size=(2, batch)) if width <= NOISE_SIDE \
        else np.zeros((2, batch), np.int64)

    transpose = np.zeros(batch, bool)
    flip_lr = np.zeros(batch, bool)
    flip_ud = np.zeros(batch, bool)
    if augment.rotate90 and not upright:
        transpose = (quarter == 1) | (quarter == 3)
        flip_lr = (quarter == 2) | (quarter == 3)
        flip_ud = (quarter == 1) | (quarter == 2)
    if augment.flip:
        flip_lr = flip_lr ^ coins[0]
        if not upright:
            flip_ud = flip_ud ^ coins[1]

    photo_h, photo_w = heights[index].astype(np.float64), widths[index].astype(np.float64)
    # Without zoom or tilt: a uniform corner among the room the photo leaves.
    room_y, room_x = heights[index] - width + 1, widths[index] - width + 1
    top = np.minimum((unit[0] * room_y).astype(np.int64), room_y - 1)
    left = np.minimum((unit[1] * room_x).astype(np.int64), room_x - 1)
    start = offsets[index] + top * widths[index] + left
    # With them: the footprint's centre, its scale and its turn.
    scale = zoom if augment.scale > 0 else np.ones(batch)
    if augment.tilt <= 0:
        angle = np.zeros(batch)
    cos, sin = np.cos(angle), np.sin(angle)
    reach = np.abs(cos) + np.abs(sin)  # side of the box around a turned unit square
    scale = np.minimum(scale, np.minimum(photo_h, photo_w) / (width * reach))
    extent = scale * width * reach
    centre_y = extent / 2 + unit[0] * (photo_h - extent)
    centre_x = extent / 2 + unit[1] * (photo_w - extent)
    # The patch centre's row in the frame of a camera rolled about the photo's centre.
    centre_row = photo_h / 2 + cos * (centre_y - photo_h / 2) + sin * (centre_x - photo_w / 2)

    if not (augment.gain > 0 or augment.hue > 0 or augment.saturation > 0
            or augment.greyscale > 0):
        gains, hue, saturation = np.ones((batch, 3)), np.zeros(batch), np.ones(batch)
    colour = colour_matrices(gains, hue, np.where(grey, 0.0, saturation))
    taps = blur_taps(augment)
    radius = taps // 2
    span = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (span[None, :] / np.maximum(sigma[:, None], 1e-3)) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)  # sigma 0 -> a delta
    if augment.contrast <= 0:
        factor = np.ones(batch)

    def ints(values):
        return np.asarray(values, dtype=index_type)

    def floats(values):
        return np.asarray(values, dtype=np.float32)

    return StepDraw(
        start=ints(start), stride=ints(widths[index]), transpose=transpose, flip_lr=flip_lr,
        flip_ud=flip_ud, offset=ints(offsets[index]), height=floats(photo_h),
        wide=floats(photo_w), centre_y=floats(centre_y), centre_x=floats(centre_x),
        scale=floats(scale), cos=floats(cos), sin=floats(sin), centre_row=floats(centre_row),
        colour=floats(colour), gamma=floats(np.exp(log_gamma)), factor=floats(factor),
        delta=floats(delta), kernel=floats(kernel), noise_std=floats(noise_std),
        noise_y=ints(noise_at[0]), noise_x=ints(noise_at[1]),
    )


def colour_matrices(gains: np.ndarray, hue: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """Per-patch 3x3 colour matrices ``(B, 3, 3)``: channel gains, then hue and saturation.

    ``rgb' = rgb @ M``; hue in radians. Identity for gains 1, hue 0 and saturation 1.
    """
    cos, sin = np.cos(hue) * saturation, np.sin(hue) * saturation
    one, zero = np.ones_like(cos), np.zeros_like(cos)
    # Row-vector convention: chroma (i, q) -> (i cos - q sin, i sin + q cos), scaled by sat.
    chroma = np.stack(
        [np.stack([one, zero, zero], -1), np.stack([zero, cos, sin], -1),
         np.stack([zero, -sin, cos], -1)],
        axis=1,
    )
    gain = gains[:, :, None] * np.eye(3)[None]
    return gain @ _RGB_TO_YIQ.T[None] @ chroma @ _YIQ_TO_RGB.T[None]


def noise_field(seed: int, width: int) -> np.ndarray:
    """The fixed standard-normal field ``(side * side, 3)`` that noise windows are cut from."""
    side = max(NOISE_SIDE, width)
    rng = np.random.default_rng([seed % 2**63, width, 104729])
    return rng.standard_normal((side * side, 3)).astype(np.float32)


def photometric(image, draw: StepDraw, augment: AugmentConfig, noise, down, across):
    """Random changes of colour and light per patch, in ``keras.ops`` on the patches' device.

    In order: the colour matrix (channel gains, hue, saturation, greyscale); gamma; contrast
    and brightness as one multiply-add; Gaussian blur; Gaussian noise; a clip to ``[0, 1]``.
    Each step is skipped when its key is 0, so the default (brightness and contrast only)
    costs one multiply-add. ``noise`` is :func:`noise_field` on the device; ``down`` and
    ``across`` the patch's output rows and columns (``(B, w, w)`` integers).
    """
    from keras import ops

    colour = augment.gain > 0 or augment.hue > 0 or augment.saturation > 0 or augment.greyscale > 0
    if not (colour or augment.gamma > 0 or augment.contrast > 0 or augment.brightness > 0
            or augment.blur > 0 or augment.noise > 0):
        return image

    def per_patch(values):
        return ops.reshape(values, (-1, 1, 1, 1))

    if colour:
        image = ops.clip(ops.einsum("bhwc,bcd->bhwd", image, draw.colour), 0.0, 1.0)
    if augment.gamma > 0:
        image = ops.power(ops.maximum(image, 1e-6), per_patch(draw.gamma))
    if augment.contrast > 0:
        mean = ops.mean(image, axis=(1, 2), keepdims=True)
        factor = per_patch(draw.factor)
        image = image * factor + (mean * (1.0 - factor) + per_patch(draw.delta))
    elif augment.brightness > 0:
        image = image + per_patch(draw.delta)
    if augment.blur > 0:
        image = blur(image, draw.kernel)
    if augment.noise > 0:
        side = max(NOISE_SIDE, int(down.shape[-1]))
        flat = ((ops.reshape(draw.noise_y, (-1, 1, 1)) + down) * side
                + ops.reshape(draw.noise_x, (-1, 1, 1)) + across)
        image = image + per_patch(draw.noise_std) * ops.take(noise, flat, axis=0)
    return ops.clip(image, 0.0, 1.0)


def blur(image, kernel):
    """Separable Gaussian blur with one kernel per patch (``kernel`` (B, k)): two depthwise
    convolutions with the batch folded into the channels, edges reflected."""
    from keras import ops

    batch, height, width, channels = image.shape
    taps = int(kernel.shape[-1])
    radius = taps // 2
    per_channel = ops.repeat(kernel, channels, axis=0)  # (B*C, k): patch b's row b*C + c
    folded = ops.reshape(ops.transpose(image, (1, 2, 0, 3)), (1, height, width, batch * channels))
    folded = ops.pad(folded, [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                     mode="reflect")
    across = ops.expand_dims(ops.expand_dims(ops.transpose(per_channel), 0), -1)  # (1, k, BC, 1)
    down = ops.expand_dims(ops.expand_dims(ops.transpose(per_channel), 1), -1)  # (k, 1, BC, 1)
    folded = ops.depthwise_conv(folded, across, strides=1, padding="valid")
    folded = ops.depthwise_conv(folded, down, strides=1, padding="valid")
    return ops.transpose(ops.reshape(folded, (height, width, batch, channels)), (2, 0, 1, 3))
