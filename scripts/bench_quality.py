#!/usr/bin/env python
"""Quality benchmark on a real photograph: segmenter against classic peers on a fixed split.

Why this exists: the generated sample scenes come from the same generator as the training
scenes, so a good score there says little about real coastal photos, where dark forest, shadows
and dark roofs look like water. This script measures segmenter on one real aerial photo with a
person-drawn label (``../shared/real``, Ontario layout, water = class 2) and puts the number
next to what simpler methods reach on exactly the same pixels.

The split (fixed, never overlapping; see :data:`TRAIN_FRACTION`):

* training part   = columns ``[0, 60 %)`` of the photo (the west),
* validation part = columns ``[60 %, 100 %)`` (the east), never seen by any method before scoring.

Inside the training part, its eastern quarter (columns ``[45 %, 60 %)`` of the photo,
:data:`INNER_FRACTION`) is the *inner* strip. With ``--split tune`` the models train on
``[0, 45 %)`` and are scored on that strip, so settings can be tuned without ever looking at the
validation part. With ``--split final`` (the default) they train on the whole training part; the
inner strip is then only what ``segmenter train`` reports as its validation loss (it overlaps the
training pixels, so it is a training-fit monitor, not a score).

Both parts are written as Ontario-layout folders (``train/<stem>.png`` + ``<stem>_mres.mat``) in a
work folder, so segmenter reads them through its own loaders exactly like a user's data: the
benchmark runs ``segmenter train --config configs/photo.yaml --set data.source=<training part>``
(only the data source changes) and scores the validation part through the library function
behind ``segmenter evaluate``.

Peers, all scored on the same validation pixels and the same resolution:

* Otsu on grey: one threshold per image; which side is water is decided on the training part.
* GMM on RGB alone: a 5-component mixture fitted on the training part, each component called
  water when most of its training pixels are water, then applied to the validation part.
* Random forest on scikit-image ``multiscale_basic_features`` (intensity, edges, texture at
  sigmas 1-16), trained on a seeded subsample of the training part's pixels.
* segmenter with the notebook's random window positions (``predict.sampling: random``).

Run from the repository root (a clean clone with the package installed)::

    python scripts/bench_quality.py                 # ~9 min on a 2-core CPU
    python scripts/bench_quality.py --real /data/real --keep --work /tmp/bq

The last line printed is ``quality water_iou=<...> mean_iou=<...> train_minutes=<...>`` for
segmenter with its GMM mask.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "real"
DEFAULT_CONFIG = REPO / "configs" / "photo.yaml"

#: share of the photo's columns (from the west) that form the training part.
TRAIN_FRACTION = 0.6
#: with ``--split tune``: columns [0, INNER_FRACTION) train, [INNER_FRACTION, TRAIN_FRACTION)
#: score. Both lie inside the training part, so tuning never sees the validation part.
INNER_FRACTION = 0.45
#: seed of every random choice made here (pixel subsamples, forest, mixture).
SEED = 0
#: pixels of the training part the random forest is fitted on (more adds minutes, not IoU).
FOREST_PIXELS = 100_000
#: pixels of the training part the RGB mixture is fitted on.
GMM_PIXELS = 200_000

log = logging.getLogger("bench_quality")


# --------------------------------------------------------------------------------------------
# Data: the real photo and the split


@dataclass
class Part:
    """A vertical strip of the photo: ``image`` float32 (H, w, 3) in [0, 1], ``land`` (H, w)."""

    name: str
    columns: tuple[int, int]
    image: np.ndarray
    land: np.ndarray

    @property
    def water(self) -> np.ndarray:
        """True where the label says water (land fraction below 0.5, as segmenter.metrics)."""
        return self.land < 0.5


def load_real(real_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The real photo and its label at full resolution, through segmenter's own loaders.

    Returns:
        ``(stem, image, land)``: float32 (H, W, 3) in [0, 1] and float32 (H, W), 1 = land.

    Raises:
        SystemExit: the folder or its single photo/label pair is missing (a clear message).
    """
    from segmenter.config import DataConfig
    from segmenter.data import ontario
    from segmenter.data.storage import open_storage

    if not (real_dir / "train").is_dir():
        raise SystemExit(
            f"bench_quality: real photo not found: {real_dir}/train does not exist. Pass "
            f"--real DIR (an Ontario-layout folder with train/<stem>.JPG + <stem>_mres.mat)."
        )
    data_cfg = DataConfig(source=str(real_dir), water_class=2)
    storage = open_storage(str(real_dir), data_cfg)
    pairs, problems = ontario.find_pairs(storage, "train")
    for problem in problems:
        log.warning("%s", problem)
    if not pairs:
        raise SystemExit(f"bench_quality: no photo/label pair in {real_dir}/train")
    item = ontario.load_pair(storage, pairs[0], data_cfg, 1.0)
    return item.stem, item.image, item.land


def column_ranges(width: int, split: str) -> dict[str, tuple[int, int]]:
    """Column ranges of the fitting part and the scored part for ``split`` (tune or final)."""
    train_end = int(round(TRAIN_FRACTION * width))
    inner = int(round(INNER_FRACTION * width))
    if split == "final":
        return {"fit": (0, train_end), "monitor": (inner, train_end), "score": (train_end, width)}
    if split == "tune":
        return {"fit": (0, inner), "monitor": (inner, train_end), "score": (inner, train_end)}
    raise ValueError(f"split must be 'final' or 'tune', got {split!r}")


def cut(name: str, image: np.ndarray, land: np.ndarray, columns: tuple[int, int]) -> Part:
    """The strip ``columns`` of the photo (views, no copy)."""
    return Part(name, columns, image[:, columns[0] : columns[1]], land[:, columns[0] : columns[1]])


def write_ontario(folder: Path, subdir: str, stem: str, part: Part) -> None:
    """Write ``part`` as ``<folder>/<subdir>/<stem>.png`` + ``<stem>_mres.mat`` (water = 2).

    PNG keeps the photo's 8-bit pixels exactly (re-encoding the JPEG would change them); the
    label uses the Ontario key names (``class``, ``labels``) so the normal loader reads it.
    """
    import imageio.v3 as iio
    import scipy.io

    out = folder / subdir
    out.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.round(part.image * 255.0), 0, 255).astype(np.uint8)
    iio.imwrite(out / f"{stem}.png", pixels)
    classes = np.where(part.land < 0.5, 2, 1).astype(np.uint8)
    scipy.io.savemat(
        out / f"{stem}_mres.mat",
        {"class": classes, "labels": np.array(["land ", "water"])},
        do_compression=True,
    )


def prepare_sources(
    work: Path, stem: str, image: np.ndarray, land: np.ndarray, split: str
) -> tuple[Path, Path, dict[str, Part]]:
    """Write the training source and the validation source; return them and the parts.

    The training source has ``train/`` (the fitting part) and ``test/`` (the inner strip that
    ``segmenter train`` validates on). The validation source holds only the scored part, in
    ``train/`` (the loaders require that folder to have pairs); it is scored as
    ``segmenter evaluate --data <validation source> --split all`` would.
    """
    ranges = column_ranges(image.shape[1], split)
    parts = {key: cut(key, image, land, cols) for key, cols in ranges.items()}
    train_src, val_src = work / "train_source", work / "val_source"
    for folder in (train_src, val_src):
        if folder.exists():
            shutil.rmtree(folder)
    write_ontario(train_src, "train", f"{stem}_fit", parts["fit"])
    write_ontario(train_src, "test", f"{stem}_monitor", parts["monitor"])
    write_ontario(val_src, "train", f"{stem}_score", parts["score"])
    return train_src, val_src, parts


# --------------------------------------------------------------------------------------------
# Metrics and the table


@dataclass
class Row:
    """One line of the table."""

    method: str
    scores: dict[str, float]
    train_minutes: float
    note: str = ""


def score(pred_water: np.ndarray, true_water: np.ndarray) -> dict[str, float]:
    """segmenter's own metrics (water positive), so peers and segmenter are scored alike."""
    from segmenter import metrics

    return metrics.scores(pred_water, true_water)


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: method, water IoU, mean IoU, water F1, accuracy, training minutes."""
    head = f"{'method':<44} {'water IoU':>9} {'mean IoU':>9} {'water F1':>9} {'accuracy':>9} " \
           f"{'train min':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        s = row.scores
        lines.append(
            f"{row.method:<44} {s['water_iou']:>9.4f} {s['mean_iou']:>9.4f} {s['f1']:>9.4f} "
            f"{s['accuracy']:>9.4f} {row.train_minutes:>9.2f}"
            + (f"  {row.note}" if row.note else "")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Peers


def _resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Area-average an RGB image by ``scale`` with segmenter's own resizing (as the models see)."""
    from segmenter.data import images

    shape = images.scaled_shape(image.shape[:2], scale)
    return images._resize_float(image, shape) if shape != image.shape[:2] else image


def _resize_land(land: np.ndarray, scale: float) -> np.ndarray:
    from segmenter.data import images

    return images.resize_land(land, images.scaled_shape(land.shape, scale))


def _upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a bool mask to ``shape``."""
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0]) // shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1]) // shape[1], mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def peer_otsu(fit: Part, target: Part, scale: float) -> tuple[np.ndarray, float, str]:
    """Grey-level Otsu threshold of the target; the water side is chosen on the training part.

    Water is usually the darker side, but on this photo the forest is darker still; picking the
    side by the training labels is the most favourable honest choice for the peer.
    """
    from skimage.filters import threshold_otsu

    fit_grey = _resize_image(fit.image, scale).mean(axis=-1)
    fit_water = _resize_land(fit.land, scale) < 0.5
    fit_t = threshold_otsu(fit_grey)
    dark = score(fit_grey < fit_t, fit_water)["water_iou"]
    bright = score(fit_grey >= fit_t, fit_water)["water_iou"]
    grey = _resize_image(target.image, scale).mean(axis=-1)
    threshold = threshold_otsu(grey)
    mask = grey < threshold if dark >= bright else grey >= threshold
    side = "darker" if dark >= bright else "brighter"
    return _upsample_mask(mask, target.land.shape), 0.0, f"water = {side} side"


def peer_gmm_rgb(fit: Part, target: Part, scale: float) -> tuple[np.ndarray, float, str]:
    """A 5-component full-covariance GMM on RGB, components labelled by the training part."""
    from sklearn.mixture import GaussianMixture

    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    pixels = _resize_image(fit.image, scale).reshape(-1, 3)
    water = (_resize_land(fit.land, scale) < 0.5).reshape(-1)
    take = rng.choice(len(pixels), min(GMM_PIXELS, len(pixels)), replace=False)
    gmm = GaussianMixture(5, covariance_type="full", max_iter=50, random_state=SEED)
    gmm.fit(pixels[take])
    component = gmm.predict(pixels[take])
    water_share = np.array(
        [water[take][component == k].mean() if np.any(component == k) else 0.0 for k in range(5)]
    )
    is_water = water_share > 0.5
    minutes = (time.perf_counter() - started) / 60
    small = _resize_image(target.image, scale)
    mask = is_water[gmm.predict(small.reshape(-1, 3))].reshape(small.shape[:2])
    return _upsample_mask(mask, target.land.shape), minutes, f"{int(is_water.sum())}/5 comps water"


def forest_features(image: np.ndarray) -> np.ndarray:
    """scikit-image's multiscale intensity, edge and texture features (sigmas 1 to 16)."""
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(
        image, channel_axis=-1, intensity=True, edges=True, texture=True,
        sigma_min=1, sigma_max=16,
    ).astype(np.float32)


def peer_forest(fit: Part, target: Part, scale: float) -> tuple[np.ndarray, float, str]:
    """Random forest on per-pixel multiscale features; features of each part computed alone."""
    from sklearn.ensemble import RandomForestClassifier

    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    features = forest_features(_resize_image(fit.image, scale))
    water = (_resize_land(fit.land, scale) < 0.5).reshape(-1)
    features = features.reshape(-1, features.shape[-1])
    take = rng.choice(len(features), min(FOREST_PIXELS, len(features)), replace=False)
    forest = RandomForestClassifier(
        n_estimators=100, max_depth=12, n_jobs=2, random_state=SEED
    ).fit(features[take], water[take])
    del features
    minutes = (time.perf_counter() - started) / 60
    small = _resize_image(target.image, scale)
    target_features = forest_features(small)
    pred = forest.predict(target_features.reshape(-1, target_features.shape[-1]))
    mask = pred.reshape(small.shape[:2]).astype(bool)
    return _upsample_mask(mask, target.land.shape), minutes, f"{FOREST_PIXELS} px, 100 trees"


PEERS: dict[str, Callable[[Part, Part, float], tuple[np.ndarray, float, str]]] = {
    "Otsu on grey": peer_otsu,
    "GMM on RGB (5 comps)": peer_gmm_rgb,
    "random forest, multiscale features": peer_forest,
}


def run_peers(fit: Part, target: Part, scale: float) -> list[Row]:
    """Every peer's row, scored at the photo's full resolution on ``target``."""
    rows = []
    for name, peer in PEERS.items():
        tick = time.perf_counter()
        mask, minutes, note = peer(fit, target, scale)
        rows.append(Row(name, score(mask, target.water), minutes, note))
        log.info("%s: %.1f s", name, time.perf_counter() - tick)
    return rows


# --------------------------------------------------------------------------------------------
# segmenter


def train_segmenter(
    config: Path, train_src: Path, run_dir: Path, overrides: Sequence[str]
) -> float:
    """``segmenter train`` in a child process, as a user runs it; returns wall-clock minutes.

    Only ``data.source`` is changed (plus any ``--set`` given to this script, for tuning).
    """
    command = [
        sys.executable, "-m", "segmenter", "train", "--config", str(config),
        "--set", f"data.source={train_src}", "--out", str(run_dir), "--overwrite",
    ]
    for item in overrides:
        command += ["--set", item]
    log.info("training: %s", " ".join(command))
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return (time.perf_counter() - started) / 60


def recorded_minutes(run_dir: Path) -> float:
    """Training minutes an existing run recorded (sum over widths of their history's seconds).

    Used with ``--run``: it leaves out the process start and data loading that the wall-clock
    figure of a fresh run includes, so it is slightly lower.
    """
    from segmenter.runs import open_run

    run = open_run(run_dir)
    seconds = 0.0
    for width in run.finished_widths():
        rows = run.read_history(width)
        if rows and rows[-1].get("seconds") is not None:
            seconds += float(rows[-1]["seconds"])
    return seconds / 60


def evaluate_segmenter(
    run_dir: Path, val_src: Path, overrides: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Score the run on the validation source exactly as ``segmenter evaluate --data`` does.

    Same steps as ``segmenter evaluate --run RUN --data VAL --split all``: the run's saved
    config with the overrides, the data source swapped, the run's models loaded by
    :func:`segmenter.predictor.load_models`, every labelled image of the validation source
    loaded at its own resolution, and :func:`segmenter.evaluation.evaluate_images` (predict,
    mask, score).

    Returns:
        ``{"mask": scores of the configured mask (GMM), "threshold": scores at 0.5}``.
    """
    from segmenter import evaluation, predictor
    from segmenter.config import load_config
    from segmenter.data.ontario import load_dataset
    from segmenter.runs import open_run

    run = open_run(run_dir)
    cfg = load_config(None, list(overrides), base=run.config)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": str(val_src)})})
    loaded = predictor.load_models(run, cfg)
    dataset = load_dataset(cfg.data, scale=1.0, progress=False)
    report = evaluation.evaluate_images(loaded, dataset.train + dataset.test, cfg)
    overall = report["overall"]
    return {"mask": overall, "threshold": overall[evaluation.BASELINE]}


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL,
                        help=f"Ontario-layout folder with the real photo (default {DEFAULT_REAL})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="segmenter config to benchmark (default configs/photo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="extra config override (tuning)")
    parser.add_argument("--split", choices=("final", "tune"), default="final",
                        help="final: score the validation part; tune: score the inner strip")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder for the split data and the run (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--skip-peers", action="store_true", help="only run segmenter")
    parser.add_argument("--skip-random", action="store_true",
                        help="skip the notebook's random-window inference row")
    parser.add_argument("--run", type=Path, default=None,
                        help="evaluate this existing run instead of training one")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.config.is_file():
        raise SystemExit(f"bench_quality: config not found: {args.config}")
    from segmenter.config import load_config

    cfg = load_config(args.config, args.overrides)
    stem, image, land = load_real(args.real.resolve())
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        train_src, val_src, parts = prepare_sources(work, stem, image, land, args.split)
        del image, land
        fit, target = parts["fit"], parts["score"]
        log.info(
            "split %s: fit columns %s, scored columns %s; water %.1f%% / %.1f%%",
            args.split, fit.columns, target.columns,
            100 * fit.water.mean(), 100 * target.water.mean(),
        )
        rows: list[Row] = [] if args.skip_peers else run_peers(fit, target, cfg.data.scale)

        run_dir = args.run or work / "run"
        if args.run is None:
            minutes = train_segmenter(args.config, train_src, run_dir, args.overrides)
        else:
            minutes = recorded_minutes(run_dir)
        grid = evaluate_segmenter(run_dir, val_src, args.overrides)
        label = f"segmenter {args.config.name}"
        method = grid["mask"].get("method", "gmm")
        rows.append(Row(f"{label}, {method} mask", grid["mask"], minutes))
        rows.append(Row(f"{label}, 0.5 threshold", grid["threshold"], minutes))
        if not args.skip_random:
            rand = evaluate_segmenter(
                run_dir, val_src, [*args.overrides, "predict.sampling=random"]
            )
            rows.append(Row(f"{label}, notebook random windows", rand["mask"], minutes))
        print(format_table(rows))
        best = grid["mask"]
        print(
            f"quality water_iou={best['water_iou']:.4f} mean_iou={best['mean_iou']:.4f} "
            f"train_minutes={minutes:.2f}"
        )
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
