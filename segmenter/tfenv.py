"""Starting TensorFlow without its C++ start-up chatter.

TensorFlow prints oneDNN and CUDA-probe lines to file descriptor 2 while it imports and while it
first enumerates devices, before ``TF_CPP_MIN_LOG_LEVEL`` is honoured. Users asked for one clear
line per problem, so commands start TensorFlow here: its native stderr is silenced for those two
moments unless ``-v`` is given. Python exceptions still propagate untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and enumerate devices once; quietly unless ``verbose``."""
    if "tensorflow" in sys.modules and not verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    context = contextlib.nullcontext() if verbose else _native_stderr_silenced()
    with context:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    log.debug("TensorFlow %s, %d GPU(s) visible", tf.__version__, len(gpus))
