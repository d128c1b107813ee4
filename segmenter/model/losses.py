"""Training losses: ``mse`` (the notebook's), ``bce``, ``dice`` and ``bce_dice``.

Labels are ``land`` maps (1 = land, 0 = water) and predictions the probability of land (or a raw
value when the model's output is linear, ``from_logits=True``). Water is the minority class on
coastal photos (often 7-20 % of pixels), which is why Dice is offered: it is computed for both
classes over the whole batch and averaged, so the small water class weighs as much as land and a
patch without any water cannot make the ratio undefined.

All losses are registered Keras objects, so a compiled model saved as ``.keras`` loads with
``safe_mode=True``. They compute in float32 even under ``mixed_float16``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["BCEDiceLoss", "DiceLoss", "LOGIT_LOSSES", "LOSSES", "get_loss", "soft_dice",
           "uses_logits"]

LOSSES = ("mse", "bce", "dice", "bce_dice")
#: losses that read a linear model's output as logits (they apply the sigmoid themselves).
LOGIT_LOSSES = ("bce", "dice", "bce_dice")


def uses_logits(activation: str, loss: str) -> bool:
    """Whether a model with output ``activation`` trained with ``loss`` outputs logits.

    ``linear`` with ``bce``, ``dice`` or ``bce_dice``: the loss applies the sigmoid, so the
    raw output is a logit and the probability is its sigmoid. ``linear`` with ``mse`` is the
    notebook's raw value, read as a probability once clipped to [0, 1].
    """
    return activation == "linear" and loss in LOGIT_LOSSES


def soft_dice(y_true, y_prob, smooth: float = 1.0):
    """Mean over the two classes (land, water) of 1 - soft Dice, pooled over the batch."""
    y_true = ops.cast(y_true, "float32")
    y_prob = ops.cast(y_prob, "float32")
    losses = []
    for truth, prob in ((y_true, y_prob), (1.0 - y_true, 1.0 - y_prob)):
        overlap = ops.sum(truth * prob)
        total = ops.sum(truth) + ops.sum(prob)
        losses.append(1.0 - (2.0 * overlap + smooth) / (total + smooth))
    return 0.5 * (losses[0] + losses[1])


@keras.saving.register_keras_serializable(package="segmenter")
class DiceLoss(keras.losses.Loss):
    """Two-class soft Dice loss pooled over the batch (see :func:`soft_dice`)."""

    def __init__(
        self, from_logits: bool = False, smooth: float = 1.0, name: str = "dice", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        if smooth <= 0:
            raise ValueError(f"DiceLoss: smooth must be > 0, got {smooth!r}")
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        prob = ops.sigmoid(y_pred) if self.from_logits else y_pred
        dice = soft_dice(y_true, prob, self.smooth)
        # One value per sample (all equal), not a scalar: Keras scales a reduced loss by
        # 1 / replicas under tf.distribute but leaves a scalar alone, so a scalar Dice counted
        # (and was logged) once per replica: twice the weight on 2 GPUs.
        return dice * ops.ones((ops.shape(y_pred)[0],), "float32")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"from_logits": self.from_logits, "smooth": self.smooth})
        return config


@keras.saving.register_keras_serializable(package="segmenter")
class BCEDiceLoss(keras.losses.Loss):
    """Binary cross-entropy (per pixel) plus two-class soft Dice (per batch), weighted."""

    def __init__(
        self,
        from_logits: bool = False,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        name: str = "bce_dice",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if dice_weight < 0:
            raise ValueError(f"BCEDiceLoss: dice_weight must be >= 0, got {dice_weight!r}")
        self.from_logits = bool(from_logits)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self._bce = keras.losses.BinaryCrossentropy(from_logits=self.from_logits)
        self._dice = DiceLoss(from_logits=self.from_logits, smooth=self.smooth)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        return self._bce(y_true, y_pred) + self.dice_weight * self._dice(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"from_logits": self.from_logits, "dice_weight": self.dice_weight,
             "smooth": self.smooth}
        )
        return config


def get_loss(name: str, from_logits: bool = False) -> keras.losses.Loss:
    """The loss named in ``train.loss``.

    Args:
        name: one of :data:`LOSSES`.
        from_logits: the model outputs raw values (``model.activation: linear``); ``bce`` and
            ``dice`` then apply the sigmoid themselves, ``mse`` compares raw values (as the
            notebook did).

    Raises:
        ValueError: an unknown loss name.
    """
    if name == "mse":
        return keras.losses.MeanSquaredError(name="mse")
    if name == "bce":
        return keras.losses.BinaryCrossentropy(from_logits=from_logits, name="bce")
    if name == "dice":
        return DiceLoss(from_logits=from_logits)
    if name == "bce_dice":
        return BCEDiceLoss(from_logits=from_logits)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
