"""What a built or loaded model takes and gives: its input channels, its output's meaning.

Used by training (the patch pipeline's row channel) and by prediction (the windows a model is
fed, how its output is read as a probability of land).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segmenter.config import Config


def row_position(height: int, width: int, top: int = 0, rows: int | None = None) -> np.ndarray:
    """The row channel of ``model.row_channel``: float32 ``(rows, width, 1)``, each pixel's row
    in a photo ``height`` rows tall as a fraction, 0 at the top row and 1 at the bottom one.

    ``top`` and ``rows`` cut a band (``rows`` defaults to the whole photo); rows outside the
    photo (padding) get values below 0 or above 1.
    """
    rows = height - top if rows is None else rows
    fraction = (top + np.arange(rows, dtype=np.float32)) / np.float32(max(height - 1, 1))
    return np.broadcast_to(fraction[:, None, None], (rows, width, 1))


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
    (:func:`row_position`) appended for a row-channel model."""
    image = image.astype(np.float32, copy=False)
    if input_channels(model) == 3:
        return image
    return np.concatenate([image, row_position(*image.shape[:2])], axis=-1)


def head_activation(model: Any) -> str | None:
    """Name of the activation of the model's last layer (``sigmoid``, ``linear``), if any."""
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return getattr(activation, "__name__", None)


def output_transform(model: Any, cfg: Config) -> str:
    """How to read ``model``'s output as a probability of land: ``raw``, ``sigmoid`` or ``clip``
    (:data:`segmenter.model.compiled.OUTPUTS`).

    ``raw``: the model ends in a sigmoid (every model training saves now). A model with a
    linear head (an older run's, or a checkpoint) outputs logits when its loss works on logits
    (``bce``, ``dice``, ``bce_dice``): ``sigmoid``; trained with ``mse`` it outputs raw values
    as the notebook's did: ``clip`` to [0, 1].
    """
    from segmenter.model.losses import LOGIT_LOSSES

    head = head_activation(model) or cfg.model.activation
    if head != "linear":
        return "raw"
    return "sigmoid" if cfg.train.loss in LOGIT_LOSSES else "clip"
