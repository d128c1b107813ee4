"""Predicting a job's inputs in this process: the serial engine of ``segmenter predict``.

:func:`predict_inputs` runs the photos and rasters of a :class:`segmenter.predict.jobs.JobPlan`
to files, carrying on past unreadable ones; the Dask engine (:mod:`segmenter.predict.cluster`)
runs the same plan on a cluster. :func:`predict_one` is one photo into a folder (a Dask
worker's photo task).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmenter.config import Config
from segmenter.errors import SegmenterError
from segmenter.outputs import photo as photo_outputs
from segmenter.predict import jobs, raster
from segmenter.predict.models import LoadedModels
from segmenter.predict.photo import predict_photo
from segmenter.predict.threshold import log_threshold_decision

if TYPE_CHECKING:
    from segmenter.data.inputs import PhotoRef
    from segmenter.predict.jobs import JobPlan

log = logging.getLogger(__name__)

#: photos of up to this many pixels are decoded one ahead and written behind, in a helper
#: thread, while the next is predicted; larger photos go strictly one at a time (memory).
LOOKAHEAD_PIXELS = 4_000_000


def predict_inputs(
    plan: JobPlan,
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
        plan: the call's :class:`segmenter.predict.jobs.JobPlan` (output folder or URL, stems, what
            ``--skip-existing`` skips).
        loaded: the run's models (:func:`segmenter.predict.models.load_models`).
        cfg: the effective config.
        run_path: recorded in the summary.
        report: called with one line per input (its result or its failure).
        progress: wraps the iteration over the inputs (e.g. a click progress bar).
        vector: rasters (GeoTIFF inputs, :mod:`segmenter.predict.raster`) also get GeoJSON vectors.

    Returns:
        One record per input predicted (every input of the folder is in ``predictions.json``
        / ``.csv``) and the failure lines, in input order.
    """
    from segmenter.data.images import decode_photo

    report = report or (lambda line: None)
    output = plan.output
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    pairs = [(ref, stem) for _, ref, stem in plan.todo]

    def decode(ref: PhotoRef) -> tuple[np.ndarray, list[str]]:
        return decode_photo(ref.read_bytes(), str(ref.path))

    def fail(ref: PhotoRef, stem: str, exc: BaseException) -> None:
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
            if raster.is_raster_ref(ref):  # GeoTIFF / COG: tiled, georeferenced outputs
                if previous is not None:
                    finish(previous)
                    previous = None
                try:
                    fields, line = raster.predict_raster_ref(
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
                        and not raster.is_raster_ref(pairs[number + 1][0])):
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
                photo_outputs.write_prediction, folder, stem, image, result.land_prob, result.water,
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
    jobs.write_summary(plan, records,
                       jobs.summary_header(plan, cfg, run_path, list(loaded.models)))
    return records, failures


def predict_one(ref: PhotoRef, stem: str, loaded: LoadedModels, cfg: Config, out_dir: Path
                ) -> tuple[dict[str, Any], str, str | None]:
    """Predict one photo of ``predict`` into ``out_dir`` (a Dask worker's photo task).

    Returns:
        Its summary record, its report line, and its failure message (``None`` when it was
        predicted). A bad input (:class:`SegmenterError`) is a failure, not an exception.
    """
    from segmenter.data.images import decode_photo

    try:
        image, notes = decode_photo(ref.read_bytes(), str(ref.path))
        for note in notes:
            log.info("%s", note)
        result = predict_photo(loaded, image, cfg)
        files = photo_outputs.write_prediction(
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
