"""The run directory: layout, per-width status, manifest, and loading finished models.

Layout (see docs/architecture.md)::

    RUN/
      config.yaml            the resolved config
      manifest.json          widths, steps done, final losses, data fingerprint, versions
      models/pw<W>.keras     finished model of width W
      state/pw<W>/           in-progress checkpoint of width W (model + optimiser + step)
      history/pw<W>.csv      step, loss, val_loss, val_water_iou, seconds
      history/pw<W>.json     per-width status; manifest.json is rebuilt from these
      plots/pw<W>_loss.png   loss curve
      tensorboard/pw<W>/     when train.tensorboard is on

Why per-width status files: widths may be trained as separate jobs (``--patch-width``, possibly
on separate machines sharing a folder). Each job only ever writes its own widths' files, so jobs
never clobber each other; ``manifest.json`` is a convenience snapshot rebuilt from the status
files, and :class:`Run` always reads the status files themselves. Every file is written
atomically (temporary name, then rename), so a kill -9 leaves either the old or the new file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import re
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from segmenter import __version__
from segmenter.config import Config, load_config
from segmenter.errors import RunError, SegmenterError
from segmenter.fileio import write_json, write_text
from segmenter.runstate import CheckpointState, Manifest, WidthStatus

log = logging.getLogger("segmenter.runs")

__all__ = [
    "HISTORY_FIELDS",
    "TRAINING_OWNED",
    "Run",
    "config_differences",
    "open_run",
    "read_json",
    "versions",
]

CONFIG_NAME = "config.yaml"
MANIFEST_NAME = "manifest.json"
#: What ``segmenter train`` writes in a run directory: all that ``--overwrite`` may remove.
#: Anything else (``predictions/``, ``evaluation/``, a user's notes) is left alone.
TRAINING_OWNED = (CONFIG_NAME, MANIFEST_NAME, "models", "state", "history", "plots",
                  "tensorboard", ".write-test")
HISTORY_FIELDS = ("step", "loss", "val_loss", "val_water_iou", "seconds")
MANIFEST_FORMAT = 1

# Keys that may differ between the run's saved config and a resuming (or joining) job: they
# change where data is cached, how the job is executed, or what happens after training, never
# what a checkpoint means. Everything else must match.
RESUME_IGNORED_PREFIXES = (
    "data.cache_dir",
    "data.anon",
    "data.endpoint_url",
    "data.skip_bad",
    "data.source",  # the same data may sit at another path on another machine: see fingerprint
    "train.strategy",
    "train.jit_compile",
    "train.tensorboard",
    "train.widths",  # compared per trained width below
    "predict.",
    "postprocess.",
)


def versions() -> dict[str, str]:
    """Package versions that produced a run (read from metadata: no TensorFlow import)."""
    found = {"segmenter": __version__, "python": platform.python_version()}
    for package in ("tensorflow", "jax", "torch", "keras", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{dotted.key: value}`` (width tables stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not path.endswith("widths") and not path.endswith(
            "random_windows"
        ):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def config_differences(
    saved: Config, current: Config, widths: list[int] | None = None
) -> list[str]:
    """Config keys whose values make ``current`` unable to continue ``saved``'s checkpoints.

    Args:
        saved: the config stored in the run directory.
        current: the config of the job that wants to resume or join the run.
        widths: the patch widths this job trains; only their batch sizes are compared (a job
            may train a subset, and a new width may be added to a run).

    Returns:
        Dotted key paths (``train.learning_rate``, ``train.widths.64``), sorted.
    """
    old, new = flatten(saved.to_dict()), flatten(current.to_dict())
    differing = []
    for key in sorted(set(old) | set(new)):
        if any(key == p or key.startswith(p) for p in RESUME_IGNORED_PREFIXES):
            continue
        if key in ("data.upright", "model.row_channel") and new.get(key) == "auto":
            continue  # training resolves auto from the same data: it keeps the saved value
        if key == "train.init_from" and None not in (old.get(key), new.get(key)):
            continue  # the source run may sit at another path or machine: only "none" differs
        if old.get(key) != new.get(key):
            differing.append(key)
    check = widths if widths is not None else list(current.train.widths)
    for width in check:
        if width in saved.train.widths and saved.train.widths[width] != current.train.widths.get(
            width
        ):
            differing.append(f"train.widths.{width}")
    return differing


class Run:
    """A run directory: its saved config, per-width status, and finished models.

    Reading a run never imports TensorFlow until a model is loaded, so listing runs is cheap.
    """

    def __init__(self, path: str | Path, config: Config) -> None:
        self.path = Path(path)
        self.config = config

    # ---------------------------------------------------------------- paths
    def model_path(self, width: int) -> Path:
        return self.path / "models" / f"pw{width}.keras"

    def state_dir(self, width: int) -> Path:
        return self.path / "state" / f"pw{width}"

    def history_csv(self, width: int) -> Path:
        return self.path / "history" / f"pw{width}.csv"

    def status_path(self, width: int) -> Path:
        return self.path / "history" / f"pw{width}.json"

    def plot_path(self, width: int) -> Path:
        return self.path / "plots" / f"pw{width}_loss.png"

    def tensorboard_dir(self, width: int) -> Path:
        return self.path / "tensorboard" / f"pw{width}"

    # ---------------------------------------------------------------- status
    def status(self, width: int) -> WidthStatus | None:
        """The status of one width (``None`` if it was never started here)."""
        return _read_model(self.status_path(width), WidthStatus)

    def statuses(self) -> dict[int, WidthStatus]:
        """Status of every width that has one, by width."""
        found: dict[int, WidthStatus] = {}
        folder = self.path / "history"
        if not folder.is_dir():
            return found
        for file in sorted(folder.glob("pw*.json")):
            try:
                width = int(file.stem[2:])
            except ValueError:
                continue
            status = _read_model(file, WidthStatus)
            if status is not None:
                found[width] = status
        return found

    def write_status(self, width: int, status: WidthStatus | dict[str, Any]) -> None:
        """Write one width's status, then refresh ``manifest.json`` from all statuses."""
        if isinstance(status, dict):
            status = WidthStatus.model_validate(status)
        status = status.model_copy(update={"width": width, "updated": _now()})
        write_json(self.status_path(width), status.to_json())
        self.write_manifest()

    def finished_widths(self) -> list[int]:
        """Widths whose final model is saved, ascending."""
        return sorted(
            width
            for width, status in self.statuses().items()
            if status.status == "finished" and self.model_path(width).is_file()
        )

    def val_score(self, width: int) -> float | None:
        """The final validation water IoU of a width (``None`` without validation)."""
        status = self.status(width)
        score = status.final_val_water_iou if status is not None else None
        return None if score is None else float(score)

    @property
    def manifest(self) -> Manifest:
        """The manifest as of now, rebuilt from the per-width status files."""
        statuses = self.statuses()
        fingerprints = sorted({s.data_fingerprint for s in statuses.values()
                               if s.data_fingerprint})
        backends = sorted({s.backend or "tensorflow" for s in statuses.values()})
        return Manifest(
            format=MANIFEST_FORMAT,
            updated=_now(),
            config=CONFIG_NAME,
            widths={str(w): statuses[w] for w in sorted(statuses)},
            finished_widths=self.finished_widths(),
            data_fingerprint=fingerprints[0] if len(fingerprints) == 1 else fingerprints,
            backend=backends[0] if len(backends) == 1 else (backends or None),
            versions=versions(),
        )

    def write_manifest(self) -> None:
        """Rewrite ``manifest.json`` atomically (concurrent jobs: the last writer wins)."""
        write_json(self.path / MANIFEST_NAME, self.manifest.to_json())

    def data_fingerprint(self) -> str | None:
        """The data fingerprint recorded by the widths of this run (``None`` if none yet)."""
        for status in self.statuses().values():
            if status.data_fingerprint:
                return status.data_fingerprint
        return None

    # ---------------------------------------------------------------- checkpoints
    def read_state(self, width: int) -> CheckpointState | None:
        """The last good checkpoint record of an unfinished width, if its file exists."""
        state = _read_model(self.state_dir(width) / "state.json", CheckpointState)
        if state is None:
            return None
        checkpoint = self.state_dir(width) / state.checkpoint
        if not state.checkpoint or not checkpoint.is_file():
            log.warning("%s: checkpoint %s is missing; width %d starts again",
                        self.path, checkpoint.name, width)
            return None
        state.checkpoint_path = str(checkpoint)
        return state

    def write_state(self, width: int, state: CheckpointState) -> None:
        """Record a new checkpoint, then delete older checkpoint files of that width.

        The checkpoint file must already be complete: the record is written second, so a kill
        between the two leaves the previous record pointing at the previous (kept) file.
        """
        folder = self.state_dir(width)
        write_json(folder / "state.json", state.to_json())
        for old in folder.glob("ckpt-*.keras"):
            if old.name != state.checkpoint:
                old.unlink(missing_ok=True)

    def write_history(self, width: int, rows: list[dict[str, Any]]) -> None:
        """Rewrite the history CSV of a width from its rows."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in HISTORY_FIELDS})
        write_text(self.history_csv(width), buffer.getvalue())

    def read_history(self, width: int) -> list[dict[str, float | None]]:
        """The history CSV of a width as rows of floats (empty cells are ``None``)."""
        path = self.history_csv(width)
        if not path.is_file():
            return []
        with path.open(encoding="utf-8", newline="") as handle:
            return [
                {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(handle)
            ]

    def clear_width(self, width: int) -> None:
        """Remove every file of one width (``--overwrite`` with ``--patch-width``)."""
        for path in (self.model_path(width), self.history_csv(width), self.status_path(width),
                     self.plot_path(width)):
            path.unlink(missing_ok=True)
        for folder in (self.state_dir(width), self.tensorboard_dir(width)):
            shutil.rmtree(folder, ignore_errors=True)

    # ---------------------------------------------------------------- models
    def load_model(self, width: int):
        """Load the finished model of ``width`` (``safe_mode=True``).

        Raises:
            RunError: the width is not finished in this run, or its file cannot be read.
        """
        path = self.model_path(width)
        if width not in self.finished_widths():
            have = ", ".join(map(str, self.finished_widths())) or "none"
            raise RunError(f"{self.path}: no finished model for patch width {width} "
                           f"(finished widths: {have})")
        import zipfile

        import keras

        import segmenter.model.losses  # noqa: F401  (registers the custom loss)
        import segmenter.model.network  # noqa: F401  (registers the custom layers)

        if path.is_file() and not zipfile.is_zipfile(path):
            # Keras calls any file it cannot open "File not found": this one exists.
            size = path.stat().st_size
            raise RunError(f"{path}: model file is corrupt ({size} bytes, not a .keras "
                           "archive); train this width again (--overwrite --patch-width)")
        try:
            return keras.saving.load_model(path, compile=False, safe_mode=True)
        except TypeError as exc:  # Keras: a class it cannot rebuild (not registered here)
            unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", str(exc))
            what = unknown.group(1) if unknown else None
            for name in re.findall(r"'registered_name': '([^']+)'", str(exc)):
                if what and name.rsplit(">", 1)[-1] == what:
                    what = name  # with its package: where it came from
            reason = (f"it uses {what}, which this segmenter does not define" if what else
                      "a part of it could not be rebuilt")
            raise RunError(f"{path}: cannot load the model: {reason} (was it saved by another "
                           "program or a newer segmenter?)") from exc
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            if path.is_file():
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise RunError(f"{path}: model file is corrupt or unreadable "
                               f"({type(exc).__name__}: {first})") from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"{path}: cannot load model ({first})") from exc


def open_run(path: str | Path) -> Run:
    """Open an existing run directory for reading.

    Raises:
        RunError: the folder or its ``config.yaml`` is missing or invalid.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: run directory not found")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise RunError(f"{path}: not a segmenter run (no {CONFIG_NAME})")
    try:
        config = load_config(config_file)
    except SegmenterError as exc:
        raise RunError(f"{path}: saved config is invalid: {exc}") from None
    return Run(path, config)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable run file ({exc})") from None
    return data if isinstance(data, dict) else None


_Model = TypeVar("_Model", bound=BaseModel)


def _read_model(path: Path, model: type[_Model]) -> _Model | None:
    """A run file as its typed record (``None`` if absent); a malformed one is named."""
    data = read_json(path)
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        raise RunError(f"{path}: unreadable run file ({where}: {first['msg']})") from None


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
