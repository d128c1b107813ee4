"""One ``segmenter predict`` call over a list of inputs, whichever engine computes it.

The plain loop (:func:`segmenter.predict.local.predict_inputs`, one process, any ``--out``) and the
Dask job (:func:`segmenter.predict.cluster.run_job`) differ only in where the pixels are computed.
Everything a user sees of the folder goes through here, once:

* :func:`plan_job`: each input's stem (kept for an input the folder already holds, never
  another input's, :func:`segmenter.outputs.names.assign_stems`), the ``--overwrite`` refusal,
  what ``--skip-existing`` skips, the write probe;
* :func:`base_record` / :func:`photo_record` / :func:`failed_record`: an input's row, and
  :func:`failure_message`: a failure as one line naming the input once;
* :func:`commit`: after an input's outputs are in place, the files of an earlier prediction
  of it that this one did not write go, then its record (the mark ``--skip-existing`` trusts;
  :func:`plan_job` claims each stem with a ``pending`` record first, :func:`commit_failure`
  records a failure);
* :func:`write_summary`: ``predictions.json`` / ``.csv`` rewritten under the folder's lock
  from every input the folder holds, this call's rows replacing theirs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmenter.config import Config
from segmenter.errors import RunError, SegmenterError
from segmenter.outputs.names import owned_files
from segmenter.outputs.store import Output
from segmenter.outputs.summary import SUMMARY_CSV, SUMMARY_JSON

if TYPE_CHECKING:
    from segmenter.data.inputs import PhotoRef

log = logging.getLogger(__name__)

#: the outputs every input gets (photos: PNGs; rasters: COGs and an overview PNG).
BASE_OUTPUTS = frozenset({"water_prob", "water_mask", "overlay"})


@dataclass
class JobPlan:
    """What one call will do in its output folder."""

    output: Output
    refs: list[Any]
    stems: list[str]
    #: index -> the earlier record of an input ``--skip-existing`` skips.
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: stem -> its files in the folder when the call started (earlier outputs to clear).
    owned: dict[str, list[str]] = field(default_factory=dict)

    @property
    def todo(self) -> list[tuple[int, Any, str]]:
        """(index, input, stem) of each input to predict, in input order."""
        return [(i, ref, stem) for i, (ref, stem) in enumerate(zip(self.refs, self.stems,
                                                                    strict=True))
                if i not in self.done]


def is_raster(ref: PhotoRef) -> bool:
    from segmenter.data.raster import is_raster_name

    return is_raster_name(str(ref.path))


def wanted_outputs(ref: PhotoRef, cfg: Config, vector: bool, widths: list[int]) -> set[str]:
    """The output kinds this call writes for ``ref`` (a record without one of them is not
    finished for ``--skip-existing``)."""
    kinds = set(BASE_OUTPUTS)
    if is_raster(ref):
        if vector:
            kinds |= {"water_vector", "shoreline_vector"}
        return kinds
    if cfg.predict.save_float:
        kinds.add("water_prob_npy")
    if cfg.predict.save_scales:
        kinds |= {f"water_prob_pw{w}" for w in widths}
    return kinds


def plan_job(output: Output, refs: list[Any], cfg: Config, *, widths: list[int],
             overwrite: bool = False, skip_existing: bool = False, vector: bool = False,
             job: dict[str, Any] | None = None) -> JobPlan:
    """Name the inputs, apply ``--overwrite`` / ``--skip-existing``, probe the folder.

    Raises:
        RunError: the folder holds earlier predictions and neither flag was given (naming
            the first file that would be replaced).
        SegmenterError: the folder cannot be read or written.
    """
    from segmenter.outputs.names import assign_stems, input_source, record_source

    if overwrite and skip_existing:
        from segmenter.errors import ConfigError

        raise ConfigError("--overwrite and --skip-existing cannot be used together")
    with output.lock():
        present = output.names()  # listed once: an object store's listing is not free
        records = output.records(present)
        known: dict[str, str] = {}
        for stem, record in records.items():
            known.setdefault(record_source(record), stem)
            if not record.get("source"):  # older records: the path as it was given, too
                known.setdefault(str(record.get("input", "")), stem)
        refs = _unique(refs)
        stems = assign_stems([str(ref.path) for ref in refs], known, taken=set(records))
        plan = JobPlan(output, refs, stems, owned=owned_files(present, stems))
        if skip_existing:
            wanted = {stem: wanted_outputs(ref, cfg, vector, widths)
                      for ref, stem in zip(refs, stems, strict=True)}
            sources = {stem: input_source(str(ref.path))
                       for ref, stem in zip(refs, stems, strict=True)}
            finished = output.finished(records, stems, wanted, sources, present)
            plan.done = {i: finished[stem] for i, stem in enumerate(stems) if stem in finished}
        else:
            existing = output.existing(stems, present=present)
            if existing and not overwrite:
                raise RunError(
                    f"{output}: already holds predictions ({existing[0]}); pass --overwrite to "
                    f"replace them, --skip-existing to predict only what is missing, or choose "
                    f"another --out")
        output.probe({**(job or {}), "inputs": len(refs),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        # Claim every stem this call predicts, before its files are touched: a call beside
        # this one never gives it to another input, and an earlier record of an input predicted
        # again is not trusted while its files are half old, half new.
        output.write_records({stem: {**base_record(ref, stem), "status": "pending"}
                              for _, ref, stem in plan.todo})
    if vector and not any(is_raster(ref) for ref in refs):
        log.warning("--vector: only rasters (GeoTIFF inputs) get GeoJSON vectors; none of "
                    "these inputs is one")
    elif vector and not all(is_raster(ref) for ref in refs):
        log.info("--vector: the photos among these inputs get no vectors (rasters only)")
    return plan


def _unique(refs: list[Any]) -> list[Any]:
    """The inputs, each once (a file named twice, or by a folder and by name, is predicted
    once under one stem)."""
    from segmenter.outputs.names import input_source

    seen: set[str] = set()
    kept = []
    for ref in refs:
        source = input_source(str(ref.path))
        if source in seen:
            log.info("%s: given more than once; predicted once", ref.path)
            continue
        seen.add(source)
        kept.append(ref)
    return kept


def base_record(ref: PhotoRef, stem: str) -> dict[str, Any]:
    """The fields every row has: the input as given, where it is, its stem."""
    from segmenter.outputs.names import input_source

    return {"input": str(ref.path), "source": input_source(str(ref.path)), "stem": stem}


class TaskError(Exception):
    """An unexpected exception of a Dask task, carried to the client as its type's name and
    its message (the exception itself, with the library exceptions chained behind it, may
    not survive the trip)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind, self.message = kind, message


def failure_message(ref: PhotoRef, exc: BaseException) -> str:
    """One line for an input that failed, naming it once. A bad input (a
    :class:`SegmenterError`) says what is wrong; anything else gives its type and first line
    (the traceback is logged at debug level, so ``-v`` shows it)."""
    if isinstance(exc, SegmenterError):
        message = str(exc)
    elif isinstance(exc, TaskError):
        lines = exc.message.strip().splitlines()
        message = f"{exc.kind}: {lines[0] if lines else 'no message'}"
    elif type(exc).__name__ == "KilledWorker":
        message = ("the workers running it died (3 times): out of memory, or a crash; see "
                   "the workers' logs")
    else:
        log.debug("unexpected failure", exc_info=exc)
        lines = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"
    path = str(ref.path)
    return message if message.startswith(path) else f"{path}: {message}"


def failed_record(ref: PhotoRef, stem: str, message: str) -> dict[str, Any]:
    from segmenter.runstate import PredictionRecord

    return PredictionRecord(**base_record(ref, stem), status="failed", error=message).to_json()


def photo_record(ref: PhotoRef, stem: str, result: Any, size: tuple[int, int], notes: list[str],
                 files: dict[str, str]) -> tuple[dict[str, Any], str]:
    """A predicted photo's row and its report line."""
    from segmenter.runstate import PredictionRecord

    fraction = float(result.water.mean())
    height, width = size
    record = PredictionRecord(
        **base_record(ref, stem),
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
    ).to_json()
    line = f"{stem}: {width}x{height} px, water {fraction:.1%}, {result.seconds:.1f} s"
    return record, line


def raster_record(ref: PhotoRef, stem: str, fields: dict[str, Any]) -> dict[str, Any]:
    from segmenter.runstate import PredictionRecord

    return PredictionRecord(**base_record(ref, stem), **fields).to_json()


def commit_failure(plan: JobPlan, record: dict[str, Any]) -> None:
    """An input failed: its record says so (it keeps its stem; a rerun tries it again)."""
    try:
        plan.output.write_record(record["stem"], record)
    except SegmenterError as exc:  # the failure line says what matters; the summary has it
        log.warning("%s", exc)


def commit(plan: JobPlan, record: dict[str, Any]) -> None:
    """An input's outputs are in place: clear what an earlier prediction of it left that this
    one did not write (vectors, per-width maps), then write its record."""
    stem = record["stem"]
    written = set((record.get("outputs") or {}).values())
    stale = [n for n in plan.owned.pop(stem, []) if n not in written]
    if stale:
        log.info("%s: removed %d file(s) of its earlier prediction that this one does not "
                 "write (%s)", stem, len(stale), ", ".join(stale))
        plan.output.remove(stale)
    plan.output.write_record(stem, record)


def summary_header(plan: JobPlan, cfg: Config, run_location: str, widths: list[int],
                   **extra: Any) -> dict[str, Any]:
    """What ``predictions.json`` says about the call, whichever engine ran it: the run, the
    widths, the prediction and mask settings, the scale, inputs skipped (and ``extra``)."""
    return {
        "run": run_location,
        "widths": sorted(widths),
        "predict": cfg.predict.model_dump(mode="json"),
        "postprocess": cfg.postprocess.model_dump(mode="json"),
        "scale": cfg.data.scale,
        **extra,
        "skipped": len(plan.done),
    }


def write_summary(plan: JobPlan, records: list[dict[str, Any]], extra: dict[str, Any]
                  ) -> list[dict[str, Any]]:
    """Rewrite ``predictions.json`` / ``.csv``: every input the folder holds (another call's
    rows, committed marks of a killed one), with this call's ``records`` replacing theirs.

    Returns:
        The rows written.
    """
    from segmenter.outputs import summary

    output = plan.output
    with output.lock():
        # The summary's rows keep their places (this call's replacing theirs); then inputs it
        # does not list yet: committed by a job that never wrote its summary, then this call's.
        held = output.records()
        mine = {record["stem"]: record for record in records}
        listed = set(output.summary_order)
        rows = [mine.pop(stem, held[stem]) for stem in output.summary_order]
        rows += [r for stem, r in held.items() if stem not in listed and stem not in mine]
        rows += list(mine.values())
        rows = [r for r in rows if r.get("status") != "pending"]  # claimed, never finished
        with output.staging() as folder:
            summary.write_summary(folder, rows, extra)
            output.publish(folder, [summary.SUMMARY_JSON, summary.SUMMARY_CSV])
    return rows


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
                    names: tuple[str, ...] = (SUMMARY_JSON, SUMMARY_CSV),
                    what: str = "predictions") -> None:
    """Refuse to replace earlier results in ``out_dir`` unless ``overwrite``.

    Args:
        out_dir: the output folder.
        stems: stems that will be written (every file a stem owns counts,
            :func:`segmenter.outputs.names.owned_by`).
        overwrite: the ``--overwrite`` flag.
        names: whole-folder files that will be written (``evaluate`` passes its report's).
        what: the kind of results, for the message.

    Raises:
        RunError: naming the folder and the first file that would be replaced.
    """
    if overwrite:
        return
    existing = Output(str(out_dir), None).existing(stems, names)
    if existing:
        raise RunError(
            f"{out_dir}: already holds {what} ({existing[0]}); pass --overwrite to "
            f"replace them or choose another --out"
        )
