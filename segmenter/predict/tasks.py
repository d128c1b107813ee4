"""The worker side of a Dask job: state kept per worker process, and the tasks.

Each worker loads a run's models once and keeps them (:data:`_MODELS`, keyed by run and
widths); a run at a URL is copied once into the worker's cache. Tasks: a photo
(:func:`photo_task`), pass 1 and pass 2 of a raster tile (:func:`tile_probs_task`,
:func:`tile_mask_task`). A task's failure reaches the client as one line (:func:`_portable`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from segmenter.config import Config
from segmenter.errors import RunError, SegmenterError

if TYPE_CHECKING:
    from segmenter.predict.mosaic import MosaicPlan, TilePlan

log = logging.getLogger(__name__)


class WorkerRunError(RunError):
    """A worker cannot read the run: the whole job stops (every task would fail alike)."""


_LOCK = threading.Lock()
#: (run location, widths asked) -> LoadedModels: each worker loads a run's models once.
_MODELS: dict[tuple[str, tuple[int, ...]], Any] = {}
#: per thread: (local raster path, data section) -> open raster (GDAL handles are per thread).
_RASTERS = threading.local()
#: (photo folder URL, data section) -> Storage.
_STORAGES: dict[tuple[str, str], Any] = {}
#: (output location, data section) -> Output.
_OUTPUTS: dict[tuple[str, str], Any] = {}
#: rasters kept open per thread.
OPEN_RASTERS = 4
#: (run, raster location, config) -> the raster's BatchNorm statistics (predict.adapt_norm),
#: the last OPEN_RASTERS rasters; computed once per process, the same on every worker.
_STATS: OrderedDict = OrderedDict()
_STATS_LOCK = threading.Lock()


def worker_name() -> str:
    """This worker's address, or ``this process`` outside a Dask worker."""
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return "this process"


_CONFIGS: dict[str, Config] = {}


def _config(job: dict[str, Any]) -> Config:
    """The job's config, sent as YAML (it round-trips exactly, integer keys included)."""
    text = job["config"]
    if text not in _CONFIGS:
        import yaml

        _CONFIGS[text] = Config.model_validate(yaml.safe_load(text))
    return _CONFIGS[text]


def worker_models(job: dict[str, Any], cfg: Config) -> Any:
    """The run's models for this job, loaded once per process.

    Raises:
        WorkerRunError: naming this worker and the run path when the run cannot be read here.
    """
    key = (job["run"], tuple(cfg.predict.widths or ()))
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        from segmenter.data.remote import fetch_run, is_url
        from segmenter.predict import models
        from segmenter.runs import open_run
        from segmenter.tfenv import start_tensorflow

        try:
            local = fetch_run(job["run"], cfg.data) if is_url(job["run"]) else job["run"]
            run = open_run(local)
            start_tensorflow()
            loaded = models.load_models(run, cfg)
        except SegmenterError as exc:
            raise WorkerRunError(
                f"{worker_name()} cannot read the run directory {job['run']}: {exc}"
            ) from None
        _MODELS[key] = loaded
        log.debug("%s: loaded widths %s of %s", worker_name(), sorted(loaded.models),
                  job["run"])
        return loaded


def _per_process(cache: dict, opener: Any, location: str, cfg: Config) -> Any:
    """``opener(location, cfg.data)``, opened once per process for each location and data
    settings (stores and output folders hold connections worth keeping)."""
    key = (location, cfg.data.model_dump_json())
    with _LOCK:
        if key not in cache:
            cache[key] = opener(location, cfg.data)
        return cache[key]


def _storage(url: str, cfg: Config) -> Any:
    from segmenter.data.storage import open_storage

    return _per_process(_STORAGES, open_storage, url, cfg)


def _output(location: str, cfg: Config) -> Any:
    from segmenter.outputs.store import open_output

    return _per_process(_OUTPUTS, open_output, location, cfg)


@contextlib.contextmanager
def _task_raster(location: str, cfg: Config) -> Iterator[Any]:
    """The raster at ``location``, for one task.

    A local file is opened once per thread and kept (:func:`_raster`). One read through a
    Python file opener (``s3://``) is opened for the task and closed after it: rasterio keeps
    such an opener in a context variable of the code that opened the raster, and Dask runs
    each task in a context of its own, so a kept one failed in the next task ("'cell' object
    has no attribute 'seek'", tiles called truncated) and printed GDAL "I/O error" lines and a
    ContextVar traceback when the worker exited.
    """
    from segmenter.data.raster import open_raster
    from segmenter.data.storage import is_s3

    if is_s3(location):
        with open_raster(location, cfg.data) as raster:
            yield raster
    else:
        yield _raster(location, cfg)


def _raster(location: str, cfg: Config) -> Any:
    from segmenter.data.raster import open_raster

    cache = getattr(_RASTERS, "open", None)
    if cache is None:
        cache = _RASTERS.open = OrderedDict()
    key = (location, cfg.data.model_dump_json())
    if key in cache:
        cache.move_to_end(key)
        return cache[key][1]
    opener = open_raster(location, cfg.data)
    raster = opener.__enter__()
    cache[key] = (opener, raster)
    while len(cache) > OPEN_RASTERS:
        _, (old, _) = cache.popitem(last=False)
        old.__exit__(None, None, None)
    return raster


def _portable(task: Callable[..., Any]) -> Callable[..., Any]:
    """A task whose failure reaches the client as one line: a bad input's
    :class:`SegmenterError` as itself without the chain of library exceptions behind it (which
    Dask may fail to unpickle, showing ``Exception: DataError(...)``), anything else as a
    :class:`segmenter.predict.jobs.TaskError` (its traceback logged on the worker at debug
    level)."""

    @functools.wraps(task)
    def run(*args: Any) -> Any:
        from segmenter.predict.jobs import TaskError

        failure: Exception
        try:
            return task(*args)
        except SegmenterError as exc:
            failure = type(exc)(*exc.args)
        except Exception as exc:  # noqa: BLE001 - reported per input by the client
            log.debug("%s: task %s failed", worker_name(), task.__name__, exc_info=exc)
            failure = TaskError(type(exc).__name__, str(exc))
        raise failure  # outside the handler: nothing chained

    return run


@_portable
def photo_task(job: dict[str, Any], ref: dict[str, str], stem: str
               ) -> tuple[dict[str, Any], str, str | None]:
    """Predict one photo into the output (its record is the client's to commit). Runs on a
    worker."""
    from segmenter.data.storage import PhotoRef
    from segmenter.predict import local

    cfg = _config(job)
    loaded = worker_models(job, cfg)
    output = _output(job["out"], cfg)
    photo = PhotoRef(name=ref["name"], path=ref["path"], storage=_storage(ref["folder"], cfg),
                     relpath=ref["relpath"])
    with output.staging() as folder:
        record, line, failure = local.predict_one(photo, stem, loaded, cfg, folder)
        if failure is None:
            output.publish(folder, list(record["outputs"].values()))
            record["worker"] = worker_name()
    return record, line, failure


@_portable
def tile_probs_task(job: dict[str, Any], location: str, plan: MosaicPlan, tile: TilePlan,
                    rate: float, prob_nodata: float | None) -> Any:
    """Pass 1 of one raster tile (:func:`segmenter.predict.mosaic.tile_pass1`). Runs on a worker."""
    from segmenter.predict import mosaic
    from segmenter.predict.models import select_models
    from segmenter.predict.stitch import merge_weights as _merge_weights

    cfg = _config(job)
    loaded = worker_models(job, cfg)
    models = select_models(loaded.models, cfg)
    weights = _merge_weights(models, cfg.predict.merge, loaded.scores)
    with _task_raster(location, cfg) as raster:
        stats = _raster_statistics(job, location, models, raster, plan, cfg)
        return mosaic.tile_pass1(models, raster, plan, tile, cfg, weights, rate, prob_nodata,
                                 stats)


def _raster_statistics(job: dict[str, Any], location: str, models: Any, raster: Any,
                       plan: MosaicPlan, cfg: Config) -> Any:
    """:func:`segmenter.predict.mosaic.raster_statistics`, once per raster in this process."""
    if cfg.predict.adapt_norm <= 0:
        return None
    from segmenter.predict import mosaic

    key = (job["run"], location, job["config"])
    with _STATS_LOCK:
        if key in _STATS:
            _STATS.move_to_end(key)
            return _STATS[key]
        stats = _STATS[key] = mosaic.raster_statistics(models, raster, plan, cfg)
        while len(_STATS) > OPEN_RASTERS:
            _STATS.popitem(last=False)
        return stats


@_portable
def tile_mask_task(job: dict[str, Any], location: str, core: Any, probs: Any, shared: Any
                   ) -> Any:
    """Pass 2 of one raster tile (:func:`segmenter.predict.mosaic.tile_pass2`). Runs on a worker."""
    from segmenter.predict import mosaic

    cfg = _config(job)
    decision, mask_nodata, overview_index = shared
    with _task_raster(location, cfg) as raster:
        return mosaic.tile_pass2(raster, core, probs.water, decision, mask_nodata,
                                 overview_index)
