"""Training: one model per patch width, with validation, checkpoints, resume and history.

:func:`train` is what ``segmenter train`` calls. For each patch width it builds the residual
encoder-decoder, trains it for ``train.steps`` batches of random patches (``training/pipeline.py``)
with Keras' ``fit`` on the chosen devices (:mod:`segmenter.training.distribute`), and every
``validate_every`` steps:

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

import contextlib
import importlib.util
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from segmenter.config import Config
from segmenter.errors import ConfigError, DataError, Interrupted, RunError
from segmenter.runs import Run
from segmenter.runstate import CheckpointState, WidthStatus
from segmenter.training import ctrlc, warmstart
from segmenter.training.callback import Progress, WidthCallback, width_status
from segmenter.training.ctrlc import stop_requested
from segmenter.training.export import finish
from segmenter.training.pipeline import (
    PatchSource,
    eligible_images,
    training_dataset,
    validation_patches,
)
from segmenter.training.plan import RunPlan, remove_stale_temporaries
from segmenter.training.result import WidthResult

log = logging.getLogger("segmenter.training")

#: ``train.ema``: pixels of training patches on which the average of the weights measures its
#: BatchNorm statistics (256 patches of 64 px, 64 of 128 px), once per validation and for the
#: saved model: one forward pass, about what 4-8 training steps cost.
EMA_NORM_PIXELS = 2**20


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
    from segmenter.tfenv import start_tensorflow
    from segmenter.training.distribute import (
        check_batch_sizes,
        describe,
        is_chief,
        select_strategy,
    )

    start_tensorflow()
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs any operation.
    strategy = select_strategy(cfg.train)
    chief = is_chief(strategy)
    chosen = _chosen_widths(cfg, widths)
    check_batch_sizes(strategy, {width: cfg.train.widths[width] for width in chosen})
    # Check the run directory first (a refusal is cheap), but change it (--overwrite clears
    # the old run) only once the data have loaded and can train every chosen width.
    checked = RunPlan(Path(out), cfg, chosen, resume=resume, overwrite=overwrite,
                      partial=widths is not None, write=chief).check()
    fresh = checked.fresh_widths()  # only these need train.init_from's run, refused now
    source = warmstart.open_source(cfg, Path(out), fresh)

    if dataset is None:
        from segmenter.data.ontario import load_dataset

        dataset = load_dataset(cfg.data)
        log.info("%s", dataset.summary())
    from segmenter.data.diversity import diversity_warnings

    for line in diversity_warnings(dataset.train, cfg.train.augment.greyscale):
        log.warning("training data: %s", line)
    if not dataset.train:
        raise DataError(f"{cfg.data.source}: no training pairs (train/ is empty)")
    for width in chosen:
        if not any(min(item.land.shape[:2]) >= width for item in dataset.train):
            raise DataError(
                f"patch width {width}: no training image is at least {width}x{width} pixels "
                f"(lower the width or raise data.scale)"
            )
    # The widths that stay in the run (all of them, unless --overwrite clears them).
    recorded = next((st.data_fingerprint for st in checked.kept_statuses().values()
                     if st.data_fingerprint), None)
    legacy = getattr(dataset, "legacy_fingerprint", None)
    if recorded and recorded == legacy and recorded != dataset.fingerprint:
        log.warning("%s: this run recorded only the names and sizes of its data (an older "
                    "segmenter); their content cannot be checked", checked.path)
    elif recorded and recorded != dataset.fingerprint and (resume or widths is not None):
        raise RunError(
            f"{checked.path}: the data differ from the data this run was trained on "
            f"(fingerprint {dataset.fingerprint} != {recorded}); use another --out"
        )
    cfg = _resolve_orientation(cfg, dataset, checked, source)
    start: dict[int, list[Any]] = {}
    if source is not None:
        warmstart.check_architecture(source, cfg)
        start = warmstart.source_weights(source, fresh)
    checked = replace(checked, plan=replace(checked.plan, config=cfg))
    run = checked.apply()
    log.info("training widths %s into %s (%s)", ", ".join(map(str, chosen)), run.path,
             describe(strategy))
    if not dataset.test:
        log.warning("no test pairs: validation is off (no val_loss, no water IoU, no val score)")

    if progress is None:
        progress = sys.stdout.isatty()
    with ctrlc.guard():
        return _train_widths(run, cfg, dataset, chosen, strategy, chief, resume, progress,
                             start)


def _resolve_orientation(cfg: Config, dataset: Any, checked: Any, source: Run | None) -> Config:
    """``data.upright`` and then ``model.row_channel`` decided (:mod:`segmenter.data.orientation`).

    ``data.upright: auto``: a continued run keeps the value it saved, a fine-tuned one its
    source run's (``train.init_from``), a new one decides from its training labels.
    ``model.row_channel: auto`` follows it (a continued or fine-tuned run keeps the saved one).
    """
    from segmenter.data.orientation import (
        detect_upright,
        keep_saved_upright,
        with_row_channel,
        with_upright,
    )

    saved = checked.existing.config if checked.action == "continue" else None
    if saved is None and source is not None:
        saved = source.config
        warmstart.check_upright(source, cfg)
    if cfg.data.upright == "auto" and saved is not None:
        cfg = keep_saved_upright(cfg, saved)
    if cfg.data.upright == "auto":
        orientation = detect_upright(dataset.train)
        log.info("data.upright auto: %s", orientation.describe())
        cfg = with_upright(cfg, orientation.upright)
    cfg = with_row_channel(cfg, saved)
    if cfg.model.has_row_channel:
        log.info("model.row_channel: the networks also read each pixel's row in the photo")
    return cfg


def _train_widths(run: Run, cfg: Config, dataset: Any, chosen: list[int], strategy: Any,
                  chief: bool, resume: bool, progress: bool,
                  start: dict[int, list[Any]] | None = None) -> list[WidthResult]:
    results = []
    for width in chosen:
        status = run.status(width)
        finished = status is not None and status.status == "finished"
        if finished and run.model_path(width).is_file():
            results.append(WidthResult(
                width, "skipped", status.steps_done, cfg.train.steps,
                status.final_loss, status.final_val_loss, status.final_val_water_iou,
            ))
            log.info("%s", results[-1].summary_line())
            continue
        try:
            result = _train_width(run, cfg, dataset, width, strategy, chief, resume, progress,
                                  (start or {}).get(width))
        except (Interrupted, KeyboardInterrupt):
            if chief:
                _mark_interrupted(run, width, cfg, dataset.fingerprint)
            raise
        log.info("%s", result.summary_line())
        results.append(result)
    return results


def _mark_interrupted(run: Run, width: int, cfg: Config, fingerprint: str) -> None:
    """Record that ``width`` was stopped by Ctrl-C (its last checkpoint stays resumable)."""
    status = run.status(width) or WidthStatus(status="interrupted")
    state = run.read_state(width)
    run.write_status(width, status.model_copy(update={
        "status": "interrupted",
        "steps_done": state.step if state is not None else status.steps_done,
        "steps": cfg.train.steps,
        "batch_size": cfg.train.widths[width],
        "data_fingerprint": fingerprint,
        "backend": keras.backend.backend(),
    }))


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
    start: list[Any] | None = None,
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
        test_items, width, batch_size, cfg.train.validation_batches, seed=cfg.train.seed,
        row_channel=cfg.model.has_row_channel,
    )
    if dataset.test and not val_batches:
        log.warning("pw%d: no test image is large enough; validation is off for this width",
                    width)

    if chief:
        remove_stale_temporaries(run, width)
    state = run.read_state(width) if resume else None
    if state is not None and state.batch_size != batch_size:
        raise RunError(f"{run.path}: pw{width} checkpoint has another batch size")
    tracker = Progress(step=state.step if state else 0)
    if state:
        tracker.rows = list(state.history)
        tracker.seconds_before = state.seconds
        tracker.last_checkpoint = tracker.step
        log.info("pw%d: resuming at step %d/%d", width, tracker.step, steps)

    try:
        return _fit_width(run, cfg, dataset, width, strategy, chief, progress, train_items,
                          val_batches, state, tracker, start)
    except Exception as exc:
        from segmenter.training.distribute import oom_message, out_of_memory

        if not out_of_memory(exc):
            raise
        message = oom_message(width, batch_size)
        tracker.failed = message
        log.debug("pw%d: %s", width, exc)
        if chief:
            run.write_status(width, width_status(tracker, "failed", steps, batch_size,
                                                 dataset.fingerprint, message))
        return WidthResult(width, "failed", tracker.last_checkpoint, steps,
                           seconds=tracker.seconds(), message=message)


def _fit_width(run: Run, cfg: Config, dataset: Any, width: int, strategy: Any, chief: bool,
               progress: bool, train_items: list, val_batches: list,
               state: CheckpointState | None, tracker: Progress,
               start: list[Any] | None = None) -> WidthResult:
    from segmenter.training.distribute import (
        LocalDevices,
        avoid_multiworker_build_reduce,
        precision,
    )

    steps, every = cfg.train.steps, cfg.train.validate_every
    batch_size = cfg.train.widths[width]
    # On JAX the data-parallel distribution must be in force for fit too, not only the build.
    local = isinstance(strategy, LocalDevices)
    with precision(cfg.train), (strategy.scope() if local else contextlib.nullcontext()):
        with strategy.scope():
            keras.utils.set_random_seed(cfg.train.seed)
            model = compiled_model(cfg, state)
            if state is None and start is not None:  # a checkpoint of this run wins
                warmstart.copy_weights(start, model, f"{cfg.train.init_from}: pw{width}")
        if stop_requested():  # Ctrl-C while the model was built
            raise _interrupted(run, width, tracker.step, tracker.last_checkpoint)
        avoid_multiworker_build_reduce(model, strategy, width, batch_size)
        loss_fn = loss_function(cfg)
        tracker.started = time.monotonic()
        patches = PatchSource.from_images(train_items, row_channel=cfg.model.has_row_channel)
        norm_windows = averaging_windows(patches, cfg, width) if cfg.train.ema else None
        callback = WidthCallback(run, cfg, width, batch_size, model, loss_fn, val_batches,
                                  tracker, chief, dataset.fingerprint, progress, norm_windows)
        callbacks: list[Any] = [callback]
        if cfg.train.tensorboard and chief:
            if importlib.util.find_spec("tensorflow") is None:
                log.warning("train.tensorboard: TensorFlow is not installed, which writes the "
                            "logs; training goes on without them")
            else:
                callbacks.append(keras.callbacks.TensorBoard(
                    log_dir=str(run.tensorboard_dir(width)), write_graph=False
                ))
        if chief:
            run.write_status(width, width_status(tracker, "running", steps, batch_size,
                                            dataset.fingerprint))
        for first, epochs, per_epoch in _segments(tracker.step, steps, every):
            batches = training_dataset(
                patches, width, batch_size, seed=cfg.train.seed, start_step=first,
                steps=first + epochs * per_epoch, augment=cfg.train.augment,
                upright=cfg.data.is_upright,
            )
            initial = first // every
            model.fit(batches, epochs=initial + epochs, initial_epoch=initial,
                      steps_per_epoch=per_epoch, verbose=0, callbacks=callbacks, shuffle=False)
            if tracker.failed or stop_requested():
                break
        callback.close()
    if stop_requested() and not tracker.failed:
        raise _interrupted(run, width, tracker.step, tracker.last_checkpoint)

    if tracker.failed:
        if chief:
            run.write_status(width, width_status(tracker, "failed", steps, batch_size,
                                                 dataset.fingerprint, tracker.failed))
        return WidthResult(width, "failed", tracker.step, steps, seconds=tracker.seconds(),
                           message=tracker.failed)
    return finish(run, cfg, width, batch_size, model, tracker, chief, dataset.fingerprint,
                  norm_windows)


def averaging_windows(source: PatchSource, cfg: Config, width: int) -> np.ndarray:
    """The training patches on which ``train.ema``'s average measures its BatchNorm statistics.

    :data:`EMA_NORM_PIXELS` worth of patches (at least one batch), drawn and augmented as
    training's are, from the steps after the last one: fixed by the seed, so validation and
    the saved model use the same, and a resumed run draws them again.
    """
    batch_size = cfg.train.widths[width]
    count = max(1, math.ceil(EMA_NORM_PIXELS / (width * width * batch_size)))
    steps = cfg.train.steps
    batches = training_dataset(source, width, batch_size, seed=cfg.train.seed, start_step=steps,
                               steps=steps + count, augment=cfg.train.augment,
                               upright=cfg.data.is_upright)
    return np.concatenate([np.asarray(images) for images, _ in batches])


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


def loss_function(cfg: Config):
    from segmenter.model.losses import get_loss, uses_logits

    return get_loss(cfg.train.loss, from_logits=uses_logits(cfg.model.activation, cfg.train.loss))


def compiled_model(cfg: Config, state: CheckpointState | None):
    """Build and compile the model; restore weights and optimiser state from a checkpoint."""
    from segmenter.model.network import build_model

    model = build_model(cfg.model)
    rate: Any = cfg.train.learning_rate
    if cfg.train.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            cfg.train.learning_rate, decay_steps=cfg.train.steps, alpha=0.05
        )
    # With train.ema the optimiser keeps a moving average of the weights; the callback
    # validates it and the final model is it (see segmenter.training.callback.averaged_weights).
    ema = cfg.train.ema
    # On JAX an uncompiled train step runs op by op: always compile there.
    jit = bool(cfg.train.jit_compile) or keras.backend.backend() == "jax"
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=rate, use_ema=ema > 0,
                                        ema_momentum=ema or 0.99),
        loss=loss_function(cfg),
        jit_compile=jit,
    )
    if state is not None:
        model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(state.checkpoint_path)
        except (OSError, ValueError) as exc:
            where = state.checkpoint_path
            raise RunError(f"{where}: cannot restore checkpoint ({exc})") from exc
    return model
