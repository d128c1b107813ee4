"""The Ontario layout: photos paired with labels by stem, loaded into a train / test data set.

Under the source, ``train/`` and ``test/`` hold photos ``<stem>.JPG`` (also ``.jpg``,
``.jpeg``, ``.png``, ``.tif``, ``.tiff``), each with one label: ``<stem>_mres.mat``, else
``<stem>.mat`` (MATLAB, key ``class``), else ``<stem>_label.png`` (a single-band image). The
notebook paired two listings by position, which silently mispairs as soon as one file is
missing; pairing by stem instead reports the unpaired files and skips them.

Without a test folder (``data.test_dir`` empty or absent) the pairs are split by a seeded
permutation, so the split is the same on every machine and every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import click
import numpy as np

from segmenter.config import DataConfig
from segmenter.data import images
from segmenter.data.inputs import is_photo_name
from segmenter.data.rasterlabels import LABEL_RASTER_SUFFIXES, is_label_raster
from segmenter.data.storage import Storage, open_storage
from segmenter.errors import DataError

log = logging.getLogger(__name__)

# Label kinds in order of preference when a stem has several.
LABEL_SUFFIXES = ("_mres.mat", ".mat", images.LABEL_PNG_SUFFIX, *LABEL_RASTER_SUFFIXES)


@dataclass(frozen=True)
class Pair:
    """A photo and its label, as paths relative to the storage root."""

    stem: str
    photo: str
    label: str


@dataclass
class LabelledImage:
    """One loaded pair: ``image`` float32 (H, W, 3) in [0, 1]; ``land`` float32 (H, W).

    ``land`` is 1 for land (not water) and 0 for water; after resizing it is the fraction of
    land in each pixel. ``source`` is the photo's URL or path, for messages.
    """

    stem: str
    image: np.ndarray
    land: np.ndarray
    source: str

    @property
    def water_fraction(self) -> float:
        """Share of the image's area that is water."""
        return float(1.0 - self.land.mean()) if self.land.size else 0.0


@dataclass
class Dataset:
    """Loaded train and test images, with what was skipped and a stable fingerprint."""

    train: list[LabelledImage]
    test: list[LabelledImage]
    fingerprint: str
    source: str
    scale: float
    split: str  # "folders" (train/ and test/) or "seeded" (split by data.seed)
    pairs_found: int = 0
    skipped: list[str] = field(default_factory=list)
    legacy_fingerprint: str | None = None  # names and sizes only (runs before content hashing)

    def summary(self) -> str:
        """One line for logs and `segmenter data`: pairs, skipped, pixels, water fraction."""
        every = self.train + self.test
        pixels = sum(item.land.size for item in every)
        water = sum(float(item.land.size - item.land.sum(dtype=np.float64)) for item in every)
        fraction = water / pixels if pixels else 0.0
        split = "test/ folder" if self.split == "folders" else "seeded split"
        return (
            f"{self.source}: {self.pairs_found} pairs found, {len(self.skipped)} skipped; "
            f"train {len(self.train)}, test {len(self.test)} ({split}); "
            f"{pixels:,} pixels at scale {self.scale:g}; water fraction {fraction:.1%}"
        )


# --------------------------------------------------------------------------------------------
# Pairing


def find_pairs(storage: Storage, subdir: str) -> tuple[list[Pair], list[str]]:
    """Pair photos and labels directly under ``subdir`` by stem.

    Returns:
        The pairs sorted by stem, and one message per problem (a photo without label, a label
        without photo, a stem with two photos). Other files (README, thumbnails...) are ignored.
    """
    photos: dict[str, list[str]] = {}
    labels: dict[str, dict[str, str]] = {}  # stem -> suffix -> path
    label_stems: dict[str, list[str]] = {}  # path -> the photo stems it could belong to
    for path in storage.list(subdir):
        name = PurePosixPath(path).name
        lower = name.lower()
        # "a_mres.mat" is the label of photo "a" or, read as a plain ".mat", of photo "a_mres".
        matches = [s for s in LABEL_SUFFIXES if lower.endswith(s)]
        if matches:
            for suffix in matches:
                labels.setdefault(name[: -len(suffix)], {})[suffix] = path
                label_stems.setdefault(path, []).append(name[: -len(suffix)])
        elif is_photo_name(name):
            photos.setdefault(PurePosixPath(name).stem, []).append(path)
        else:
            log.debug("ignoring %s (neither a photo nor a label)", storage.display(path))

    # Each label goes to one photo. Kinds are assigned in order of preference, so that with
    # a.JPG, a_mres.JPG and a_mres.mat the label is a.JPG's (<stem>_mres.mat, the Ontario
    # convention) rather than a_mres.JPG's (<stem>.mat), and a_mres.JPG is reported.
    problems: list[str] = []
    chosen: dict[str, str] = {}  # photo stem -> label path
    used: set[str] = set()
    for suffix in LABEL_SUFFIXES:
        for stem in sorted(photos):
            label = labels.get(stem, {}).get(suffix)
            if stem not in chosen and label is not None and label not in used:
                chosen[stem] = label
                used.add(label)

    owners = {path: stem for stem, path in chosen.items()}
    pairs: list[Pair] = []
    for stem in sorted(photos):
        found = sorted(photos[stem], key=_photo_preference)
        for extra in found[1:]:
            problems.append(f"{storage.display(extra)}: another photo has the same stem; skipped")
        if stem in chosen:
            pairs.append(Pair(stem=stem, photo=found[0], label=chosen[stem]))
            continue
        taken = sorted(path for path in labels.get(stem, {}).values() if path in owners)
        why = ""
        if taken:
            owner = min(photos[owners[taken[0]]], key=_photo_preference)
            why = f" ({_name(taken[0])} is the label of {_name(owner)})"
        problems.append(f"{storage.display(found[0])}: photo has no label{why}; skipped")
    for path in sorted(set(label_stems) - used):
        if any(stem in photos for stem in label_stems[path]):
            problems.append(f"{storage.display(path)}: the photo has a preferred label; ignored")
        else:
            problems.append(f"{storage.display(path)}: label has no photo; skipped")
    return pairs, problems


def _name(path: str) -> str:
    return PurePosixPath(path).name


def _photo_preference(path: str) -> int:
    suffix = PurePosixPath(path).suffix.lower()
    return images.PHOTO_EXTENSIONS.index(suffix) if suffix in images.PHOTO_EXTENSIONS else 99


# --------------------------------------------------------------------------------------------
# Loading


def load_pair(storage: Storage, pair: Pair, data_cfg: DataConfig, scale: float) -> LabelledImage:
    """Decode one pair at ``scale``.

    Raises:
        DataError: corrupt photo, unreadable label, no ``class`` key, unknown water class name,
            or a label whose size differs from the photo (each names the file).
    """
    photo_name = storage.display(pair.photo)
    label_name = storage.display(pair.label)
    if is_label_raster(pair.label):  # GeoTIFF pair: label resampled onto the image grid
        from segmenter.data.rasterlabels import load_raster_pair

        image, land = load_raster_pair(storage, pair.photo, pair.label, data_cfg, scale)
        return LabelledImage(stem=pair.stem, image=image, land=land, source=photo_name)
    image, full, notes = images.load_photo(storage.read_bytes(pair.photo), photo_name, scale)
    for note in notes:
        log.info("%s: %s", photo_name, note)
    label_bytes = storage.read_bytes(pair.label)
    if pair.label.lower().endswith(".mat"):
        land = images.read_mat_label(label_bytes, label_name, data_cfg.water_class)
    else:
        land = images.read_png_label(label_bytes, label_name, data_cfg.label_water_value)
    if land.shape != full:
        raise DataError(
            f"{label_name}: label is {land.shape[1]}x{land.shape[0]} (WxH) but the photo "
            f"{PurePosixPath(pair.photo).name} is {full[1]}x{full[0]}"
        )
    land = images.resize_land(land, image.shape[:2])
    return LabelledImage(stem=pair.stem, image=image, land=land, source=photo_name)


def load_dataset(
    data_cfg: DataConfig,
    scale: float | None = None,
    progress: bool = True,
    refresh: bool = False,
    need: tuple[str, ...] = ("train", "test"),
) -> Dataset:
    """Load the configured source (folder, ``s3://`` or ``sample``) into train and test sets.

    Args:
        data_cfg: the ``data`` section of the config.
        scale: resize factor; ``None`` means ``data_cfg.scale``.
        progress: draw a progress bar on stderr while files load (only on a terminal).
        refresh: list remote folders again instead of trusting cached listings.
        need: the splits the caller uses. ``("test",)`` (evaluation) neither loads nor requires
            ``train/`` when the source has a test folder, so a test-only source can be scored.
            ``("all",)`` (``segmenter evaluate --split all``) loads every pair of ``train/`` and
            ``test/`` and holds nothing out of ``train/``: all of it lands in ``train``.

    Raises:
        DataError: missing source, no pairs in the train folder, no training image left after
            skipping bad pairs, or (unless ``data.skip_bad``) the first bad pair, as one line
            naming the file or folder.
    """
    scale = data_cfg.scale if scale is None else scale
    source = data_cfg.source
    if source == "sample":
        from segmenter.data.sample import ensure_sample

        source = ensure_sample(data_cfg)
    storage = open_storage(source, data_cfg, refresh=refresh)

    train_dir = data_cfg.train_dir.strip("/")
    test_dir = data_cfg.test_dir.strip("/")
    use_test = bool(test_dir) and storage.isdir(test_dir)
    every = "all" in need
    # Without a test folder the test images are held out of train/, which is then needed.
    want_train = "train" in need or every or not use_test
    want_test = use_test and ("test" in need or every)
    if want_train and not storage.isdir(train_dir):
        raise DataError(f"{storage.display(train_dir)}: folder not found")
    if test_dir and not use_test and not every:
        log.info(
            "%s: no test folder; holding out %.0f%% of the pairs (seed %d)",
            storage.display(test_dir),
            100 * data_cfg.test_ratio,
            data_cfg.seed,
        )

    splits: dict[str, list[Pair]] = {}
    for split, subdir, wanted in (("train", train_dir, want_train), ("test", test_dir, want_test)):
        if not wanted:
            continue
        splits[split], warned = _pairs_in(storage, subdir)
        if not splits[split] and (split == "train" or not want_train):
            # Even with pairs in test/, an empty train/ leaves nothing to train on.
            see = " (see the warnings above)" if warned else ""
            raise DataError(f"{storage.display(subdir)}: no photo/label pairs found{see}")
    pairs_found = sum(len(p) for p in splits.values())

    skipped: list[str] = []
    loaded: dict[str, list[LabelledImage]] = {}
    for split, pairs in splits.items():
        loaded[split] = _load_all(storage, pairs, data_cfg, scale, split, progress, skipped)
    if skipped:
        log.warning("skipped %d bad pair(s): %s", len(skipped), "; ".join(skipped))
    if want_test and not want_train and not loaded["test"]:
        raise DataError(
            f"{storage.display(test_dir)}: no test images: every pair was bad "
            "(see the warnings above)"
        )
    if want_train and not loaded["train"]:
        raise DataError(
            f"{storage.display(train_dir)}: no training images: every pair was bad "
            "(see the warnings above)"
        )

    if every:
        train, test = loaded.get("train", []) + loaded.get("test", []), []
    elif use_test:
        train, test = loaded.get("train", []), loaded.get("test", [])
    else:
        train, test = split_by_seed(loaded["train"], data_cfg.test_ratio, data_cfg.seed)
    if not test and not every:
        log.warning("%s: no test images (too few pairs to hold any out)", storage.url)
    _warn_if_no_water(train + test, [p for ps in splits.values() for p in ps], data_cfg)
    return Dataset(
        train=train,
        test=test,
        fingerprint=fingerprint(train, test, scale),
        legacy_fingerprint=legacy_fingerprint(train, test, scale),
        source=storage.url if data_cfg.source != "sample" else "sample",
        scale=scale,
        split="folders" if use_test else "seeded",
        pairs_found=pairs_found,
        skipped=skipped,
    )


def _pairs_in(storage: Storage, subdir: str) -> tuple[list[Pair], bool]:
    """The pairs under ``subdir``, each problem logged as a warning; whether there were any."""
    pairs, problems = find_pairs(storage, subdir)
    for problem in problems:
        log.warning("%s", problem)
    return pairs, bool(problems)


def _warn_if_no_water(items: list[LabelledImage], pairs: list[Pair], data_cfg: DataConfig) -> None:
    """No water in any label at all is almost always the wrong water class, not the data."""
    if not items or any(float(item.land.min()) < 1.0 for item in items):
        return
    keys = []
    if any(p.label.lower().endswith(".mat") for p in pairs):
        keys.append(f"data.water_class (now {data_cfg.water_class!r})")
    if any(p.label.lower().endswith(images.LABEL_PNG_SUFFIX) for p in pairs):
        keys.append(f"data.label_water_value (now {data_cfg.label_water_value})")
    log.warning(
        "no label contains any water (%d images): check %s",
        len(items),
        " and ".join(keys) or "data.water_class",
    )


def _load_all(
    storage: Storage,
    pairs: list[Pair],
    data_cfg: DataConfig,
    scale: float,
    split: str,
    progress: bool,
    skipped: list[str],
) -> list[LabelledImage]:
    out: list[LabelledImage] = []
    storage.prefetch([path for pair in pairs for path in (pair.photo, pair.label)])
    with _progress(pairs, f"Loading {split} ({len(pairs)} pairs)", progress) as bar:
        for pair in bar:
            try:
                out.append(load_pair(storage, pair, data_cfg, scale))
            except DataError as exc:
                if not data_cfg.skip_bad:
                    raise
                skipped.append(str(exc))
    return out


def _progress(items: list[Pair], label: str, enabled: bool) -> click.progressbar:
    """click's bar on stderr, drawn only on a terminal, so logs and tests stay clean."""
    return click.progressbar(
        items,
        label=label,
        file=sys.stderr,
        hidden=not (enabled and sys.stderr.isatty()),
        show_pos=True,
    )


def split_by_seed(
    items: list[LabelledImage], test_ratio: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Hold out ``round(n * test_ratio)`` items (at least 1 when n >= 2) chosen by ``seed``.

    Items are ordered by stem first, so the split depends on the file names only, never on
    listing order.
    """
    ordered = sorted(items, key=lambda item: item.stem)
    if len(ordered) < 2:
        return ordered, []
    n_test = min(len(ordered) - 1, max(1, round(len(ordered) * test_ratio)))
    order = np.random.default_rng(seed).permutation(len(ordered))
    test_idx = set(order[:n_test].tolist())
    train = [item for i, item in enumerate(ordered) if i not in test_idx]
    test = [item for i, item in enumerate(ordered) if i in test_idx]
    return train, test


def fingerprint(train: list[LabelledImage], test: list[LabelledImage], scale: float) -> str:
    """A stable hash of the decoded content: stems, scale, every photo's and label's pixels.

    Names and sizes alone let ``--resume`` continue on other data of the same shape (another
    sample seed, labels edited in place); the pixels as loaded are what a model saw.
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(json.dumps({"scale": round(float(scale), 9)}).encode())
    for split, items in (("train", train), ("test", test)):
        for item in items:
            digest.update(json.dumps([split, item.stem, *item.land.shape]).encode())
            digest.update(np.ascontiguousarray(item.image, np.float32).data)
            digest.update(np.ascontiguousarray(item.land, np.float32).data)
    return "c1-" + digest.hexdigest()


def legacy_fingerprint(train: list[LabelledImage], test: list[LabelledImage],
                       scale: float) -> str:
    """The names-and-sizes fingerprint of runs made before content was hashed."""
    content = {
        "scale": round(float(scale), 9),
        "train": [[item.stem, *item.land.shape] for item in train],
        "test": [[item.stem, *item.land.shape] for item in test],
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return digest[:16]
