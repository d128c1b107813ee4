"""The residual encoder-decoder of the reference method (SPEC.md, "The network").

``model.skips: true`` adds U-Net-style skip connections (each decoder level concatenates the
encoder's map of its size); off by default and in the shipped configs (docs/quality.md).
``model.filter_growth`` widens each coarser level (a 1x1 projection where the width changes),
as segmentation networks double their kernels when the resolution halves; 1 (the default)
builds the notebook's network, 16 kernels at every level, layer for layer.

One builder, :func:`build_model`, turns a :class:`~segmenter.config.ModelConfig` into a native
Keras 3 functional model. The network is fully convolutional, so one model serves every spatial
size that divides by ``2**depth``; a :class:`SizeCheck` layer at the input refuses other sizes
with a readable message instead of silently returning a map of the wrong size (the encoder's
"same" pooling would round up and the decoder would give back a larger map).

With ``model.row_channel`` (upright photos) the input has a fourth channel, each pixel's row in
its photo as a fraction (0 top, 1 bottom): the network then knows where in the frame a window
lies, which the colours and texture of one window cannot tell it (a grey sky above the horizon
against grey water below it). The channel skips the input normalisation and joins the colours at
the first convolution.

Input normalisation lives inside the model (``[0, 1]`` photos are mapped to ``[-1, 1]``, or with
``input_norm: window`` each window is standardised on its own), so a saved ``.keras`` file is
self-contained: prediction feeds photos exactly as they are decoded.
The output layer always computes in float32, so ``mixed_float16`` training still yields a
float32 probability map.
"""

from __future__ import annotations

from typing import Any

import keras

from segmenter.config import ModelConfig

__all__ = [
    "BilinearUpsampling",
    "SizeCheck",
    "WindowStandardise",
    "build_model",
    "check_width",
    "size_multiple",
]


def size_multiple(depth: int) -> int:
    """Spatial sizes a model of this depth accepts are multiples of this number."""
    return 2**depth


def check_width(width: int, depth: int) -> None:
    """Refuse a patch width the network cannot take.

    Raises:
        ValueError: naming the width, the depth and the multiple required.
    """
    multiple = size_multiple(depth)
    if width < multiple or width % multiple:
        raise ValueError(
            f"patch width {width} is not a positive multiple of 2^depth = {multiple} "
            f"(depth = {depth}): the encoder halves the size {depth} times"
        )


@keras.saving.register_keras_serializable(package="segmenter")
class SizeCheck(keras.layers.Layer):
    """Pass-through layer that refuses inputs whose height or width is not a multiple.

    Static sizes (known when the model is called on a concrete array, and always on JAX and
    PyTorch) fail at once with a ``ValueError``; sizes only known at run time (a TensorFlow
    graph) fail through a TensorFlow assertion carrying the same message.
    """

    def __init__(self, multiple: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"SizeCheck: multiple must be a positive int, got {multiple!r}")
        self.multiple = multiple

    def call(self, inputs):
        message = (
            f"input height and width must be multiples of {self.multiple} "
            f"(2^depth of this model)"
        )
        static = inputs.shape[1:3]
        if all(dim is not None for dim in static):
            bad = [int(dim) for dim in static if int(dim) % self.multiple]
            if bad:
                raise ValueError(f"{message}; got {int(static[0])} x {int(static[1])}")
            return inputs
        import tensorflow as tf  # only TensorFlow traces with unknown sizes

        dims = tf.shape(inputs)[1:3]
        with tf.control_dependencies(
            [tf.debugging.assert_equal(dims % self.multiple, 0, message=message)]
        ):
            return tf.identity(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"multiple": self.multiple})
        return config


@keras.saving.register_keras_serializable(package="segmenter")
class BilinearUpsampling(keras.layers.Layer):
    """Bilinear x``factor`` resize that also works when the spatial size is only known at run time.

    ``keras.layers.UpSampling2D(interpolation="bilinear")`` fails inside a TensorFlow graph when
    height and width are ``None`` (Keras 3.15), which is exactly how a fully convolutional model
    is traced for prediction on photos of any size; on TensorFlow ``tf.image.resize`` takes a
    dynamic size. JAX and PyTorch always know the size, and ``keras.ops.image.resize`` (half-pixel
    centres, edges clamped, as TensorFlow) gives the same map, so a model trained on one backend
    predicts on another.
    """

    def __init__(self, factor: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"BilinearUpsampling: factor must be a positive int, got {factor!r}")
        self.factor = factor

    def call(self, inputs):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            size = tf.shape(inputs)[1:3] * self.factor
            resized = tf.image.resize(inputs, size, method="bilinear")
            return tf.cast(resized, inputs.dtype)
        height, width = inputs.shape[1:3]
        resized = keras.ops.image.resize(inputs, (height * self.factor, width * self.factor),
                                         interpolation="bilinear", antialias=False)
        return keras.ops.cast(resized, inputs.dtype)

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        return (
            input_shape[0],
            None if height is None else height * self.factor,
            None if width is None else width * self.factor,
            input_shape[3],
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"factor": self.factor})
        return config


@keras.saving.register_keras_serializable(package="segmenter")
class WindowStandardise(keras.layers.Layer):
    """Per-window input standardisation: each channel's mean removed, divided by the spread.

    ``(x - mean_c) / max(std, floor)``, mean per channel and std over the whole window (all
    channels), so a window's overall colour cast and brightness are removed while the colour
    differences inside it (water against land) stay. The floor keeps a flat window (all water,
    all sky) from blowing noise up.
    """

    def __init__(self, floor: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.floor = float(floor)

    def call(self, inputs):
        ops = keras.ops
        mean = ops.mean(inputs, axis=(1, 2), keepdims=True)
        centred = inputs - mean
        std = ops.sqrt(ops.mean(ops.square(centred), axis=(1, 2, 3), keepdims=True))
        return centred / ops.maximum(std, self.floor)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"floor": self.floor})
        return config


# Batch-norm moving statistics must settle within a few hundred steps (the reference method
# trains 600 batches per width); Keras' default momentum 0.99 leaves a third of the initial
# statistics after 100 steps, so validation and prediction would see badly normalised maps.
BN_MOMENTUM = 0.9


def _residual_block(x, filters: int, kernel_size: int, transpose: bool, name: str):
    """x + [conv (ReLU) -> BN -> conv -> BN]; the decoder uses stride-1 transposed convs."""
    conv = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    y = conv(filters, kernel_size, padding="same", activation="relu", name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = conv(filters, kernel_size, padding="same", name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def level_filters(filters: int, growth: float, level: int) -> int:
    """Kernels at pooling level ``level`` (0 = full size): ``filters * growth**level``."""
    return max(1, round(filters * growth**level))


def _project(x, channels: int, wanted: int, name: str):
    """A 1x1 convolution to ``wanted`` channels where the level's width changes (none when it
    does not, so ``filter_growth: 1`` builds the notebook's network layer for layer)."""
    if channels == wanted:
        return x
    x = keras.layers.Conv2D(wanted, 1, activation="relu", name=f"{name}_project")(x)
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(x)


def build_model(model_cfg: ModelConfig | None = None, **overrides: Any) -> keras.Model:
    """Build the residual encoder-decoder described by ``model_cfg``.

    Args:
        model_cfg: depth, filters, kernel size, upsampling and output activation; defaults to
            the schema's defaults.
        **overrides: keys of :class:`ModelConfig` to replace (handy in tests and scripts).

    Returns:
        An uncompiled ``keras.Model``: input ``(None, None, 3)`` float32 RGB in ``[0, 1]``
        (``(None, None, 4)`` with ``model.row_channel: true``, the row position last),
        output ``(None, None, 1)`` float32, the probability of land (``sigmoid``) or a raw
        value (``linear``).

    Raises:
        ValueError: an argument out of range, with the value and what is expected.
    """
    if model_cfg is None:
        model_cfg = ModelConfig()
    if overrides:
        model_cfg = model_cfg.model_copy(update=overrides)
    depth, filters, kernel_size = model_cfg.depth, model_cfg.filters, model_cfg.kernel_size
    for name, value, low in (("depth", depth, 1), ("filters", filters, 1), ("kernel_size",
                             kernel_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"build_model: {name} must be an int >= {low}, got {value!r}")
    if model_cfg.upsampling not in ("bilinear", "transpose"):
        raise ValueError(
            f"build_model: upsampling must be 'bilinear' or 'transpose', "
            f"got {model_cfg.upsampling!r}"
        )
    if model_cfg.activation not in ("sigmoid", "linear"):
        raise ValueError(
            f"build_model: activation must be 'sigmoid' or 'linear', got {model_cfg.activation!r}"
        )

    row_channel = model_cfg.has_row_channel
    inputs = keras.Input(shape=(None, None, 4 if row_channel else 3), dtype="float32",
                         name="image")
    x = SizeCheck(size_multiple(depth), name="size_check")(inputs)
    if row_channel:
        # [0, 1] from top to bottom -> [-1, 1], like the fixed colour scaling.
        row = keras.layers.Rescaling(2.0, offset=-1.0, name="row_position")(x[..., 3:])
        x = x[..., :3]
    if model_cfg.input_norm == "window":
        x = WindowStandardise(name="normalise")(x)
    else:
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="normalise")(x)
    if row_channel:
        x = keras.layers.Concatenate(name="with_row")([x, row])
    x = keras.layers.Conv2D(
        filters, kernel_size, padding="same", activation="relu", name="stem_conv"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    # Kernels per level: the stem's, then (model.filter_growth) more at each coarser level.
    widths = [level_filters(filters, model_cfg.filter_growth, level)
              for level in range(depth + 1)]
    encoder_maps = []  # the map at each size, finest first, for the skip connections
    for level in range(depth):
        encoder_maps.append(x)
        x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"down{level}_pool")(x)
        x = _project(x, widths[level], widths[level + 1], f"down{level}")
        x = _residual_block(x, widths[level + 1], kernel_size, transpose=False,
                            name=f"down{level}")
    for level in range(depth):
        size = depth - 1 - level  # the encoder level whose size this decoder level has
        if model_cfg.upsampling == "bilinear":
            x = BilinearUpsampling(2, name=f"up{level}_resize")(x)
        else:
            x = keras.layers.Conv2DTranspose(
                widths[size], 2, strides=2, padding="same", name=f"up{level}_deconv"
            )(x)
        if model_cfg.skips:
            # The encoder map of this size joins the upsampled one; a 1x1 convolution mixes the
            # two back to this level's channels so the residual block's sum still adds up.
            x = keras.layers.Concatenate(name=f"up{level}_skip")([x, encoder_maps[size]])
            x = keras.layers.Conv2D(widths[size], 1, activation="relu",
                                    name=f"up{level}_mix")(x)
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"up{level}_mix_bn")(x)
        elif model_cfg.upsampling == "bilinear":
            x = _project(x, widths[size + 1], widths[size], f"up{level}")
        x = _residual_block(x, widths[size], kernel_size, transpose=True, name=f"up{level}")
    # The head stays float32 under mixed precision: probabilities near 0 and 1 matter.
    x = keras.layers.Conv2DTranspose(
        1, kernel_size, padding="same", dtype="float32", name="head_conv"
    )(x)
    outputs = keras.layers.Activation(model_cfg.activation, dtype="float32", name="land_prob")(x)
    growth = model_cfg.filter_growth
    variant = ((f"_g{growth:g}" if growth != 1 else "") + ("_skips" if model_cfg.skips else "")
               + ("_row" if row_channel else ""))
    return keras.Model(
        inputs, outputs, name=f"segmenter_d{depth}_f{filters}_k{kernel_size}{variant}"
    )
