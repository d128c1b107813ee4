"""Augmentation of training patches, as ``tf`` ops keyed by stateless seeds.

Geometry (flips, quarter turns; :func:`draw_geometry`) and photometry (brightness, contrast,
channel gains, hue, saturation, greyscale, gamma, blur, noise; :func:`photometric`), drawn per
patch from a ``(seed, width, step)`` key so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from segmenter.config import AugmentConfig


def draw_geometry(batch_size: int, augment: AugmentConfig, seed_pair, upright: bool = False):
    """Per patch: transpose, left-right and up-down flags that together give the flips/rotations.

    A rotation by k quarter turns is k=1 transpose + up-down, k=2 left-right + up-down, k=3
    transpose + left-right; random flips are XOR-ed on top, which yields all 8 symmetries of the
    square when both are on. ``upright`` photos (``data.upright``) keep their up: only the
    left-right flip is drawn.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed_pair, num=2)
    transpose = tf.zeros([batch_size], tf.bool)
    flip_lr = tf.zeros([batch_size], tf.bool)
    flip_ud = tf.zeros([batch_size], tf.bool)
    if augment.rotate90 and not upright:
        quarter = tf.random.stateless_uniform([batch_size], seeds[0], 0, 4, dtype=tf.int32)
        transpose = tf.logical_or(tf.equal(quarter, 1), tf.equal(quarter, 3))
        flip_lr = tf.logical_or(tf.equal(quarter, 2), tf.equal(quarter, 3))
        flip_ud = tf.logical_or(tf.equal(quarter, 1), tf.equal(quarter, 2))
    if augment.flip:
        coins = tf.random.stateless_uniform([2, batch_size], seeds[1]) < 0.5
        flip_lr = tf.math.logical_xor(flip_lr, coins[0])
        if not upright:
            flip_ud = tf.math.logical_xor(flip_ud, coins[1])
    return transpose, flip_lr, flip_ud


# RGB <-> YIQ (NTSC): Y is brightness, I and Q the two chroma axes. A hue change is a rotation
# in the (I, Q) plane and a saturation change a scaling of it, so both become one 3x3 matrix.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    np.float32,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def colour_matrices(batch, augment: AugmentConfig, seed_pair):
    """Per-patch 3x3 colour matrices ``(B, 3, 3)``: channel gains, then hue, saturation, grey.

    ``rgb' = rgb @ M``. Identity when every colour key is 0.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed_pair, num=4)
    yiq, rgb = tf.constant(_RGB_TO_YIQ.T), tf.constant(_YIQ_TO_RGB.T)
    gains = tf.random.stateless_uniform(
        [batch, 3], seeds[0], 1.0 - augment.gain, 1.0 + augment.gain
    )
    angle = tf.random.stateless_uniform(
        [batch], seeds[1], -augment.hue, augment.hue
    ) * (np.pi / 180.0)
    sat = tf.random.stateless_uniform(
        [batch], seeds[2], 1.0 - augment.saturation, 1.0 + augment.saturation
    )
    grey = tf.random.stateless_uniform([batch], seeds[3]) < augment.greyscale
    sat = tf.where(grey, tf.zeros_like(sat), sat)
    cos, sin = tf.cos(angle) * sat, tf.sin(angle) * sat
    one, zero = tf.ones_like(cos), tf.zeros_like(cos)
    # Row-vector convention: chroma (i, q) -> (i cos - q sin, i sin + q cos), scaled by sat.
    chroma = tf.stack(
        [
            tf.stack([one, zero, zero], -1),
            tf.stack([zero, cos, sin], -1),
            tf.stack([zero, -sin, cos], -1),
        ],
        axis=1,
    )  # (B, 3, 3)
    return tf.linalg.diag(gains) @ yiq[None] @ chroma @ rgb[None]


def blur(image, augment: AugmentConfig, seed_pair):
    """Gaussian blur with a random sigma in ``[0, augment.blur]`` per patch (one depthwise conv).

    The batch is folded into the channels so every patch gets its own kernel in one call.
    """
    import tensorflow as tf

    batch = tf.shape(image)[0]
    radius = int(np.ceil(2.0 * augment.blur))
    sigma = tf.random.stateless_uniform([batch], seed_pair, 0.0, augment.blur)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * (taps[None, :] / tf.maximum(sigma[:, None], 1e-3)) ** 2)
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # (B, k); sigma 0 -> delta
    kernel = tf.repeat(kernel, 3, axis=0)  # (3B, k): one kernel per (patch, channel)
    height, width = tf.shape(image)[1], tf.shape(image)[2]
    folded = tf.reshape(tf.transpose(image, [1, 2, 0, 3]), [1, height, width, batch * 3])
    folded = tf.pad(folded, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    across = tf.transpose(kernel)[None, :, :, None]  # (1, k, 3B, 1)
    down = tf.transpose(kernel)[:, None, :, None]  # (k, 1, 3B, 1)
    folded = tf.nn.depthwise_conv2d(folded, across, [1, 1, 1, 1], "VALID")
    folded = tf.nn.depthwise_conv2d(folded, down, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(folded, [height, width, batch, 3]), [2, 0, 1, 3])


def photometric(image, augment: AugmentConfig, seed_pair):
    """Random changes of colour and light per patch, so a model learns water by more than colour.

    In order: channel gains, hue and saturation (and greyscale) as one 3x3 colour matrix;
    gamma; contrast and brightness as one multiply-add; Gaussian blur; Gaussian noise; a clip to
    ``[0, 1]``. Each step is skipped when its key is 0, so the default (brightness and contrast
    only) costs what it always did.
    """
    import tensorflow as tf

    colour = augment.gain > 0 or augment.hue > 0 or augment.saturation > 0 or augment.greyscale > 0
    if not (colour or augment.gamma > 0 or augment.contrast > 0 or augment.brightness > 0
            or augment.blur > 0 or augment.noise > 0):
        return image
    batch = tf.shape(image)[0]
    seeds = tf.random.experimental.stateless_split(seed_pair, num=7)
    if colour:
        matrices = colour_matrices(batch, augment, seeds[2])
        image = tf.clip_by_value(tf.einsum("bhwc,bcd->bhwd", image, matrices), 0.0, 1.0)
    if augment.gamma > 0:
        log_gamma = tf.random.stateless_uniform(
            [batch, 1, 1, 1], seeds[3], -np.log1p(augment.gamma), np.log1p(augment.gamma)
        )
        image = tf.pow(tf.maximum(image, 1e-6), tf.exp(log_gamma))
    if augment.contrast > 0 or augment.brightness > 0:
        factor = tf.random.stateless_uniform(
            [batch, 1, 1, 1], seeds[0], 1.0 - augment.contrast, 1.0 + augment.contrast
        )
        delta = tf.random.stateless_uniform(
            [batch, 1, 1, 1], seeds[1], -augment.brightness, augment.brightness
        )
        if augment.contrast > 0:
            mean = tf.reduce_mean(image, axis=[1, 2], keepdims=True)
            shift = mean * (1.0 - factor) + delta
        else:
            factor, shift = tf.ones_like(factor), delta
        image = image * factor + shift
    if augment.blur > 0:
        image = blur(image, augment, seeds[4])
    if augment.noise > 0:
        std = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[5], 0.0, augment.noise)
        image = image + std * tf.random.stateless_normal(tf.shape(image), seeds[6])
    return tf.clip_by_value(image, 0.0, 1.0)
