"""Choosing how training uses the devices, and the numeric precision.

``train.strategy`` on TensorFlow (``tf.distribute``):

- ``auto``: several workers in ``TF_CONFIG`` -> multi-worker; several GPUs -> mirrored over
  them; otherwise TensorFlow's default strategy (which already uses the one GPU, if any).
- ``default``: TensorFlow's default strategy (one device).
- ``mirrored``: ``MirroredStrategy`` over every GPU; on a machine without GPUs, over every
  logical CPU device (useful for tests, which split the CPU in two).
- ``multiworker``: ``MultiWorkerMirroredStrategy``; the cluster comes from ``TF_CONFIG``.

On JAX, ``auto`` with several GPUs and ``mirrored`` train data-parallel over the local devices
(``keras.distribution.DataParallel``: the weights replicated, each batch split); PyTorch trains
on one device. ``multiworker`` is TensorFlow's and is refused on the others.

The global batch is always the config's batch size: each batch is split across replicas, so
results do not depend on how many devices there are. ``MultiWorkerMirroredStrategy`` must be
created before TensorFlow runs any operation, so :func:`select_strategy` is the first thing
training does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from segmenter.config import TrainConfig
from segmenter.errors import ConfigError, SegmenterError

log = logging.getLogger(__name__)

__all__ = [
    "LocalDevices",
    "check_batch_sizes",
    "describe",
    "is_chief",
    "oom_message",
    "out_of_memory",
    "precision",
    "select_strategy",
    "tf_config_workers",
]


def tf_config_workers() -> int:
    """Number of tasks (chief + workers) in ``TF_CONFIG``; 0 when it is unset."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError("TF_CONFIG: not valid JSON with a 'cluster' mapping") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


class LocalDevices:
    """The devices of one process on JAX or PyTorch, with what training asks of a strategy:
    ``scope()`` (inside it, a JAX data-parallel distribution is in force) and
    ``num_replicas_in_sync``."""

    def __init__(self, devices: list[Any], data_parallel: bool) -> None:
        self.devices = devices
        self.distribution = None
        if data_parallel:
            import keras

            self.distribution = keras.distribution.DataParallel(devices=devices)

    @property
    def num_replicas_in_sync(self) -> int:
        return len(self.devices) if self.distribution is not None else 1

    def scope(self) -> Any:
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()


def select_strategy(train_cfg: TrainConfig):
    """The ``tf.distribute.Strategy`` for ``train.strategy`` (see the module docstring), or the
    :class:`LocalDevices` on JAX and PyTorch.

    Raises:
        ConfigError: ``multiworker`` without a ``TF_CONFIG`` cluster, or on another backend.
    """
    from segmenter.tfenv import keras_backend

    if keras_backend() != "tensorflow":
        return _local_devices(train_cfg, keras_backend())
    import tensorflow as tf

    choice = train_cfg.strategy
    workers = tf_config_workers()
    gpus = tf.config.list_physical_devices("GPU")
    if choice == "auto":
        if workers > 1:
            choice = "multiworker"
        elif len(gpus) > 1:
            choice = "mirrored"
        else:
            choice = "default"
    if choice == "multiworker":
        if workers < 1:
            raise ConfigError(
                "train.strategy: multiworker needs the cluster in the TF_CONFIG environment "
                "variable (see docs/gpus.md, 'Several machines')"
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _patch_keras_multiworker_reduce()
        return strategy
    if choice == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(cpus) < 2:
            log.warning("train.strategy: mirrored on a single CPU device (no GPU found)")
        return tf.distribute.MirroredStrategy(devices=cpus)
    return tf.distribute.get_strategy()


def _local_devices(train_cfg: TrainConfig, backend: str) -> LocalDevices:
    choice = train_cfg.strategy
    if choice == "multiworker" or (choice == "auto" and tf_config_workers() > 1):
        raise ConfigError(
            f"train.strategy: multi-worker training is TensorFlow's (tf.distribute); "
            f"KERAS_BACKEND={backend} trains on one machine (unset KERAS_BACKEND for a cluster)"
        )
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        devices = gpus or jax.devices()
        several = len(gpus) > 1 if choice == "auto" else choice == "mirrored"
        if choice == "mirrored" and len(devices) < 2:
            log.warning("train.strategy: mirrored on a single device")
        return LocalDevices(devices, data_parallel=several and len(devices) > 1)
    from segmenter.tfenv import gpu_count

    if choice == "mirrored" or gpu_count() > 1:
        log.warning("train.strategy: PyTorch trains on one device here (%d GPU(s) visible); "
                    "use KERAS_BACKEND=jax or tensorflow to train on several", gpu_count())
    return LocalDevices(["torch"], data_parallel=False)


def check_batch_sizes(strategy: Any, batch_sizes: dict[int, int]) -> None:
    """Refuse, on JAX and PyTorch, batch sizes that do not split evenly over the devices
    (JAX shards each batch evenly; ``tf.distribute`` splits unevenly, and training warns).

    Raises:
        ConfigError: naming the ``train.widths`` key.
    """
    replicas = strategy.num_replicas_in_sync
    for width, batch_size in batch_sizes.items():
        if batch_size % replicas and isinstance(strategy, LocalDevices):
            raise ConfigError(f"train.widths.{width}: batch size {batch_size} must be a multiple "
                              f"of the {replicas} devices that train it on JAX")


def out_of_memory(exc: BaseException) -> bool:
    """Out of memory on any backend: Python's MemoryError, TensorFlow's ResourceExhaustedError
    (CPU or GPU allocator), XLA's RESOURCE_EXHAUSTED on JAX, PyTorch's OutOfMemoryError."""
    if isinstance(exc, MemoryError):
        return True
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return type(exc).__name__ in {"XlaRuntimeError", "JaxRuntimeError"} and (
        "RESOURCE_EXHAUSTED" in str(exc))


def oom_message(width: int, batch_size: int) -> str:
    from segmenter.tfenv import gpu_count

    device = "GPU" if gpu_count() else "CPU"
    return (
        f"out of {device} memory training patch width {width} with batch size {batch_size}; "
        f"lower the batch size (train.widths.{width}) or the patch width"
    )


#: the Keras release the private-API workarounds below (and in training.py) were written for.
KERAS_TESTED = "3.15"


def require_keras_private(owner: Any, names: list[str], what: str) -> None:
    """Raise a one-line error when Keras lacks a private attribute a workaround replaces.

    The workarounds patch ``keras.src`` internals that a Keras release may rename or remove;
    without this check the failure would be an obscure ``AttributeError`` deep in ``fit`` (or
    worse, a patch that silently no longer applies).

    Raises:
        SegmenterError: naming the Keras version, the missing attributes and the fix.
    """
    import keras

    missing = [name for name in names if not hasattr(owner, name)]
    if missing:
        raise SegmenterError(
            f"Keras {keras.__version__} lacks {', '.join(missing)} (private API), which the "
            f"{what} workaround replaces; it was written for Keras {KERAS_TESTED}: install "
            f"keras=={KERAS_TESTED}.* or use another train.strategy"
        )
    if not keras.__version__.startswith(KERAS_TESTED + ".") and (
        keras.__version__, what) not in _WARNED:
        _WARNED.add((keras.__version__, what))
        log.warning("Keras %s is not the tested release (%s): the %s workaround patches its "
                    "private API and may misbehave; install keras==%s.* if training fails",
                    keras.__version__, KERAS_TESTED, what, KERAS_TESTED)


_WARNED: set[tuple[str, str]] = set()


def _patch_keras_multiworker_reduce() -> None:
    """Work around Keras 3.15 ``fit`` under MultiWorkerMirroredStrategy (checked: 3.15.1).

    Keras averages each train step's logs across workers with ``strategy.reduce("MEAN", v,
    axis=0)``, which fails on the scalar loss ("Invalid reduction dimension 0 for input with 0
    dimensions"), so no multi-worker ``fit`` can run. The logs are scalars: their mean over
    replicas is ``axis=None``. Only that branch is replaced; everything else is Keras' own.
    """
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        tf_trainer = None
    require_keras_private(tf_trainer, ["reduce_per_replica", "_collective_all_reduce_multi_worker"],
                          "multi-worker log reduction")
    original = tf_trainer.reduce_per_replica
    if getattr(original, "_segmenter_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):
            import tensorflow as tf

            return tf.nest.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return original(values, strategy, reduction)

    reduce_per_replica._segmenter_patched = True  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica


def is_chief(strategy: Any) -> bool:
    """Whether this process writes the run directory (only one worker of a cluster does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def describe(strategy: Any) -> str:
    """One phrase for the log: strategy name, replicas, and the devices in use."""
    import keras

    from segmenter.tfenv import gpu_count

    gpus = gpu_count()
    device = f"{gpus} GPU(s)" if gpus else "CPU"
    replicas = strategy.num_replicas_in_sync
    name = type(strategy).__name__
    if isinstance(strategy, LocalDevices):
        name = "DataParallel" if strategy.distribution is not None else "one device"
    return f"{name} with {replicas} replica(s) on {device}, Keras backend {keras.backend.backend()}"


@contextlib.contextmanager
def precision(train_cfg: TrainConfig) -> Iterator[str]:
    """Use ``mixed_float16`` inside the block when ``train.mixed_precision`` is on.

    The model's output layer stays float32 (see :mod:`segmenter.model`). The previous global
    policy is restored afterwards, so a saved model and later code run in float32.
    """
    import keras

    from segmenter.tfenv import gpu_count

    previous = keras.config.dtype_policy().name
    name = "mixed_float16" if train_cfg.mixed_precision else "float32"
    if train_cfg.mixed_precision and not gpu_count():
        log.warning("train.mixed_precision: no GPU found; float16 on a CPU is usually slower")
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)


def avoid_multiworker_build_reduce(model: Any, strategy: Any, width: int,
                                    batch_size: int) -> None:
    """Work around Keras 3.15 ``fit`` failing at once under MultiWorkerMirroredStrategy.

    Before training, Keras builds the model symbolically from a first batch that it averages
    across workers with ``strategy.reduce`` on the ``(x, y)`` tuple, which the collective
    all-reduce cannot take ("Attempt to convert a value (PerReplica ...)"). Only shapes and
    dtypes matter for that build, so a local example batch is used instead.
    """
    if type(strategy).__name__ not in {"CollectiveAllReduceStrategy",
                                       "MultiWorkerMirroredStrategy"}:
        return
    require_keras_private(model, ["_maybe_symbolic_build", "_symbolic_build"],
                          "multi-worker model build")
    import numpy as np

    from segmenter.model.introspect import input_channels

    channels = input_channels(model)  # 3, or 4 with the row channel
    example = (np.zeros((batch_size, width, width, channels), np.float32),
               np.zeros((batch_size, width, width, 1), np.float32))

    def build_locally(iterator: Any = None, data_batch: Any = None) -> None:
        with strategy.scope():
            model._symbolic_build(data_batch=example)

    model._maybe_symbolic_build = build_locally
