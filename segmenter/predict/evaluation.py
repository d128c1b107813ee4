"""Scoring a run on labelled images: the library behind ``segmenter evaluate``.

Each labelled photo is predicted at its own resolution through exactly the code ``predict``
uses (:func:`segmenter.predict.photo.predict_photo`), then its water mask is scored against the
label twice: the configured mask (GMM by default) and the plain 0.5 threshold on the same
probability map, so the value of the thresholding step is visible. ``overall`` pools the pixel
counts of all images (every pixel counts equally); the per-image mean is reported beside it.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from segmenter import metrics
from segmenter.config import Config
from segmenter.fileio import write_json, write_text
from segmenter.predict.models import LoadedModels
from segmenter.predict.photo import predict_photo
from segmenter.predict.threshold import log_threshold_decision

log = logging.getLogger(__name__)

#: the two masks every image is scored with: the configured method, and the 0.5 baseline.
BASELINE = "threshold_0.5"
EVALUATION_JSON = "evaluation.json"
EVALUATION_CSV = "evaluation.csv"


def score_masks(land_prob: np.ndarray, water: np.ndarray, land_label: np.ndarray
                ) -> tuple[metrics.Confusion, metrics.Confusion]:
    """Confusion counts of the given mask and of the 0.5 threshold against a land label."""
    truth = metrics.water_from_land(land_label)
    return (metrics.confusion(water, truth),
            metrics.confusion(metrics.water_from_prob(land_prob, 0.5), truth))


def evaluate_images(
    loaded: LoadedModels,
    items: Iterable[Any],
    cfg: Config,
    progress: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Predict and score labelled images (``stem``, ``image``, ``land`` at the photo's size).

    Returns:
        ``{"method", "images": [...], "overall": {...}}``: ``overall`` holds the metrics of
        :data:`segmenter.metrics.METRIC_NAMES` for the configured mask, a ``threshold_0.5``
        block with the same metrics for the 0.5 baseline, and ``mean_per_image`` blocks.
    """
    method = cfg.postprocess.method
    rows: list[dict[str, Any]] = []
    pooled = {method: metrics.Confusion(0, 0, 0, 0), BASELINE: metrics.Confusion(0, 0, 0, 0)}
    items = list(items)
    batch_started = time.perf_counter()
    for item in progress(items) if progress else items:
        started = time.perf_counter()
        result = predict_photo(loaded, item.image, cfg, keep_scales=False)
        log_threshold_decision(item.stem, result.threshold)
        mask_counts, base_counts = score_masks(result.land_prob, result.water, item.land)
        pooled[method] = pooled[method] + mask_counts
        pooled[BASELINE] = pooled[BASELINE] + base_counts
        rows.append({
            "stem": item.stem,
            "size": list(item.land.shape),
            "true_water_fraction": round(float(metrics.water_from_land(item.land).mean()), 6),
            "predicted_water_fraction": round(float(result.water.mean()), 6),
            "threshold": round(float(result.threshold["threshold"]), 6),
            "threshold_revised": bool(result.threshold.get("revised", False)),
            method: _rounded(mask_counts.scores()),
            BASELINE: _rounded(base_counts.scores()),
            "seconds": round(time.perf_counter() - started, 3),
            "gmm_seconds": round(result.gmm_seconds, 3),
        })
        log.info("%s: water IoU %.3f (%s), %.3f (0.5)", item.stem,
                 rows[-1][method]["water_iou"], method, rows[-1][BASELINE]["water_iou"])
        del result
    overall: dict[str, Any] = {"method": method, **_rounded(pooled[method].scores())}
    overall[BASELINE] = _rounded(pooled[BASELINE].scores())
    overall["pixels"] = pooled[method].total
    overall["images"] = len(rows)
    if rows:
        overall["mean_per_image"] = {
            key: _rounded({m: float(np.mean([r[key][m] for r in rows]))
                           for m in metrics.METRIC_NAMES})
            for key in (method, BASELINE)
        }
    overall["seconds"] = round(time.perf_counter() - batch_started, 3)
    return {"method": method, "images": rows, "overall": overall}


def seconds_line(report: dict[str, Any]) -> str:
    """The per-image seconds summary of an evaluation report (as ``predict`` prints)."""
    from segmenter.predict.jobs import seconds_summary

    rows = report["images"]
    return seconds_summary([r["seconds"] for r in rows], [r.get("gmm_seconds", 0.0) for r in rows],
                           float(report["overall"].get("seconds", 0.0)), noun="image")


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``evaluation.json`` (the whole report) and ``evaluation.csv`` (one row per image)."""
    out = Path(out_dir)
    method = report["method"]
    fields = ["stem", "height", "width", "true_water_fraction", "predicted_water_fraction",
              "threshold", "threshold_revised"]
    for key in (method, BASELINE):
        fields += [f"{key}_{m}" for m in metrics.METRIC_NAMES]
    fields.append("seconds")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in report["images"]:
        flat = {k: row[k] for k in fields if k in row}
        flat["height"], flat["width"] = row["size"]
        for key in (method, BASELINE):
            flat.update({f"{key}_{m}": row[key][m] for m in metrics.METRIC_NAMES})
        writer.writerow(flat)
    json_path, csv_path = out / EVALUATION_JSON, out / EVALUATION_CSV
    write_text(csv_path, buffer.getvalue())
    write_json(json_path, report)
    return json_path, csv_path


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: one line per image and the overall lines, both masks."""
    method = report["method"]
    names = metrics.METRIC_NAMES
    header = f"{'image':<28} {'mask':<14} " + " ".join(f"{n:>9}" for n in names)
    lines = [header, "-" * len(header)]

    def line(label: str, key: str, values: dict[str, float]) -> str:
        return f"{label[:28]:<28} {key:<14} " + " ".join(f"{values[n]:>9.4f}" for n in names)

    for row in report["images"]:
        lines.append(line(row["stem"], method, row[method]))
        lines.append(line("", BASELINE, row[BASELINE]))
    overall = report["overall"]
    lines.append("-" * len(header))
    lines.append(line(f"overall ({overall['images']} images)", method, overall))
    lines.append(line("", BASELINE, overall[BASELINE]))
    return "\n".join(lines)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in values.items()}
