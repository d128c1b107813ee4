#!/usr/bin/env python
"""Cross-photo quality benchmark: segmenter against classic peers on photos no method trained on.

Users train on some photos and predict others (other days, other light, other sites), so every
score here comes from photos (or, for the one real photo, a part) that no method fitted on.
Each *case* is a training source (an Ontario-layout folder the script writes or links into its
work folder: ``train/`` is fitted, ``test/`` is what ``segmenter train`` validates on) and a
*scored* source holding only photos that are in neither of those:

* ``shifted``: the built-in generated sample (``segmenter sample-data``; :data:`SAMPLE_N`
  scenes, :data:`SAMPLE_SIZE` px wide, seed 0). Trained on ``train/``, validated on ``test/``,
  scored on ``test_shifted/``: scenes in water and land colours and light no training scene has.
* ``oasis``: ``../shared/dev/oasis`` (photos from ships, 512 x 384, ``<stem>_label.png`` with
  water = 1, so every method gets ``data.label_water_value=1``). Trained on ``train/`` minus
  every 12th photo, which forms the validation folder (10 photos), scored on the 59 of
  ``test/`` whose labels were drawn (``type2_030_label.png`` is 0 everywhere, sky and sea
  included: a blank annotation, left out; see :func:`blank_labels`). The test photos never
  enter the training source.
* ``real``: the real aerial photo ``../shared/real`` (5008 x 2504, water = class 2). Fitted on its
  west 60 % of columns, scored on the east 40 %; ``segmenter train`` validates on columns
  45-60 % (inside the fitted part: a training-fit monitor, not a score).

* ``obx2018``: ``../shared/dev/obx2018`` (aerial survey photos, 920 x 614, water = class 2),
  split by flight day: trained on ``train/`` minus every 8th photo (validation), scored on
  ``test/`` (other days, tides and light). Its run is also scored on *dry photos*:
  :data:`DRY_SIDE`-px squares without a water pixel cut from the scored photos and from the real
  photo (none of them trained on), reported as the share of their pixels called water
  (``dry case=obx2018 ... water_fraction=<...>``).

For each case, on the same scored pixels at each photo's own resolution and with
:mod:`segmenter.metrics` (pixel counts pooled over the scored photos, as ``segmenter evaluate``):

* peers, fitted on the case's ``train/`` photos at the recommended config's ``data.scale``:
  Otsu on grey (one threshold per photo; which side is water is chosen on the training photos),
  a 5-component GMM on RGB (components called water by the training labels; pixels subsampled
  across the photos), a random forest on scikit-image multiscale features (pixels subsampled
  across the photos in proportion to their size);
* segmenter with the recommended config (``--config``, default ``configs/photo.yaml``): trained
  by ``segmenter train`` in a child process with only ``data.source`` changed (plus the label
  format fact ``data.label_water_value=1`` for oasis), scored through
  :func:`segmenter.predict.evaluation.evaluate_images` exactly as ``segmenter evaluate --data SCORED
  --split all``; its configured mask and the plain 0.5 threshold;
* a reference row, ``configs/notebook-small.yaml``: the original notebook's setup (linear output,
  MSE, no augmentation, widths 32/64/128, random windows, min-max rescale) at the recommended
  config's ``data.scale`` and with ``train.steps`` set so it trains on as many patch pixels as the
  recommended config (printed per case).

A width of ``train.widths`` larger than a case's training photos at ``data.scale`` stops the
benchmark before any training, with one line naming the case, the config and the width: the
config is never changed behind your back.

``--quick`` (for iterating): ``train.steps`` cut to a quarter for segmenter and the reference;
``shifted`` uses :data:`QUICK_SAMPLE_N` scenes (4 scored) instead of :data:`SAMPLE_N` (12 scored);
``oasis`` trains on 30 photos (5 validate) and scores 15 test photos (evenly spaced picks);
``real`` is unchanged (one photo). The quick and full scores are not comparable.

Printed: one table (case, method, water IoU, mean IoU, training minutes), then one line per case
``quality case=<name> water_iou=<...> mean_iou=<...> train_minutes=<...>`` for the recommended
config's mask. Run from the repository root (a clean clone with the package installed)::

    python scripts/bench_quality.py                           # every case, full
    python scripts/bench_quality.py --quick --cases shifted   # a few minutes
    python scripts/bench_quality.py --cases oasis --set train.steps=800 --skip-peers
    python scripts/bench_quality.py --oasis /data/oasis --real /data/real --work /tmp/bq

Costs, measured on the 2-core CPU while other jobs kept its load average at 9-13 (so upper
bounds; the table's ``train min`` column gives each run's own figure):

* ``--quick --cases shifted`` with ``--set 'train.widths={128: 16, 192: 8}'``: 24.8 min in all
  (peers about 4 min, segmenter 100 steps 8 min, reference 121 steps 8 min; the rest is making
  the sample and scoring), peak memory 1.6 GB;
* the peers alone, full cases: shifted 6.1 min, oasis 7.9 min, real 5.7 min (the random
  forest, features and fit, is nearly all of it; Otsu seconds, GMM about half a minute);
* a full case adds two trainings at the recommended config's full ``train.steps`` (10.8-12.7 min
  each for photo.yaml's 2000 steps, 6.5-7.5 min at 1200, on the idle CPU) and their scoring;
* ``--skip-peers --skip-reference``, every case, full: 36.4 min on the idle CPU (21.8 min when
  photo.yaml trained 1200 steps, 8.6 min at 400);
* every case with the reference, without the peers: 74.5 min at photo.yaml's 2000 steps, so
  the whole full benchmark (peers too) takes about 95 min today (74 min, peers included, when
  photo.yaml trained 400 steps, partly while other runs shared the CPU).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "real"
DEFAULT_OASIS = REPO.parent / "shared" / "dev" / "oasis"
DEFAULT_OBX = REPO.parent / "shared" / "dev" / "obx2018"
DEFAULT_CONFIG = REPO / "configs" / "photo.yaml"
REFERENCE_CONFIG = REPO / "configs" / "notebook-small.yaml"
CASES = ("shifted", "oasis", "real", "obx2018")

#: share of the real photo's columns (from the west) that are fitted; the rest is scored.
TRAIN_FRACTION = 0.6
#: the real photo's columns [MONITOR_FRACTION, TRAIN_FRACTION) are what training validates on.
MONITOR_FRACTION = 0.45
#: the generated sample: scenes (a quarter go to test/, as many to test_shifted/) and width.
SAMPLE_N, QUICK_SAMPLE_N, SAMPLE_SIZE, SAMPLE_SEED = 48, 16, 512, 0
#: OASIs: every OASIS_VALIDATION_EVERY-th training photo validates instead of training.
OASIS_VALIDATION_EVERY = 12
#: --quick OASIs subsets: training photos, validation photos, scored test photos.
QUICK_OASIS = (30, 5, 15)
#: obx2018: every OBX_VALIDATION_EVERY-th training photo validates instead of training.
OBX_VALIDATION_EVERY = 8
#: --quick obx2018 subsets: training photos, validation photos, scored test photos.
QUICK_OBX = (24, 4, 12)
#: dry photos: side of the square crops without a water pixel, cut from photos no run of the
#: case trains on (obx2018's test/ and the real photo), and at most this many per photo.
DRY_SIDE, DRY_PER_PHOTO = 256, 2
#: --quick divides train.steps by this (segmenter and reference alike).
QUICK_STEPS_DIVISOR = 4
#: seed of every random choice made here (pixel subsamples, forest, mixture).
SEED = 0
#: pixels of the training photos the random forest is fitted on (more adds minutes, not IoU).
FOREST_PIXELS = 100_000
#: pixels of the training photos the RGB mixture is fitted on.
GMM_PIXELS = 200_000

log = logging.getLogger("bench_quality")


class BenchError(Exception):
    """A problem the user must fix (one line); main() prints it and exits non-zero."""


# --------------------------------------------------------------------------------------------
# Cases: a training source and a scored source per case


@dataclass
class Case:
    """One benchmark case.

    Attributes:
        name: ``shifted``, ``oasis``, ``real`` or ``obx2018``.
        train_source: Ontario-layout folder: ``train/`` is fitted, ``test/`` validates.
        scored: Ontario-layout folder whose ``train/`` holds the scored photos only.
        overrides: label-format facts every segmenter run of the case gets (``--set``).
        water_class, label_water_value: how the case's labels mark water (for the peers).
        description: one line saying what is trained and what is scored.
    """

    name: str
    train_source: Path
    scored: Path
    overrides: list[str] = field(default_factory=list)
    water_class: int = 2
    label_water_value: int = 255
    description: str = ""
    #: Ontario-layout folder whose ``train/`` holds photos without water (scored for the
    #: water the run invents on them), or ``None``.
    dry: Path | None = None

    def data_config(self, source: Path) -> Any:
        """A ``DataConfig`` reading ``source`` with this case's label facts."""
        from segmenter.config import DataConfig

        return DataConfig(source=str(source), water_class=self.water_class,
                          label_water_value=self.label_water_value)


def _link_pairs(pairs: Sequence[Any], root: Path, folder: Path) -> None:
    """Symlink each pair's photo and label (paths relative to ``root``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        for rel in (pair.photo, pair.label):
            target = (root / rel).resolve()
            (folder / target.name).symlink_to(target)


def _pairs(folder: Path, subdir: str, data_cfg: Any) -> list[Any]:
    """The photo/label pairs of ``folder/subdir`` as segmenter pairs them (problems logged)."""
    from segmenter.data import ontario
    from segmenter.data.storage import open_storage

    pairs, problems = ontario.find_pairs(open_storage(str(folder), data_cfg), subdir)
    for problem in problems:
        log.warning("%s", problem)
    return pairs


def evenly(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them if there are fewer)."""
    if count >= len(items):
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def prepare_shifted(work: Path, n: int, size: int, seed: int = SAMPLE_SEED) -> Case:
    """Write the sample (train/, test/, test_shifted/) and a scored source of test_shifted/."""
    from segmenter.config import DataConfig
    from segmenter.data.sample import SHIFTED_DIR, write_sample

    sample = work / "sample"
    counts = write_sample(sample, n=n, size=size, seed=seed)
    scored = work / "scored"
    _link_pairs(_pairs(sample, SHIFTED_DIR, DataConfig(source=str(sample))), sample,
                scored / "train")
    return Case(
        "shifted", sample, scored,
        description=(
            f"generated sample, {n} scenes {size} px wide (seed {seed}): train/ "
            f"{counts['train']} scenes, validation test/ {counts['test']}, scored "
            f"{counts[SHIFTED_DIR]} scenes of {SHIFTED_DIR}/ (colours no training scene has)"
        ),
    )


def split_pairs(probe: Case, every: int, quick: tuple[int, int, int] | None
                ) -> tuple[list[Any], list[Any], list[Any]]:
    """The fitted, validation and scored pairs of a folder with ``train/`` and ``test/``
    (``probe.train_source``): every ``every``-th training pair validates; ``quick``: even
    subsets of (fitted, validation, scored) sizes."""
    root = probe.train_source
    data_cfg = probe.data_config(root)
    train_pairs = _pairs(root, "train", data_cfg)
    test_pairs = _pairs(root, "test", data_cfg)
    if not train_pairs or not test_pairs:
        raise BenchError(f"case {probe.name}: no photo/label pairs in {root}/train or "
                         f"{root}/test")
    validation = train_pairs[every - 1 :: every]
    fitted = [p for p in train_pairs if p not in validation]
    if quick:
        n_train, n_val, n_test = quick
        fitted, validation = evenly(fitted, n_train), evenly(validation, n_val)
        test_pairs = evenly(test_pairs, n_test)
    return fitted, validation, test_pairs


def prepare_oasis(oasis: Path, work: Path, quick: bool) -> Case:
    """Link OASIs train/ photos into a training source and test/ photos into a scored source.

    Every :data:`OASIS_VALIDATION_EVERY`-th training photo goes to the validation folder
    (``test/`` of the training source) instead of ``train/``; the OASIs test photos go only to
    the scored source, so neither training nor its validation ever sees them.
    """
    probe = Case("oasis", oasis, oasis, water_class=2, label_water_value=1)
    fitted, validation, test_pairs = split_pairs(probe, OASIS_VALIDATION_EVERY,
                                                 QUICK_OASIS if quick else None)
    blank = blank_labels(oasis, fitted + validation + test_pairs)
    fitted, validation, test_pairs = (
        [p for p in pairs if p not in blank] for pairs in (fitted, validation, test_pairs))
    if not fitted or not test_pairs:
        raise BenchError(f"case oasis: no photo/label pairs with a drawn label left in {oasis}")
    source, scored = work / "train_source", work / "scored"
    _link_pairs(fitted, oasis, source / "train")
    _link_pairs(validation, oasis, source / "test")
    _link_pairs(test_pairs, oasis, scored / "train")
    return Case(
        "oasis", source, scored, overrides=["data.label_water_value=1"],
        water_class=2, label_water_value=1,
        description=(
            f"{oasis}: train/ {len(fitted)} photos, validation {len(validation)} other "
            f"train/ photos, scored {len(test_pairs)} test/ photos"
            + (f" (left out, blank labels: {', '.join(Path(p.label).name for p in blank)})"
               if blank else "")
        ),
    )


def blank_labels(root: Path, pairs: Sequence[Any]) -> list[Any]:
    """The pairs whose label image holds one value everywhere: an annotation never drawn.

    Every OASIs photo shows sky and sea, and its label marks both (2 and 1); a label that is 0
    (land and objects) over the whole frame, sky included, was left blank, not drawn, and would
    score a correct mask as all wrong. Such pairs are logged and kept out of training,
    validation and scoring alike. (In ``../shared/dev/oasis`` one test photo,
    ``type2_030``, a harbour half sea and half sky, has such a label.)
    """
    from PIL import Image

    blank = []
    for pair in pairs:
        with Image.open(root / pair.label) as label:
            values = np.asarray(label)
        if values.size and (values == values.flat[0]).all():
            log.warning("case oasis: %s left out: its label is %s everywhere (blank)",
                        pair.label, values.flat[0])
            blank.append(pair)
    return blank


@dataclass
class Part:
    """A vertical strip of the photo: ``image`` float32 (H, w, 3) in [0, 1], ``land`` (H, w)."""

    name: str
    columns: tuple[int, int]
    image: np.ndarray
    land: np.ndarray


def load_real(real_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The real photo and its label at full resolution, through segmenter's own loaders.

    Returns:
        ``(stem, image, land)``: float32 (H, W, 3) in [0, 1] and float32 (H, W), 1 = land.
    """
    from segmenter.config import DataConfig
    from segmenter.data import ontario
    from segmenter.data.storage import open_storage

    data_cfg = DataConfig(source=str(real_dir), water_class=2)
    pairs = _pairs(real_dir, "train", data_cfg)
    if not pairs:
        raise BenchError(f"case real: no photo/label pair in {real_dir}/train")
    item = ontario.load_pair(open_storage(str(real_dir), data_cfg), pairs[0], data_cfg, 1.0)
    return item.stem, item.image, item.land


def real_columns(width: int) -> dict[str, tuple[int, int]]:
    """Column ranges of the fitted, monitored (validation) and scored parts of the real photo."""
    fit_end = int(round(TRAIN_FRACTION * width))
    monitor = int(round(MONITOR_FRACTION * width))
    return {"fit": (0, fit_end), "monitor": (monitor, fit_end), "score": (fit_end, width)}


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


def prepare_real(real_dir: Path, work: Path) -> Case:
    """Cut the real photo into a training source (fit + monitor strips) and a scored source."""
    stem, image, land = load_real(real_dir)
    ranges = real_columns(image.shape[1])
    parts = {key: Part(key, cols, image[:, cols[0] : cols[1]], land[:, cols[0] : cols[1]])
             for key, cols in ranges.items()}
    source, scored = work / "train_source", work / "scored"
    write_ontario(source, "train", f"{stem}_fit", parts["fit"])
    write_ontario(source, "test", f"{stem}_monitor", parts["monitor"])
    write_ontario(scored, "train", f"{stem}_score", parts["score"])
    return Case(
        "real", source, scored,
        description=(
            f"{real_dir}: {stem} {image.shape[1]}x{image.shape[0]}, fitted on columns "
            f"{ranges['fit']}, validation columns {ranges['monitor']} (inside the fitted part), "
            f"scored on columns {ranges['score']}"
        ),
    )


def prepare_obx(obx: Path, work: Path, quick: bool, real_dir: Path | None = None) -> Case:
    """Link obx2018's train/ photos into a training source and its test/ photos (other flight
    days) into a scored source; cut the dry photos (:func:`write_dry_photos`).

    Every :data:`OBX_VALIDATION_EVERY`-th training photo goes to the validation folder instead
    of ``train/``; the test photos go only to the scored source.
    """
    probe = Case("obx2018", obx, obx)
    data_cfg = probe.data_config(obx)
    fitted, validation, test_pairs = split_pairs(probe, OBX_VALIDATION_EVERY,
                                                 QUICK_OBX if quick else None)
    source, scored, dry = work / "train_source", work / "scored", work / "dry"
    _link_pairs(fitted, obx, source / "train")
    _link_pairs(validation, obx, source / "test")
    _link_pairs(test_pairs, obx, scored / "train")
    sources = [(obx, pair) for pair in test_pairs]
    if real_dir is not None and (real_dir / "train").is_dir():
        sources += [(real_dir, pair) for pair in _pairs(real_dir, "train", data_cfg)]
    crops = write_dry_photos(sources, dry, data_cfg)
    return Case(
        "obx2018", source, scored, dry=dry if crops else None,
        description=(
            f"{obx}: train/ {len(fitted)} photos, validation {len(validation)} other train/ "
            f"photos, scored {len(test_pairs)} test/ photos (other flight days); {crops} dry "
            f"crops of {DRY_SIDE} px from the scored photos and the real photo"
        ),
    )


def dry_windows(land: np.ndarray, side: int, most: int) -> list[tuple[int, int]]:
    """Top-left corners of up to ``most`` non-overlapping ``side``-px squares of ``land``
    without a water pixel (scanned on a grid of half a square, top to bottom)."""
    height, width = land.shape
    step = max(1, side // 2)
    taken: list[tuple[int, int]] = []
    for top in range(0, height - side + 1, step):
        for left in range(0, width - side + 1, step):
            if len(taken) >= most:
                return taken
            if any(abs(top - t) < side and abs(left - c) < side for t, c in taken):
                continue
            if (land[top : top + side, left : left + side] >= 0.5).all():
                taken.append((top, left))
    return taken


def write_dry_photos(sources: Sequence[tuple[Path, Any]], folder: Path, data_cfg: Any) -> int:
    """Cut squares without water from each photo of ``sources`` (``(root, pair)``) into
    ``folder/train`` as Ontario pairs labelled all land; returns how many were written."""
    from segmenter.data import ontario
    from segmenter.data.storage import open_storage

    count = 0
    for root, pair in sources:
        item = ontario.load_pair(open_storage(str(root), data_cfg), pair, data_cfg, 1.0)
        for index, (top, left) in enumerate(
                dry_windows(item.land, DRY_SIDE, DRY_PER_PHOTO)):
            window = (slice(top, top + DRY_SIDE), slice(left, left + DRY_SIDE))
            write_ontario(folder, "train", f"{item.stem}_dry{index}",
                          Part("dry", (left, left + DRY_SIDE), item.image[window],
                               item.land[window]))
            count += 1
    return count


def case_folder_problem(name: str, folder: Path) -> str | None:
    """Why the data folder of case ``name`` is absent (``None`` if it is there)."""
    needed = {"oasis": ("train", "test"), "real": ("train",),
              "obx2018": ("train", "test")}.get(name, ())
    for sub in needed:
        if not (folder / sub).is_dir():
            flag = {"oasis": "--oasis", "real": "--real", "obx2018": "--obx"}[name]
            return f"case {name}: skipped: {folder / sub} not found (pass {flag} DIR)"
    return None


# --------------------------------------------------------------------------------------------
# Configs: the recommended one, the reference, and whether their widths fit


def photo_sizes(folder: Path) -> list[tuple[str, tuple[int, int]]]:
    """``(name, (height, width))`` of every photo under ``folder/train`` and ``folder/test``."""
    from PIL import Image

    from segmenter.data.storage import is_photo_name

    sizes = []
    for sub in ("train", "test"):
        if not (folder / sub).is_dir():
            continue
        for path in sorted((folder / sub).iterdir()):
            if is_photo_name(path.name):
                with Image.open(path) as pil:
                    sizes.append((f"{sub}/{path.name}", (pil.height, pil.width)))
    return sizes


def width_problem(case: Case, cfg: Any, label: str) -> str | None:
    """One line if a ``train.widths`` width exceeds a training photo of ``case`` at data.scale."""
    from segmenter.data.images import scaled_shape

    sizes = [(name, scaled_shape(shape, cfg.data.scale))
             for name, shape in photo_sizes(case.train_source)]
    if not sizes:
        return f"case {case.name}: no photos in {case.train_source}"
    name, smallest = min(sizes, key=lambda item: min(item[1]))
    too_wide = sorted(w for w in cfg.train.widths if w > min(smallest))
    if not too_wide:
        return None
    return (
        f"case {case.name}: {label}: train.widths {', '.join(map(str, too_wide))} "
        f"{'does' if len(too_wide) == 1 else 'do'} not fit its training photos at data.scale "
        f"{cfg.data.scale:g} (smallest {name}: "
        f"{smallest[1]}x{smallest[0]} px); change the config or pass --set train.widths=..."
    )


def patch_pixels(cfg: Any) -> int:
    """Patch pixels one training run sees: ``train.steps`` x sum over widths of batch x width^2."""
    return cfg.train.steps * sum(batch * width * width for width, batch in cfg.train.widths.items())


def reference_overrides(recommended: Any, reference_base: Any) -> list[str]:
    """``--set`` items that size the reference to the recommended config's budget and scale."""
    per_step = patch_pixels(reference_base.model_copy(
        update={"train": reference_base.train.model_copy(update={"steps": 1})}))
    steps = max(1, round(patch_pixels(recommended) / per_step))
    return [f"data.scale={recommended.data.scale!r}", f"train.steps={steps}"]


# --------------------------------------------------------------------------------------------
# Metrics and the table


@dataclass
class Row:
    """One line of the table."""

    case: str
    method: str
    scores: dict[str, float]
    train_minutes: float
    note: str = ""


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: case, method, water IoU, mean IoU, training minutes (and a note)."""
    width = max([44, *(len(row.method) for row in rows)])
    head = f"{'case':<8} {'method':<{width}} {'water IoU':>9} {'mean IoU':>9} {'train min':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row.case:<8} {row.method:<{width}} {row.scores['water_iou']:>9.4f} "
            f"{row.scores['mean_iou']:>9.4f} {row.train_minutes:>9.2f}"
            + (f"  {row.note}" if row.note else "")
        )
    return "\n".join(lines)


def invented_water(overall: dict[str, Any]) -> float:
    """The share of pixels called water on photos without water (1 - accuracy there)."""
    return 1.0 - float(overall["accuracy"])


def dry_line(case: str, method: str, overall: dict[str, Any]) -> str:
    """``dry case=<name> method=<...> images=<n> water_fraction=<...> threshold_0.5=<...>``."""
    from segmenter.predict.evaluation import BASELINE

    return (f"dry case={case} method={method} images={overall['images']} "
            f"water_fraction={invented_water(overall):.4f} "
            f"threshold_0.5={invented_water(overall[BASELINE]):.4f}")


def quality_line(case: str, scores: dict[str, float], minutes: float) -> str:
    """``quality case=<name> water_iou=<...> mean_iou=<...> train_minutes=<...>``."""
    return (f"quality case={case} water_iou={scores['water_iou']:.4f} "
            f"mean_iou={scores['mean_iou']:.4f} train_minutes={minutes:.2f}")


# --------------------------------------------------------------------------------------------
# Peers: fitted on lists of (image, water) at the model's scale, applied per scored photo


@dataclass
class Photo:
    """A photo for the peers: ``image`` float32 (h, w, 3) at the model's scale, ``water`` bool
    (h, w) at that scale (training photos) and ``truth`` bool at full resolution (scored)."""

    stem: str
    image: np.ndarray
    water: np.ndarray
    truth: np.ndarray | None = None


def load_photos(case: Case, source: Path, scale: float, scored: bool) -> list[Photo]:
    """The fitted photos (``train/`` of the training source) or the scored photos of ``case``.

    Scored photos are loaded at full resolution (their ``truth``) and resized by ``scale`` with
    the function segmenter's prediction uses, so the peers see what the models see.
    """
    from segmenter import metrics
    from segmenter.data import images
    from segmenter.data.ontario import load_dataset

    data_cfg = case.data_config(source)
    if not scored:
        dataset = load_dataset(data_cfg, scale=scale, progress=False)  # fits train/ only
        return [Photo(item.stem, item.image, metrics.water_from_land(item.land))
                for item in dataset.train]
    dataset = load_dataset(data_cfg, scale=1.0, progress=False, need=("all",))  # all in train
    out = []
    for item in dataset.train:
        shape = images.scaled_shape(item.land.shape, scale)
        small = images._resize_float(item.image, shape)
        water = metrics.water_from_land(images.resize_land(item.land, shape))
        out.append(Photo(item.stem, small, water, metrics.water_from_land(item.land)))
    return out


def upsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a bool mask to ``shape``."""
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0]) // shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1]) // shape[1], mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


Predictor = Callable[[np.ndarray], np.ndarray]


def fit_otsu(fit: Sequence[Photo]) -> tuple[Predictor, str]:
    """Grey-level Otsu threshold per photo; the water side is the one that scores better on the
    training photos (water is usually darker, but forest and night scenes can be darker still).
    """
    from skimage.filters import threshold_otsu

    from segmenter import metrics

    def dark_mask(image: np.ndarray) -> np.ndarray:
        grey = image.mean(axis=-1)
        return grey < threshold_otsu(grey) if np.ptp(grey) > 0 else np.zeros(grey.shape, bool)

    dark = bright = metrics.Confusion(0, 0, 0, 0)
    for photo in fit:
        mask = dark_mask(photo.image)
        dark = dark + metrics.confusion(mask, photo.water)
        bright = bright + metrics.confusion(~mask, photo.water)
    use_dark = dark.scores()["water_iou"] >= bright.scores()["water_iou"]

    def predict(image: np.ndarray) -> np.ndarray:
        mask = dark_mask(image)
        return mask if use_dark else ~mask

    return predict, f"water = {'darker' if use_dark else 'brighter'} side"


def _subsample_counts(fit: Sequence[Photo], total: int) -> list[int]:
    """Pixels to draw from each photo: in proportion to its size, ``total`` overall at most."""
    sizes = np.array([photo.water.size for photo in fit], dtype=np.float64)
    share = np.minimum(sizes, np.ceil(total * sizes / sizes.sum()))
    return [int(v) for v in share]


def fit_gmm_rgb(fit: Sequence[Photo]) -> tuple[Predictor, str]:
    """A 5-component full-covariance GMM on RGB, components labelled by the training photos."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(SEED)
    pixels, water = [], []
    for photo, count in zip(fit, _subsample_counts(fit, GMM_PIXELS), strict=True):
        take = rng.choice(photo.water.size, count, replace=False)
        pixels.append(photo.image.reshape(-1, 3)[take])
        water.append(photo.water.reshape(-1)[take])
    x, y = np.concatenate(pixels), np.concatenate(water)
    gmm = GaussianMixture(5, covariance_type="full", max_iter=50, random_state=SEED).fit(x)
    component = gmm.predict(x)
    share = np.array([y[component == k].mean() if np.any(component == k) else 0.0
                      for k in range(5)])
    is_water = share > 0.5

    def predict(image: np.ndarray) -> np.ndarray:
        return is_water[gmm.predict(image.reshape(-1, 3))].reshape(image.shape[:2])

    return predict, f"{int(is_water.sum())}/5 comps water, {len(y)} px"


def forest_features(image: np.ndarray) -> np.ndarray:
    """scikit-image's multiscale intensity, edge and texture features (sigmas 1 to 16)."""
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(
        image, channel_axis=-1, intensity=True, edges=True, texture=True,
        sigma_min=1, sigma_max=16,
    ).astype(np.float32)


def fit_forest(fit: Sequence[Photo]) -> tuple[Predictor, str]:
    """Random forest on per-pixel multiscale features (each photo's features computed alone)."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(SEED)
    rows, labels = [], []
    for photo, count in zip(fit, _subsample_counts(fit, FOREST_PIXELS), strict=True):
        features = forest_features(photo.image)
        take = rng.choice(photo.water.size, count, replace=False)
        rows.append(features.reshape(-1, features.shape[-1])[take])
        labels.append(photo.water.reshape(-1)[take])
        del features
    forest = RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=2, random_state=SEED)
    forest.fit(np.concatenate(rows), np.concatenate(labels))

    def predict(image: np.ndarray) -> np.ndarray:
        features = forest_features(image)
        pred = forest.predict(features.reshape(-1, features.shape[-1]))
        return pred.reshape(image.shape[:2]).astype(bool)

    return predict, f"{sum(len(r) for r in rows)} px, 100 trees"


PEERS: dict[str, Callable[[Sequence[Photo]], tuple[Predictor, str]]] = {
    "Otsu on grey": fit_otsu,
    "GMM on RGB (5 comps)": fit_gmm_rgb,
    "random forest, multiscale features": fit_forest,
}


def run_peers(case: str, fit: Sequence[Photo], scored: Sequence[Photo]) -> list[Row]:
    """Every peer fitted on ``fit`` and scored at full resolution on ``scored`` (pooled counts).

    The minutes are fitting time (prediction of the scored photos is not training).
    """
    from segmenter import metrics

    rows = []
    for name, fit_peer in PEERS.items():
        started = time.perf_counter()
        predict, note = fit_peer(fit)
        minutes = 0.0 if name == "Otsu on grey" else (time.perf_counter() - started) / 60
        pooled = metrics.Confusion(0, 0, 0, 0)
        for photo in scored:
            mask = upsample_mask(predict(photo.image), photo.truth.shape)
            pooled = pooled + metrics.confusion(mask, photo.truth)
        rows.append(Row(case, name, pooled.scores(), minutes, note))
        log.info("%s %s: %.1f s", case, name, time.perf_counter() - started)
    return rows


# --------------------------------------------------------------------------------------------
# segmenter


def train_segmenter(
    config: Path, source: Path, run_dir: Path, overrides: Sequence[str], what: str
) -> float:
    """``segmenter train`` in a child process, as a user runs it; returns wall-clock minutes."""
    command = [
        sys.executable, "-m", "segmenter", "train", "--config", str(config),
        "--set", f"data.source={source}", "--out", str(run_dir),
    ]
    for item in overrides:
        command += ["--set", item]
    log.info("training %s: %s", what, " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(command, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise BenchError(f"{what}: segmenter train failed (exit code {done.returncode}); "
                         "see its messages above")
    return (time.perf_counter() - started) / 60


def evaluate_segmenter(run_dir: Path, scored: Path) -> dict[str, Any]:
    """Score the run on ``scored`` exactly as ``segmenter evaluate --data SCORED --split all``.

    Same steps: the run's saved config with the data source swapped, the run's models loaded by
    :func:`segmenter.predict.models.load_models`, every labelled image of the source loaded at its
    own resolution, and :func:`segmenter.predict.evaluation.evaluate_images` (predict, mask, score).

    Returns:
        The report's ``overall`` block (the configured mask; ``threshold_0.5`` inside it).
    """
    from segmenter.data.ontario import load_dataset
    from segmenter.predict import evaluation, models
    from segmenter.runs import open_run
    from segmenter.tfenv import start_tensorflow

    start_tensorflow()
    run = open_run(run_dir)
    cfg = run.config
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": str(scored)})})
    loaded = models.load_models(run, cfg)
    dataset = load_dataset(cfg.data, scale=1.0, progress=False, need=("all",))  # all in train
    return evaluation.evaluate_images(loaded, dataset.train, cfg)["overall"]


# --------------------------------------------------------------------------------------------
# Running the cases


@dataclass
class Settings:
    """What main() resolved from the command line."""

    config: Path
    overrides: list[str]           # the user's --set, for the recommended config
    quick: bool = False
    skip_peers: bool = False
    skip_reference: bool = False
    reference_config: Path = REFERENCE_CONFIG
    reference_extra: list[str] = field(default_factory=list)  # tests: shrink the reference


def recommended_overrides(case: Case, settings: Settings) -> list[str]:
    """The recommended config's ``--set`` for a case: label facts, --quick, then the user's."""
    from segmenter.config import load_config

    items = list(case.overrides)
    if settings.quick:
        steps = load_config(settings.config, [*items, *settings.overrides]).train.steps
        items.append(f"train.steps={max(1, steps // QUICK_STEPS_DIVISOR)}")
    return [*items, *settings.overrides]


def plan(case: Case, settings: Settings) -> tuple[list[str], list[str] | None, list[str]]:
    """The ``--set`` lists of both trainings, and the width problems (checked before training)."""
    from segmenter.config import load_config

    rec_set = recommended_overrides(case, settings)
    rec_cfg = load_config(settings.config, rec_set)
    problems = [width_problem(case, rec_cfg, settings.config.name)]
    ref_set = None
    if not settings.skip_reference:
        base = load_config(settings.reference_config, [*case.overrides, *settings.reference_extra])
        ref_set = [*case.overrides, *settings.reference_extra,
                   *reference_overrides(rec_cfg, base)]
        ref_cfg = load_config(settings.reference_config, ref_set)
        problems.append(width_problem(case, ref_cfg, settings.reference_config.name))
    return rec_set, ref_set, [p for p in problems if p]


def run_case(case: Case, settings: Settings, work: Path) -> tuple[list[Row], Row]:
    """Peers, segmenter and the reference on one case; the rows and the recommended mask's row."""
    from segmenter.config import load_config

    rec_set, ref_set, _ = plan(case, settings)
    rows: list[Row] = []
    if not settings.skip_peers:
        scale = load_config(settings.config, rec_set).data.scale
        fit = load_photos(case, case.train_source, scale, scored=False)
        scored = load_photos(case, case.scored, scale, scored=True)
        rows += run_peers(case.name, fit, scored)
        del fit, scored
    label = f"segmenter {settings.config.name}"
    minutes = train_segmenter(settings.config, case.train_source, work / "run_recommended",
                              rec_set, f"case {case.name}: {label}")
    overall = evaluate_segmenter(work / "run_recommended", case.scored)
    from segmenter.predict.evaluation import BASELINE

    best = Row(case.name, f"{label}, {overall['method']} mask", overall, minutes)
    rows += [best, Row(case.name, f"{label}, 0.5 threshold", overall[BASELINE], minutes)]
    if case.dry is not None:
        dry = evaluate_segmenter(work / "run_recommended", case.dry)
        best.note = f"dry photos: {invented_water(dry):.2%} called water"
        print(dry_line(case.name, label, dry))
    if ref_set is not None:
        ref_label = f"reference {settings.reference_config.name}"
        ref_minutes = train_segmenter(settings.reference_config, case.train_source,
                                      work / "run_reference", ref_set,
                                      f"case {case.name}: {ref_label}")
        ref = evaluate_segmenter(work / "run_reference", case.scored)
        steps = next(item for item in ref_set if item.startswith("train.steps="))
        rows.append(Row(case.name, f"{ref_label}, {ref['method']} mask", ref, ref_minutes,
                        steps))
    return rows, best


def prepare(name: str, args: argparse.Namespace, work: Path) -> Case:
    """Build the folders of case ``name`` in ``work/<name>``."""
    folder = work / name
    folder.mkdir(parents=True)
    if name == "shifted":
        return prepare_shifted(folder, QUICK_SAMPLE_N if args.quick else SAMPLE_N, SAMPLE_SIZE)
    if name == "oasis":
        return prepare_oasis(args.oasis.resolve(), folder, args.quick)
    if name == "obx2018":
        return prepare_obx(args.obx.resolve(), folder, args.quick, args.real.resolve())
    return prepare_real(args.real.resolve(), folder)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases to run (default {','.join(CASES)})")
    parser.add_argument("--quick", action="store_true",
                        help="subsets and a quarter of train.steps, for iterating")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="recommended config to benchmark (default configs/photo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override for the recommended config's training (tuning)")
    parser.add_argument("--skip-peers", action="store_true", help="no Otsu / GMM / forest rows")
    parser.add_argument("--skip-reference", action="store_true",
                        help="no notebook-small reference row")
    parser.add_argument("--work", type=Path, default=None,
                        help="new folder for the cases' data and runs (default: a temporary "
                        "folder, deleted at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL,
                        help=f"Ontario-layout folder with the real photo (default {DEFAULT_REAL})")
    parser.add_argument("--oasis", type=Path, default=DEFAULT_OASIS,
                        help=f"OASIs folder with train/ and test/ (default {DEFAULT_OASIS})")
    parser.add_argument("--obx", type=Path, default=DEFAULT_OBX,
                        help=f"obx2018 folder with train/ and test/ (default {DEFAULT_OBX})")
    return parser.parse_args(argv)


def selected_cases(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        raise BenchError(f"--cases: unknown case {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(CASES)}")
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None) -> int:
    return run_script("bench_quality", _main, parse_args(argv))


def run_script(name: str, body: Callable[[argparse.Namespace], int],
               args: argparse.Namespace) -> int:
    """Run a benchmark's ``body`` with its logging set up; a :class:`BenchError` is printed as
    lines prefixed with ``name`` and exits 2 (no traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return body(args)
    except BenchError as exc:
        for line in str(exc).splitlines():
            print(f"{name}: {line}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from segmenter.config import load_config
    from segmenter.errors import SegmenterError

    started = time.perf_counter()
    names = selected_cases(args.cases)
    settings = Settings(args.config, list(args.overrides), args.quick, args.skip_peers,
                        args.skip_reference)
    try:
        load_config(settings.config, settings.overrides)
        if not settings.skip_reference:
            load_config(settings.reference_config)
    except SegmenterError as exc:
        raise BenchError(str(exc)) from None
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        raise BenchError(f"--work {args.work}: folder is not empty; choose a new one")
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench_quality_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        print(f"quick: train.steps / {QUICK_STEPS_DIVISOR} (segmenter and reference); shifted "
              f"{QUICK_SAMPLE_N} scenes instead of {SAMPLE_N}; oasis {QUICK_OASIS[0]} train / "
              f"{QUICK_OASIS[1]} validation / {QUICK_OASIS[2]} scored photos; obx2018 "
              f"{QUICK_OBX[0]} / {QUICK_OBX[1]} / {QUICK_OBX[2]}; real unchanged")
    try:
        cases: list[Case] = []
        for name in names:
            skip = case_folder_problem(name, {"oasis": args.oasis, "real": args.real,
                                              "obx2018": args.obx}.get(name, work))
            if skip:
                print(skip)
                continue
            cases.append(prepare(name, args, work))
            print(f"case {name}: {cases[-1].description}")
        problems = []
        for case in cases:
            try:
                rec_set, ref_set, found = plan(case, settings)
            except SegmenterError as exc:
                raise BenchError(f"case {case.name}: {exc}") from None
            problems += found
            print(f"case {case.name}: {settings.config.name} --set {' '.join(rec_set) or '-'}")
            if ref_set is not None:
                print(f"case {case.name}: {settings.reference_config.name} --set "
                      f"{' '.join(ref_set)} (same patch pixels as {settings.config.name})")
        if problems:
            raise BenchError("\n".join(problems))
        rows: list[Row] = []
        best: list[Row] = []
        for case in cases:
            tick = time.perf_counter()
            case_rows, case_best = run_case(case, settings, work / case.name)
            rows += case_rows
            best.append(case_best)
            log.info("case %s: %.1f min", case.name, (time.perf_counter() - tick) / 60)
        if rows:
            print(format_table(rows))
        for row in best:
            print(quality_line(row.case, row.scores, row.train_minutes))
        print(f"benchmark minutes: {(time.perf_counter() - started) / 60:.1f}")
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.work is None:
            print(f"work folder kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
