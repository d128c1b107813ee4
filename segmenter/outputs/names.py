"""Which files an input owns in an output folder, and the stem they are named by.

File names derive from the input's stem only, cleaned to a safe character set, so no input name
(an S3 key with ``..`` or slashes included) can place a file outside the output folder. The one
place that knows which files a stem owns: overwrite refusals, ``--skip-existing`` and clean-up
all ask :func:`owner_of`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

#: raster mask values: as the Ontario labels' classes (land 1, water 2), so 0 stays free for
#: nodata.
MASK_LAND, MASK_WATER = 1, 2


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


def raster_output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Every file a raster prediction may write (vectors only with ``--vector``)."""
    out = Path(out_dir)
    return {
        "water_prob": out / f"{stem}_water_prob.tif",
        "water_mask": out / f"{stem}_water_mask.tif",
        "overlay": out / f"{stem}_overlay.png",
        "water_vector": out / f"{stem}_water.geojson",
        "shoreline_vector": out / f"{stem}_shoreline.geojson",
    }


#: suffixes of the files one input may own (see :func:`owned_by`).
OWNED_SUFFIXES = (
    "_water_prob.png", "_water_mask.png", "_overlay.png", "_water_prob.npy",
    "_water_prob.tif", "_water_mask.tif", "_water.geojson", "_shoreline.geojson",
)


_PER_WIDTH = re.compile(r"(.+)_water_prob_pw\d+\.(png|npy)")


def owner_of(name: str) -> str | None:
    """The stem whose prediction writes (or may replace) the file ``name``, if any."""
    for suffix in OWNED_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    match = _PER_WIDTH.fullmatch(name)
    return match.group(1) if match else None


def owned_by(name: str, stem: str) -> bool:
    """Whether the file ``name`` is one that predicting ``stem`` writes (or may replace)."""
    return owner_of(name) == stem


def owned_files(present: set[str], stems: list[str]) -> dict[str, list[str]]:
    """stem -> the files of ``present`` it owns (sorted), for the ``stems`` that own any:
    one pass over the folder's names, however many stems."""
    wanted = set(stems)
    found: dict[str, list[str]] = {}
    for name in sorted(present):
        owner = owner_of(name)
        if owner in wanted:
            found.setdefault(owner, []).append(name)
    return found
