"""What a training job will do with its run directory, checked before any work.

:class:`RunPlan` (``--out``, the widths, ``--resume``, ``--overwrite``, ``--patch-width``) is
checked against what the folder holds (:meth:`RunPlan.check` -> :class:`CheckedRun`), then
applied (:func:`prepare_run`): a new run, a resumed one, one overwritten (only the files
training owns, :data:`segmenter.runs.TRAINING_OWNED`), or widths joining a run.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from segmenter.config import Config, load_config
from segmenter.errors import RunError
from segmenter.fileio import ensure_writable, write_text
from segmenter.runs import (
    CONFIG_NAME,
    TRAINING_OWNED,
    Run,
    config_differences,
    open_run,
)
from segmenter.runstate import WidthStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What a training job means to do with its run directory: ``--out``, the widths it
    trains, ``--resume``, ``--overwrite`` and ``--patch-width``.

    :meth:`check` applies every rule and changes nothing on disk; the :class:`CheckedRun` it
    returns is applied later (:meth:`CheckedRun.apply`). ``train`` checks first, loads and
    validates the data, and only then applies, so a data error never leaves an overwritten
    run deleted.

    Attributes:
        path: the run directory.
        config: the resolved config of this job.
        widths: the widths this job trains.
        resume: continue unfinished widths (the config must be compatible).
        overwrite: start the run (or, when ``partial``, only ``widths``) again.
        partial: the widths were chosen with ``--patch-width``: the job may join a run with a
            compatible config when none of its widths was started there.
        write: write the run directory (False on non-chief workers of a multi-worker job).
    """

    path: Path
    config: Config
    widths: list[int] = field(default_factory=list)
    resume: bool = False
    overwrite: bool = False
    partial: bool = False
    write: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def check(self) -> CheckedRun:
        """Apply the rules; nothing on disk changes.

        Rules: a new or empty folder is created. An existing run is refused unless ``resume``
        or ``overwrite``; a ``partial`` job may join a compatible run when none of its widths
        was started there, and ``overwrite`` then clears only those widths.

        Raises:
            RunError: the folder exists and may not be reused, holds something else, or there
                is nothing to resume.
        """
        path = self.path
        if self.resume and self.overwrite:
            raise RunError("--resume and --overwrite cannot be used together")
        if not self.write:
            # A non-chief worker of a multi-worker job: the chief alone checks and writes the
            # run directory (checking here too would race with the chief creating it).
            return CheckedRun(self, "follow")
        exists = path.exists()
        if exists and not path.is_dir():
            raise RunError(f"{path}: exists and is not a directory")
        non_empty = exists and any(path.iterdir())
        is_run = (path / CONFIG_NAME).is_file()
        if non_empty and not is_run:
            raise RunError(
                f"{path}: folder is not empty and is not a segmenter run; choose another --out"
            )
        if self.resume and not is_run:
            where = "does not exist" if not exists else "holds no run (no config.yaml)"
            raise RunError(
                f"{path}: nothing to resume: the folder {where}; check --out, or drop --resume "
                "to start a new run"
            )
        if non_empty and self.overwrite and not self.partial:
            return CheckedRun(self, "restart")  # the old config need not even be valid
        if not is_run:
            return CheckedRun(self, "create")
        run = open_run(path)
        differing = config_differences(run.config, self.config, self.widths)
        started = [w for w in self.widths
                   if run.status(w) is not None or run.state_dir(w).exists()]
        if not self.resume and not self.partial and not self.overwrite:
            raise RunError(
                f"{path}: run exists; use --resume to continue it or --overwrite to start again"
            )
        if differing:
            action = "resume" if self.resume else "join"
            raise RunError(
                f"{path}: cannot {action} this run: config differs in "
                f"{', '.join(differing)} (use another --out, or --overwrite to start again)"
            )
        if self.resume:
            _check_backend(run, self.widths, cleared=self.widths if self.overwrite else ())
        if not self.resume and started and not self.overwrite:
            raise RunError(
                f"{path}: run exists (widths {', '.join(map(str, started))} already started); "
                f"use --resume to continue it or --overwrite to start again"
            )
        cleared = tuple(self.widths) if self.overwrite else ()
        return CheckedRun(self, "continue", existing=run, cleared=cleared)


def _check_backend(run: Run, widths: list[int], cleared: tuple[int, ...] = ()) -> None:
    """Refuse to resume a width from a checkpoint written on another Keras backend.

    A finished width is a portable ``.keras`` model, but an unfinished one continues from its
    optimiser's state and its step on the backend that started it (whose numbers it would
    otherwise not reproduce).
    """
    from segmenter.tfenv import keras_backend

    backend = keras_backend()
    for width in widths:
        status = run.status(width)
        if width in cleared or status is None or status.status == "finished":
            continue
        trained = status.backend or "tensorflow"
        if trained != backend:
            raise RunError(
                f"{run.path}: pw{width} was started on the {trained} backend and this is "
                f"{backend}; resume it with KERAS_BACKEND={trained}, or use another --out"
            )


@dataclass(frozen=True)
class CheckedRun:
    """A :class:`RunPlan` that passed its checks, and what applying it will do.

    Attributes:
        plan: the plan.
        action: ``create`` (a new run), ``restart`` (``--overwrite``: training's files go),
            ``continue`` (resume or join an existing run; ``cleared`` widths start again) or
            ``follow`` (a non-chief worker: the chief writes the run).
        existing: the run as it is on disk now (``None`` for a new one).
        cleared: widths whose files ``--overwrite --patch-width`` removes.
    """

    plan: RunPlan
    action: Literal["create", "restart", "continue", "follow"]
    existing: Run | None = None
    cleared: tuple[int, ...] = ()

    @property
    def path(self) -> Path:
        return self.plan.path

    def kept_statuses(self) -> dict[int, WidthStatus]:
        """The statuses that stay in the run once the plan is applied (whose data fingerprint
        a resuming or joining job must match)."""
        if self.existing is None or self.action == "restart":
            return {}
        return {w: st for w, st in self.existing.statuses().items() if w not in self.cleared}

    def fresh_widths(self) -> list[int]:
        """The widths whose training starts from new weights: all of them but those this run
        has finished (skipped) or, with ``--resume``, holds a checkpoint of (continued)."""
        run = self.existing
        if run is None or self.action != "continue":
            return list(self.plan.widths)
        fresh = []
        for width in self.plan.widths:
            status = run.status(width)
            if width not in self.cleared and (
                (status is not None and status.status == "finished"
                 and run.model_path(width).is_file())
                or (self.plan.resume and run.read_state(width) is not None)
            ):
                continue
            fresh.append(width)
        return fresh

    def apply(self) -> Run:
        """Carry the plan out: clear what it clears, write ``config.yaml``; return the run.

        Raises:
            SegmenterError: the folder cannot be written.
        """
        plan, path = self.plan, self.plan.path
        if self.action == "follow":
            return Run(path, plan.config)
        if self.action == "continue":
            assert self.existing is not None
            for width in self.cleared:
                self.existing.clear_width(width)
            merged = _merge_widths(self.existing.config, plan.config)
            if merged.train.widths != run_config_widths(path):
                write_text(path / CONFIG_NAME, merged.to_yaml())
            return Run(path, merged)
        if self.action == "restart":
            clear_training_files(path)
        ensure_writable(path, RunError, "cannot create run directory")
        write_text(path / CONFIG_NAME, plan.config.to_yaml())
        return Run(path, plan.config)


def prepare_run(plan: RunPlan) -> Run:
    """Check ``plan``, then apply it: create, join, reopen or restart its run directory.

    Raises:
        RunError: see :meth:`RunPlan.check`.
        SegmenterError: the folder cannot be written.
    """
    return plan.check().apply()


def clear_training_files(path: Path) -> list[str]:
    """Remove what training wrote in ``path`` (``--overwrite``); return what was kept.

    Only :data:`TRAINING_OWNED` entries go: ``predictions/`` (predict's default output),
    ``evaluation/`` and anything a user put there stay, with a warning that they came from
    the models being replaced.
    """
    kept = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in path.iterdir()
                  if entry.name not in TRAINING_OWNED)
    for name in TRAINING_OWNED:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    if kept:
        log.warning("%s: --overwrite kept %s (not written by train; made with the old models)",
                    path, ", ".join(kept))
    return kept


def remove_stale_temporaries(run: Run, width: int) -> list[Path]:
    """Delete the hidden ``.*.tmp*`` files a kill -9 left while writing ``width``'s files.

    Only this width's (other widths may be written by another job at this moment).
    """
    patterns = [
        (run.state_dir(width), ".*.tmp*"),
        (run.model_path(width).parent, f".pw{width}.*.tmp*"),
        (run.history_csv(width).parent, f".pw{width}.*.tmp*"),
        (run.plot_path(width).parent, f".pw{width}_loss.*.tmp*"),
    ]
    removed = []
    for folder, pattern in patterns:
        if folder.is_dir():
            for stale in folder.glob(pattern):
                stale.unlink(missing_ok=True)
                removed.append(stale)
    if removed:
        log.debug("removed %d stale temporary file(s) of pw%d", len(removed), width)
    return removed


def run_config_widths(path: Path) -> dict[int, int]:
    """The ``train.widths`` of the config saved in a run directory."""
    return load_config(path / CONFIG_NAME).train.widths


def _merge_widths(saved: Config, current: Config) -> Config:
    """The saved config, extended with any widths this job adds (sorted by width)."""
    widths = dict(saved.train.widths)
    widths.update(current.train.widths)
    widths = dict(sorted(widths.items()))
    train = saved.train.model_copy(update={"widths": widths})
    return saved.model_copy(update={"train": train})
