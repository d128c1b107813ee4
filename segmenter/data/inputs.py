"""The inputs of ``segmenter predict``: any mix of files, folders, globs and ``s3://`` URLs.

Folders and globs contribute the photos directly inside them, minus the files segmenter
predict itself wrote (an earlier ``--out`` used as input); a file named as such is always
taken. Every photo is read through the same cached :class:`~segmenter.data.storage.Storage`
as training data.
"""

from __future__ import annotations

import glob as globmod
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from segmenter.config import DataConfig
from segmenter.data.images import LABEL_PNG_SUFFIX, PHOTO_EXTENSIONS
from segmenter.data.s3errors import REFRESH_HINT, io_errors, translate
from segmenter.data.storage import Storage, is_s3, open_storage
from segmenter.errors import DataError

log = logging.getLogger("segmenter.data.storage")

__all__ = ["PhotoRef", "expand_inputs", "is_photo_name", "is_segmenter_output"]


@dataclass(frozen=True)
class PhotoRef:
    """One photo to predict: a display ``name`` (from the stem, unique), where it is, a reader."""

    name: str
    path: str
    storage: Storage = field(repr=False, compare=False)
    relpath: str = field(default="", repr=False)

    def read_bytes(self) -> bytes:
        """The photo's bytes, through the same cached storage as training data."""
        return self.storage.read_bytes(self.relpath)


def is_photo_name(name: str) -> bool:
    """A photo file name (by extension), excluding ``<stem>_label.png`` label images."""
    lower = name.lower()
    return lower.endswith(PHOTO_EXTENSIONS) and not lower.endswith(LABEL_PNG_SUFFIX)


#: Files ``segmenter predict`` writes (``<stem>_water_prob.png``, ``_water_mask.png``,
#: ``_overlay.png``, ``_water_prob_pw<W>.png``; for a GeoTIFF input ``<stem>_water_prob.tif``
#: and ``_water_mask.tif``): never photos to predict.
_OUTPUT_NAME = re.compile(
    r"_((water_prob|water_mask|overlay|water_prob_pw\d+)\.png|(water_prob|water_mask)\.tif)$",
    re.I,
)


def is_segmenter_output(name: str) -> bool:
    """Whether ``name`` is one of the images ``segmenter predict`` writes."""
    return bool(_OUTPUT_NAME.search(PurePosixPath(name).name))


def _drop_outputs(item: str, found: list[tuple[str, str, Storage, str]]
                  ) -> list[tuple[str, str, Storage, str]]:
    """Folder and glob matches minus segmenter's own outputs (an earlier --out), said once."""
    kept = [entry for entry in found if not is_segmenter_output(entry[3])]
    if len(kept) < len(found):
        log.info("%s: skipped %d file(s) that segmenter predict wrote (*_water_prob.png, "
                 "*_water_mask.png, *_overlay.png, *_water_prob.tif, *_water_mask.tif)",
                 item, len(found) - len(kept))
    return kept


def expand_inputs(inputs: list[str] | tuple[str, ...], data_cfg: DataConfig) -> list[PhotoRef]:
    """Turn any mix of files, folders, globs and ``s3://`` URLs into photo references.

    Folders contribute the photos directly inside them (sorted). Display names are the file
    stems, made unique with ``-2``, ``-3``...; the names of the files written are
    :func:`segmenter.outputs.names.assign_stems`'s.

    Raises:
        DataError: an input that does not exist, or that holds no photo (names it).
    """
    refs: list[tuple[str, str, Storage, str]] = []
    for item in inputs:
        found = _expand_s3(item, data_cfg) if is_s3(item) else _expand_local(item, data_cfg)
        literal = len(found) == 1 and _is_literal(item, found[0])
        kept = found if literal else _drop_outputs(item, found)
        if not kept:
            skipped = f" ({len(found)} segmenter output(s) skipped)" if found else ""
            raise DataError(f"{item}: no photos ({', '.join(PHOTO_EXTENSIONS)}) found{skipped}")
        found = kept
        refs.extend(found)
    seen: dict[str, int] = {}
    out = []
    for stem, path, storage, rel in refs:
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        name = stem if count == 1 else f"{stem}-{count}"
        out.append(PhotoRef(name=name, path=path, storage=storage, relpath=rel))
    return out


def _is_literal(item: str, entry: tuple[str, str, Storage, str]) -> bool:
    """A file named as such (not found in a folder or by a glob): taken as the user says."""
    return entry[1] == item or (not is_s3(item) and Path(item).expanduser().is_file())


def _expand_local(item: str, data_cfg: DataConfig) -> list[tuple[str, str, Storage, str]]:
    path = Path(item).expanduser()
    # A path that exists is taken literally, even with glob characters ("a[1].jpg").
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_photo_name(p.name))
    elif path.is_file():
        files = [path]
    elif globmod.has_magic(item):
        matches = sorted(Path(p) for p in globmod.glob(str(path)) if is_photo_name(p))
        files = [p for p in matches if p.is_file()]
    else:
        raise DataError(f"{item}: no such file or folder")
    out = []
    folders: dict[Path, Storage] = {}
    for file in files:
        if file.parent not in folders:
            folders[file.parent] = open_storage(str(file.parent), data_cfg)
        out.append((_stem(file.name), str(file), folders[file.parent], file.name))
    return out


def _expand_s3(item: str, data_cfg: DataConfig) -> list[tuple[str, str, Storage, str]]:
    root = item.split("://", 1)[1].strip("/")
    # An object that exists is taken literally, even with glob characters ("a[1].jpg").
    parent, _, name = root.rpartition("/")
    if parent and is_photo_name(name):
        storage = open_storage("s3://" + parent, data_cfg)
        if name in storage.list(""):
            return [(_stem(name), storage.display(name), storage, name)]
    if globmod.has_magic(root):
        bucket = open_storage("s3://" + root.split("/", 1)[0], data_cfg)
        try:
            matches = sorted(bucket.fs.fs.glob(root))
        except io_errors(True) as exc:
            raise translate(exc, item, bucket) from None
        out = []
        folders: dict[str, Storage] = {}
        for match in matches:
            parent, _, name = match.rpartition("/")
            if not is_photo_name(name):
                continue
            if parent not in folders:
                folders[parent] = open_storage("s3://" + parent, data_cfg)
            storage = folders[parent]
            out.append((_stem(name), storage.display(name), storage, name))
        return out
    storage = open_storage(item, data_cfg)
    if not storage.isdir(""):
        raise DataError(f"{item}: no such file or folder in the bucket{REFRESH_HINT}")
    names = [n for n in storage.list("") if is_photo_name(n)]
    return [(_stem(n), storage.display(n), storage, n) for n in names]


def _stem(name: str) -> str:
    return PurePosixPath(name).stem
