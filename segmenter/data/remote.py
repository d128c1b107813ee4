"""fsspec URLs: one file system factory for reading and writing, and run directories read
from a URL (``--run s3://bucket/runs/r1``), copied once into the local cache
(``<cache>/runs/<hash>``): config, status files and finished models, nothing else. Each Dask
worker does the same on its own machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from segmenter.errors import DataError, RunError

log = logging.getLogger(__name__)


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an fsspec URL other than a plain local path (``file://``)."""
    text = str(location)
    return "://" in text and not text.lower().startswith("file://")


def filesystem(url: str, data_cfg: Any) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it (no trailing slash).

    S3 uses the data section's access settings and the same short timeouts as the data layer,
    so an unreachable endpoint fails in seconds.
    """
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    if protocol in ("s3", "s3a"):
        from segmenter.data.storage import s3_filesystem

        fs = s3_filesystem(data_cfg)
        root = url.split("://", 1)[1].strip("/")
        if not root:
            raise DataError(f"{url}: no bucket in the S3 URL (expected s3://bucket/prefix)")
        return fs, root
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise DataError(f"{url}: cannot open this URL ({exc})") from None
    return fs, root.rstrip("/")


def failure_reason(exc: BaseException, data_cfg: Any) -> str:
    """Why a file system call failed, in words (access denied, server unreachable, ...)."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        hint = ("; for a private bucket set data.anon=false and provide AWS credentials"
                if getattr(data_cfg, "anon", False) else "")
        return f"access denied{hint}"
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ConnectionRefusedError", "FSTimeoutError", "TimeoutError"}:
        endpoint = getattr(data_cfg, "endpoint_url", None) or "the storage server"
        return f"cannot reach {endpoint}"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def fetch_run(url: str, data_cfg: Any, cache: Path | None = None) -> Path:
    """A local copy of the run directory at ``url`` (config, status files, finished models).

    A file is fetched again whenever the store reports another version of it (its ETag, or
    its modification time where the store has no ETag, and its size): a run retrained and
    uploaded over the same keys is never predicted with stale models. Each file is written
    under a temporary name and renamed, so processes sharing the cache never see half a model.

    Raises:
        RunError: nothing readable at ``url``, or no ``config.yaml`` there.
    """
    from segmenter.data.storage import cache_root
    from segmenter.fileio import atomic_path, write_json

    fs, root = filesystem(url, data_cfg)
    base = (cache or cache_root(data_cfg)) / "runs"
    target = base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    try:
        wanted: dict[str, list[Any]] = {}
        for sub, pattern in (("", ("config.yaml", "manifest.json")), ("history", ".json"),
                             ("models", ".keras")):
            path = f"{root}/{sub}" if sub else root
            try:
                entries = fs.ls(path, detail=True, refresh=True)
            except FileNotFoundError:
                continue
            for entry in entries:
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                if entry.get("type") == "directory":
                    continue
                ok = name in pattern if isinstance(pattern, tuple) else name.endswith(pattern)
                if ok:
                    wanted[f"{sub}/{name}" if sub else name] = [int(entry.get("size") or 0),
                                                                _version(entry)]
        if "config.yaml" not in wanted:
            raise RunError(f"{url}: not a segmenter run (no config.yaml there)")
        fetched = _read_fetched(target)
        for rel, version in sorted(wanted.items()):
            local = target / rel
            if (local.is_file() and local.stat().st_size == version[0]
                    and version[1] is not None and fetched.get(rel) == version):
                continue
            with atomic_path(local) as tmp:
                fs.get_file(f"{root}/{rel}", str(tmp))
            fetched[rel] = version
            write_json(target / FETCHED, fetched)
    except RunError:
        raise
    except Exception as exc:
        raise RunError(f"{url}: cannot read the run directory ({failure_reason(exc, data_cfg)})"
                       ) from None
    log.debug("run %s copied to %s", url, target)
    return target


#: in a fetched run's cache folder: the version of each file copied (see :func:`fetch_run`).
FETCHED = ".fetched.json"


def _version(entry: dict[str, Any]) -> str | None:
    """What tells one version of a stored file from another: its ETag, else its time."""
    for key in ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "mtime", "updated",
                "created"):
        value = entry.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def _read_fetched(target: Path) -> dict[str, Any]:
    try:
        data = json.loads((target / FETCHED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
