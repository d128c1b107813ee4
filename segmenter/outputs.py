"""What ``segmenter predict`` writes: masks, probability maps, overlays and a summary.

Every file is written atomically (:mod:`segmenter.fileio`), so an interrupted run never leaves
a half-written PNG that looks finished. File names derive from the input's stem only, cleaned to
a safe character set, so no input name (an S3 key with ``..`` or slashes included) can place a
file outside the output folder.

Every user-facing output names its class: ``water_prob`` is the probability of *water*
(``1 - land_prob``), ``water_mask`` is 255 where water.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from segmenter.fileio import atomic_path, write_bytes, write_json, write_text

#: colour of the water tint (RGB, 0-255) and of the mask edge in overlays.
WATER_TINT = np.array([20, 90, 255], np.float32)
EDGE_COLOUR = np.array([255, 220, 0], np.uint8)
#: the tint's opacity at water probability 1.
MAX_TINT = 0.6
#: summary file names inside the output folder.
SUMMARY_JSON = "predictions.json"
SUMMARY_CSV = "predictions.csv"
CSV_FIELDS = (
    "input", "stem", "status", "height", "width", "water_fraction", "method", "threshold",
    "seconds", "error",
)


# --------------------------------------------------------------------------------------------
# Names


def safe_stem(name: str) -> str:
    """A file-name stem from an input's file name: last path component, its one extension
    dropped, safe characters only (``flight.01.JPG`` -> ``flight.01``).

    Both ``/`` and ``\\`` count as separators, characters outside ``[A-Za-z0-9._-]`` become
    ``_`` and leading dots are dropped, so the result is never ``..``, hidden or a path.
    """
    base = PureWindowsPath(PurePosixPath(str(name)).name).name
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")
    return stem[:150] or "image"


def input_source(location: str) -> str:
    """Where an input is, as one string that does not depend on the working directory: the
    URL of a remote input, the absolute path of a local one. An input keeps its stem in an
    output folder by this key (:func:`assign_stems`)."""
    text = str(location)
    if "://" in text and not text.lower().startswith("file://"):
        return text
    return os.path.abspath(os.path.expanduser(text.removeprefix("file://")))


def record_source(record: Mapping[str, Any]) -> str:
    """Where a recorded input was: its ``source``, or (older records) its path as given."""
    return str(record.get("source") or input_source(str(record.get("input", ""))))


def assign_stems(locations: list[str], known: Mapping[str, str] | None = None,
                 taken: set[str] | None = None) -> list[str]:
    """The output stem of each input, unique in the output folder, in input order.

    Args:
        locations: each input's path or URL (its file name gives the stem).
        known: :func:`input_source` (or, for records older than it, the path as given) ->
            stem of the inputs already in the output folder (its records). An input found
            there keeps its stem, so ``--overwrite`` and ``--skip-existing`` mean its own
            files; any other input gets :func:`safe_stem` of its name, made unique with
            ``-2``, ``-3``... against every stem of the folder and of this call
            (case-insensitively: some file systems are), so it never takes over another
            input's files.
        taken: every stem the folder holds (default: those of ``known``).
    """
    known = dict(known or {})
    taken = {stem.lower() for stem in (known.values() if taken is None else taken)}
    used: set[str] = set()
    out = []
    for location in locations:
        stem = known.get(input_source(location), known.get(str(location)))
        if stem is None or stem.lower() in used:
            base = safe_stem(location)
            stem, count = base, 1
            while stem.lower() in used or stem.lower() in taken:
                count += 1
                stem = f"{base}-{count}"
        used.add(stem.lower())
        out.append(stem)
    return out


def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """The three files every prediction writes (extra maps are named beside them)."""
    out = Path(out_dir)
    return {
        "water_prob": out / f"{stem}_water_prob.png",
        "water_mask": out / f"{stem}_water_mask.png",
        "overlay": out / f"{stem}_overlay.png",
    }


# --------------------------------------------------------------------------------------------
# Images


def to_uint8(values: np.ndarray, rows: int = 512) -> np.ndarray:
    """[0, 1] floats to 0-255 bytes (rounded; NaN as 0), a band of rows at a time.

    Banding keeps the float temporaries of a 25-megapixel map to a few megabytes.
    """
    out = np.empty(values.shape, np.uint8)
    for top in range(0, values.shape[0], rows):
        band = np.nan_to_num(values[top : top + rows], nan=0.0).astype(np.float32)
        np.clip(band, 0.0, 1.0, out=band)
        band *= 255.0
        out[top : top + rows] = np.rint(band)
    return out


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) array as PNG (fast compression: maps are large)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def mask_edge(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of ``mask`` within ``thickness`` of its border (the outline drawn in overlays)."""
    from scipy import ndimage

    if not mask.any() or mask.all():
        return np.zeros_like(mask, dtype=bool)
    eroded = ndimage.minimum_filter(mask.astype(np.uint8), size=2 * thickness + 1, mode="nearest")
    return mask & (eroded == 0)


def overlay(
    image: np.ndarray, water_prob: np.ndarray, water: np.ndarray, method: str = "gmm"
) -> np.ndarray:
    """The photo tinted blue by the probability of water, the mask's edge in yellow, a legend.

    The tint's strength follows the probability (faint where the model is unsure), the yellow
    line is where the final mask changes from land to water, and the legend strip below the
    photo explains both in words, so the picture reads without this documentation.
    """
    height, width = water_prob.shape
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, 256):  # bands: float temporaries stay small on big photos
        rows = slice(top, top + 256)
        alpha = (MAX_TINT * np.clip(water_prob[rows], 0.0, 1.0))[..., None].astype(np.float32)
        photo = np.clip(image[rows, :, :3], 0.0, 1.0).astype(np.float32) * 255.0
        out[rows] = np.rint(photo * (1.0 - alpha) + WATER_TINT * alpha)
    thickness = max(1, round(min(height, width) / 400))
    out[mask_edge(water, thickness)] = EDGE_COLOUR
    legend = legend_strip(max(width, 640), float(water.mean()) if water.size else 0.0, method)
    if legend.shape[1] > width:
        padded = np.full((height, legend.shape[1], 3), 255, np.uint8)
        left = (legend.shape[1] - width) // 2
        padded[:, left : left + width] = out
        out = padded
    return np.concatenate([out, legend], axis=0)


def legend_strip(width: int, water_fraction: float, method: str) -> np.ndarray:
    """A white strip ``width`` pixels wide: the tint scale and the mask-edge swatch, labelled."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    height = max(72, width // 16)
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    font = max(7.0, height * 0.16 * 72 / dpi)
    # the tint scale: a grey photo tinted as the overlay tints it
    bar = fig.add_axes((0.03, 0.42, 0.42, 0.25))
    ramp = np.linspace(0.0, 1.0, 256)[None, :, None]
    grey = np.full((1, 256, 3), 128.0)
    colours = (grey * (1 - MAX_TINT * ramp) + WATER_TINT * MAX_TINT * ramp) / 255.0
    bar.imshow(colours, aspect="auto", extent=(0, 1, 0, 1))
    bar.set_yticks([])
    bar.set_xticks([0, 0.5, 1])
    bar.tick_params(labelsize=font * 0.85, length=2)
    bar.set_title("Blue tint: probability of water", fontsize=font, loc="left")
    # the mask edge swatch and the water share
    fig.patches.append(
        Rectangle(
            (0.52, 0.45), 0.04, 0.2, transform=fig.transFigure, color=EDGE_COLOUR / 255.0
        )
    )
    fig.text(0.58, 0.55, f"Yellow line: edge of the water mask ({method})",
             fontsize=font, va="center")
    fig.text(0.58, 0.22, f"Water: {water_fraction:.1%} of the photo", fontsize=font,
             va="center")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.array(rgba[..., :3])


# --------------------------------------------------------------------------------------------
# Writing


def write_prediction(
    out_dir: str | Path,
    stem: str,
    image: np.ndarray,
    land_prob: np.ndarray,
    water: np.ndarray,
    *,
    method: str = "gmm",
    per_scale: dict[int, np.ndarray] | None = None,
    save_float: bool = False,
) -> dict[str, str]:
    """Write one photo's outputs; returns kind -> path of every file written.

    Always ``<stem>_water_prob.png`` (8-bit probability of water), ``<stem>_water_mask.png``
    (255 = water) and ``<stem>_overlay.png``; with ``save_float`` the float32 map
    ``<stem>_water_prob.npy``; for each width of ``per_scale`` ``<stem>_water_prob_pw<W>.png``
    (and ``.npy`` with ``save_float``).
    """
    paths = output_paths(out_dir, stem)
    water_prob = 1.0 - land_prob
    written: dict[str, str] = {}
    write_bytes(paths["water_prob"], png_bytes(to_uint8(water_prob)))
    written["water_prob"] = str(paths["water_prob"])
    write_bytes(paths["water_mask"], png_bytes(water.astype(np.uint8) * np.uint8(255)))
    written["water_mask"] = str(paths["water_mask"])
    write_bytes(paths["overlay"], png_bytes(overlay(image, water_prob, water, method)))
    written["overlay"] = str(paths["overlay"])
    if save_float:
        target = Path(out_dir) / f"{stem}_water_prob.npy"
        save_npy(target, water_prob.astype(np.float32))
        written["water_prob_npy"] = str(target)
    for patch_width, scale_map in sorted((per_scale or {}).items()):
        scale_water = 1.0 - scale_map
        target = Path(out_dir) / f"{stem}_water_prob_pw{patch_width}.png"
        write_bytes(target, png_bytes(to_uint8(scale_water)))
        written[f"water_prob_pw{patch_width}"] = str(target)
        if save_float:
            target = target.with_suffix(".npy")
            save_npy(target, scale_water.astype(np.float32))
            written[f"water_prob_pw{patch_width}_npy"] = str(target)
    return written


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` atomically, without pickling (plain numeric arrays only)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def write_summary(out_dir: str | Path, records: list[dict[str, Any]], extra: dict[str, Any]
                  ) -> tuple[Path, Path]:
    """Write ``predictions.json`` (``extra`` + every record) and ``predictions.csv``."""
    out = Path(out_dir)
    json_path, csv_path = out / SUMMARY_JSON, out / SUMMARY_CSV
    write_json(json_path, {**extra, "images": records})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = dict(record)
        if "size" in row:
            row["height"], row["width"] = row["size"]
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_FIELDS})
    write_text(csv_path, buffer.getvalue())
    return json_path, csv_path
