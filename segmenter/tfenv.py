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
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Send fd 2 to a temporary file; replay it only if the block fails.

    A fatal native abort (say, a CPU without the instructions TensorFlow was built for) then
    still explains itself, while a normal start stays quiet.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def keras_backend() -> str:
    """The Keras backend the commands will use (``KERAS_BACKEND``, TensorFlow by default),
    known without importing Keras (which would start that backend)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def start_tensorflow(verbose: bool | None = None) -> None:
    """Import TensorFlow and enumerate devices once; quietly unless ``verbose``. With another
    Keras backend (``KERAS_BACKEND=jax`` or ``torch``) only Keras is imported.

    ``verbose`` defaults to whether segmenter's logger shows debug messages (``-v``).
    """
    if verbose is None:
        verbose = logging.getLogger("segmenter").isEnabledFor(logging.DEBUG)
    if keras_backend() != "tensorflow":  # JAX or PyTorch: TensorFlow is not needed (nor installed)
        import keras

        log.debug("Keras %s on %s", keras.__version__, keras.backend.backend())
        return
    if "tensorflow" in sys.modules and not verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    context = contextlib.nullcontext() if verbose else native_stderr_captured()
    with context:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    log.debug("TensorFlow %s, %d GPU(s) visible", tf.__version__, len(gpus))


def gpu_count() -> int:
    """GPUs the Keras backend in use can see (TensorFlow, JAX or PyTorch)."""
    backend = keras_backend()
    if backend == "jax":
        import jax

        return sum(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))
