"""Where photos and labels live: a local folder or ``s3://bucket/prefix``, behind one interface.

S3 goes through s3fs: anonymous by default (public buckets such as the Ontario set), the usual
AWS credential chain when ``data.anon`` is false, and ``data.endpoint_url`` for S3-compatible
servers. Connection and read timeouts are short and retries few, so an unreachable endpoint
fails in seconds rather than minutes.

Remote files are cached on local disk by fsspec's whole-file cache (``filecache``) under
``<cache>/remote/<endpoint>/files``, where ``<cache>`` is ``data.cache_dir``, else
``$SEGMENTER_CACHE``, else ``~/.cache/segmenter``. Remote objects are treated as immutable: a
cached file is never re-checked against the server.

Folder listings are cached as well, as small JSON files under ``<cache>/remote/<endpoint>/
listings``, so that a second run makes no request at all (it can run offline). The price is
that files added to the bucket later are not seen until the listing is refreshed: pass
``refresh=True`` (``segmenter data --refresh``) or delete the ``listings`` folder. Only listings
that found something are cached (a folder missing today is looked for again next run); whether
a sub-folder such as ``test/`` exists is read from the source's own listing. Each read is
checked against the size in the listing; a truncated download (an interrupted first run) is
detected, dropped from the cache and fetched again.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from segmenter.config import DEFAULT_CACHE_ENV, DataConfig
from segmenter.data.images import LABEL_PNG_SUFFIX, PHOTO_EXTENSIONS
from segmenter.errors import DataError
from segmenter.fileio import write_json

log = logging.getLogger(__name__)

# botocore settings that make a dead endpoint fail fast (s3fs passes these to the client).
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 2
# s3fs's own retry loop on top of botocore's (default 5, with back-off).
S3FS_RETRIES = 2
#: Added to "not found" for S3 sources: the folder listings are cached, and may be stale.
REFRESH_HINT = (
    " (folder listings are cached: if the bucket changed since, run `segmenter data --refresh`)"
)


def cache_root(data_cfg: DataConfig | None = None) -> Path:
    """The local cache folder: ``data.cache_dir``, else ``$SEGMENTER_CACHE``, else ~/.cache."""
    if data_cfg is not None and data_cfg.cache_dir:
        return Path(data_cfg.cache_dir).expanduser()
    env = os.environ.get(DEFAULT_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "segmenter"


def is_s3(source: str) -> bool:
    """Whether ``source`` is an ``s3://`` (or ``s3a://``) URL."""
    return source.lower().startswith(("s3://", "s3a://"))


@dataclass
class Storage:
    """A folder of files, local or remote, read through the cache.

    Paths given to and returned by :meth:`list` and :meth:`read_bytes` are relative to the
    storage root (``"train/a.JPG"``), so the same code handles both kinds of source.
    """

    url: str
    root: str
    fs: Any
    remote: bool = False
    endpoint: str | None = None
    listing_dir: Path | None = None
    refresh: bool = False
    reopen: Callable[[], Any] | None = field(default=None, repr=False)
    _listings: dict[str, dict[str, Any] | None] = field(default_factory=dict, repr=False)

    def display(self, path: str = "") -> str:
        """The user-facing URL or path of ``path`` (for messages)."""
        return _join(self.url, path)

    def list(self, subdir: str = "") -> list[str]:
        """Files directly under ``subdir`` (relative paths, sorted); ``[]`` if it is absent."""
        entry = self._listing(subdir)
        if entry is None:
            return []
        return sorted(_join(subdir, name) for name in entry["files"])

    def isdir(self, subdir: str = "") -> bool:
        """Whether ``subdir`` exists (for S3: whether any object has that prefix).

        For S3, a direct sub-folder is looked up in the source's own listing, which is cached
        (it found something), so that a missing ``test/`` costs no request on later runs.
        """
        subdir = subdir.strip("/")
        if self.remote and subdir and "/" not in subdir:
            parent = self._listing("")
            return parent is not None and subdir in parent["dirs"]
        return self._listing(subdir) is not None

    def read_bytes(self, path: str) -> bytes:
        """The content of ``path``; remote files come from (and go to) the local cache.

        Raises:
            DataError: missing file, access denied, unreachable endpoint (names the file).
        """
        full = _join(self.root, path)
        try:
            data = self.fs.cat_file(full)
            expected = self._listed_size(path)
            if self.remote and expected is not None and len(data) != expected:
                log.info("%s: cached copy is incomplete; downloading again", self.display(path))
                self.fs.pop_from_cache(full)
                data = self.fs.cat_file(full)
                if len(data) != expected:
                    raise DataError(
                        f"{self.display(path)}: size {len(data)} differs from the cached listing "
                        f"({expected}); the bucket changed: run `segmenter data --refresh`"
                    )
        except _io_errors(self.remote) as exc:
            raise _translate(exc, self.display(path), self) from None
        return data

    def prefetch(self, paths: list[str], chunk: int = 32) -> None:
        """Download the uncached ones among ``paths`` concurrently (s3fs batches the GETs).

        Only a speed-up for a first run: a failure here is left for :meth:`read_bytes` to
        report, one line naming the file.
        """
        if not self.remote or not paths:
            return
        # The cache's cat() reads every cached file into memory: ask only for the others.
        cached = getattr(self.fs, "_check_file", None)
        missing = [_join(self.root, p) for p in paths]
        if cached is not None:
            missing = [full for full in missing if not cached(full)]
        for start in range(0, len(missing), chunk):
            batch = missing[start : start + chunk]
            try:
                self.fs.cat(batch)
            except _io_errors(True) as exc:
                log.debug("prefetch failed (%s); files will be read one by one", exc)
                # The cache records a batch before downloading it and saves the record only
                # on success: start again from what is saved on disk.
                if self.reopen is not None:
                    self.fs = self.reopen()
                return

    # ----------------------------------------------------------------------------------------

    def _listed_size(self, path: str) -> int | None:
        parent, _, name = path.rpartition("/")
        entry = self._listings.get(parent)
        if entry is None:
            return None
        return entry["files"].get(name)

    def _listing(self, subdir: str) -> dict[str, Any] | None:
        subdir = subdir.strip("/")
        if subdir not in self._listings:
            self._listings[subdir] = self._load_listing(subdir)
        return self._listings[subdir]

    def _load_listing(self, subdir: str) -> dict[str, Any] | None:
        if not self.remote:
            return _local_listing(Path(_join(self.root, subdir)))
        assert self.listing_dir is not None
        full = _join(self.root, subdir)
        cached = self.listing_dir / (hashlib.sha256(full.encode()).hexdigest()[:32] + ".json")
        if cached.is_file() and not self.refresh:
            try:
                saved = json.loads(cached.read_text(encoding="utf-8"))
                if saved.get("path") == full:
                    listing = saved["listing"]
                    if listing is not None:
                        # Let s3fs answer exists()/info() from the listing too (fsspec's
                        # documented listings cache): reading an uncached file is one GET.
                        self.fs.fs.dircache[full] = listing["entries"]
                    return listing
            except (OSError, ValueError, KeyError, TypeError):
                log.debug("ignoring unreadable cached listing %s", cached)
        listing = self._remote_listing(subdir)
        if listing is not None:
            # Not-found is never cached: a folder uploaded later is seen on the next run.
            write_json(cached, {"path": full, "listing": listing})
        return listing

    def _remote_listing(self, subdir: str) -> dict[str, Any] | None:
        full = _join(self.root, subdir)
        try:
            entries = self.fs.fs.ls(full, detail=True, refresh=True)
        except FileNotFoundError as exc:
            if _not_found_kind(exc) != "key":  # no bucket, or a 404 that is not S3's
                raise _translate(exc, self.display(subdir), self) from None
            return None
        except _io_errors(True) as exc:
            raise _translate(exc, self.display(subdir), self) from None
        files: dict[str, int] = {}
        dirs: list[str] = []
        safe = [{k: _json_safe(v) for k, v in item.items()} for item in entries]
        for item in entries:
            name = PurePosixPath(item["name"]).name
            if not name:
                continue
            if item.get("type") == "directory":
                dirs.append(name)
            elif item["name"].rstrip("/") != full.rstrip("/"):
                files[name] = int(item.get("size") or 0)
        if not files and not dirs:
            return None
        return {"files": files, "dirs": sorted(dirs), "entries": safe}


def open_storage(source: str, data_cfg: DataConfig, refresh: bool = False) -> Storage:
    """Open a local folder or ``s3://bucket/prefix`` for reading.

    Args:
        source: the folder or URL (``data.source``, already resolved if it was ``sample``).
        data_cfg: S3 access settings and the cache folder.
        refresh: list remote folders again instead of using cached listings.

    Raises:
        DataError: a missing local folder, or a malformed URL. Bucket problems surface on the
            first listing or read, each as one line.
    """
    if is_s3(source):
        return _open_s3(source, data_cfg, refresh)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{source}: folder not found")
    if not path.is_dir():
        raise DataError(f"{source}: is a file; expected a folder")
    from fsspec.implementations.local import LocalFileSystem

    root = str(path.resolve())
    return Storage(url=str(path), root=root, fs=LocalFileSystem())


def _open_s3(source: str, data_cfg: DataConfig, refresh: bool) -> Storage:
    import s3fs
    from fsspec.implementations.cached import WholeFileCacheFileSystem

    root = source.split("://", 1)[1].strip("/")
    bucket = root.split("/", 1)[0]
    if not bucket:
        raise DataError(f"{source}: no bucket in the S3 URL (expected s3://bucket/prefix)")
    endpoint = data_cfg.endpoint_url or None
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    remote = s3fs.S3FileSystem(
        anon=data_cfg.anon,
        client_kwargs=client_kwargs,
        config_kwargs={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        },
        skip_instance_cache=True,
    )
    remote.retries = S3FS_RETRIES
    # One cache per server: the same bucket name on another endpoint is another bucket.
    key = hashlib.sha256((endpoint or "aws").encode()).hexdigest()[:12]
    base = cache_root(data_cfg) / "remote" / key
    try:
        (base / "files").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{base}: cannot create the cache folder ({exc.strerror})") from None

    def reopen() -> WholeFileCacheFileSystem:
        return WholeFileCacheFileSystem(
            fs=remote,
            cache_storage=str(base / "files"),
            check_files=False,
            expiry_time=False,
            skip_instance_cache=True,
        )

    url = "s3://" + root
    return Storage(
        url=url,
        root=root,
        fs=reopen(),
        remote=True,
        endpoint=endpoint,
        listing_dir=base / "listings",
        refresh=refresh,
        reopen=reopen,
    )


# --------------------------------------------------------------------------------------------
# Inputs of `predict`: files, folders, globs and URLs


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
#: ``_overlay.png``, ``_water_prob_pw<W>.png``): never photos to predict.
_OUTPUT_NAME = re.compile(r"_(water_prob|water_mask|overlay|water_prob_pw\d+)\.png$", re.I)


def is_segmenter_output(name: str) -> bool:
    """Whether ``name`` is one of the PNGs ``segmenter predict`` writes."""
    return bool(_OUTPUT_NAME.search(PurePosixPath(name).name))


def _drop_outputs(item: str, found: list[tuple[str, str, Storage, str]]
                  ) -> list[tuple[str, str, Storage, str]]:
    """Folder and glob matches minus segmenter's own outputs (an earlier --out), said once."""
    kept = [entry for entry in found if not is_segmenter_output(entry[3])]
    if len(kept) < len(found):
        log.info("%s: skipped %d file(s) that segmenter predict wrote (*_water_prob.png, "
                 "*_water_mask.png, *_overlay.png)", item, len(found) - len(kept))
    return kept


def expand_inputs(inputs: list[str] | tuple[str, ...], data_cfg: DataConfig) -> list[PhotoRef]:
    """Turn any mix of files, folders, globs and ``s3://`` URLs into photo references.

    Folders contribute the photos directly inside them (sorted). Display names are the file
    stems, made unique with ``-2``, ``-3``... so outputs never overwrite each other.

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
        except _io_errors(True) as exc:
            raise _translate(exc, item, bucket) from None
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


# --------------------------------------------------------------------------------------------
# Helpers


def _stem(name: str) -> str:
    return PurePosixPath(name).stem


def _join(base: str, path: str) -> str:
    path = path.strip("/")
    if not path:
        return base
    return base.rstrip("/") + "/" + path if base else path


def _local_listing(path: Path) -> dict[str, Any] | None:
    if not path.is_dir():
        return None
    files: dict[str, int] = {}
    dirs: list[str] = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_dir():
                        dirs.append(entry.name)
                    elif entry.is_file():
                        files[entry.name] = entry.stat().st_size
                    elif entry.is_symlink():
                        log.warning("%s: broken symbolic link; skipped", path / entry.name)
                except OSError as exc:  # a self-looping or unreadable link: only it is lost
                    log.warning("%s: cannot read (%s); skipped", path / entry.name,
                                exc.strerror or exc)
    except OSError as exc:
        raise DataError(f"{path}: cannot list folder ({exc.strerror or exc})") from None
    return {"files": files, "dirs": sorted(dirs)}


def _json_safe(value: Any) -> Any:
    """s3fs listing values (datetimes among them) as JSON: strings where not native."""
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _io_errors(remote: bool) -> tuple[type[BaseException], ...]:
    """What a read or listing can raise because of the data or the network (not our bugs).

    s3fs maps most S3 errors to ``OSError`` subclasses; the rest come from botocore (no
    credentials, unreachable endpoint), aiohttp or asyncio (timeouts).
    """
    if not remote:
        return (OSError,)
    import asyncio

    import aiohttp
    import botocore.exceptions

    return (
        OSError,
        ValueError,
        asyncio.TimeoutError,
        aiohttp.ClientError,
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
    )


def _not_found_kind(exc: BaseException) -> str:
    """What a remote "not found" means: ``bucket``, ``key`` (object or prefix) or ``http``.

    s3fs raises a bare FileNotFoundError for a prefix with nothing under it, and translates
    S3's NoSuchBucket / NoSuchKey; a server that is not S3 (a wrong endpoint_url) answers a
    plain 404, without an S3 error code, which says nothing about the folder.
    """
    codes = set()
    for item in _chain(exc):
        response = getattr(item, "response", None)
        if isinstance(response, dict):
            codes.add(str(response.get("Error", {}).get("Code", "")))
    text = " ".join(str(item) for item in _chain(exc))
    if "NoSuchBucket" in codes or "NoSuchBucket" in text:
        return "bucket"
    if codes - {"NoSuchKey", ""}:
        return "http"
    return "key"


def _translate(exc: BaseException, where: str, storage: Storage) -> DataError:
    """One line for an S3 / filesystem failure; the original is logged at debug level."""
    log.debug("%s: %s: %r", where, type(exc).__name__, exc)
    endpoint = storage.endpoint or "AWS S3"
    bucket = storage.url.split("://", 1)[-1].split("/", 1)[0] if storage.remote else ""
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc))
    if isinstance(exc, FileNotFoundError):
        if not storage.remote:
            return DataError(f"{where}: file not found")
        kind = _not_found_kind(exc)
        if kind == "bucket":
            return DataError(f"{where}: bucket '{bucket}' not found on {endpoint}")
        if kind == "http":
            return DataError(
                f"{where}: {endpoint} answered 404 Not Found without an S3 error code "
                f"(is it an S3 endpoint, and does bucket '{bucket}' exist?)"
            )
        return DataError(f"{where}: file not found{REFRESH_HINT}")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        hint = (
            " (the bucket is not public: set data.anon: false and provide AWS credentials)"
            if storage.remote and _is_anon(storage)
            else ""
        )
        return DataError(f"{where}: access denied{hint}")
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return DataError(
            f"{where}: no AWS credentials found (set data.anon: true for public buckets, or "
            "configure credentials: AWS_PROFILE, ~/.aws/credentials, environment variables)"
        )
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "FSTimeoutError",
        "TimeoutError",
        "ConnectionRefusedError",
        "gaierror",
    }:
        if storage.endpoint:
            return DataError(f"{where}: cannot reach the S3 endpoint {storage.endpoint}")
        return DataError(f"{where}: cannot reach AWS S3 (check the network connection)")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{where}: is a folder, expected a file")
    if isinstance(exc, OSError):
        return DataError(f"{where}: cannot read ({exc.strerror or _first_line(exc)})")
    return DataError(f"{where}: {type(exc).__name__}: {_first_line(exc)}")


def _is_anon(storage: Storage) -> bool:
    inner = getattr(storage.fs, "fs", None)
    return bool(getattr(inner, "anon", False))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _first_line(exc: BaseException) -> str:
    """The message's first line; a heading line ending in ':' is joined to what follows
    (botocore: "Parameter validation failed:" then the invalid parameter on the next line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return " ".join(lines[:3])
    return lines[0]
