"""The end of a width: the final float32 model, its loss curve and status; checkpoints go."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np

from segmenter.config import Config
from segmenter.fileio import atomic_path
from segmenter.runs import Run
from segmenter.training.callback import Progress, width_status
from segmenter.training.plots import plot_history
from segmenter.training.result import WidthResult


def finish(run: Run, cfg: Config, width: int, batch_size: int, model: Any, tracker: Progress,
           chief: bool, fingerprint: str, norm_windows: np.ndarray | None = None) -> WidthResult:
    """Save the final float32 model, the loss curve and the status; drop the checkpoints.

    A linear model trained with a loss on logits (``bce``, ``dice``, ``bce_dice``) is saved
    with a sigmoid head (the activation has no weights), so every saved model outputs the
    probability of land; an MSE-trained linear model keeps its raw output, as the notebook's.
    """
    from segmenter.model.losses import uses_logits
    from segmenter.model.network import build_model

    if cfg.train.ema:  # the saved model is the moving average of the weights
        model.optimizer.finalize_variable_values(model.trainable_variables)
        if norm_windows is not None:  # through the pass validation compiled, as it measured
            from segmenter.model.norm import recalibrate_norm

            recalibrate_norm(model, norm_windows)
    result = WidthResult(width, "finished", tracker.step, cfg.train.steps)
    last = tracker.rows[-1] if tracker.rows else {}
    result.final_loss = last.get("loss")
    result.final_val_loss = last.get("val_loss")
    result.final_val_water_iou = last.get("val_water_iou")
    result.seconds = tracker.seconds()
    if not chief:
        return result
    # An uncompiled float32 copy: prediction needs neither the optimiser nor mixed precision.
    head = "sigmoid" if uses_logits(cfg.model.activation, cfg.train.loss) else None
    final = build_model(cfg.model, activation=head) if head else build_model(cfg.model)
    final.set_weights(model.get_weights())
    with atomic_path(run.model_path(width)) as tmp:
        final.save(tmp)
    result.model_path = str(run.model_path(width))
    plot_history(run.plot_path(width), width, tracker.rows)
    run.write_status(width, width_status(tracker, "finished", cfg.train.steps, batch_size,
                                    fingerprint))
    shutil.rmtree(run.state_dir(width), ignore_errors=True)
    if run.state_dir(width).parent.is_dir() and not any(run.state_dir(width).parent.iterdir()):
        run.state_dir(width).parent.rmdir()
    return result
