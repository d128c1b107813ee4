"""Ctrl-C during training: a request honoured at the next step, never swallowed."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("segmenter.training")


class CtrlC:
    """Turn the first Ctrl-C into a request that training honours at the next step.

    A ``KeyboardInterrupt`` raised inside TensorFlow's C++ (building the next width's model,
    inside ``fit``) could be swallowed, or surface as a ``SystemError``; a flag set by the
    handler is checked after every batch and between widths instead, so training stops within
    a step, writes the width's status as ``interrupted`` and keeps its last checkpoint. A
    second Ctrl-C raises at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after the current step (press again to stop at once)")


#: The Ctrl-C guard of the training in progress (None outside :func:`guard`).
_current: CtrlC | None = None


@contextlib.contextmanager
def guard() -> Iterator[CtrlC]:
    """Install the Ctrl-C handler for the training inside the ``with`` block."""
    global _current
    with CtrlC() as current:
        _current = current
        try:
            yield current
        finally:
            _current = None


def stop_requested() -> bool:
    """Whether Ctrl-C was pressed during the training in progress."""
    return _current is not None and _current.requested
