"""Training: one model per patch width, with validation, checkpoints, resume and history.

:func:`train` (in :mod:`~segmenter.training.loop`) is what ``segmenter train`` calls; the
per-width Keras callback (validation, checkpoints, history, status) is in
:mod:`~segmenter.training.callback`, the saving of a finished width's model in
:mod:`~segmenter.training.export`, and the Ctrl-C guard in :mod:`~segmenter.training.ctrlc`.
"""

from segmenter.training.callback import validation_scores
from segmenter.training.loop import train
from segmenter.training.result import WidthResult

__all__ = ["WidthResult", "train", "validation_scores"]
