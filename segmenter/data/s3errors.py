"""S3 and filesystem failures as one line each: what botocore, s3fs and aiohttp raise, named.

:func:`translate` turns an exception from a listing or a read into a :class:`DataError` that
names the file or folder and says what to do (a bucket that does not exist, access denied on a
non-public bucket, no credentials, an endpoint that cannot be reached, botocore's parameter
validation with the parameter it refused); the original is logged at debug level (``-v``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from segmenter.errors import DataError

if TYPE_CHECKING:
    from segmenter.data.storage import Storage

log = logging.getLogger("segmenter.data.storage")

#: Added to "not found" for S3 sources: the folder listings are cached, and may be stale.
REFRESH_HINT = (
    " (folder listings are cached: if the bucket changed since, run `segmenter data --refresh`)"
)


def io_errors(remote: bool) -> tuple[type[BaseException], ...]:
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


def not_found_kind(exc: BaseException) -> str:
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


def translate(exc: BaseException, where: str, storage: Storage) -> DataError:
    """One line for an S3 / filesystem failure; the original is logged at debug level."""
    log.debug("%s: %s: %r", where, type(exc).__name__, exc)
    endpoint = storage.endpoint or "AWS S3"
    bucket = storage.url.split("://", 1)[-1].split("/", 1)[0] if storage.remote else ""
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc))
    if isinstance(exc, FileNotFoundError):
        if not storage.remote:
            return DataError(f"{where}: file not found")
        kind = not_found_kind(exc)
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
        return DataError(f"{where}: cannot read ({exc.strerror or first_line(exc)})")
    return DataError(f"{where}: {type(exc).__name__}: {first_line(exc)}")


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


def first_line(exc: BaseException) -> str:
    """The message's first line; a heading line ending in ':' is joined to what follows
    (botocore: "Parameter validation failed:" then the invalid parameter on the next line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return " ".join(lines[:3])
    return lines[0]
