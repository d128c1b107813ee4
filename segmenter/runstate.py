"""Typed run state: what a run directory and a prediction folder record, as pydantic models.

- :class:`WidthStatus`: ``RUN/history/pw<W>.json``, one per width (written by training).
- :class:`CheckpointState`: ``RUN/state/pw<W>/state.json``, the last good checkpoint.
- :class:`Manifest`: ``RUN/manifest.json``, rebuilt from the status files.
- :class:`PredictionRecord`: one photo's entry in ``predictions.json`` / ``.csv``.

The JSON files keep the field names they always had, so runs written by an older segmenter
still read; unknown fields are kept (a newer segmenter's additions survive a rewrite). A file
that does not match is reported as unreadable, naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CheckpointState", "Manifest", "PredictionRecord", "WidthStatus"]

WidthState = Literal["running", "finished", "failed", "interrupted"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk."""
        return self.model_dump(mode="json")


class WidthStatus(_Record):
    """Where one patch width of a run stands."""

    status: WidthState
    width: int | None = None
    steps_done: int = Field(0, ge=0, description="Steps of the last checkpoint (or all, when "
                            "finished).")
    steps: int | None = None
    batch_size: int | None = None
    final_loss: float | None = None
    final_val_loss: float | None = None
    final_val_water_iou: float | None = None
    seconds: float = 0.0
    #: :func:`segmenter.data.ontario.fingerprint`: a hash of the decoded pixels of every
    #: image and label, so ``--resume`` on other data (same names and sizes) is refused.
    data_fingerprint: str | None = None
    #: the Keras backend that trained it (``tensorflow``, ``jax`` or ``torch``); ``None`` in
    #: runs of older segmenter versions, which trained on TensorFlow.
    backend: str | None = None
    message: str | None = None
    updated: str | None = None


class CheckpointState(_Record):
    """The last good checkpoint of an unfinished width (written after its file is complete)."""

    step: int = Field(ge=0)
    checkpoint: str
    batch_size: int
    seconds: float = 0.0
    history: list[dict[str, Any]] = Field(default_factory=list)
    #: The checkpoint file's full path, filled in when read (not stored).
    checkpoint_path: str | None = Field(None, exclude=True)


class Manifest(_Record):
    """A run at a glance; rebuilt from the per-width status files after each change."""

    format: int
    updated: str
    config: str
    widths: dict[str, WidthStatus]
    finished_widths: list[int]
    #: One fingerprint when every width trained on the same data, else the list of them.
    data_fingerprint: str | list[str] | None = None
    #: the Keras backend of the widths (one, or the list when widths were trained on several).
    backend: str | list[str] | None = None
    versions: dict[str, str]


class PredictionRecord(_Record):
    """One photo (or raster) of a ``predict`` run: what was written, or why it failed.

    Raster predictions (:mod:`segmenter.predict.mosaic`) add their own fields (CRS, tiles...).
    """

    input: str
    stem: str
    #: ``pending``: a call has claimed the stem and not finished it (only in ``.records/``).
    status: Literal["ok", "failed", "pending"]
    #: the input's absolute path or URL: it keeps its stem in the folder by this.
    source: str | None = None
    error: str | None = None
    size: list[int] | None = None
    water_fraction: float | None = None
    method: str | None = None
    threshold: float | None = None
    threshold_revised: bool | None = None
    seconds: float | None = None
    gmm_seconds: float | None = None
    notes: list[str] | None = None
    coverage: Any = None
    outputs: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """Only the fields this record has (a failed photo has no size, no outputs)."""
        return self.model_dump(mode="json", exclude_unset=True)
