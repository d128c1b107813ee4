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
import errno
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
#: fsspec protocols that keep nothing once the process ends: refused as --out.
TRANSIENT = frozenset({"memory"})
#: the lock file held while the summary is read and rewritten (local folders).
LOCK_NAME = ".predictions.lock"
#: suffixes of the files one input may own (see :func:`owned_by`).
OWNED_SUFFIXES = (
    "_water_prob.png", "_water_mask.png", "_overlay.png", "_water_prob.npy",
    "_water_prob.tif", "_water_mask.tif", "_water.geojson", "_shoreline.geojson",
)


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an fsspec URL other than a plain local path (``file://``)."""
    text = str(location)
    return "://" in text and not text.lower().startswith("file://")


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
        text = str(location)
        if not text.strip():
            raise DataError("--out: empty; give a folder or a URL (without --out, predictions "
                            "go to RUN/predictions)")
        self.data_cfg = data_cfg
        self.summary_order: list[str] = []
        self.remote = is_url(text)
        if self.remote:  # "s3://" stays a URL (and is refused for its missing bucket)
            protocol, _, rest = text.partition("://")
            self.location = f"{protocol}://{rest.rstrip('/')}"
            if protocol.lower() in TRANSIENT:
                raise DataError(f"{text}: the {protocol}:// file system lives only as long as "
                                "this process, so nothing written there would be kept; write "
                                "to a folder or to a store such as s3://")
        else:
            self.location = text.rstrip("/") or text
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

    def remove(self, names: list[str]) -> None:
        """Delete these files (missing ones are no error)."""
        if not names:
            return
        if not self.remote:
            for name in names:
                (self.local / name).unlink(missing_ok=True)
            return
        try:
            self.fs.rm([self._full(n) for n in names])
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise DataError(f"{self.location}: cannot remove {names[0]} "
                            f"({_reason(exc, self.data_cfg)})") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while the folder's records and summary are read and rewritten, so two
        predicts into one local folder merge their rows instead of the last one winning.

        Object stores have no locks: there each job merges what is committed when it ends.
        """
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the merge still narrows the window
            fcntl = None
        if self.remote or fcntl is None:
            yield
            return
        path = self.local / LOCK_NAME
        try:
            self.local.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{self.local}: cannot write ({exc.strerror or exc})") from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(f"{path}: is a symbolic link; segmenter keeps a plain lock file "
                                "there (remove the link)") from None
            raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _check_records_dir(self) -> None:
        """Records are written inside the folder only: a symbolic link there is refused."""
        if not self.remote and (self.local / RECORDS_DIR).is_symlink():
            raise DataError(f"{self.local / RECORDS_DIR}: is a symbolic link; segmenter keeps "
                            "its per-input records in a plain folder there (remove the link)")

    def probe(self, job: dict[str, Any]) -> None:
        """Fail early, with one line, when the folder cannot be written.

        Writes ``.records/.job.json`` (what the job is: run, widths, start time), a file that
        stays, so no probe object is left to delete (a bucket may allow PUT but not DELETE).
        """
        self._check_records_dir()
        self.write_bytes(f"{RECORDS_DIR}/.job.json",
                         (json.dumps(job, indent=1) + "\n").encode("utf-8"))

    # -------------------------------------------------------------------------- records
    def write_record(self, stem: str, record: dict[str, Any]) -> None:
        """The commit mark of one input (written after its outputs)."""
        self._check_records_dir()
        self.write_bytes(f"{RECORDS_DIR}/{stem}.json",
                         (json.dumps(record, indent=1) + "\n").encode("utf-8"))

    def write_records(self, records: dict[str, dict[str, Any]]) -> None:
        """Several inputs' records at once (an object store takes them concurrently)."""
        if not records:
            return
        self._check_records_dir()
        if not self.remote or not self.single_put:
            for stem, record in records.items():
                self.write_record(stem, record)
            return
        payload = {self._full(f"{RECORDS_DIR}/{stem}.json"):
                   (json.dumps(record, indent=1) + "\n").encode("utf-8")
                   for stem, record in records.items()}
        try:
            self.fs.pipe(payload)
        except Exception as exc:
            raise DataError(f"{self.display(RECORDS_DIR)}: cannot write "
                            f"({_reason(exc, self.data_cfg)})") from None

    def records(self, present: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every input recorded here, by stem: the rows of ``predictions.json`` in its order,
        each replaced by its commit mark (``.records/<stem>.json``) where one exists, then the
        marks the summary does not list yet (a job killed before its summary). Rows that are
        not prediction records (hand-edited) are left out, with a debug line. The stems the
        summary lists, in its order, are kept in :attr:`summary_order`."""
        from pydantic import ValidationError

        from segmenter.outputs import SUMMARY_JSON
        from segmenter.runstate import PredictionRecord

        self._check_records_dir()
        found: dict[str, dict[str, Any]] = {}

        def take(item: Any, where: str) -> None:
            try:
                record = PredictionRecord.model_validate(item).to_json()
            except ValidationError:
                log.debug("%s: dropped an unreadable record: %r", where, item)
                return
            found[record["stem"]] = record

        if SUMMARY_JSON in (self.names() if present is None else present):
            try:
                data = json.loads(self.read_many([SUMMARY_JSON]).get(SUMMARY_JSON, b"{}"))
            except ValueError:
                data = {}
            images = data.get("images") if isinstance(data, dict) else None
            for item in images if isinstance(images, list) else []:
                take(item, self.display(SUMMARY_JSON))
        self.summary_order = list(found)
        marks = sorted(f"{RECORDS_DIR}/{n}" for n in self.names(RECORDS_DIR)
                       if n.endswith(".json") and not n.startswith("."))
        contents = self.read_many(marks)
        for name in marks:
            if name in contents:
                try:
                    take(json.loads(contents[name]), self.display(name))
                except ValueError:
                    log.debug("%s: dropped an unreadable record", self.display(name))
        return found

    def finished(self, records: dict[str, dict[str, Any]], stems: list[str],
                 wanted: dict[str, set[str]] | None = None,
                 sources: dict[str, str] | None = None,
                 present: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """The records of the ``stems`` already predicted here, for ``--skip-existing``.

        A record counts when it is ``ok``, is the same input's (``sources``: stem -> its
        :func:`segmenter.outputs.input_source`), every output it names is present, and it has
        every output this call would write (``wanted``: stem -> output kinds; a raster
        predicted without ``--vector`` is not finished for a call with it).
        """
        from segmenter.outputs import record_source

        present = self.names() if present is None else present
        done = {}
        for stem in stems:
            record = records.get(stem)
            if not record or record.get("status") != "ok":
                continue
            if sources and sources.get(stem) not in (None, record_source(record)):
                continue
            files = record.get("outputs") or {}
            if not files or not all(name in present for name in files.values()):
                continue
            if wanted and not set(wanted.get(stem, ())) <= set(files):
                continue
            done[stem] = record
        return done

    def existing(self, stems: list[str], names: tuple[str, ...] | None = None,
                 present: set[str] | None = None) -> list[str]:
        """Files here that predicting ``stems`` would replace: whole-folder ``names`` (by
        default the summary) and every file each stem owns (:func:`owned_by`)."""
        from segmenter.outputs import SUMMARY_CSV, SUMMARY_JSON

        names = (SUMMARY_JSON, SUMMARY_CSV) if names is None else names
        present = self.names() if present is None else present
        found = [n for n in names if n in present]
        owned = owned_files(present, stems)
        for stem in stems:
            found += owned.get(stem, [])
        return found


def open_output(location: str | os.PathLike, data_cfg: Any) -> Output:
    """The output folder ``location`` (a path or an fsspec URL)."""
    return Output(str(location), data_cfg)


# --------------------------------------------------------------------------------------------
# Run directories at a URL


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
        raise RunError(f"{url}: cannot read the run directory ({_reason(exc, data_cfg)})"
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
