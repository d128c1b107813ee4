"""Training: one model per patch width, with validation, checkpoints, resume and history.

:func:`train` is what ``segmenter train`` calls. For each patch width it builds the residual
encoder-decoder, trains it for ``train.steps`` batches of random patches (``data/pipeline.py``)
with Keras' ``fit`` under the chosen ``tf.distribute`` strategy, and every ``validate_every``
steps:

1. measures the loss and the water IoU on a fixed, seeded set of test patches;
2. saves a checkpoint (model + optimiser state) to ``state/pw<W>/`` and only then records it
   in ``state.json`` (so a kill -9 at any moment leaves the previous checkpoint usable);
3. rewrites the history CSV and the width's status file (from which ``manifest.json`` is made).

A resumed width restarts at its checkpoint's step with the same optimiser state; because the
patches of step ``n`` depend only on ``(seed, width, n)``, it then sees exactly the batches an
uninterrupted run would have seen. At most one validation interval of work is redone.

A non-finite training loss stops that width at once (no checkpoint is written after it), marks
it ``failed`` with a message, and leaves its last good checkpoint in place; the other widths
still train.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segmenter.config import Config
from segmenter.data.pipeline import (
    PatchSource,
    eligible_images,
    training_dataset,
    validation_patches,
)
from segmenter.errors import ConfigError, DataError, Interrupted, RunError
from segmenter.fileio import atomic_path
from segmenter.runs import Run, prepare_run, remove_stale_temporaries

log = logging.getLogger("segmenter.training")

__all__ = ["WidthResult", "train", "validation_scores"]


@dataclass
class WidthResult:
    """What happened to one width in this job."""

    width: int
    status: str  # "finished", "skipped" (finished earlier) or "failed"
    steps_done: int
    steps: int
    final_loss: float | None = None
    final_val_loss: float | None = None
    final_val_water_iou: float | None = None
    seconds: float = 0.0
    message: str = ""
    model_path: str | None = None

    def summary_line(self) -> str:
        """One line per width for the end of ``segmenter train``."""
        if self.status == "skipped":
            return f"pw{self.width}: finished earlier ({self.steps_done} steps); untouched"
        if self.status == "failed":
            return f"pw{self.width}: FAILED at step {self.steps_done}/{self.steps}: {self.message}"
        rate = self.steps_done / self.seconds if self.seconds > 0 else float("nan")
        parts = [
            f"pw{self.width}: {self.steps_done} steps in {self.seconds:.0f} s ({rate:.1f} steps/s)",
            f"loss {_fmt(self.final_loss)}",
        ]
        if self.final_val_loss is not None:
            parts.append(f"val_loss {_fmt(self.final_val_loss)}")
            parts.append(f"val water IoU {_fmt(self.final_val_water_iou, 3)}")
        else:
            parts.append("no validation")
        return ", ".join(parts) + (f" -> {self.model_path}" if self.model_path else "")


@dataclass
class _Progress:
    """Per-width mutable state shared by the Keras callback and the training loop."""

    step: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failed: str = ""
    last_checkpoint: int = 0

    def seconds(self) -> float:
        return self.seconds_before + (time.monotonic() - self.started)


class _CtrlC:
    """Turn the first Ctrl-C into a request that training honours at the next step.

    A ``KeyboardInterrupt`` raised inside TensorFlow's C++ (building the next width's model,
    inside ``fit``) could be swallowed, or surface as a ``SystemError``; a flag set by the
    handler is checked after every batch and between widths instead, so training stops within
    a step, writes the width's status as ``interrupted`` and keeps its last checkpoint. A
    second Ctrl-C raises at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after the current step (press again to stop at once)")


#: The Ctrl-C guard of the training in progress (None outside :func:`train`).
_ctrl_c: _CtrlC | None = None


def _stop_requested() -> bool:
    return _ctrl_c is not None and _ctrl_c.requested


def validation_scores(lands: np.ndarray, raw: np.ndarray, cfg: Config) -> float:
    """Water IoU of a model's raw validation output against land labels.

    The raw output is read as a probability the way the saved model's output is
    (:func:`segmenter.losses.uses_logits`: the sigmoid of logits; an MSE-trained linear output
    as is, which thresholds like its clipped value), then water is ``prob <= 0.5`` and the
    label's water ``land < 0.5``: the same masks and scores :mod:`segmenter.metrics` gives
    ``evaluate`` (1.0 when neither side has any water).
    """
    from segmenter import metrics
    from segmenter.losses import uses_logits

    raw = np.asarray(raw, np.float32)
    prob = 1.0 / (1.0 + np.exp(-raw)) if uses_logits(cfg.model.activation, cfg.train.loss) else raw
    truth = metrics.water_from_land(lands)
    return metrics.confusion(metrics.water_from_prob(prob, 0.5), truth).scores()["water_iou"]


def train(
    cfg: Config,
    out: str | Path,
    *,
    widths: list[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    dataset: Any = None,
    progress: bool | None = None,
) -> list[WidthResult]:
    """Train every configured patch width (or only ``widths``) into the run directory ``out``.

    Args:
        cfg: the resolved config.
        out: the run directory.
        widths: ``--patch-width`` values; ``None`` trains every width of ``train.widths``.
        resume: continue unfinished widths from their checkpoints; finished ones are untouched.
        overwrite: start the run (or, with ``widths``, those widths) again.
        dataset: an already loaded ``Dataset`` (tests and scripts); default: load ``cfg.data``.
        progress: draw Keras' progress bar; default: when stdout is a terminal.

    Returns:
        One :class:`WidthResult` per width; ``failed`` ones carry the reason.

    Raises:
        SegmenterError: bad widths, no training pairs, an unusable run directory.
    """
    from segmenter.distribute import describe, is_chief, select_strategy
    from segmenter.tfenv import start_tensorflow

    start_tensorflow()
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs any operation.
    strategy = select_strategy(cfg.train)
    chief = is_chief(strategy)
    chosen = _chosen_widths(cfg, widths)
    # Check the run directory first (a refusal is cheap), but change it (--overwrite clears
    # the old run) only once the data have loaded and can train every chosen width.
    run_args = dict(resume=resume, overwrite=overwrite, partial=widths is not None,
                    write=chief)
    checked = prepare_run(out, cfg, chosen, check_only=True, **run_args)

    if dataset is None:
        from segmenter.data.ontario import load_dataset

        dataset = load_dataset(cfg.data)
        log.info("%s", dataset.summary())
    if not dataset.train:
        raise DataError(f"{cfg.data.source}: no training pairs (train/ is empty)")
    for width in chosen:
        if not any(min(item.land.shape[:2]) >= width for item in dataset.train):
            raise DataError(
                f"patch width {width}: no training image is at least {width}x{width} pixels "
                f"(lower the width or raise data.scale)"
            )
    # The widths that stay in the run (all of them, unless --overwrite clears them).
    kept = {} if overwrite and widths is None else {
        w: st for w, st in checked.statuses().items() if not (overwrite and w in chosen)
    }
    recorded = next((str(st["data_fingerprint"]) for st in kept.values()
                     if st.get("data_fingerprint")), None)
    legacy = getattr(dataset, "legacy_fingerprint", None)
    if recorded and recorded == legacy and recorded != dataset.fingerprint:
        log.warning("%s: this run recorded only the names and sizes of its data (an older "
                    "segmenter); their content cannot be checked", checked.path)
    elif recorded and recorded != dataset.fingerprint and (resume or widths is not None):
        raise RunError(
            f"{checked.path}: the data differ from the data this run was trained on "
            f"(fingerprint {dataset.fingerprint} != {recorded}); use another --out"
        )
    run = prepare_run(out, cfg, chosen, **run_args)
    log.info("training widths %s into %s (%s)", ", ".join(map(str, chosen)), run.path,
             describe(strategy))
    if not dataset.test:
        log.warning("no test pairs: validation is off (no val_loss, no water IoU, no val score)")

    if progress is None:
        progress = sys.stdout.isatty()
    global _ctrl_c
    with _CtrlC() as guard:
        _ctrl_c = guard
        try:
            return _train_widths(run, cfg, dataset, chosen, strategy, chief, resume, progress)
        finally:
            _ctrl_c = None


def _train_widths(run: Run, cfg: Config, dataset: Any, chosen: list[int], strategy: Any,
                  chief: bool, resume: bool, progress: bool) -> list[WidthResult]:
    results = []
    for width in chosen:
        status = run.status(width) or {}
        if status.get("status") == "finished" and run.model_path(width).is_file():
            results.append(WidthResult(
                width, "skipped", int(status.get("steps_done", 0)), cfg.train.steps,
                status.get("final_loss"), status.get("final_val_loss"),
                status.get("final_val_water_iou"),
            ))
            log.info("%s", results[-1].summary_line())
            continue
        try:
            result = _train_width(run, cfg, dataset, width, strategy, chief, resume, progress)
        except (Interrupted, KeyboardInterrupt):
            if chief:
                _mark_interrupted(run, width, cfg, dataset.fingerprint)
            raise
        log.info("%s", result.summary_line())
        results.append(result)
    return results


def _mark_interrupted(run: Run, width: int, cfg: Config, fingerprint: str) -> None:
    """Record that ``width`` was stopped by Ctrl-C (its last checkpoint stays resumable)."""
    status = run.status(width) or {}
    state = run.read_state(width) or {}
    run.write_status(width, {
        **status,
        "status": "interrupted",
        "steps_done": int(state.get("step", status.get("steps_done", 0))),
        "steps": cfg.train.steps,
        "batch_size": cfg.train.widths[width],
        "data_fingerprint": fingerprint,
    })


def _interrupted(run: Run, width: int, step: int, checkpoint: int) -> Interrupted:
    return Interrupted(
        f"interrupted: pw{width} stopped at step {step}, its last checkpoint is step "
        f"{checkpoint}; continue with `segmenter train --resume --out {run.path}`"
    )


def _chosen_widths(cfg: Config, widths: list[int] | None) -> list[int]:
    configured = list(cfg.train.widths)
    if not widths:
        return configured
    chosen = []
    for width in widths:
        if width not in cfg.train.widths:
            raise ConfigError(
                f"--patch-width {width}: not in train.widths "
                f"({', '.join(map(str, configured))}); add it with its batch size"
            )
        if width not in chosen:
            chosen.append(width)
    return chosen


def _train_width(
    run: Run,
    cfg: Config,
    dataset: Any,
    width: int,
    strategy: Any,
    chief: bool,
    resume: bool,
    progress: bool,
) -> WidthResult:
    steps = cfg.train.steps
    batch_size = cfg.train.widths[width]
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        log.warning("pw%d: batch size %d does not divide over %d replicas; replicas get "
                    "unequal shares", width, batch_size, replicas)
    train_items = eligible_images(dataset.train, width, "train")
    if not train_items:
        raise DataError(
            f"patch width {width}: no training image is at least {width}x{width} pixels "
            f"(lower the width or raise data.scale)"
        )
    test_items = eligible_images(dataset.test, width, "test") if dataset.test else []
    val_batches = validation_patches(
        test_items, width, batch_size, cfg.train.validation_batches, seed=cfg.train.seed
    )
    if dataset.test and not val_batches:
        log.warning("pw%d: no test image is large enough; validation is off for this width",
                    width)

    if chief:
        remove_stale_temporaries(run, width)
    state = run.read_state(width) if resume else None
    if state is not None and int(state.get("batch_size", batch_size)) != batch_size:
        raise RunError(f"{run.path}: pw{width} checkpoint has another batch size")
    tracker = _Progress(step=int(state["step"]) if state else 0)
    if state:
        tracker.rows = list(state.get("history", []))
        tracker.seconds_before = float(state.get("seconds", 0.0))
        tracker.last_checkpoint = tracker.step
        log.info("pw%d: resuming at step %d/%d", width, tracker.step, steps)

    try:
        return _fit_width(run, cfg, dataset, width, strategy, chief, progress, train_items,
                          val_batches, state, tracker)
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        message = _oom_message(width, batch_size)
        tracker.failed = message
        log.debug("pw%d: %s", width, exc)
        if chief:
            run.write_status(width, {**_status(tracker, "failed", steps, batch_size,
                                               dataset.fingerprint), "message": message})
        return WidthResult(width, "failed", tracker.last_checkpoint, steps,
                           seconds=tracker.seconds(), message=message)


def _out_of_memory(exc: BaseException) -> bool:
    """TensorFlow's ResourceExhaustedError (CPU or GPU allocator), or Python's MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    import tensorflow as tf

    return isinstance(exc, tf.errors.ResourceExhaustedError)


def _oom_message(width: int, batch_size: int) -> str:
    import tensorflow as tf

    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    return (
        f"out of {device} memory training patch width {width} with batch size {batch_size}; "
        f"lower the batch size (train.widths.{width}) or the patch width"
    )


def _fit_width(run: Run, cfg: Config, dataset: Any, width: int, strategy: Any, chief: bool,
               progress: bool, train_items: list, val_batches: list,
               state: dict[str, Any] | None, tracker: _Progress) -> WidthResult:
    from segmenter.distribute import precision

    steps, every = cfg.train.steps, cfg.train.validate_every
    batch_size = cfg.train.widths[width]
    with precision(cfg.train):
        with strategy.scope():
            keras.utils.set_random_seed(cfg.train.seed)
            model = _compiled_model(cfg, state)
        if _stop_requested():  # Ctrl-C while the model was built
            raise _interrupted(run, width, tracker.step, tracker.last_checkpoint)
        _avoid_multiworker_build_reduce(model, strategy, width, batch_size)
        loss_fn = _loss(cfg)
        tracker.started = time.monotonic()
        callback = _WidthCallback(run, cfg, width, batch_size, model, loss_fn, val_batches,
                                  tracker, chief, dataset.fingerprint, progress)
        callbacks: list[Any] = [callback]
        if cfg.train.tensorboard and chief:
            callbacks.append(keras.callbacks.TensorBoard(
                log_dir=str(run.tensorboard_dir(width)), write_graph=False
            ))
        source = PatchSource.from_images(train_items)
        if chief:
            run.write_status(width, _status(tracker, "running", steps, batch_size,
                                            dataset.fingerprint))
        for first, epochs, per_epoch in _segments(tracker.step, steps, every):
            batches = training_dataset(
                source, width, batch_size, seed=cfg.train.seed, start_step=first,
                steps=first + epochs * per_epoch, augment=cfg.train.augment,
            )
            initial = first // every
            model.fit(batches, epochs=initial + epochs, initial_epoch=initial,
                      steps_per_epoch=per_epoch, verbose=0, callbacks=callbacks, shuffle=False)
            if tracker.failed or _stop_requested():
                break
        callback.close()
    if _stop_requested() and not tracker.failed:
        raise _interrupted(run, width, tracker.step, tracker.last_checkpoint)

    if tracker.failed:
        if chief:
            run.write_status(width, {**_status(tracker, "failed", steps, batch_size,
                                               dataset.fingerprint),
                                     "message": tracker.failed})
        return WidthResult(width, "failed", tracker.step, steps, seconds=tracker.seconds(),
                           message=tracker.failed)
    return _finish(run, cfg, width, batch_size, model, tracker, chief, dataset.fingerprint)


def _avoid_multiworker_build_reduce(model: Any, strategy: Any, width: int,
                                    batch_size: int) -> None:
    """Work around Keras 3.15 ``fit`` failing at once under MultiWorkerMirroredStrategy.

    Before training, Keras builds the model symbolically from a first batch that it averages
    across workers with ``strategy.reduce`` on the ``(x, y)`` tuple, which the collective
    all-reduce cannot take ("Attempt to convert a value (PerReplica ...)"). Only shapes and
    dtypes matter for that build, so a local example batch is used instead.
    """
    if type(strategy).__name__ not in {"CollectiveAllReduceStrategy",
                                       "MultiWorkerMirroredStrategy"}:
        return
    from segmenter.distribute import require_keras_private

    require_keras_private(model, ["_maybe_symbolic_build", "_symbolic_build"],
                          "multi-worker model build")
    example = (np.zeros((batch_size, width, width, 3), np.float32),
               np.zeros((batch_size, width, width, 1), np.float32))

    def build_locally(iterator: Any = None, data_batch: Any = None) -> None:
        with strategy.scope():
            model._symbolic_build(data_batch=example)

    model._maybe_symbolic_build = build_locally


def _segments(start: int, steps: int, every: int) -> list[tuple[int, int, int]]:
    """``fit`` calls as (first step, epochs, steps per epoch): whole intervals, then the rest.

    An epoch is one validation interval, so Keras' ``on_epoch_end`` is where validation and
    checkpoints happen; a shorter last interval needs its own ``fit`` call.
    """
    remaining = steps - start
    full, rest = divmod(max(remaining, 0), every)
    segments = []
    if full:
        segments.append((start, full, every))
    if rest:
        segments.append((start + full * every, 1, rest))
    return segments


def _loss(cfg: Config):
    from segmenter.losses import get_loss, uses_logits

    return get_loss(cfg.train.loss, from_logits=uses_logits(cfg.model.activation, cfg.train.loss))


def _compiled_model(cfg: Config, state: dict[str, Any] | None):
    """Build and compile the model; restore weights and optimiser state from a checkpoint."""
    from segmenter.model import build_model

    model = build_model(cfg.model)
    rate: Any = cfg.train.learning_rate
    if cfg.train.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            cfg.train.learning_rate, decay_steps=cfg.train.steps, alpha=0.05
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=rate),
        loss=_loss(cfg),
        jit_compile=bool(cfg.train.jit_compile),
    )
    if state is not None:
        model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(state["checkpoint_path"])
        except (OSError, ValueError) as exc:
            where = state["checkpoint_path"]
            raise RunError(f"{where}: cannot restore checkpoint ({exc})") from exc
    return model


def _status(tracker: _Progress, status: str, steps: int, batch_size: int,
            fingerprint: str) -> dict[str, Any]:
    last = tracker.rows[-1] if tracker.rows else {}
    return {
        "status": status,
        "steps_done": tracker.last_checkpoint if status != "finished" else tracker.step,
        "steps": steps,
        "batch_size": batch_size,
        "final_loss": last.get("loss"),
        "final_val_loss": last.get("val_loss"),
        "final_val_water_iou": last.get("val_water_iou"),
        "seconds": round(tracker.seconds(), 2),
        "data_fingerprint": fingerprint,
    }


def _finish(run: Run, cfg: Config, width: int, batch_size: int, model: Any, tracker: _Progress,
            chief: bool, fingerprint: str) -> WidthResult:
    """Save the final float32 model, the loss curve and the status; drop the checkpoints.

    A linear model trained with a loss on logits (``bce``, ``dice``, ``bce_dice``) is saved
    with a sigmoid head (the activation has no weights), so every saved model outputs the
    probability of land; an MSE-trained linear model keeps its raw output, as the notebook's.
    """
    from segmenter.losses import uses_logits
    from segmenter.model import build_model

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
    _plot_history(run, width, tracker.rows)
    run.write_status(width, _status(tracker, "finished", cfg.train.steps, batch_size,
                                    fingerprint))
    shutil.rmtree(run.state_dir(width), ignore_errors=True)
    if run.state_dir(width).parent.is_dir() and not any(run.state_dir(width).parent.iterdir()):
        run.state_dir(width).parent.rmdir()
    return result


def _plot_history(run: Run, width: int, rows: list[dict[str, Any]]) -> None:
    """The loss curve (training and validation loss, validation water IoU) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, (loss_axis, iou_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(steps, [_nan(row.get("loss")) for row in rows], "o-", label="training")
    if any(row.get("val_loss") is not None for row in rows):
        loss_axis.plot(steps, [_nan(row.get("val_loss")) for row in rows], "s-",
                       label="validation")
    loss_axis.set(xlabel="step", ylabel="loss", title=f"pw{width}: loss")
    loss_axis.legend()
    iou_axis.plot(steps, [_nan(row.get("val_water_iou")) for row in rows], "s-", color="C2")
    iou_axis.set(xlabel="step", ylabel="water IoU", title=f"pw{width}: validation water IoU",
                 ylim=(0, 1))
    figure.tight_layout()
    with atomic_path(run.plot_path(width)) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)


class _WidthCallback(keras.callbacks.Callback):
    """Progress bar, non-finite loss check, validation, checkpoint and history per interval."""

    def __init__(self, run: Run, cfg: Config, width: int, batch_size: int, model: Any,
                 loss_fn: Any, val_batches: list, tracker: _Progress, chief: bool,
                 fingerprint: str, progress: bool) -> None:
        super().__init__()
        self.run, self.cfg, self.width, self.batch_size = run, cfg, width, batch_size
        self.net, self.loss_fn, self.val_batches = model, loss_fn, val_batches
        self.tracker, self.chief, self.fingerprint = tracker, chief, fingerprint
        self.bar = None
        if progress:
            self.bar = keras.utils.Progbar(
                cfg.train.steps, stateful_metrics=["loss", "val_loss", "water_iou"],
                unit_name="step",
            )
            self.bar.update(tracker.step)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.tracker.step += 1
        if _stop_requested():
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
        if self.tracker.failed or _stop_requested():  # no checkpoint mid-interval
            return
        logs = logs if logs is not None else {}
        row: dict[str, Any] = {"step": self.tracker.step, "loss": float(logs.get("loss", "nan"))}
        val_loss, iou = self._validate()
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
            log_line += f", val_loss {val_loss:.4f}, val water IoU {_fmt(iou, 3)}"
        if self.bar is not None:
            self.bar.update(self.tracker.step, values=[("val_loss", val_loss or float("nan")),
                                                       ("water_iou", iou or float("nan"))])
            sys.stdout.write("\n")
        log.info("%s", log_line)
        self._checkpoint()

    def _validate(self) -> tuple[float | None, float | None]:
        if not self.val_batches:
            return None, None
        from segmenter.inference import compiled_infer

        # The raw output (logits of a linear model): what the loss compares during training.
        infer = compiled_infer(self.net, (self.width, self.width))
        losses, truths, preds = [], [], []
        for images, lands in self.val_batches:
            raw = infer(images).numpy()[..., None]
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
        self.run.write_state(self.width, {
            "step": tracker.step,
            "checkpoint": name,
            "batch_size": self.batch_size,
            "seconds": round(tracker.seconds(), 2),
            "history": tracker.rows,
        })
        tracker.last_checkpoint = tracker.step
        self.run.write_history(self.width, tracker.rows)
        self.run.write_status(self.width, _status(tracker, "running", self.cfg.train.steps,
                                                  self.batch_size, self.fingerprint))

    def close(self) -> None:
        """End the progress bar's line."""
        if self.bar is not None:
            sys.stdout.flush()


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
