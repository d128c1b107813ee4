"""``segmenter predict`` on a Dask cluster.

The engine is Dask's (``dask.distributed``): ``predict.scheduler`` (or ``--scheduler``) is a
scheduler address (``tcp://HOST:8786``) or ``local:N``, a ``LocalCluster`` of N worker
processes with one thread each. What the output folder holds (stems, ``--overwrite`` /
``--skip-existing``, records, the summary) is :mod:`segmenter.jobs`', as on one process.

Units of work:

* a photo: one task (decode, predict, write its outputs); the client commits its record;
* a raster (GeoTIFF / COG): pass 1 is one task per tile with its halo
  (:func:`segmenter.mosaic.tile_pass1`), each returning its probabilities and its share of
  the GMM subsample (drawn on the raster's own pixel grid); the client writes the probability
  raster, fits the Gaussian mixture *once* on the subsample of all tiles, and pass 2 is one
  task per tile assigning its pixels (:func:`segmenter.mosaic.tile_pass2`), fed with its
  pass-1 result where it already sits on the cluster. The client writes the COGs.

Each worker loads a run's models once and keeps them (:data:`_MODELS`, keyed by run and
widths); a run at a URL is copied once into the worker's cache. A task that fails on a bad
input becomes that input's failure line; a worker that dies has its tasks rerun elsewhere by
Dask (a task that kills three workers is given up).

Dask moves task arguments and results with its own serialisation (pickle between trusted
processes of one job); nothing pickled is ever written to disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from segmenter.config import Config
from segmenter.errors import ConfigError, RunError, SegmenterError

log = logging.getLogger(__name__)

#: seconds to wait for a scheduler to answer before giving up.
CONNECT_TIMEOUT_S = 5
#: seconds to wait for the first worker of a remote scheduler.
WORKER_WAIT_S = 60
#: rasters whose tiles are in flight at once (each holds scratch GeoTIFFs on the client).
ACTIVE_RASTERS = 2
#: local:N starts at most this many worker processes per core.
LOCAL_WORKERS_PER_CORE = 4
#: environment of LocalCluster workers: one thread each, so N workers use N cores.
WORKER_ENV = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


class WorkerRunError(RunError):
    """A worker cannot read the run: the whole job stops (every task would fail alike)."""


def require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "predict.scheduler: predicting on a Dask cluster needs dask.distributed: "
            "pip install 'segmenter[cluster]'"
        ) from None
    return distributed


def parse_scheduler(value: str) -> tuple[str, Any]:
    """``("local", N)`` for ``local:N`` / ``local``, else ``("address", tcp://HOST:PORT)``."""
    text = value.strip()
    match = re.fullmatch(r"local(?::(\d+))?", text)
    if match:
        cores = os.cpu_count() or 1
        count = int(match.group(1)) if match.group(1) else cores
        most = LOCAL_WORKERS_PER_CORE * cores
        if not 1 <= count <= most:
            raise ConfigError(
                f"predict.scheduler: '{value}': local:N needs 1 <= N <= {most} "
                f"({LOCAL_WORKERS_PER_CORE} per core of this machine's {cores}: each worker "
                "is a process holding the run's models)")
        return "local", count
    if re.fullmatch(r"(tcp|tls|ws|wss|ucx)://[^\s/:]+(:\d+)?/?", text):
        return "address", text.rstrip("/")
    if re.fullmatch(r"[^\s/:]+:\d+", text):
        return "address", "tcp://" + text
    raise ConfigError(
        f"predict.scheduler: '{value}' is not a scheduler address "
        "(expected tcp://HOST:8786, HOST:8786 or local:N)"
    )


def start_local_cluster(workers: int, **kwargs: Any) -> Any:
    """A ``LocalCluster`` of ``workers`` processes, one thread each, quiet."""
    distributed = require_distributed()
    options = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
               "silence_logs": logging.CRITICAL, "env": dict(WORKER_ENV)}
    options.update(kwargs)
    # Ctrl-C is the client's to handle (it cancels the job and closes the cluster): worker
    # processes started while SIGINT is ignored inherit that, and Python leaves an inherited
    # SIG_IGN alone, so they print no tracebacks of their own.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        return distributed.LocalCluster(**options)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A Dask client for ``scheduler`` (starting and stopping a LocalCluster for local:N).

    Raises:
        SegmenterError: the scheduler does not answer within :data:`CONNECT_TIMEOUT_S`, or
            has no worker within :data:`WORKER_WAIT_S`.
    """
    distributed = require_distributed()
    if not logging.getLogger("segmenter").isEnabledFor(logging.DEBUG):
        for name in ("distributed", "tornado", "bokeh"):
            logging.getLogger(name).setLevel(logging.ERROR)
    kind, value = parse_scheduler(scheduler)
    cluster = None
    if kind == "local":
        cluster = start_local_cluster(value)
        client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(value, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise SegmenterError(
                f"predict.scheduler: cannot reach the Dask scheduler at {value} within "
                f"{CONNECT_TIMEOUT_S} s (is `dask scheduler` running there and the port "
                f"open?) ({type(exc).__name__})"
            ) from None
    try:
        if kind == "address":
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except (TimeoutError, OSError):
                raise SegmenterError(
                    f"predict.scheduler: the Dask scheduler at {value} has no worker after "
                    f"{WORKER_WAIT_S} s (start some with `dask worker {value}`)"
                ) from None
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def dashboard(client: Any) -> str | None:
    """The dashboard's address, when the scheduler serves one (it needs bokeh)."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001 - a missing dashboard is no reason to stop
        return None
    return client.dashboard_link if "dashboard" in services else None


# --------------------------------------------------------------------------------------------
# Worker side: state kept per process, tasks


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
        from segmenter import predictor
        from segmenter.outputs_fs import fetch_run, is_url
        from segmenter.runs import open_run
        from segmenter.tfenv import start_tensorflow

        try:
            local = fetch_run(job["run"], cfg.data) if is_url(job["run"]) else job["run"]
            run = open_run(local)
            start_tensorflow()
            loaded = predictor.load_models(run, cfg)
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
    from segmenter.outputs_fs import open_output

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
    :class:`segmenter.jobs.TaskError` (its traceback logged on the worker at debug level)."""

    @functools.wraps(task)
    def run(*args: Any) -> Any:
        from segmenter.jobs import TaskError

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
    from segmenter import predictor
    from segmenter.data.storage import PhotoRef

    cfg = _config(job)
    loaded = worker_models(job, cfg)
    output = _output(job["out"], cfg)
    photo = PhotoRef(name=ref["name"], path=ref["path"], storage=_storage(ref["folder"], cfg),
                     relpath=ref["relpath"])
    with output.staging() as folder:
        record, line, failure = predictor.predict_one(photo, stem, loaded, cfg, folder)
        if failure is None:
            output.publish(folder, list(record["outputs"].values()))
            record["worker"] = worker_name()
    return record, line, failure


@_portable
def tile_probs_task(job: dict[str, Any], location: str, plan: Any, tile: Any, rate: float,
                    prob_nodata: float | None) -> Any:
    """Pass 1 of one raster tile (:func:`segmenter.mosaic.tile_pass1`). Runs on a worker."""
    from segmenter import mosaic
    from segmenter.inference import _merge_weights, select_models

    cfg = _config(job)
    loaded = worker_models(job, cfg)
    models = select_models(loaded.models, cfg)
    weights = _merge_weights(models, cfg.predict.merge, loaded.scores)
    with _task_raster(location, cfg) as raster:
        stats = _raster_statistics(job, location, models, raster, plan, cfg)
        return mosaic.tile_pass1(models, raster, plan, tile, cfg, weights, rate, prob_nodata,
                                 stats)


def _raster_statistics(job: dict[str, Any], location: str, models: Any, raster: Any,
                       plan: Any, cfg: Config) -> Any:
    """:func:`segmenter.mosaic.raster_statistics`, once per raster in this process."""
    if cfg.predict.adapt_norm <= 0:
        return None
    from segmenter import mosaic

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
    """Pass 2 of one raster tile (:func:`segmenter.mosaic.tile_pass2`). Runs on a worker."""
    from segmenter import mosaic

    cfg = _config(job)
    decision, mask_nodata, overview_index = shared
    with _task_raster(location, cfg) as raster:
        return mosaic.tile_pass2(raster, core, probs.water, decision, mask_nodata,
                                 overview_index)


# --------------------------------------------------------------------------------------------
# The engine: tasks on Dask


class DaskEngine:
    """Tasks on a Dask cluster, yielded as they complete."""

    def __init__(self, client: Any) -> None:
        import distributed

        self.client = client
        self.completed = distributed.as_completed(with_results=False)
        self.tags: dict[str, Any] = {}
        self.futures: dict[str, Any] = {}

    def submit(self, tag: Any, fn: Callable[..., Any], *args: Any) -> Any:
        future = self.client.submit(fn, *args, pure=False)
        self.tags[future.key] = tag
        self.futures[future.key] = future
        self.completed.add(future)
        return future

    def share(self, value: Any) -> Any:
        return self.client.scatter(value, broadcast=True, hash=False)

    def release(self, handles: list[Any]) -> None:
        """Forget these futures: Dask frees their results once nothing refers to them."""
        for future in handles:
            self.futures.pop(future.key, None)

    def __iter__(self) -> Iterator[tuple[Any, Any, BaseException | None]]:
        for future in self.completed:
            tag = self.tags.pop(future.key)
            if future.status == "finished":
                yield tag, future.result(), None
            elif future.status == "cancelled":
                continue
            else:
                yield tag, None, future.exception()
            if not isinstance(tag, tuple) or tag[0] != "probs":  # pass-1 results stay for pass 2
                self.futures.pop(future.key, None)

    def cancel(self) -> None:
        futures = list(self.futures.values())
        self.futures.clear()
        self.client.cancel(futures)

    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))


# --------------------------------------------------------------------------------------------
# The client: one job


@dataclasses.dataclass
class JobSummary:
    """What a job did, for the closing lines."""

    records: list[dict[str, Any]]
    failures: list[str]
    predicted: int
    skipped: int
    megapixels: float
    seconds: float
    workers: int
    dashboard: str | None = None


class _RasterRun:
    """Client-side state of one raster in flight."""

    def __init__(self, index: int, ref: Any, stem: str, location: str) -> None:
        self.index, self.ref, self.stem, self.location = index, ref, stem, location
        self.job: Any = None
        self.stack = contextlib.ExitStack()
        self.folder: Path | None = None
        self.probs: dict[int, Any] = {}
        self.pending = 0
        self.failed = False


def _ref_spec(ref: Any) -> dict[str, str]:
    storage = ref.storage
    folder = storage.url if storage.remote else storage.root
    return {"name": ref.name, "path": str(ref.path), "folder": folder, "relpath": ref.relpath}


def _raster_location(ref: Any) -> str:
    storage = getattr(ref, "storage", None)
    if storage is None:
        return str(ref.path)
    if storage.remote:
        return storage.display(ref.relpath)
    return os.path.join(storage.root, ref.relpath) if ref.relpath else storage.root


def run_job(plan: Any, cfg: Config, run_location: str, widths: list[int], *,
            vector: bool = False, report: Callable[[str], None] = lambda line: None,
            progress: Callable[[int], Any] | None = None,
            announce: Callable[[str], None] = lambda line: None) -> JobSummary:
    """Predict the inputs of ``plan`` on the Dask scheduler of ``cfg.predict.scheduler``.

    Args:
        plan: the call's :class:`segmenter.jobs.JobPlan` (output, stems, what is skipped).
        cfg: the effective config.
        run_location: the run directory as every worker can reach it (absolute path or URL).
        widths: the widths predicted with (for the summary).
        vector: rasters also get GeoJSON vectors.
        report: one line per input.
        progress: ``progress(total)`` returns a context manager with ``update(n)`` and a
            settable ``length`` (a click progress bar).
        announce: lines about the cluster (its dashboard).

    Raises:
        SegmenterError: a worker cannot read the run, the scheduler cannot be reached.
    """
    from segmenter import jobs, mosaic

    started = time.perf_counter()
    output, refs = plan.output, plan.refs
    job = {"run": run_location, "config": cfg.to_yaml(), "out": str(output)}
    records: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}

    with contextlib.ExitStack() as stack:
        client = stack.enter_context(connect(cfg.predict.scheduler))
        engine = DaskEngine(client)
        link = dashboard(client)
        announce(f"Dask scheduler {client.scheduler.address}, {engine.workers()} worker(s)"
                 + (f"; dashboard: {link}" if link else ""))
        photos = [(i, r, s) for i, r, s in plan.todo if not mosaic.is_raster_ref(r)]
        waiting = deque((i, r, s) for i, r, s in plan.todo if mosaic.is_raster_ref(r))
        bar = stack.enter_context(progress(len(photos))) if progress else None
        for index, ref, stem in photos:
            engine.submit(("photo", index), photo_task, job, _ref_spec(ref), stem)
        active: dict[int, _RasterRun] = {}

        def fail(index: int, exc: BaseException | str) -> None:
            ref, stem = refs[index], plan.stems[index]
            message = exc if isinstance(exc, str) else jobs.failure_message(ref, exc)
            failures[index] = message
            records[index] = jobs.failed_record(ref, stem, message)
            jobs.commit_failure(plan, records[index])
            report(f"FAILED {message}")

        def start_rasters() -> None:
            while waiting and len(active) < ACTIVE_RASTERS:
                index, ref, stem = waiting.popleft()
                state = _RasterRun(index, ref, stem, _raster_location(ref))
                try:
                    _open_raster(state, cfg, output, widths)
                except Exception as exc:  # noqa: BLE001 - that input's failure line
                    state.stack.close()
                    fail(index, exc)
                    continue
                tiling = dataclasses.replace(state.job.plan, tiles=[])
                for tile in state.job.plan.tiles:
                    state.probs[tile.index] = engine.submit(
                        ("probs", index, tile.index), tile_probs_task, job, state.location,
                        tiling, tile, state.job.rate, state.job.prob_nodata)
                state.pending = len(state.job.plan.tiles)
                if bar is not None:
                    bar.length += 2 * state.pending
                active[index] = state

        def raster_failed(state: _RasterRun, exc: BaseException) -> None:
            state.failed = True
            engine.release(list(state.probs.values()))
            state.probs.clear()
            state.stack.close()
            active.pop(state.index, None)
            fail(state.index, exc)

        start_rasters()
        try:
            for tag, result, error in engine:
                kind, index = tag[0], tag[1]
                if bar is not None:
                    bar.update(1)
                if isinstance(error, WorkerRunError):
                    raise error
                if kind == "photo":
                    if error is not None:
                        fail(index, error)
                        continue
                    record, line, failure = result
                    if failure is None:
                        try:
                            jobs.commit(plan, record)
                        except SegmenterError as exc:
                            fail(index, exc)
                            continue
                    else:
                        failures[index] = failure
                        jobs.commit_failure(plan, record)
                    records[index] = record
                    report(line)
                    continue
                state = active.get(index)
                if state is None or state.failed:
                    continue
                if error is not None:
                    raster_failed(state, error)
                    start_rasters()
                    continue
                tile = state.job.plan.tiles[tag[2]]
                try:
                    if kind == "probs":
                        state.job.add_probs(tile, result)
                        state.pending -= 1
                        if state.pending == 0:
                            decision = state.job.fit()
                            shared = engine.share((decision, state.job.mask_nodata,
                                                   state.job.overview_index))
                            for t in state.job.plan.tiles:
                                engine.submit(("mask", index, t.index), tile_mask_task, job,
                                              state.location, t.core, state.probs[t.index],
                                              shared)
                            state.pending = len(state.job.plan.tiles)
                    else:
                        state.job.add_mask(tile, result)
                        state.pending -= 1
                        if state.pending == 0:
                            engine.release(list(state.probs.values()))
                            state.probs.clear()
                            record, line = _finish_raster(state, plan, vector)
                            records[index] = record
                            active.pop(index, None)
                            report(line)
                            start_rasters()
                except Exception as exc:  # noqa: BLE001 - a bad raster fails alone
                    raster_failed(state, exc)
                    start_rasters()
        except BaseException:
            engine.cancel()
            for state in list(active.values()):
                state.stack.close()
            raise
        workers = engine.workers()

    mine = [records[i] for i in sorted(records)]
    jobs.write_summary(plan, mine, {
        "run": run_location,
        "widths": widths,
        "predict": cfg.predict.model_dump(mode="json"),
        "postprocess": cfg.postprocess.model_dump(mode="json"),
        "scale": cfg.data.scale,
        "workers": workers,
        "skipped": len(plan.done),
    })
    ok = [r for i, r in records.items() if i not in failures]
    megapixels = sum(r["size"][0] * r["size"][1] for r in ok if "size" in r) / 1e6
    return JobSummary(
        records=mine, failures=[failures[i] for i in sorted(failures)],
        predicted=len(ok), skipped=len(plan.done), megapixels=megapixels,
        seconds=time.perf_counter() - started, workers=workers, dashboard=link,
    )


def _open_raster(state: _RasterRun, cfg: Config, output: Any, widths: list[int]) -> None:
    from segmenter import mosaic

    state.folder = state.stack.enter_context(output.staging())
    state.job = state.stack.enter_context(mosaic.RasterJob(
        state.location, state.stem, widths, cfg, state.folder))


def _finish_raster(state: _RasterRun, plan: Any, vector: bool) -> tuple[dict[str, Any], str]:
    from segmenter import jobs, mosaic

    try:
        result = state.job.finish(vector)
        fields, line = mosaic.raster_fields(state.stem, result)
        record = jobs.raster_record(state.ref, state.stem, fields)
        plan.output.publish(state.folder, list(record["outputs"].values()))
        jobs.commit(plan, record)
    finally:
        state.stack.close()
    return record, line
