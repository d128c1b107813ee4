"""``segmenter predict`` on a Dask cluster.

The engine is Dask's (``dask.distributed``): ``predict.scheduler`` (or ``--scheduler``) is a
scheduler address (``tcp://HOST:8786``) or ``local:N``, a ``LocalCluster`` of N worker
processes with one thread each. What the output folder holds (stems, ``--overwrite`` /
``--skip-existing``, records, the summary) is :mod:`segmenter.predict.jobs`', as on one process.

Units of work:

* a photo: one task (decode, predict, write its outputs); the client commits its record;
* a raster (GeoTIFF / COG): pass 1 is one task per tile with its halo
  (:func:`segmenter.predict.mosaic.tile_pass1`), each returning its probabilities and its share of
  the GMM subsample (drawn on the raster's own pixel grid); the client writes the probability
  raster, fits the Gaussian mixture *once* on the subsample of all tiles, and pass 2 is one
  task per tile assigning its pixels (:func:`segmenter.predict.mosaic.tile_pass2`), fed with its
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
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segmenter.config import Config
from segmenter.errors import ConfigError, SegmenterError
from segmenter.predict.tasks import WorkerRunError, photo_task, tile_mask_task, tile_probs_task

if TYPE_CHECKING:
    from segmenter.data.inputs import PhotoRef
    from segmenter.predict.jobs import JobPlan

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

    def __init__(self, index: int, ref: PhotoRef, stem: str, location: str) -> None:
        self.index, self.ref, self.stem, self.location = index, ref, stem, location
        self.job: Any = None
        self.stack = contextlib.ExitStack()
        self.folder: Path | None = None
        self.probs: dict[int, Any] = {}
        self.pending = 0
        self.failed = False


def _ref_spec(ref: PhotoRef) -> dict[str, str]:
    storage = ref.storage
    folder = storage.url if storage.remote else storage.root
    return {"name": ref.name, "path": str(ref.path), "folder": folder, "relpath": ref.relpath}


def _raster_location(ref: PhotoRef) -> str:
    storage = getattr(ref, "storage", None)
    if storage is None:
        return str(ref.path)
    if storage.remote:
        return storage.display(ref.relpath)
    return os.path.join(storage.root, ref.relpath) if ref.relpath else storage.root


def run_job(plan: JobPlan, cfg: Config, run_location: str, widths: list[int], *,
            vector: bool = False, report: Callable[[str], None] = lambda line: None,
            progress: Callable[[int], Any] | None = None,
            announce: Callable[[str], None] = lambda line: None) -> JobSummary:
    """Predict the inputs of ``plan`` on the Dask scheduler of ``cfg.predict.scheduler``.

    Args:
        plan: the call's :class:`segmenter.predict.jobs.JobPlan` (output, stems, what is skipped).
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
    from segmenter.predict import jobs, raster

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
        photos = [(i, r, s) for i, r, s in plan.todo if not raster.is_raster_ref(r)]
        waiting = deque((i, r, s) for i, r, s in plan.todo if raster.is_raster_ref(r))
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
    jobs.write_summary(plan, mine,
                       jobs.summary_header(plan, cfg, run_location, widths, workers=workers))
    ok = [r for i, r in records.items() if i not in failures]
    megapixels = sum(r["size"][0] * r["size"][1] for r in ok if "size" in r) / 1e6
    return JobSummary(
        records=mine, failures=[failures[i] for i in sorted(failures)],
        predicted=len(ok), skipped=len(plan.done), megapixels=megapixels,
        seconds=time.perf_counter() - started, workers=workers, dashboard=link,
    )


def _open_raster(state: _RasterRun, cfg: Config, output: Any, widths: list[int]) -> None:
    from segmenter.predict import raster

    state.folder = state.stack.enter_context(output.staging())
    state.job = state.stack.enter_context(raster.RasterJob(
        state.location, state.stem, widths, cfg, state.folder))


def _finish_raster(state: _RasterRun, plan: JobPlan, vector: bool) -> tuple[dict[str, Any], str]:
    from segmenter.predict import jobs, raster

    try:
        result = state.job.finish(vector)
        fields, line = raster.raster_fields(state.stem, result)
        record = jobs.raster_record(state.ref, state.stem, fields)
        plan.output.publish(state.folder, list(record["outputs"].values()))
        jobs.commit(plan, record)
    finally:
        state.stack.close()
    return record, line
