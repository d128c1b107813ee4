"""Training patches for every Keras backend, and fixed validation patches.

Training patches follow the reference method: a random image, a random top-left corner, a square
of ``width`` pixels cut from the photo and its ``land`` label. Four choices make the pipeline
fast, reproducible and resumable on TensorFlow, JAX and PyTorch alike:

- **All eligible images live in one flat tensor** ``(pixels, 4)`` (RGB + land; a fifth
  channel, the row position, with ``model.row_channel``) with per-image offsets, held on the
  device that trains on JAX and PyTorch (a GPU when there is one; on TensorFlow in the
  ``tf.data`` graph, on the CPU), so one batch is a single vectorised gather of
  exactly ``B x w x w`` pixels: no per-patch Python, no per-step copies of whole images, no
  padding of unequal photos.
- **Randomness is drawn on the host and keyed by the step number** (``(seed, width, step)``;
  :func:`~segmenter.training.augment.draw_step`): a few numbers per patch, so the patches of
  step ``n`` are the same on every run and every backend, and a resumed run continues with
  exactly the patches an uninterrupted run would have drawn.
- **The per-pixel work is written once in ``keras.ops``** (:func:`cut_patches`): the cut, the
  flips, zoom and tilt, colour, light, blur and noise; on JAX and PyTorch it runs where the
  photos are, so the host does not bound a GPU's step.
- On TensorFlow, batches are built by a ``tf.data`` map on a private thread pool and
  prefetched, so the pipeline does not steal the step's cores; on JAX each batch is one
  ``jax.jit`` call, dispatched ahead of the step that uses it (``scripts/bench_train.py``
  measures both).

Validation patches are a fixed, seeded set cut once with numpy.

On TensorFlow the flat tensor is captured in the dataset's graph, which TensorFlow caps at 2 GB,
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
from segmenter.training.augment import (
    StepDraw,
    draw_step,
    noise_field,
    photometric,
    step_generator,
)

log = logging.getLogger(__name__)

__all__ = [
    "PatchBatches",
    "PatchSource",
    "cut_patches",
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


def cut_patches(pixels, draw: StepDraw, width: int, augment: AugmentConfig, noise,
                row_channel: bool = False):
    """One batch ``(image, land)`` from the flat source ``pixels`` on the device, in ``keras.ops``.

    The flips and quarter turns are applied to the gather indices rather than to the pixels,
    so they cost nothing beyond the one gather that cuts the patches; zoom and tilt resample
    bilinearly (:func:`_resampled`). Then :func:`~segmenter.training.augment.photometric`.
    """
    from keras import ops

    batch = int(draw.start.shape[0])
    index_type = ops.dtype(draw.start)
    span = ops.arange(width, dtype=index_type)
    rows = ops.broadcast_to(ops.reshape(span, (1, width, 1)), (batch, width, width))
    columns = ops.broadcast_to(ops.reshape(span, (1, 1, width)), (batch, width, width))
    down, across = rows, columns
    if augment.flip or augment.rotate90:
        last = width - 1

        def flag(values):
            return ops.reshape(values, (-1, 1, 1))

        down = ops.where(flag(draw.flip_ud), last - down, down)
        across = ops.where(flag(draw.flip_lr), last - across, across)
        down, across = (ops.where(flag(draw.transpose), across, down),
                        ops.where(flag(draw.transpose), down, across))
    if augment.scale > 0 or augment.tilt > 0:
        patches = _resampled(pixels, draw, down, across, width, augment, row_channel)
    else:
        flat = (ops.reshape(draw.start, (-1, 1, 1)) + down * ops.reshape(draw.stride, (-1, 1, 1))
                + across)
        patches = ops.take(pixels, flat, axis=0)  # (batch, width, width, 4 or 5)
    image = photometric(patches[..., :3], draw, augment, noise, rows, columns)
    if row_channel:
        image = ops.concatenate([image, patches[..., 4:]], axis=-1)
    return image, patches[..., 3:4]


def _resampled(pixels, draw: StepDraw, down, across, width: int, augment: AugmentConfig,
               row_channel: bool):
    """Patches zoomed (``augment.scale``) and turned (``augment.tilt``), resampled bilinearly.

    Output pixel ``(i, j)`` (after the flips) samples the photo at the centre of its footprint
    (:func:`~segmenter.training.augment.draw_step` places, zooms and turns the footprint); the
    land fraction is interpolated like the colours, so shore pixels get soft labels.

    The row position (channel 4, ``model.row_channel``) is the row in the *rolled camera's*
    frame, as a photo taken that way would give it: one value per patch row, growing
    downwards, while the scene in the patch slopes. Without tilt that is the photo's own row,
    which is linear, so interpolation keeps it exact.
    """
    from keras import ops

    index_type = ops.dtype(draw.start)

    def per_patch(values):
        return ops.reshape(values, (-1, 1, 1))

    half = float(width) / 2
    offset_y = ops.cast(down, "float32") + (0.5 - half)  # from the patch centre, output pixels
    offset_x = ops.cast(across, "float32") + (0.5 - half)
    scale, cos, sin = per_patch(draw.scale), per_patch(draw.cos), per_patch(draw.sin)
    at_y = per_patch(draw.centre_y) + scale * (cos * offset_y - sin * offset_x)
    at_x = per_patch(draw.centre_x) + scale * (sin * offset_y + cos * offset_x)

    def axis(at, size):
        """Lower neighbour, upper neighbour and weight of the upper one along one axis."""
        at = ops.clip(at - 0.5, 0.0, per_patch(size) - 1.0)
        low = ops.floor(at)
        high = ops.minimum(low + 1.0, per_patch(size) - 1.0)
        return (ops.cast(low, index_type), ops.cast(high, index_type),
                ops.expand_dims(at - low, -1))

    y0, y1, wy = axis(at_y, draw.height)
    x0, x1, wx = axis(at_x, draw.wide)
    base, stride = per_patch(draw.offset), per_patch(draw.stride)
    row0, row1 = base + y0 * stride, base + y1 * stride

    def take(at):
        return ops.take(pixels, at, axis=0)

    upper = (1 - wx) * take(row0 + x0) + wx * take(row0 + x1)
    lower = (1 - wx) * take(row1 + x0) + wx * take(row1 + x1)
    patches = (1 - wy) * upper + wy * lower  # (batch, width, width, 4 or 5)
    if augment.tilt > 0 and row_channel:
        # The centre's row in the rolled camera's frame, then ``scale`` photo rows per patch
        # row, straight down the patch.
        row = (per_patch(draw.centre_row) + scale * offset_y - 0.5) / ops.maximum(
            per_patch(draw.height) - 1.0, 1.0)
        patches = ops.concatenate([patches[..., :4], ops.expand_dims(row, -1)], axis=-1)
    return patches


@dataclass
class _Stream:
    """What one training stream needs: the packed source and the step's static settings."""

    source: PatchSource
    width: int
    batch_size: int
    seed: int
    augment: AugmentConfig
    upright: bool
    index_type: type

    def draw(self, step: int) -> StepDraw:
        return draw_step(step_generator(self.seed, self.width, int(step)), self.batch_size,
                         self.width, self.augment, self.source.offsets, self.source.heights,
                         self.source.widths, self.upright, self.index_type)

    def cut(self, pixels, noise, draw: StepDraw):
        return cut_patches(pixels, draw, self.width, self.augment, noise,
                           self.source.row_channel)


class PatchBatches:
    """The training batches of steps ``start .. steps - 1`` on JAX or PyTorch: an iterable that
    ``fit`` takes, each batch cut on the device the images were put on (a GPU when there is
    one), by a ``jax.jit``-compiled call on JAX or eager ``keras.ops`` on PyTorch."""

    def __init__(self, stream: _Stream, start: int, steps: int) -> None:
        import keras
        from keras import ops

        self.stream, self.start, self.steps = stream, start, steps
        self.pixels = ops.convert_to_tensor(stream.source.pixels)
        self.noise = ops.convert_to_tensor(noise_field(stream.seed, stream.width))
        self.cut = stream.cut
        if keras.backend.backend() == "jax":
            import jax

            self.cut = jax.jit(stream.cut)

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.cut(self.pixels, self.noise, self.stream.draw(step))


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
        On TensorFlow a finite ``tf.data.Dataset`` of ``steps - start_step`` batches, built
        by a parallel map and prefetched, sharded by data under multi-worker strategies; on
        JAX and PyTorch a generator over a :class:`PatchBatches` (which ``fit`` takes as it
        is). Both give the same patches for the same arguments.

    Raises:
        DataError: no image is at least ``width`` pixels on both sides.
    """
    import keras

    source = items if isinstance(items, PatchSource) else PatchSource.from_images(items)
    if not len(source) or int(source.heights.min()) < width or int(source.widths.min()) < width:
        raise DataError(f"patch width {width}: every training image must be at least that large")
    augment = augment or AugmentConfig(flip=False, rotate90=False, brightness=0.0, contrast=0.0)
    if source.row_channel and (augment.rotate90 or augment.flip) and not upright:
        raise ValueError("training_dataset: a row channel needs upright patches (no up-down "
                         "flips or quarter turns)")
    # int32 indices gather about twice as fast; int64 only for sources over 2^31 pixels.
    index_type = np.int32 if len(source.pixels) < 2**31 - 1 else np.int64
    stream = _Stream(source, width, batch_size, seed, augment, upright, index_type)
    if keras.backend.backend() != "tensorflow":
        return iter(PatchBatches(stream, start_step, steps))
    return _tensorflow_dataset(stream, start_step, steps)


def _tensorflow_dataset(stream: _Stream, start: int, steps: int):
    """The batches as a ``tf.data`` pipeline: draws by ``numpy_function``, the cut in the map."""
    import tensorflow as tf

    pixels = tf.constant(stream.source.pixels)
    noise = tf.constant(noise_field(stream.seed, stream.width))
    example = stream.draw(0)
    dtypes = [tf.as_dtype(field.dtype) for field in example]

    def make_batch(step):
        fields = tf.numpy_function(lambda s: tuple(stream.draw(s)), [step], dtypes,
                                   stateful=False)
        for field, like in zip(fields, example, strict=True):
            field.set_shape(like.shape)
        image, land = stream.cut(pixels, noise, StepDraw(*fields))
        channels = 4 if stream.source.row_channel else 3
        width, batch = stream.width, stream.batch_size
        return (tf.ensure_shape(image, [batch, width, width, channels]),
                tf.ensure_shape(land, [batch, width, width, 1]))

    # The pipeline gets its own threads, half the cores (at least one): a batch costs a few
    # milliseconds against tens to hundreds for a training step, and on a small CPU tf.data's
    # autotuner otherwise spreads work over every core and slows the step it should feed
    # (scripts/bench_train.py measures it).
    workers = max(1, (os.cpu_count() or 2) // 2)
    dataset = tf.data.Dataset.range(start, steps)
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
