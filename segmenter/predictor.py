"""Predicting photos with a run's models: the library behind ``segmenter predict``.

Kept apart from the click command so scripts (benchmarks, the evaluation) call the same code:
:func:`load_models` gathers a run's finished models and validation scores once,
:func:`predict_photo` turns one photo into a probability map and a water mask, and
:func:`predict_inputs` runs a list of inputs to files, carrying on past unreadable ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmenter import outputs
from segmenter.config import Config
from segmenter.errors import RunError, SegmenterError

log = logging.getLogger(__name__)

#: photos of up to this many pixels are decoded one ahead and written behind, in a helper
#: thread, while the next is predicted; larger photos go strictly one at a time (memory).
LOOKAHEAD_PIXELS = 4_000_000


@dataclass
class LoadedModels:
    """A run's models for the widths to predict with, and each width's validation score."""

    models: dict[int, Any]
    scores: dict[int, float | None] = field(default_factory=dict)


@dataclass
class PhotoResult:
    """One photo's prediction: probability of land, water mask, and how they were made."""

    land_prob: np.ndarray
    water: np.ndarray
    per_scale: dict[int, np.ndarray]
    inference: dict[str, Any]
    threshold: dict[str, Any]
    seconds: float
    gmm_seconds: float


def load_models(run: Any, cfg: Config) -> LoadedModels:
    """Load the finished models of ``run`` that ``predict.widths`` asks for (null = all).

    Raises:
        RunError: the run has no finished model.
        ConfigError: ``predict.widths`` names a width the run has not finished.
    """
    wanted = run_widths(run, cfg)
    if cfg.predict.grey and cfg.train.augment.greyscale <= 0:
        log.warning(
            "predict.grey: %s trained without grey patches (train.augment.greyscale: 0), so "
            "its models never saw a grey photo; the grey passes may lower the masks",
            run.path,
        )
    models = {w: run.load_model(w) for w in wanted}
    scores = {w: run.val_score(w) for w in models}
    return LoadedModels(models=models, scores=scores)


def run_widths(run: Any, cfg: Config, where: str | None = None) -> list[int]:
    """The finished widths of ``run`` that ``predict.widths`` asks for (null = all), sorted.

    Args:
        where: how the user named the run (a URL fetched to ``run.path``), for messages.

    Raises:
        RunError: the run has no finished model.
        ConfigError: ``predict.widths`` names a width the run has not finished.
    """
    from segmenter.inference import select_models

    finished = run.finished_widths()
    where = where or str(run.path)
    if not finished:
        raise RunError(
            f"{where}: no finished models (models/pw<W>.keras); train first with "
            f"`segmenter train --out {where}`"
        )
    return sorted(select_models({w: w for w in finished}, cfg))  # the one check of widths


def predict_photo(loaded: LoadedModels, image: np.ndarray, cfg: Config,
                  keep_scales: bool | None = None) -> PhotoResult:
    """Probability map (merged over widths) and water mask of one float32 RGB photo."""
    from segmenter.inference import predict_land
    from segmenter.postprocess import water_mask

    started = time.perf_counter()
    prediction = predict_land(loaded.models, image, cfg, weights=loaded.scores,
                              keep_scales=keep_scales)
    tick = time.perf_counter()
    water, threshold = water_mask(prediction.land_prob, image, cfg.postprocess)
    done = time.perf_counter()
    return PhotoResult(
        land_prob=prediction.land_prob,
        water=water,
        per_scale=prediction.per_scale,
        inference=prediction.info,
        threshold=threshold,
        seconds=done - started,
        gmm_seconds=done - tick,
    )


def seconds_summary(seconds: list[float], gmm_seconds: list[float], wall: float,
                    noun: str = "photo") -> str:
    """One line on where a command's time went, per photo.

    Args:
        seconds: each photo's prediction seconds (probability map and mask).
        gmm_seconds: each photo's seconds in the mask step (the GMM) within ``seconds``.
        wall: seconds of the whole loop (reading, tracing the models on the first photo,
            predicting, writing); the per-photo figure is ``wall`` over the photo count.
        noun: what is counted ("photo", "image").
    """
    count = len(seconds)
    if not count:
        return f"no {noun}s predicted ({wall:.1f} s)"
    per = wall / count
    return (
        f"{count} {noun}(s) in {wall:.1f} s: {per:.2f} s per {noun} "
        f"(prediction median {float(np.median(seconds)):.2f} s, slowest {max(seconds):.2f} s; "
        f"mask step {float(np.mean(gmm_seconds)):.2f} s per {noun})"
    )


def check_overwrite(out_dir: Path, stems: list[str], overwrite: bool,
                    names: tuple[str, ...] = (outputs.SUMMARY_JSON, outputs.SUMMARY_CSV),
                    what: str = "predictions") -> None:
    """Refuse to replace earlier results in ``out_dir`` unless ``overwrite``.

    Args:
        out_dir: the output folder.
        stems: stems that will be written (every file a stem owns counts,
            :func:`segmenter.outputs_fs.owned_by`).
        overwrite: the ``--overwrite`` flag.
        names: whole-folder files that will be written (``evaluate`` passes its report's).
        what: the kind of results, for the message.

    Raises:
        RunError: naming the folder and the first file that would be replaced.
    """
    if overwrite:
        return
    from segmenter.outputs_fs import Output

    existing = Output(str(out_dir), None).existing(stems, names)
    if existing:
        raise RunError(
            f"{out_dir}: already holds {what} ({existing[0]}); pass --overwrite to "
            f"replace them or choose another --out"
        )


def predict_inputs(
    plan: Any,
    loaded: LoadedModels,
    cfg: Config,
    *,
    run_path: str = "",
    report: Callable[[str], None] | None = None,
    progress: Callable[[Any], Any] | None = None,
    vector: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Predict the inputs of ``plan`` in this process; unreadable ones are reported, skipped.

    Args:
        plan: the call's :class:`segmenter.jobs.JobPlan` (output folder or URL, stems, what
            ``--skip-existing`` skips).
        loaded: the run's models (:func:`load_models`).
        cfg: the effective config.
        run_path: recorded in the summary.
        report: called with one line per input (its result or its failure).
        progress: wraps the iteration over the inputs (e.g. a click progress bar).
        vector: rasters (GeoTIFF inputs, :mod:`segmenter.mosaic`) also get GeoJSON vectors.

    Returns:
        One record per input predicted (every input of the folder is in ``predictions.json``
        / ``.csv``) and the failure lines, in input order.
    """
    from segmenter import jobs, mosaic
    from segmenter.data.images import decode_photo

    report = report or (lambda line: None)
    output = plan.output
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    pairs = [(ref, stem) for _, ref, stem in plan.todo]

    def decode(ref: Any) -> tuple[np.ndarray, list[str]]:
        return decode_photo(ref.read_bytes(), str(ref.path))

    def fail(ref: Any, stem: str, exc: BaseException) -> None:
        message = jobs.failure_message(ref, exc)
        failures.append(message)
        record = jobs.failed_record(ref, stem, message)
        jobs.commit_failure(plan, record)
        records.append(record)
        report(f"FAILED {message}")

    def commit(record: dict[str, Any], folder: Path) -> None:
        names = list(record["outputs"].values())
        output.publish(folder, names)
        if output.remote:  # staged copies: uploaded, not kept
            for name in names:
                (folder / name).unlink(missing_ok=True)
        jobs.commit(plan, record)

    def finish(done: tuple[Any, ...]) -> None:
        """Wait for a photo's files, then record and report it (in input order)."""
        ref, stem, image_shape, notes, result, writing, folder = done
        try:
            files = writing.result()
            record, line = jobs.photo_record(ref, stem, result, image_shape, notes, files)
            commit(record, folder)
        except (SegmenterError, Exception) as exc:  # one photo's failure never stops the batch
            fail(ref, stem, exc)
            return
        log_threshold_decision(stem, result.threshold)
        records.append(record)
        report(line)

    # One helper thread reads and decodes the next photo and writes the previous photo's files
    # (PNG encoding) while this thread predicts: for photos of a megapixel or so those took a
    # tenth of the time per photo, in series with the model. Only photos of up to
    # LOOKAHEAD_PIXELS overlap so (at most one decoded ahead, one being written); larger ones
    # go one at a time, which keeps the peak memory of a 25-megapixel photo where it was.
    with output.staging() as folder, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="photo-io") as io:
        upcoming = None
        previous = None
        for number, (ref, stem) in enumerate(progress(pairs) if progress else pairs):
            decoding, upcoming = upcoming, None
            if mosaic.is_raster_ref(ref):  # GeoTIFF / COG: tiled, georeferenced outputs
                if previous is not None:
                    finish(previous)
                    previous = None
                try:
                    fields, line = mosaic.predict_raster_ref(
                        ref, stem, loaded, cfg, folder, vector)
                    record = jobs.raster_record(ref, stem, fields)
                    commit(record, folder)
                except (SegmenterError, Exception) as exc:
                    fail(ref, stem, exc)
                    continue
                records.append(record)
                report(line)
                continue
            try:
                image, notes = decoding.result() if decoding is not None else decode(ref)
                small = image.shape[0] * image.shape[1] <= LOOKAHEAD_PIXELS
                if (small and number + 1 < len(pairs)
                        and not mosaic.is_raster_ref(pairs[number + 1][0])):
                    upcoming = io.submit(decode, pairs[number + 1][0])
                for note in notes:
                    log.info("%s", note)
                result = predict_photo(loaded, image, cfg)
            except (SegmenterError, Exception) as exc:
                if previous is not None:
                    finish(previous)
                    previous = None
                fail(ref, stem, exc)
                continue
            writing = io.submit(
                outputs.write_prediction, folder, stem, image, result.land_prob, result.water,
                method=cfg.postprocess.method, per_scale=result.per_scale,
                save_float=cfg.predict.save_float,
            )
            if previous is not None:
                finish(previous)
            previous = (ref, stem, image.shape[:2], notes, result, writing, folder)
            del image, result
            if not small:
                finish(previous)
                previous = None
        if previous is not None:
            finish(previous)
    jobs.write_summary(plan, records, {
        "run": run_path,
        "widths": sorted(loaded.models),
        "predict": cfg.predict.model_dump(mode="json"),
        "postprocess": cfg.postprocess.model_dump(mode="json"),
        "scale": cfg.data.scale,
        "skipped": len(plan.done),
    })
    return records, failures


def predict_one(ref: Any, stem: str, loaded: LoadedModels, cfg: Config, out_dir: Path
                ) -> tuple[dict[str, Any], str, str | None]:
    """Predict one photo of ``predict`` into ``out_dir`` (a Dask worker's photo task).

    Returns:
        Its summary record, its report line, and its failure message (``None`` when it was
        predicted). A bad input (:class:`SegmenterError`) is a failure, not an exception.
    """
    from segmenter import jobs
    from segmenter.data.images import decode_photo

    try:
        image, notes = decode_photo(ref.read_bytes(), str(ref.path))
        for note in notes:
            log.info("%s", note)
        result = predict_photo(loaded, image, cfg)
        files = outputs.write_prediction(
            out_dir, stem, image, result.land_prob, result.water,
            method=cfg.postprocess.method, per_scale=result.per_scale,
            save_float=cfg.predict.save_float,
        )
    except (SegmenterError, Exception) as exc:  # one input's failure never stops the job
        message = jobs.failure_message(ref, exc)
        return jobs.failed_record(ref, stem, message), f"FAILED {message}", message
    log_threshold_decision(stem, result.threshold)
    record, line = jobs.photo_record(ref, stem, result, image.shape[:2], notes, files)
    return record, line, None


def log_threshold_decision(name: str, threshold: dict[str, Any]) -> None:
    """Say, naming the photo, that the GMM step revised its threshold or kept one class."""
    if threshold.get("one_class"):
        log.info("%s: all %s: every GMM component's median probability of land was beyond "
                 "the bound of postprocess.one_class, so no %s was invented", name,
                 threshold["one_class"], "water" if threshold["one_class"] == "land" else "land")
    if threshold.get("revised"):
        log.info("%s: threshold revised to %.3f: every GMM component's median was on one "
                 "side of %.3f", name, threshold["threshold"],
                 threshold.get("threshold_configured", float("nan")))


def check_writable(out_dir: Path) -> None:
    """Fail before any work when ``out_dir`` cannot be created or written.

    Raises:
        SegmenterError: naming the folder.
    """
    from segmenter.fileio import write_text

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegmenterError(f"{out_dir}: cannot write ({exc.strerror or exc})") from None
    probe = out_dir / ".write-test"
    write_text(probe, "ok\n")
    probe.unlink(missing_ok=True)
