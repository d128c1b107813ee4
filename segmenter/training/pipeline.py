"""``tf.data`` pipelines: random training patches and fixed validation patches.

Training patches follow the reference method: a random image, a random top-left corner, a square
of ``width`` pixels cut from the photo and its ``land`` label. Three choices make the pipeline
fast, reproducible and resumable:

- **All eligible images live in one flat tensor** ``(pixels, 4)`` (RGB + land; a fifth
  channel, the row position, with ``model.row_channel``) with per-image offsets, so one batch
  is a single vectorised ``tf.gather`` of exactly ``B x w x w`` pixels: no per-patch Python,
  no per-step copies of whole images, no padding of unequal photos.
- **Randomness is stateless and keyed by the step number** (``(seed, width, step)``), so the
  patches of step ``n`` are the same on every run, in any ``num_parallel_calls`` order, and a
  resumed run continues with exactly the patches an uninterrupted run would have drawn.
- Batches are built by a ``map`` over step numbers on a private thread pool and prefetched,
  so the model never waits for data and the pipeline does not steal the step's cores
  (``scripts/bench_train.py`` measures that).

Augmentation (flips, 90-degree rotations, zoom, tilt; brightness, contrast, channel gains, hue,
saturation, greyscale, gamma, blur, noise) is applied to training batches only; validation
patches are a fixed, seeded set cut once with numpy.

The flat tensor is captured in the dataset's graph; TensorFlow caps a graph constant at 2 GB,
about 130 million pixels at float32: lower ``data.scale`` for more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmenter.config import AugmentConfig
from segmenter.errors import DataError
from segmenter.model.introspect import row_position
from segmenter.training.augment import draw_geometry, photometric

log = logging.getLogger(__name__)

__all__ = [
    "PatchSource",
    "eligible_images",
    "training_dataset",
    "validation_patches",
]


def eligible_images(items: Sequence[Any], width: int, split: str = "train") -> list[Any]:
    """The images at least ``width`` pixels tall and wide; smaller ones are skipped with a warning.

    Args:
        items: ``LabelledImage``-like objects with ``stem``, ``image`` and ``land``.
        width: the patch width.
        split: ``train`` or ``test``, for the warning.
    """
    kept, skipped = [], []
    for item in items:
        height, wide = item.land.shape[:2]
        (kept if height >= width and wide >= width else skipped).append(item)
    if skipped:
        shown = ", ".join(f"{s.stem} ({s.land.shape[0]}x{s.land.shape[1]})" for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning(
            "patch width %d: skipping %d %s image(s) smaller than the patch: %s%s",
            width,
            len(skipped),
            split,
            shown,
            more,
        )
    return kept


@dataclass
class PatchSource:
    """Eligible images packed into one flat ``(pixels, 4)`` float32 array with offsets.

    Attributes:
        pixels: RGB in channels 0-2, land fraction in channel 3 (and the row position of
            :func:`segmenter.model.introspect.row_position` in channel 4 with
            ``row_channel``), images one after another.
        offsets: index of each image's first pixel in ``pixels``.
        heights, widths: each image's size.
    """

    pixels: np.ndarray
    offsets: np.ndarray
    heights: np.ndarray
    widths: np.ndarray

    @classmethod
    def from_images(cls, items: Sequence[Any], row_channel: bool = False) -> PatchSource:
        """Pack ``LabelledImage``-like items (``image`` HxWx3, ``land`` HxW)."""
        if not items:
            raise DataError("no images to cut patches from")
        parts, offsets, heights, widths = [], [], [], []
        total = 0
        for item in items:
            image = np.asarray(item.image, dtype=np.float32)
            land = np.asarray(item.land, dtype=np.float32)
            height, wide = land.shape
            if image.shape != (height, wide, 3):
                raise DataError(
                    f"{item.stem}: photo {image.shape} and label {land.shape} sizes differ"
                )
            channels = [image, land[..., None]]
            if row_channel:
                channels.append(row_position(height, wide))
            parts.append(np.concatenate(channels, axis=-1).reshape(height * wide, -1))
            offsets.append(total)
            heights.append(height)
            widths.append(wide)
            total += height * wide
        return cls(
            pixels=np.concatenate(parts, axis=0),
            offsets=np.asarray(offsets, dtype=np.int64),
            heights=np.asarray(heights, dtype=np.int64),
            widths=np.asarray(widths, dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def row_channel(self) -> bool:
        """Whether the pixels carry the row position (channel 4)."""
        return self.pixels.shape[1] == 5


def _step_seed(seed: int, width: int, step):
    """The stateless seed of one training step: same (seed, width, step) -> same patches."""
    import tensorflow as tf

    base = tf.constant([seed % (2**31), width], dtype=tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))


def _sample_batch(source_tensors, width: int, batch_size: int, augment: AugmentConfig, seed_pair,
                  upright: bool = False):
    """Cut ``batch_size`` random patches: a random image each, then a random corner in it.

    Flips and rotations are applied to the gather indices rather than to the pixels, so they
    cost nothing beyond the single gather that cuts the patches. With ``augment.scale`` or
    ``augment.tilt`` the patches are zoomed or turned too (:func:`_resampled_gather`).
    """
    import tensorflow as tf

    pixels, offsets, heights, widths = source_tensors
    index_type = offsets.dtype
    seeds = tf.random.experimental.stateless_split(seed_pair, num=3)
    count = tf.shape(offsets, out_type=tf.int64)[0]
    index = tf.cast(
        tf.random.stateless_uniform([batch_size], seeds[0], minval=0, maxval=count, dtype=tf.int64),
        index_type,
    )
    image_w = tf.gather(widths, index)
    image_h = tf.gather(heights, index)
    unit = tf.random.stateless_uniform([2, batch_size], seeds[1], dtype=tf.float32)

    span = tf.range(width, dtype=index_type)
    down = tf.broadcast_to(span[None, :, None], [batch_size, width, width])  # output row
    across = tf.broadcast_to(span[None, None, :], [batch_size, width, width])  # output column
    if augment.flip or augment.rotate90:
        transpose, flip_lr, flip_ud = draw_geometry(batch_size, augment, seeds[2], upright)
        last = width - 1
        down = tf.where(flip_ud[:, None, None], last - down, down)
        across = tf.where(flip_lr[:, None, None], last - across, across)
        down, across = (
            tf.where(transpose[:, None, None], across, down),
            tf.where(transpose[:, None, None], down, across),
        )
    if augment.scale > 0 or augment.tilt > 0:
        return _resampled_gather(pixels, tf.gather(offsets, index), image_h, image_w, unit,
                                 down, across, width, augment,
                                 tf.random.experimental.stateless_fold_in(seed_pair, 3))
    room_y = image_h - width + 1
    room_x = image_w - width + 1
    top = tf.minimum(tf.cast(unit[0] * tf.cast(room_y, tf.float32), index_type), room_y - 1)
    left = tf.minimum(tf.cast(unit[1] * tf.cast(room_x, tf.float32), index_type), room_x - 1)
    flat = (
        (tf.gather(offsets, index) + top * image_w + left)[:, None, None]
        + down * image_w[:, None, None]
        + across
    )
    return tf.gather(pixels, flat)  # (batch, width, width, 4 or 5)


def _resampled_gather(pixels, offsets, heights, widths, unit, down, across, width: int,
                      augment: AugmentConfig, seed_pair):
    """Patches zoomed (``augment.scale``) and turned (``augment.tilt``), resampled bilinearly.

    Zoom: ``s`` is drawn log-uniform in ``[1/(1+zoom), 1+zoom]`` per patch, so a patch covers
    ``width * s`` photo pixels: ``s > 1`` shows more of the scene at a coarser ground resolution
    (a higher flight), ``s < 1`` less at a finer one. Tilt: the patch is turned by an angle
    drawn uniformly in ``[-tilt, tilt]`` degrees about its centre, as a camera rolled about its
    axis would see the scene (ship and aircraft photos with sloping horizons). ``s`` is capped
    so the turned footprint fits its photo. Output pixel ``(i, j)`` (after the flips, which are
    index changes as in :func:`_sample_batch`) samples the photo at the centre of its
    footprint; the land fraction is interpolated like the colours, so shore pixels get soft
    labels.

    The row position (channel 4, ``model.row_channel``) is the row in the *rolled camera's*
    frame, as a photo taken that way would give it: one value per patch row, growing
    downwards, while the scene in the patch slopes. Without tilt that is the photo's own row,
    which is linear, so interpolation keeps it exact.
    """
    import tensorflow as tf

    index_type = offsets.dtype
    batch = tf.shape(offsets)[0]
    height_f, width_f = tf.cast(heights, tf.float32), tf.cast(widths, tf.float32)
    if augment.scale > 0:
        log_zoom = float(np.log1p(augment.scale))
        scale = tf.exp(tf.random.stateless_uniform([batch], seed_pair, -log_zoom, log_zoom))
    else:
        scale = tf.ones([batch], tf.float32)
    if augment.tilt > 0:
        limit = float(np.radians(augment.tilt))
        angle = tf.random.stateless_uniform(
            [batch], tf.random.experimental.stateless_fold_in(seed_pair, 1), -limit, limit
        )
    else:
        angle = tf.zeros([batch], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    reach = tf.abs(cos) + tf.abs(sin)  # side of the box around a turned unit square
    scale = tf.minimum(scale, tf.minimum(height_f, width_f) / (float(width) * reach))
    extent = scale * float(width) * reach
    centre_y = extent / 2 + unit[0] * (height_f - extent)
    centre_x = extent / 2 + unit[1] * (width_f - extent)

    def per_patch(values):
        return values[:, None, None]

    half = float(width) / 2
    offset_y = tf.cast(down, tf.float32) + 0.5 - half  # from the patch centre, output pixels
    offset_x = tf.cast(across, tf.float32) + 0.5 - half
    at_y = per_patch(centre_y) + per_patch(scale) * (
        per_patch(cos) * offset_y - per_patch(sin) * offset_x)
    at_x = per_patch(centre_x) + per_patch(scale) * (
        per_patch(sin) * offset_y + per_patch(cos) * offset_x)

    def axis(at, size):
        """Lower neighbour, upper neighbour and weight of the upper one along one axis."""
        at = tf.clip_by_value(at - 0.5, 0.0, per_patch(size) - 1.0)
        low = tf.floor(at)
        high = tf.minimum(low + 1.0, per_patch(size) - 1.0)
        return tf.cast(low, index_type), tf.cast(high, index_type), (at - low)[..., None]

    y0, y1, wy = axis(at_y, height_f)
    x0, x1, wx = axis(at_x, width_f)
    base = per_patch(offsets)
    row0, row1 = base + y0 * per_patch(widths), base + y1 * per_patch(widths)
    upper = (1 - wx) * tf.gather(pixels, row0 + x0) + wx * tf.gather(pixels, row0 + x1)
    lower = (1 - wx) * tf.gather(pixels, row1 + x0) + wx * tf.gather(pixels, row1 + x1)
    patches = (1 - wy) * upper + wy * lower  # (batch, width, width, 4 or 5)
    if augment.tilt > 0 and pixels.shape[-1] == 5:
        # The patch centre's row in the frame of a camera rolled about the photo's centre,
        # then ``scale`` photo rows per patch row, straight down the patch.
        centre_row = (height_f / 2 + cos * (centre_y - height_f / 2)
                      + sin * (centre_x - width_f / 2))
        row = (per_patch(centre_row) + per_patch(scale) * offset_y - 0.5) / per_patch(
            tf.maximum(height_f - 1.0, 1.0))
        patches = tf.concat([patches[..., :4], row[..., None]], axis=-1)
    return patches


def training_dataset(
    items: Sequence[Any] | PatchSource,
    width: int,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    steps: int,
    augment: AugmentConfig | None = None,
    upright: bool = False,
):
    """Batches ``(image (B, w, w, 3), land (B, w, w, 1))`` for steps ``start_step .. steps - 1``.

    The image has a fourth channel, each pixel's row position in its photo
    (:func:`segmenter.model.introspect.row_position`; untouched by the photometric
    augmentation), when the source was packed with ``row_channel``.

    Args:
        items: eligible training images (see :func:`eligible_images`) or a packed source.
        width, batch_size: patch width and patches per batch (the global batch).
        seed: ``train.seed``; with ``width`` and the step number it fixes every patch.
        start_step: first step (a resumed run starts at its checkpoint's step).
        steps: one past the last step.
        augment: ``train.augment``; ``None`` disables augmentation.
        upright: ``data.upright``: no up-down flips or quarter turns, whatever ``augment`` says.

    Returns:
        A finite ``tf.data.Dataset`` of ``steps - start_step`` batches, built by a parallel map
        and prefetched, sharded by data under multi-worker strategies.

    Raises:
        DataError: no image is at least ``width`` pixels on both sides.
    """
    import tensorflow as tf

    source = items if isinstance(items, PatchSource) else PatchSource.from_images(items)
    if not len(source) or int(source.heights.min()) < width or int(source.widths.min()) < width:
        raise DataError(f"patch width {width}: every training image must be at least that large")
    # int32 indices gather about twice as fast; int64 only for sources over 2^31 pixels.
    index_type = np.int32 if len(source.pixels) < 2**31 - 1 else np.int64
    tensors = (
        tf.constant(source.pixels),
        tf.constant(source.offsets.astype(index_type)),
        tf.constant(source.heights.astype(index_type)),
        tf.constant(source.widths.astype(index_type)),
    )
    augment = augment or AugmentConfig(flip=False, rotate90=False, brightness=0.0, contrast=0.0)
    if source.row_channel and (augment.rotate90 or augment.flip) and not upright:
        raise ValueError("training_dataset: a row channel needs upright patches (no up-down "
                         "flips or quarter turns)")
    channels = 4 if source.row_channel else 3

    def make_batch(step):
        seeds = tf.random.experimental.stateless_split(_step_seed(seed, width, step), num=2)
        patches = _sample_batch(tensors, width, batch_size, augment, seeds[0], upright)
        image = photometric(patches[..., :3], augment, seeds[1])
        land = patches[..., 3:4]
        if source.row_channel:
            image = tf.concat([image, patches[..., 4:]], axis=-1)
        image = tf.ensure_shape(image, [batch_size, width, width, channels])
        land = tf.ensure_shape(land, [batch_size, width, width, 1])
        return image, land

    # The pipeline gets its own threads, half the cores (at least one): a batch costs a few
    # milliseconds against tens to hundreds for a training step, and on a small CPU tf.data's
    # autotuner otherwise spreads work over every core and slows the step it should feed
    # (scripts/bench_train.py measures it).
    workers = max(1, (os.cpu_count() or 2) // 2)
    dataset = tf.data.Dataset.range(start_step, steps)
    dataset = dataset.map(make_batch, num_parallel_calls=workers, deterministic=True)
    dataset = dataset.prefetch(max(2, workers))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return dataset.with_options(options)


def validation_patches(
    items: Sequence[Any], width: int, batch_size: int, n_batches: int, seed: int = 0,
    row_channel: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed, seeded set of test patches: ``n_batches`` pairs ``(image, land[..., None])``.

    The same (seed, width) always gives the same patches, so validation losses of different
    runs and of a resumed run are comparable. Empty when no test image is large enough.
    With ``row_channel`` each image has the row position as a fourth channel.
    """
    usable = [item for item in items if min(item.land.shape[:2]) >= width]
    if not usable:
        return []
    rng = np.random.default_rng([seed, width, 7919])
    batches = []
    for _ in range(n_batches):
        images = np.empty((batch_size, width, width, 4 if row_channel else 3), np.float32)
        lands = np.empty((batch_size, width, width, 1), np.float32)
        for slot in range(batch_size):
            item = usable[int(rng.integers(len(usable)))]
            height, wide = item.land.shape
            top = int(rng.integers(height - width + 1))
            left = int(rng.integers(wide - width + 1))
            images[slot, ..., :3] = item.image[top : top + width, left : left + width]
            if row_channel:
                images[slot, ..., 3:] = row_position(height, width, top, width)
            lands[slot, ..., 0] = item.land[top : top + width, left : left + width]
        batches.append((images, lands))
    return batches
