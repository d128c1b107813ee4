"""Where ``segmenter predict`` writes, and run directories read from URLs, through fsspec.

``--out`` is a local folder or any fsspec URL (``s3://bucket/prefix``, ``gs://``, ...). Every
file is published atomically, so a crash never leaves a half-written output that a rerun with
``--skip-existing`` would take for a finished one:

* local folders: a temporary name in the same folder, then ``os.replace``
  (:mod:`segmenter.fileio`);
* object stores (S3, GCS, Azure): the file is written locally first, then uploaded in one PUT
  (or one multipart upload, which the store also publishes only when complete);
* other fsspec file systems: uploaded under a hidden temporary name, then renamed.

A photo's outputs are published first and its *record* (``.records/<stem>.json``, the line it
gets in ``predictions.csv``) last: the record is the commit mark that ``--skip-existing``
trusts. S3 access follows the data section: ``data.anon`` (false for a private bucket, with the
usual AWS credential chain) and ``data.endpoint_url``.

A run directory given as a URL (``--run s3://bucket/runs/r1``) is copied once into the local
cache (``<cache>/runs/<hash>``): its config, status files and finished models, nothing else.
Each Dask worker does the same on its own machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segmenter.errors import DataError, RunError

log = logging.getLogger(__name__)

#: per-input records (the commit marks of --skip-existing), inside the output folder.
RECORDS_DIR = ".records"
#: fsspec protocols whose single PUT publishes a whole object at once.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})
#: suffixes of the files one input may own (see :func:`owned_by`).
OWNED_SUFFIXES = (
    "_water_prob.png", "_water_mask.png", "_overlay.png", "_water_prob.npy",
    "_water_prob.tif", "_water_mask.tif", "_water.geojson", "_shoreline.geojson",
)


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an fsspec URL other than a plain local path (``file://``)."""
    text = str(location)
    return "://" in text and not text.lower().startswith("file://")


def owned_by(name: str, stem: str) -> bool:
    """Whether the file ``name`` is one that predicting ``stem`` writes (or may replace)."""
    if name in {stem + suffix for suffix in OWNED_SUFFIXES}:
        return True
    return re.fullmatch(re.escape(stem) + r"_water_prob_pw\d+\.(png|npy)", name) is not None


def filesystem(url: str, data_cfg: Any) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it (no trailing slash).

    S3 uses the data section's access settings and the same short timeouts as the data layer,
    so an unreachable endpoint fails in seconds.
    """
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    if protocol in ("s3", "s3a"):
        import s3fs

        from segmenter.data import storage

        endpoint = data_cfg.endpoint_url or None
        fs = s3fs.S3FileSystem(
            anon=data_cfg.anon,
            client_kwargs={"endpoint_url": endpoint} if endpoint else {},
            config_kwargs={
                "connect_timeout": storage.CONNECT_TIMEOUT_S,
                "read_timeout": storage.READ_TIMEOUT_S,
                "retries": {"max_attempts": storage.MAX_ATTEMPTS, "mode": "standard"},
            },
            skip_instance_cache=True,
        )
        fs.retries = storage.S3FS_RETRIES
        root = url.split("://", 1)[1].strip("/")
        if not root:
            raise DataError(f"{url}: no bucket in the S3 URL (expected s3://bucket/prefix)")
        return fs, root
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise DataError(f"{url}: cannot open this URL ({exc})") from None
    return fs, root.rstrip("/")


def _reason(exc: BaseException, data_cfg: Any) -> str:
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


class Output:
    """An output folder: local, or on any fsspec file system.

    Writers (``outputs.write_prediction``, the raster COG writer) write into a local folder:
    :meth:`staging` gives one (the folder itself when it is local) and :meth:`publish` moves
    what they wrote into place.
    """

    def __init__(self, location: str, data_cfg: Any) -> None:
        self.location = str(location).rstrip("/") or str(location)
        self.data_cfg = data_cfg
        self.remote = is_url(self.location)
        if self.remote:
            self.fs, self.root = filesystem(self.location, data_cfg)
            protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple | list) \
                else (self.fs.protocol,)
            self.single_put = bool(OBJECT_STORES & set(protocols))
            self.local: Path | None = None
        else:
            path = self.location.removeprefix("file://")
            self.local = Path(path).expanduser()
            self.fs, self.root, self.single_put = None, str(self.local), False

    def __str__(self) -> str:
        return self.location

    def display(self, name: str = "") -> str:
        return f"{self.location}/{name}" if name else self.location

    def _full(self, name: str) -> str:
        return f"{self.root}/{name}"

    # -------------------------------------------------------------------------- reading
    def names(self, sub: str = "") -> set[str]:
        """Names of the files directly in the folder (or its sub-folder ``sub``)."""
        if not self.remote:
            folder = self.local / sub if sub else self.local
            if not folder.is_dir():
                return set()
            return {p.name for p in folder.iterdir() if p.is_file()}
        path = self._full(sub) if sub else self.root
        try:
            entries = self.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return set()
        except Exception as exc:
            raise DataError(f"{self.display(sub)}: cannot list ({_reason(exc, self.data_cfg)})"
                            ) from None
        return {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                if e.get("type") != "directory"}

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """The content of each existing file of ``names`` (missing ones are left out)."""
        if not names:
            return {}
        if not self.remote:
            found = {}
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    found[name] = (self.local / name).read_bytes()
            return found
        full = {self._full(n): n for n in names}
        try:
            data = self.fs.cat(list(full), on_error="omit")
        except Exception as exc:
            raise DataError(f"{self.location}: cannot read ({_reason(exc, self.data_cfg)})"
                            ) from None
        return {full[k]: v for k, v in data.items() if isinstance(v, bytes)}

    # -------------------------------------------------------------------------- writing
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A local folder to write into: the output folder itself, or a temporary one."""
        if not self.remote:
            yield self.local
            return
        folder = Path(tempfile.mkdtemp(prefix="segmenter-out-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, folder: Path, names: list[str]) -> None:
        """Move files a writer left in ``folder`` (from :meth:`staging`) into place."""
        if not self.remote:
            return
        for name in names:
            self._upload(folder / name, name)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write one file atomically."""
        if not self.remote:
            from segmenter.fileio import write_bytes

            write_bytes(self.local / name, data)
            return
        try:
            if self.single_put:
                self.fs.pipe_file(self._full(name), data)
            else:
                tmp = self._temporary(name)
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, self._full(name))
        except Exception as exc:
            raise DataError(f"{self.display(name)}: cannot write ({_reason(exc, self.data_cfg)})"
                            ) from None

    def _upload(self, local: Path, name: str) -> None:
        try:
            if self.single_put:
                self.fs.put_file(str(local), self._full(name))
            else:
                tmp = self._temporary(name)
                self.fs.put_file(str(local), tmp)
                self.fs.mv(tmp, self._full(name))
        except Exception as exc:
            raise DataError(f"{self.display(name)}: cannot write ({_reason(exc, self.data_cfg)})"
                            ) from None

    def _temporary(self, name: str) -> str:
        parent, _, base = name.rpartition("/")
        hidden = f".{base}.{uuid.uuid4().hex[:8]}.tmp"
        return self._full(f"{parent}/{hidden}" if parent else hidden)

    def probe(self, job: dict[str, Any]) -> None:
        """Fail early, with one line, when the folder cannot be written.

        Writes ``.records/.job.json`` (what the job is: run, widths, start time), a file that
        stays, so no probe object is left to delete (a bucket may allow PUT but not DELETE).
        """
        self.write_bytes(f"{RECORDS_DIR}/.job.json",
                         (json.dumps(job, indent=1) + "\n").encode("utf-8"))

    # -------------------------------------------------------------------------- records
    def write_record(self, stem: str, record: dict[str, Any]) -> None:
        """The commit mark of one input (written after its outputs)."""
        self.write_bytes(f"{RECORDS_DIR}/{stem}.json",
                         (json.dumps(record, indent=1) + "\n").encode("utf-8"))

    def forget(self, stems: list[str]) -> None:
        """Drop the records of ``stems`` (``--overwrite``: they are predicted again)."""
        names = [f"{RECORDS_DIR}/{s}.json" for s in stems]
        if not self.remote:
            for name in names:
                (self.local / name).unlink(missing_ok=True)
            return
        present = self.names(RECORDS_DIR)
        stale = [self._full(n) for n in names if n.rsplit("/", 1)[-1] in present]
        if stale:
            try:
                self.fs.rm(stale)
            except Exception as exc:
                raise DataError(f"{self.location}: cannot remove old records "
                                f"({_reason(exc, self.data_cfg)})") from None

    def finished(self, stems: list[str]) -> dict[str, dict[str, Any]]:
        """Records of the ``stems`` already predicted here (their outputs all present).

        A record is trusted only with every output it names; without records (a run made by
        plain ``predict``, which writes none), a photo listed as ``ok`` in ``predictions.json``
        with all its outputs counts as finished too.
        """
        present = self.names()
        recorded = self.names(RECORDS_DIR)
        wanted = [f"{RECORDS_DIR}/{s}.json" for s in stems if f"{s}.json" in recorded]
        records: dict[str, dict[str, Any]] = {}
        for data in self.read_many(wanted).values():
            with contextlib.suppress(ValueError):
                record = json.loads(data)
                if isinstance(record, dict) and record.get("stem"):
                    records[record["stem"]] = record
        from segmenter.outputs import SUMMARY_JSON

        if SUMMARY_JSON in present and len(records) < len(stems):
            summary = self.read_many([SUMMARY_JSON]).get(SUMMARY_JSON, b"{}")
            with contextlib.suppress(ValueError, AttributeError):
                for record in json.loads(summary).get("images", []):
                    records.setdefault(record.get("stem"), record)
        done = {}
        for stem in stems:
            record = records.get(stem)
            if not record or record.get("status") != "ok":
                continue
            if all(name in present for name in (record.get("outputs") or {}).values()):
                done[stem] = record
        return done

    def existing(self, stems: list[str]) -> list[str]:
        """Files here that predicting ``stems`` would replace (the summary included)."""
        from segmenter.outputs import SUMMARY_CSV, SUMMARY_JSON

        present = self.names()
        found = sorted(n for n in present if n in (SUMMARY_JSON, SUMMARY_CSV))
        for stem in stems:
            found += sorted(n for n in present if owned_by(n, stem))
        return found


def open_output(location: str | os.PathLike, data_cfg: Any) -> Output:
    """The output folder ``location`` (a path or an fsspec URL)."""
    return Output(str(location), data_cfg)


# --------------------------------------------------------------------------------------------
# Run directories at a URL


def fetch_run(url: str, data_cfg: Any, cache: Path | None = None) -> Path:
    """A local copy of the run directory at ``url`` (config, status files, finished models).

    Files already copied with the same size are not fetched again; each is written under a
    temporary name and renamed, so processes sharing the cache never see half a model.

    Raises:
        RunError: nothing readable at ``url``, or no ``config.yaml`` there.
    """
    from segmenter.data.storage import cache_root
    from segmenter.fileio import atomic_path

    fs, root = filesystem(url, data_cfg)
    base = (cache or cache_root(data_cfg)) / "runs"
    target = base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    try:
        wanted: dict[str, int] = {}
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
                    wanted[f"{sub}/{name}" if sub else name] = int(entry.get("size") or 0)
        if "config.yaml" not in wanted:
            raise RunError(f"{url}: not a segmenter run (no config.yaml there)")
        for rel, size in sorted(wanted.items()):
            local = target / rel
            if local.is_file() and local.stat().st_size == size:
                continue
            with atomic_path(local) as tmp:
                fs.get_file(f"{root}/{rel}", str(tmp))
    except RunError:
        raise
    except Exception as exc:
        raise RunError(f"{url}: cannot read the run directory ({_reason(exc, data_cfg)})"
                       ) from None
    log.debug("run %s copied to %s", url, target)
    return target
