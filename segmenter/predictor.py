"""Predicting photos with a run's models: the library behind ``segmenter predict``.

Kept apart from the click command so scripts (benchmarks, the evaluation) call the same code:
:func:`load_models` gathers a run's finished models and validation scores once,
:func:`predict_photo` turns one photo into a probability map and a water mask, and
:func:`predict_inputs` runs a list of inputs to files, carrying on past unreadable ones.
"""

from __future__ import annotations

import glob
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
    finished = run.finished_widths()
    if not finished:
        raise RunError(
            f"{run.path}: no finished models (models/pw<W>.keras); train first with "
            f"`segmenter train --out {run.path}`"
        )
    from segmenter.inference import select_models

    wanted = select_models({w: w for w in finished}, cfg)  # the one check of predict.widths
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
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    pairs = list(zip(refs, stems, strict=True))

    def decode(ref: Any) -> tuple[np.ndarray, list[str]]:
        return decode_photo(ref.read_bytes(), str(ref.path))

    def fail(record: dict[str, Any], ref: Any, exc: SegmenterError) -> None:
        message = str(exc)
        failures.append(message)
        records.append({**record, "status": "failed", "error": message})
        report(f"FAILED {ref.path}: {message}")

    def finish(done: tuple[Any, ...]) -> None:
        """Wait for a photo's files, then record and report it (in input order)."""
        ref, stem, record, image_shape, notes, result, writing = done
        try:
            files = writing.result()
        except SegmenterError as exc:
            fail(record, ref, exc)
            return
        fraction = float(result.water.mean())
        height, width = image_shape
        records.append({
            **record,
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
                except SegmenterError as exc:
                    fail(record, ref, exc)
                    continue
                records.append({**record, **fields})
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
            except SegmenterError as exc:
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
    outputs.write_summary(out_dir, records, {
        "run": run_path,
        "widths": sorted(loaded.models),
        "predict": cfg.predict.model_dump(mode="json"),
        "postprocess": cfg.postprocess.model_dump(mode="json"),
        "scale": cfg.data.scale,
    })
    return records, failures
