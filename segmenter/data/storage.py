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

The inputs of ``predict`` (files, folders, globs, URLs) are expanded in
:mod:`segmenter.data.inputs`; S3 and filesystem failures become one line in
:mod:`segmenter.data.s3errors`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from segmenter.config import DEFAULT_CACHE_ENV, DataConfig
from segmenter.data.s3errors import REFRESH_HINT  # noqa: F401  (re-exported)
from segmenter.data.s3errors import first_line as _first_line  # noqa: F401
from segmenter.data.s3errors import io_errors as _io_errors
from segmenter.data.s3errors import not_found_kind as _not_found_kind
from segmenter.data.s3errors import translate as _translate
from segmenter.errors import DataError
from segmenter.fileio import write_json

log = logging.getLogger(__name__)

# botocore settings that make a dead endpoint fail fast (s3fs passes these to the client).
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 30
MAX_ATTEMPTS = 2
# s3fs's own retry loop on top of botocore's (default 5, with back-off).
S3FS_RETRIES = 2


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


def s3_filesystem(data_cfg: DataConfig) -> Any:
    """An ``s3fs.S3FileSystem`` with the data section's access settings (``data.anon``,
    ``data.endpoint_url``) and short timeouts, so an unreachable endpoint fails in seconds.
    The one S3 set-up for reading data and runs and for writing outputs."""
    import s3fs

    endpoint = data_cfg.endpoint_url or None
    remote = s3fs.S3FileSystem(
        anon=data_cfg.anon,
        client_kwargs={"endpoint_url": endpoint} if endpoint else {},
        config_kwargs={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        },
        skip_instance_cache=True,
    )
    remote.retries = S3FS_RETRIES
    return remote


def _open_s3(source: str, data_cfg: DataConfig, refresh: bool) -> Storage:
    from fsspec.implementations.cached import WholeFileCacheFileSystem

    root = source.split("://", 1)[1].strip("/")
    bucket = root.split("/", 1)[0]
    if not bucket:
        raise DataError(f"{source}: no bucket in the S3 URL (expected s3://bucket/prefix)")
    endpoint = data_cfg.endpoint_url or None
    remote = s3_filesystem(data_cfg)
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
# Helpers


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


# Moved to their own modules (issue 9); still importable from here.
_MOVED = {
    "PhotoRef": "segmenter.data.inputs",
    "expand_inputs": "segmenter.data.inputs",
    "is_photo_name": "segmenter.data.inputs",
    "is_segmenter_output": "segmenter.data.inputs",
}


def __getattr__(name: str):
    """Lazy re-exports (``inputs`` imports this module, so they cannot be imported eagerly)."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
