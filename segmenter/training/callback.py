"""The Keras callback of one width: progress bar, non-finite loss check, validation,
checkpoint, history and status after every validation interval."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from segmenter.config import Config
from segmenter.fileio import atomic_path
from segmenter.runs import Run
from segmenter.runstate import CheckpointState, WidthState, WidthStatus
from segmenter.training.ctrlc import stop_requested
from segmenter.training.result import fmt

log = logging.getLogger("segmenter.training")


@dataclass
class Progress:
    """Per-width mutable state shared by the Keras callback and the training loop."""

    step: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failed: str = ""
    last_checkpoint: int = 0

    def seconds(self) -> float:
        return self.seconds_before + (time.monotonic() - self.started)


def validation_scores(lands: np.ndarray, raw: np.ndarray, cfg: Config) -> float:
    """Water IoU of a model's raw validation output against land labels.

    The raw output is read as a probability the way the saved model's output is
    (:func:`segmenter.model.losses.uses_logits`: the sigmoid of logits; an MSE-trained linear output
    as is, which thresholds like its clipped value), then water is ``prob <= 0.5`` and the
    label's water ``land < 0.5``: the same masks and scores :mod:`segmenter.metrics` gives
    ``evaluate`` (1.0 when neither side has any water).
    """
    from segmenter import metrics
    from segmenter.model.losses import uses_logits

    raw = np.asarray(raw, np.float32)
    prob = 1.0 / (1.0 + np.exp(-raw)) if uses_logits(cfg.model.activation, cfg.train.loss) else raw
    truth = metrics.water_from_land(lands)
    return metrics.confusion(metrics.water_from_prob(prob, 0.5), truth).scores()["water_iou"]


def width_status(tracker: Progress, status: WidthState, steps: int, batch_size: int,
                 fingerprint: str, message: str | None = None) -> WidthStatus:
    """The status record of a width as the tracker has it."""
    last = tracker.rows[-1] if tracker.rows else {}
    return WidthStatus(
        status=status,
        steps_done=tracker.last_checkpoint if status != "finished" else tracker.step,
        steps=steps,
        batch_size=batch_size,
        final_loss=last.get("loss"),
        final_val_loss=last.get("val_loss"),
        final_val_water_iou=last.get("val_water_iou"),
        seconds=round(tracker.seconds(), 2),
        data_fingerprint=fingerprint,
        backend=keras.backend.backend(),
        message=message,
    )


@contextmanager
def averaged_weights(model: Any, ema: bool,
                     windows: np.ndarray | None = None) -> Iterator[list[np.ndarray] | None]:
    """Inside the block the model holds its optimiser's moving average of the weights.

    ``train.ema`` keeps that average in the optimiser (Keras' ``use_ema``); validation reads
    it, since it is what the run will save, and the raw weights training goes on from (given
    to the block as a copy) are put back after it. With ``windows`` (training patches) the
    BatchNorm layers hold the average's own statistics in the block, measured on them
    (:func:`~segmenter.model.norm.recalibrate_norm`), and training's are back after it. Without
    ``ema`` the block changes nothing and is given None.
    """
    if not ema:
        yield None
        return
    from segmenter.model.norm import current_statistics, norm_statistics, recalibrate_norm

    raw = trainable_values(model)
    model.optimizer.finalize_variable_values(model.trainable_variables)
    try:
        if windows is None:
            yield raw
        else:
            with norm_statistics(model, current_statistics(model)):  # restored on the way out
                recalibrate_norm(model, windows)
                yield raw
    finally:
        assign_trainable(model, raw)


def trainable_values(model: Any) -> list[np.ndarray]:
    """A copy of the model's trainable weights (each replica holds the same under mirroring)."""
    return [variable.numpy() for variable in model.trainable_variables]


def assign_trainable(model: Any, values: list[np.ndarray]) -> None:
    """Put values from :func:`trainable_values` back (on every replica)."""
    for variable, value in zip(model.trainable_variables, values, strict=True):
        variable.assign(value)


class WidthCallback(keras.callbacks.Callback):
    """Progress bar, non-finite loss check, validation, checkpoint and history per interval."""

    def __init__(self, run: Run, cfg: Config, width: int, batch_size: int, model: Any,
                 loss_fn: Any, val_batches: list, tracker: Progress, chief: bool,
                 fingerprint: str, progress: bool,
                 norm_windows: np.ndarray | None = None) -> None:
        super().__init__()
        self.run, self.cfg, self.width, self.batch_size = run, cfg, width, batch_size
        self.net, self.loss_fn, self.val_batches = model, loss_fn, val_batches
        self.tracker, self.chief, self.fingerprint = tracker, chief, fingerprint
        self.ema = cfg.train.ema > 0
        self.norm_windows = norm_windows  # the average's BatchNorm statistics are measured on
        self.raw: list[np.ndarray] | None = None
        self.bar = None
        if progress:
            self.bar = keras.utils.Progbar(
                cfg.train.steps, stateful_metrics=["loss", "val_loss", "water_iou"],
                unit_name="step",
            )
            self.bar.update(tracker.step)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.tracker.step += 1
        if stop_requested():
            self.model.stop_training = True
            return
        loss = float((logs or {}).get("loss", float("nan")))
        if not math.isfinite(loss):
            self.tracker.failed = (
                f"training loss became {loss} at step {self.tracker.step}; stopped this width, "
                f"last good checkpoint at step {self.tracker.last_checkpoint} kept "
                f"(lower train.learning_rate or check the data)"
            )
            self.model.stop_training = True
            return
        if self.bar is not None:
            self.bar.update(self.tracker.step, values=[("loss", loss)])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.tracker.failed or stop_requested():  # no checkpoint mid-interval
            return
        logs = logs if logs is not None else {}
        row: dict[str, Any] = {"step": self.tracker.step, "loss": float(logs.get("loss", "nan"))}
        with averaged_weights(self.net, self.ema, self.norm_windows) as raw:
            val_loss, iou = self._validate()
        self.raw = raw  # the raw weights, which fit's end replaces with their average
        row.update(val_loss=val_loss, val_water_iou=iou, seconds=round(self.tracker.seconds(), 2))
        if val_loss is not None:
            logs["val_loss"] = val_loss
            if iou is not None:
                logs["val_water_iou"] = iou
        self.tracker.rows.append(row)
        log_line = (
            f"pw{self.width} step {row['step']}/{self.cfg.train.steps}: loss {row['loss']:.4f}"
        )
        if val_loss is not None:
            log_line += f", val_loss {val_loss:.4f}, val water IoU {fmt(iou, 3)}"
        if self.bar is not None:
            self.bar.update(self.tracker.step, values=[("val_loss", val_loss or float("nan")),
                                                       ("water_iou", iou or float("nan"))])
            sys.stdout.write("\n")
        log.info("%s", log_line)
        self._checkpoint()

    def on_train_end(self, logs: dict | None = None) -> None:
        # Keras' fit ends by putting the moving average in the model. Training may go on in
        # another fit call (a last, shorter interval), from the raw weights as a resumed run
        # would; the average is taken once, when the width is finished.
        if self.raw is not None:
            assign_trainable(self.net, self.raw)
            self.raw = None

    def _validate(self) -> tuple[float | None, float | None]:
        if not self.val_batches:
            return None, None
        from segmenter.model.compiled import compiled_infer

        # The raw output (logits of a linear model): what the loss compares during training.
        infer = compiled_infer(self.net, (self.width, self.width))
        losses, truths, preds = [], [], []
        for images, lands in self.val_batches:
            raw = infer(images)[..., None]
            losses.append(float(self.loss_fn(lands, raw)))
            truths.append(lands)
            preds.append(raw)
        iou = validation_scores(np.concatenate(truths), np.concatenate(preds), self.cfg)
        return float(np.mean(losses)), iou

    def _checkpoint(self) -> None:
        tracker = self.tracker
        if not self.chief:
            tracker.last_checkpoint = tracker.step
            return
        name = f"ckpt-{tracker.step:08d}.keras"
        with atomic_path(self.run.state_dir(self.width) / name) as tmp:
            self.net.save(tmp)
        self.run.write_state(self.width, CheckpointState(
            step=tracker.step, checkpoint=name, batch_size=self.batch_size,
            seconds=round(tracker.seconds(), 2), history=tracker.rows,
        ))
        tracker.last_checkpoint = tracker.step
        self.run.write_history(self.width, tracker.rows)
        self.run.write_status(self.width, width_status(tracker, "running", self.cfg.train.steps,
                                                  self.batch_size, self.fingerprint))

    def close(self) -> None:
        """End the progress bar's line."""
        if self.bar is not None:
            sys.stdout.flush()
