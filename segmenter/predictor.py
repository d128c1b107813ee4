"""Predicting photos with a run's models: the library behind ``segmenter predict``.

Kept apart from the click command so scripts (benchmarks, the evaluation) call the same code:
:func:`load_models` gathers a run's finished models and validation scores once,
:func:`predict_photo` turns one photo into a probability map and a water mask, and
:func:`predict_inputs` runs a list of inputs to files, carrying on past unreadable ones.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from segmenter import outputs
from segmenter.config import Config
from segmenter.errors import RunError, SegmenterError
from segmenter.runstate import PredictionRecord

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
    finished = run.finished_widths()
    if not finished:
        raise RunError(
            f"{run.path}: no finished models (models/pw<W>.keras); train first with "
            f"`segmenter train --out {run.path}`"
        )
    from segmenter.inference import select_models

    wanted = select_models({w: w for w in finished}, cfg)  # the one check of predict.widths
    if cfg.predict.grey and cfg.train.augment.greyscale <= 0:
        log.warning(
            "predict.grey: %s trained without grey patches (train.augment.greyscale: 0), so "
            "its models never saw a grey photo; the grey passes may lower the masks",
            run.path,
        )
    models = {w: run.load_model(w) for w in wanted}
    scores = {w: run.val_score(w) for w in models}
    return LoadedModels(models=models, scores=scores)


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


def existing_outputs(out_dir: Path, stems: list[str],
                     names: tuple[str, ...] = (outputs.SUMMARY_JSON, outputs.SUMMARY_CSV)
                     ) -> list[Path]:
    """Files in ``out_dir`` that predicting ``stems`` could replace, in a stable order.

    ``names`` are whole-folder files (by default the ``predictions.json`` / ``.csv``
    summary); per stem, the three PNGs and every optional map: the float ``.npy`` and the
    per-width ``_water_prob_pw<W>`` PNG / ``.npy`` of any width (the widths and the
    ``save_float`` / ``save_scales`` options can change between runs, and an earlier run's
    maps would otherwise sit beside the new ones, unannounced).
    """
    from segmenter.geooutputs import raster_output_paths

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [out_dir / name for name in names if (out_dir / name).exists()]
    for stem in stems:
        found += [p for p in outputs.output_paths(out_dir, stem).values() if p.exists()]
        pattern = glob.escape(stem) + "_water_prob"
        found += sorted(out_dir.glob(pattern + ".npy"))
        found += sorted(out_dir.glob(pattern + "_pw*"))
        found += [p for p in raster_output_paths(out_dir, stem).values() if p.exists()]
    return found


def check_overwrite(out_dir: Path, stems: list[str], overwrite: bool,
                    names: tuple[str, ...] = (outputs.SUMMARY_JSON, outputs.SUMMARY_CSV),
                    what: str = "predictions") -> None:
    """Refuse to replace earlier results in ``out_dir`` unless ``overwrite``.

    Args:
        out_dir: the output folder.
        stems: photo stems that will be written (see :func:`existing_outputs`).
        overwrite: the ``--overwrite`` flag.
        names: whole-folder files that will be written (``evaluate`` passes its report's).
        what: the kind of results, for the message.

    Raises:
        RunError: naming the folder and the first file that would be replaced.
    """
    if overwrite:
        return
    existing = existing_outputs(out_dir, stems, names)
    if existing:
        raise RunError(
            f"{out_dir}: already holds {what} ({existing[0].name}); pass --overwrite to "
            f"replace them or choose another --out"
        )


def predict_inputs(
    refs: list[Any],
    loaded: LoadedModels,
    cfg: Config,
    out_dir: Path,
    *,
    run_path: str = "",
    report: Callable[[str], None] | None = None,
    progress: Callable[[Any], Any] | None = None,
    vector: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Predict every photo of ``refs`` into ``out_dir``; unreadable ones are reported, skipped.

    Args:
        refs: photo references (``name``, ``path``, ``read_bytes()``), as
            :func:`segmenter.data.storage.expand_inputs` returns.
        loaded: the run's models (:func:`load_models`).
        cfg: the effective config.
        out_dir: output folder (created).
        run_path: recorded in the summary.
        report: called with one line per photo (its result or its failure).
        progress: wraps the iteration over refs (e.g. a click progress bar).
        vector: rasters (GeoTIFF inputs, :mod:`segmenter.mosaic`) also get GeoJSON vectors.

    Returns:
        One record per photo (also written to ``predictions.json``/``.csv``) and the failure
        lines, in input order.
    """
    from segmenter import mosaic
    from segmenter.data.images import decode_photo

    report = report or (lambda line: None)
    stems = outputs.unique_stems([ref.name for ref in refs])
    records: list[PredictionRecord] = []
    failures: list[str] = []
    pairs = list(zip(refs, stems, strict=True))

    def decode(ref: Any) -> tuple[np.ndarray, list[str]]:
        return decode_photo(ref.read_bytes(), str(ref.path))

    def fail(record: dict[str, Any], ref: Any, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, SegmenterError) else _unexpected(exc)
        if not message.startswith(str(ref.path)):
            message = f"{ref.path}: {message}"
        failures.append(message)
        records.append(PredictionRecord(**record, status="failed", error=message))
        report(f"FAILED {message}")

    def finish(done: tuple[Any, ...]) -> None:
        """Wait for a photo's files, then record and report it (in input order)."""
        ref, stem, record, image_shape, notes, result, writing = done
        try:
            files = writing.result()
        except (SegmenterError, Exception) as exc:  # one photo's failure never stops the batch
            fail(record, ref, exc)
            return
        log_threshold_decision(stem, result.threshold)
        fraction = float(result.water.mean())
        height, width = image_shape
        records.append(PredictionRecord(
            **record,
            status="ok",
            size=[height, width],
            water_fraction=round(fraction, 6),
            method=result.threshold["method"],
            threshold=round(float(result.threshold["threshold"]), 6),
            threshold_revised=bool(result.threshold.get("revised", False)),
            seconds=round(result.seconds, 3),
            gmm_seconds=round(result.gmm_seconds, 3),
            notes=notes,
            coverage=result.inference.get("coverage"),
            outputs={k: Path(v).name for k, v in files.items()},
        ))
        report(f"{stem}: {width}x{height} px, water {fraction:.1%}, {result.seconds:.1f} s")

    # One helper thread reads and decodes the next photo and writes the previous photo's files
    # (PNG encoding) while this thread predicts: for photos of a megapixel or so those took a
    # tenth of the time per photo, in series with the model. Only photos of up to
    # LOOKAHEAD_PIXELS overlap so (at most one decoded ahead, one being written); larger ones
    # go one at a time, which keeps the peak memory of a 25-megapixel photo where it was.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="photo-io") as io:
        upcoming = None
        previous = None
        for number, (ref, stem) in enumerate(progress(pairs) if progress else pairs):
            record: dict[str, Any] = {"input": str(ref.path), "stem": stem}
            decoding, upcoming = upcoming, None
            if mosaic.is_raster_ref(ref):  # GeoTIFF / COG: tiled, georeferenced outputs
                if previous is not None:
                    finish(previous)
                    previous = None
                try:
                    fields, line = mosaic.predict_raster_ref(
                        ref, stem, loaded, cfg, out_dir, vector)
                except (SegmenterError, Exception) as exc:
                    fail(record, ref, exc)
                    continue
                records.append(PredictionRecord(**record, **fields))
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
                fail(record, ref, exc)
                continue
            writing = io.submit(
                outputs.write_prediction, out_dir, stem, image, result.land_prob, result.water,
                method=cfg.postprocess.method, per_scale=result.per_scale,
                save_float=cfg.predict.save_float,
            )
            if previous is not None:
                finish(previous)
            previous = (ref, stem, record, image.shape[:2], notes, result, writing)
            del image, result
            if not small:
                finish(previous)
                previous = None
        if previous is not None:
            finish(previous)
    with summary_lock(out_dir):
        # Another predict may have written into out_dir meanwhile: keep its photos' records.
        mine = {record.stem for record in records}
        earlier = [r for r in _summary_records(out_dir) if r.stem not in mine]
        outputs.write_summary(out_dir, [r.to_json() for r in earlier + records], {
            "run": run_path,
            "widths": sorted(loaded.models),
            "predict": cfg.predict.model_dump(mode="json"),
            "postprocess": cfg.postprocess.model_dump(mode="json"),
            "scale": cfg.data.scale,
        })
    return [record.to_json() for record in records], failures


def predict_one(ref: Any, stem: str, loaded: LoadedModels, cfg: Config, out_dir: Path, *,
                vector: bool = False) -> tuple[dict[str, Any], str, str | None]:
    """Predict one input of ``predict`` into ``out_dir`` (a photo, or a raster in one process).

    Returns:
        Its summary record, its report line, and its failure message (``None`` when it was
        predicted). A bad input (:class:`SegmenterError`) is a failure, not an exception.
    """
    from segmenter import mosaic
    from segmenter.data.images import decode_photo

    record: dict[str, Any] = {"input": str(ref.path), "stem": stem}
    try:
        if mosaic.is_raster_ref(ref):  # GeoTIFF / COG: tiled, georeferenced outputs
            fields, line = mosaic.predict_raster_ref(ref, stem, loaded, cfg, out_dir, vector)
            return PredictionRecord(**record, **fields).to_json(), line, None
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
        message = str(exc) if isinstance(exc, SegmenterError) else _unexpected(exc)
        if not message.startswith(str(ref.path)):
            message = f"{ref.path}: {message}"
        failed = PredictionRecord(**record, status="failed", error=message).to_json()
        return failed, f"FAILED {message}", message
    log_threshold_decision(stem, result.threshold)
    fraction = float(result.water.mean())
    height, width = image.shape[:2]
    record.update({
        "status": "ok",
        "size": [height, width],
        "water_fraction": round(fraction, 6),
        "method": result.threshold["method"],
        "threshold": round(float(result.threshold["threshold"]), 6),
        "threshold_revised": bool(result.threshold.get("revised", False)),
        "seconds": round(result.seconds, 3),
        "gmm_seconds": round(result.gmm_seconds, 3),
        "notes": notes,
        "coverage": result.inference.get("coverage"),
        "outputs": {k: Path(v).name for k, v in files.items()},
    })
    line = f"{stem}: {width}x{height} px, water {fraction:.1%}, {result.seconds:.1f} s"
    return PredictionRecord(**record).to_json(), line, None


def log_threshold_decision(name: str, threshold: dict[str, Any]) -> None:
    """Say, naming the photo, that the GMM step revised its threshold or kept one class."""
    if threshold.get("one_class"):
        log.info("%s: all %s: every GMM component's median probability of land was beyond "
                 "postprocess.one_class, so the threshold was not revised", name,
                 threshold["one_class"])
    if threshold.get("revised"):
        log.info("%s: threshold revised to %.3f: every GMM component's median was on one "
                 "side of %.3f", name, threshold["threshold"],
                 threshold.get("threshold_configured", float("nan")))


def _unexpected(exc: BaseException) -> str:
    """One line for a failure that is not a known bad input (shown in full with -v)."""
    log.debug("unexpected failure", exc_info=exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


LOCK_NAME = ".predictions.lock"


@contextlib.contextmanager
def summary_lock(out_dir: Path):
    """An exclusive lock on ``out_dir``'s summary, held while it is read and rewritten, so
    two predicts into one folder merge their records instead of the last one winning."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the merge still narrows the window
        yield
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _summary_records(out_dir: Path) -> list[PredictionRecord]:
    """The records of an existing ``predictions.json`` (none if absent or unreadable; a
    record that is not one of ours is dropped, with a debug line)."""
    try:
        data = json.loads((Path(out_dir) / outputs.SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    images = data.get("images") if isinstance(data, dict) else None
    found = []
    for item in images if isinstance(images, list) else []:
        try:
            found.append(PredictionRecord.model_validate(item))
        except ValidationError:
            log.debug("%s: dropped an unreadable record: %r", out_dir, item)
    return found


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
