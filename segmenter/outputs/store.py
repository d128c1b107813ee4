"""Where ``segmenter predict`` writes: a local folder or an fsspec URL, published atomically.

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

Which files an input owns is :mod:`segmenter.outputs.names`'s to say.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segmenter.data.remote import failure_reason, filesystem, is_url
from segmenter.errors import DataError
from segmenter.outputs.names import owned_files

log = logging.getLogger(__name__)

#: per-input records (the commit marks of --skip-existing), inside the output folder.
RECORDS_DIR = ".records"
#: fsspec protocols whose single PUT publishes a whole object at once.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})
#: fsspec protocols that keep nothing once the process ends: refused as --out.
TRANSIENT = frozenset({"memory"})
#: the lock file held while the summary is read and rewritten (local folders).
LOCK_NAME = ".predictions.lock"

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
            raise DataError(f"{self.display(sub)}: cannot list "
                            f"({failure_reason(exc, self.data_cfg)})") from None
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
            raise DataError(f"{self.location}: cannot read ({failure_reason(exc, self.data_cfg)})"
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
            raise DataError(f"{self.display(name)}: cannot write "
                            f"({failure_reason(exc, self.data_cfg)})") from None

    def _upload(self, local: Path, name: str) -> None:
        try:
            if self.single_put:
                self.fs.put_file(str(local), self._full(name))
            else:
                tmp = self._temporary(name)
                self.fs.put_file(str(local), tmp)
                self.fs.mv(tmp, self._full(name))
        except Exception as exc:
            raise DataError(f"{self.display(name)}: cannot write "
                            f"({failure_reason(exc, self.data_cfg)})") from None

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
                            f"({failure_reason(exc, self.data_cfg)})") from None

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
                            f"({failure_reason(exc, self.data_cfg)})") from None

    def records(self, present: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every input recorded here, by stem: the rows of ``predictions.json`` in its order,
        each replaced by its commit mark (``.records/<stem>.json``) where one exists, then the
        marks the summary does not list yet (a job killed before its summary). Rows that are
        not prediction records (hand-edited) are left out, with a debug line. The stems the
        summary lists, in its order, are kept in :attr:`summary_order`."""
        from pydantic import ValidationError

        from segmenter.outputs.summary import SUMMARY_JSON
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
        :func:`segmenter.outputs.names.input_source`), every output it names is present, and it has
        every output this call would write (``wanted``: stem -> output kinds; a raster
        predicted without ``--vector`` is not finished for a call with it).
        """
        from segmenter.outputs.names import record_source

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
        from segmenter.outputs.summary import SUMMARY_CSV, SUMMARY_JSON

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


