"""``segmenter predict`` beyond one process: a Dask cluster, outputs anywhere fsspec writes.

The engine is Dask's (``dask.distributed``): ``predict.scheduler`` (or ``--scheduler``) is a
scheduler address (``tcp://HOST:8786``) or ``local:N``, a ``LocalCluster`` of N worker
processes with one thread each. Without a scheduler the same job runs in this process (used
for ``--skip-existing`` and URL outputs on one machine).

Units of work:

* a photo: one task (decode, predict, write its outputs, then its record);
* a raster (GeoTIFF / COG): pass 1 is one task per tile with its halo
  (:func:`segmenter.mosaic.tile_pass1`), each returning its probabilities and its seeded share
  of the GMM subsample; the client writes the probability raster, fits the Gaussian mixture
  *once* on the subsample of all tiles (in tile order, so the fit is the one-process fit), and
  pass 2 is one task per tile assigning its pixels (:func:`segmenter.mosaic.tile_pass2`), fed
  with its pass-1 result where it already sits on the cluster. The client writes the COGs.

Each worker loads a run's models once and keeps them (:data:`_MODELS`, keyed by run and
widths); a run at a URL is copied once into the worker's cache. A task that fails on a bad
input becomes that input's failure line; a worker that dies has its tasks rerun elsewhere by
Dask (a task that kills three workers is given up). Records are keyed by stem, so nothing is
duplicated in ``predictions.csv``.

Dask moves task arguments and results with its own serialisation (pickle between trusted
processes of one job); nothing pickled is ever written to disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
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
        count = int(match.group(1)) if match.group(1) else (os.cpu_count() or 1)
        if count < 1:
            raise ConfigError(f"predict.scheduler: '{value}': local:N needs N >= 1")
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
    return distributed.LocalCluster(**options)


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
#: per thread: (raster location, data section) -> open raster (GDAL handles are per thread).
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


def photo_task(job: dict[str, Any], ref: dict[str, str], stem: str
               ) -> tuple[dict[str, Any], str, str | None]:
    """Predict one photo into the output, then write its record. Runs on a worker."""
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
            output.write_record(stem, record)
    return record, line, failure


def tile_probs_task(job: dict[str, Any], location: str, plan: Any, tile: Any, rate: float,
                    prob_nodata: float | None) -> Any:
    """Pass 1 of one raster tile (:func:`segmenter.mosaic.tile_pass1`). Runs on a worker."""
    from segmenter import mosaic
    from segmenter.inference import _merge_weights, select_models

    cfg = _config(job)
    loaded = worker_models(job, cfg)
    models = select_models(loaded.models, cfg)
    weights = _merge_weights(models, cfg.predict.merge, loaded.scores)
    raster = _raster(location, cfg)
    stats = _raster_statistics(job, location, models, raster, plan, cfg)
    return mosaic.tile_pass1(models, raster, plan, tile, cfg, weights, rate, prob_nodata, stats)


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


def tile_mask_task(job: dict[str, Any], location: str, core: Any, probs: Any, shared: Any
                   ) -> Any:
    """Pass 2 of one raster tile (:func:`segmenter.mosaic.tile_pass2`). Runs on a worker."""
    from segmenter import mosaic

    cfg = _config(job)
    decision, mask_nodata, overview_index = shared
    return mosaic.tile_pass2(_raster(location, cfg), core, probs.water, decision, mask_nodata,
                             overview_index)


# --------------------------------------------------------------------------------------------
# Engines: Dask, or this process


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


class _Done:
    """A task run in this process: its result."""

    def __init__(self) -> None:
        self.result: Any = None


class SerialEngine:
    """The same tasks, run one after the other in this process (no scheduler)."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Any, _Done, Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, tag: Any, fn: Callable[..., Any], *args: Any) -> _Done:
        handle = _Done()
        self.queue.append((tag, handle, fn, args))
        return handle

    def share(self, value: Any) -> Any:
        return value

    def release(self, handles: list[Any]) -> None:
        for handle in handles:
            handle.result = None

    def __iter__(self) -> Iterator[tuple[Any, Any, BaseException | None]]:
        while self.queue:
            tag, handle, fn, args = self.queue.popleft()
            args = tuple(a.result if isinstance(a, _Done) else a for a in args)
            try:
                handle.result = fn(*args)
            except WorkerRunError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported per input by the caller
                yield tag, None, exc
                continue
            yield tag, handle.result, None

    def cancel(self) -> None:
        self.queue.clear()

    def workers(self) -> int:
        return 1


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


def run_job(refs: list[Any], cfg: Config, run_location: str, out: str, widths: list[int], *,
            overwrite: bool = False, skip_existing: bool = False, vector: bool = False,
            report: Callable[[str], None] = lambda line: None,
            progress: Callable[[int], Any] | None = None,
            announce: Callable[[str], None] = lambda line: None) -> JobSummary:
    """Predict ``refs`` on the scheduler of ``cfg.predict.scheduler`` (or in this process).

    Args:
        refs: inputs from :func:`segmenter.data.storage.expand_inputs`.
        cfg: the effective config.
        run_location: the run directory as every worker can reach it (absolute path or URL).
        out: output folder or fsspec URL.
        widths: the widths predicted with (for the summary).
        overwrite: replace earlier predictions in ``out``.
        skip_existing: inputs whose outputs and record are in ``out`` are not predicted again.
        vector: rasters also get GeoJSON vectors.
        report: one line per input.
        progress: ``progress(total)`` returns a context manager with ``update(n)`` and a
            settable ``length`` (a click progress bar).
        announce: lines about the cluster (its dashboard).

    Raises:
        SegmenterError: the output cannot be written, earlier predictions would be replaced,
            a worker cannot read the run, the scheduler cannot be reached.
    """
    from segmenter import outputs
    from segmenter.outputs_fs import open_output

    started = time.perf_counter()
    output = open_output(out, cfg.data)
    stems = outputs.unique_stems([ref.name for ref in refs])
    done: dict[str, dict[str, Any]] = {}
    if skip_existing:
        done = output.finished(stems)
    else:
        existing = output.existing(stems)
        if existing and not overwrite:
            raise RunError(
                f"{out}: already holds predictions ({existing[0]}); pass --overwrite to replace "
                f"them, --skip-existing to predict only what is missing, or choose another --out"
            )
    output.probe({"run": run_location, "widths": widths, "inputs": len(refs),
                  "scheduler": cfg.predict.scheduler,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if overwrite:
        output.forget(stems)
    todo = [(i, ref, stem) for i, (ref, stem) in enumerate(zip(refs, stems, strict=True))
            if stem not in done]
    if done:
        report(f"{len(done)} input(s) already predicted in {out}: skipped")
    job = {"run": run_location, "config": cfg.to_yaml(), "out": out}
    records: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}

    scheduler = cfg.predict.scheduler
    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(connect(scheduler))
            engine: Any = DaskEngine(client)
            link = dashboard(client)
            announce(f"Dask scheduler {client.scheduler.address}, {engine.workers()} worker(s)"
                     + (f"; dashboard: {link}" if link else ""))
        else:
            engine, link = SerialEngine(), None
        from segmenter import mosaic

        photos = [(i, r, s) for i, r, s in todo if not mosaic.is_raster_ref(r)]
        waiting = deque((i, r, s) for i, r, s in todo if mosaic.is_raster_ref(r))
        bar = stack.enter_context(progress(len(photos))) if progress else None
        for index, ref, stem in photos:
            engine.submit(("photo", index), photo_task, job, _ref_spec(ref), stem)
        active: dict[int, _RasterRun] = {}

        def fail(index: int, ref: Any, stem: str, message: str) -> None:
            failures[index] = message
            records[index] = {"input": str(ref.path), "stem": stem, "status": "failed",
                              "error": message}
            report(f"FAILED {ref.path}: {message}")

        def start_rasters() -> None:
            while waiting and len(active) < ACTIVE_RASTERS:
                index, ref, stem = waiting.popleft()
                state = _RasterRun(index, ref, stem, _raster_location(ref))
                try:
                    _open_raster(state, cfg, output, widths)
                except SegmenterError as exc:
                    state.stack.close()
                    fail(index, ref, stem, str(exc))
                    continue
                plan = dataclasses.replace(state.job.plan, tiles=[])
                for tile in state.job.plan.tiles:
                    state.probs[tile.index] = engine.submit(
                        ("probs", index, tile.index), tile_probs_task, job, state.location,
                        plan, tile, state.job.rate, state.job.prob_nodata)
                state.pending = len(state.job.plan.tiles)
                if bar is not None:
                    bar.length += 2 * state.pending
                active[index] = state

        def raster_failed(state: _RasterRun, message: str) -> None:
            state.failed = True
            engine.release(list(state.probs.values()))
            state.probs.clear()
            state.stack.close()
            active.pop(state.index, None)
            fail(state.index, state.ref, state.stem, message)

        start_rasters()
        try:
            for tag, result, error in engine:
                kind, index = tag[0], tag[1]
                if bar is not None:
                    bar.update(1)
                if isinstance(error, WorkerRunError):
                    raise error
                if kind == "photo":
                    ref, stem = refs[index], stems[index]
                    if error is not None:
                        fail(index, ref, stem, _task_error(error))
                        continue
                    record, line, failure = result
                    records[index] = record
                    if failure is not None:
                        failures[index] = failure
                    report(line)
                    continue
                state = active.get(index)
                if state is None or state.failed:
                    continue
                if error is not None:
                    raster_failed(state, _task_error(error))
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
                            record, line = _finish_raster(state, output, vector)
                            records[index] = record
                            active.pop(index, None)
                            report(line)
                            start_rasters()
                except SegmenterError as exc:
                    raster_failed(state, str(exc))
                    start_rasters()
        except BaseException:
            engine.cancel()
            for state in list(active.values()):
                state.stack.close()
            raise
        workers = engine.workers()

    merged: list[dict[str, Any]] = []
    for i, stem in enumerate(stems):
        if stem in done:
            merged.append({**done[stem], "input": str(refs[i].path), "skipped": True})
        elif i in records:
            merged.append(records[i])
    _write_summary(output, merged, {
        "run": run_location,
        "widths": widths,
        "predict": cfg.predict.model_dump(mode="json"),
        "postprocess": cfg.postprocess.model_dump(mode="json"),
        "scale": cfg.data.scale,
        "workers": workers,
        "skipped": len(done),
    })
    ok = [r for i, r in records.items() if i not in failures]
    megapixels = sum(r["size"][0] * r["size"][1] for r in ok if "size" in r) / 1e6
    return JobSummary(
        records=merged, failures=[failures[i] for i in sorted(failures)],
        predicted=len(ok), skipped=len(done), megapixels=megapixels,
        seconds=time.perf_counter() - started, workers=workers, dashboard=link,
    )


def _open_raster(state: _RasterRun, cfg: Config, output: Any, widths: list[int]) -> None:
    from segmenter import mosaic

    state.folder = state.stack.enter_context(output.staging())
    state.job = state.stack.enter_context(mosaic.RasterJob(
        state.location, state.stem, widths, cfg, state.folder))


def _finish_raster(state: _RasterRun, output: Any, vector: bool) -> tuple[dict[str, Any], str]:
    from segmenter import mosaic

    try:
        result = state.job.finish(vector)
        fields, line = mosaic.raster_fields(state.stem, result)
        record = {"input": str(state.ref.path), "stem": state.stem, **fields}
        output.publish(state.folder, list(record["outputs"].values()))
        output.write_record(state.stem, record)
    finally:
        state.stack.close()
    return record, line


def _task_error(error: BaseException) -> str:
    """One line for a task that raised (a bad input is a SegmenterError)."""
    if isinstance(error, SegmenterError):
        return str(error)
    if type(error).__name__ == "KilledWorker":
        return ("the workers running it died (3 times): out of memory, or a crash; see the "
                "workers' logs")
    first = str(error).strip().splitlines()
    return f"unexpected {type(error).__name__}: {first[0] if first else ''}"


def _write_summary(output: Any, records: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """``predictions.json`` / ``.csv`` of the whole job, written by the client."""
    from segmenter import outputs

    with output.staging() as folder:
        outputs.write_summary(folder, records, extra)
        output.publish(folder, [outputs.SUMMARY_JSON, outputs.SUMMARY_CSV])
