"""A photo's outputs: probability map, mask and overlay PNGs (and per-width maps).

Every file is written atomically (:mod:`segmenter.fileio`), so an interrupted run never leaves
a half-written PNG that looks finished. File names derive from the input's stem only, cleaned to
a safe character set, so no input name (an S3 key with ``..`` or slashes included) can place a
file outside the output folder.

Every user-facing output names its class: ``water_prob`` is the probability of *water*
(``1 - land_prob``), ``water_mask`` is 255 where water.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from segmenter.fileio import atomic_path, write_bytes
from segmenter.outputs.names import output_paths

#: colour of the water tint (RGB, 0-255) and of the mask edge in overlays.
WATER_TINT = np.array([20, 90, 255], np.float32)
EDGE_COLOUR = np.array([255, 220, 0], np.uint8)
#: the tint's opacity at water probability 1.
MAX_TINT = 0.6


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


