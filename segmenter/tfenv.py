"""Starting TensorFlow without its C++ start-up chatter.

TensorFlow prints oneDNN and CUDA-probe lines to file descriptor 2 while it imports and while it
first enumerates devices, before ``TF_CPP_MIN_LOG_LEVEL`` is honoured. Users asked for one clear
line per problem, so commands start TensorFlow here: its native stderr is silenced for those two
moments unless ``-v`` is given. Python exceptions still propagate untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
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
    """The Keras backend the commands will use, known without importing Keras (which would
    start that backend), as Keras itself chooses: ``KERAS_BACKEND``, else the ``backend`` of
    Keras' config file (``$KERAS_HOME/keras.json``, default ``~/.keras/keras.json``), else
    TensorFlow. Where TensorFlow is not installed and nothing else chose (Keras writes
    ``tensorflow`` into its config file on first use), the backend that is installed (JAX,
    then PyTorch) is chosen and put in ``KERAS_BACKEND``, so Keras starts on it rather than
    failing on the missing TensorFlow.
    """
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen:
        return chosen
    configured = _configured_backend()
    if configured and configured != "tensorflow":
        return configured
    if importlib.util.find_spec("tensorflow") is None:
        for name in ("jax", "torch"):
            if importlib.util.find_spec(name) is not None:
                os.environ["KERAS_BACKEND"] = name
                return name
    return "tensorflow"


def _configured_backend() -> str | None:
    """The ``backend`` of Keras' config file, if there is one that says."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as handle:
            backend = json.load(handle).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) and backend else None


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
