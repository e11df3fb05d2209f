"""Where the cells of an audit run: in the driver, in local worker processes, or as Ray tasks.

The unit of work is a *group*: the cells of one (task, seed, cut point,
defense), which share the defense fit and the released features. The driver
(:meth:`audit.runner.AuditRun.run`) does the shared, expensive steps once —
it prepares every (task, seed) (dataset split, task model trained into the
disk cache or loaded from it) and extracts the edge features of every cut
point into ``OUT/features`` — then hands groups to an executor. Workers send
finished cells back; only the driver commits them to the results store and
runs the callbacks, so commits stay atomic and in one place.

- :class:`SequentialExecutor` (``--executor local``, one worker): groups run
  in the driver, each cell committed as soon as it finishes.
- :class:`ProcessExecutor` (``--executor local --workers N``): N worker
  processes on this machine (forked from a preloaded fork server). Each receives a prepared (task, seed)
  once (pickled through its pipe) and opens the feature files from disk
  (memory-mapped when large, so the page cache is shared). A worker that dies
  (killed by the OS, out of memory, a crash in native code) fails only the
  group it was running; a fresh worker takes its place.
- :class:`RayExecutor` (``--executor ray [--address ADDR]``): groups run as
  Ray tasks on an existing cluster (or a local instance). Nothing needs a
  shared filesystem: each prepared (task, seed) and each cut point's
  features go into the object store once (``ray.put``), workers keep the
  task state they received in memory for the next groups, and artifacts
  (image grids) come back with the results and are written by the driver.

Every executor runs the same group code (:meth:`AuditRun.run_group`) with the
same seeds, so the records agree across executors when the cells run with the
same number of torch threads (``threads``; it changes floating-point
summation order, which is why the report records it).
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from audit.core.errors import AuditInputError

if TYPE_CHECKING:  # pragma: no cover
    from audit.plan import Cell
    from audit.runner import AuditRun
    from audit.tasks import TaskState

log = logging.getLogger("splitaudit")

PARTS = ("train", "aux", "test")


@dataclass(frozen=True)
class GroupJob:
    """The cells of one (task, seed, cut point, defense) group and where its edge features are."""

    task: int
    seed: int
    cut: str
    defense: int
    task_key: str
    cells: tuple["Cell", ...]
    features: dict[str, str] = field(default_factory=dict)  # split -> .npy path on the driver's disk


@dataclass
class CellResult:
    """A finished cell as a worker returns it; ``artifacts`` maps a relative path under the
    cell's artifact folder to the file's bytes (when the worker could not write them itself)."""

    cell: "Cell"
    records: list[dict[str, Any]]
    seconds: float
    artifacts: dict[str, bytes] | None = None


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_job(run: "AuditRun", state: "TaskState", job: GroupJob, features: Callable[[str], torch.Tensor],
            emit: Callable[[CellResult], None]) -> None:
    """Run one group through ``run.run_group``; ``emit`` receives each finished cell."""
    run.run_group(state, job.cut, job.defense, list(job.cells), features=features,
                  emit=lambda cell, records, seconds: emit(CellResult(cell, records, seconds)))


def failed_results(run: "AuditRun", job: GroupJob, error: str) -> list[CellResult]:
    return [CellResult(cell, [run._failed(cell, error)], 0.0) for cell in job.cells]


class Executor:
    """Base class. The driver calls ``open``, then ``add_task`` / ``add_features`` / ``submit``
    as work becomes ready, ``poll`` between its own steps and ``join`` at the end; finished
    cells reach ``on_result`` in the driver's main thread."""

    name = "local"

    def __init__(self, threads: int | None = None, worker_setup: Callable[[], None] | None = None):
        self.threads = threads
        self.worker_setup = worker_setup

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": 1, "threads": self.cell_threads()}

    def cell_threads(self) -> int:
        """torch threads the cells run with."""
        return self.threads or torch.get_num_threads()

    def open(self, run: "AuditRun", on_result: Callable[[CellResult], None]) -> None:
        self.run, self.on_result = run, on_result

    def add_task(self, state: "TaskState") -> None: ...
    def add_features(self, key: str, cut: str, paths: dict[str, str]) -> None: ...
    def release_features(self, key: str, cut: str) -> None:
        """Every group of (``key``, ``cut``) has finished."""

    def task_done(self, key: str) -> None:
        """Every group of the (task, seed) ``key`` has been submitted."""

    def submit(self, job: GroupJob) -> None:
        raise NotImplementedError

    def poll(self) -> None: ...
    def join(self) -> None: ...
    def close(self) -> None: ...


class SequentialExecutor(Executor):
    """Groups run one after the other in the driver; each cell is committed when it finishes."""

    def open(self, run, on_result):
        super().open(run, on_result)
        self.states: dict[str, TaskState] = {}

    def add_task(self, state):
        self.states[state.key] = state

    def task_done(self, key):
        self.states.pop(key, None)

    def submit(self, job):
        features = self.run.features
        run_job(self.run, self.states[job.task_key], job,
                lambda part: features.load(job.task_key, job.cut, part), self.on_result)


# ------------------------------------------------------------------------------------------ local pool
def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the driver dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass


def _pool_worker(conn, init_blob: bytes) -> None:
    """Body of a local worker process: receive task states and groups, send back finished cells."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it ends the workers
    from audit.core.feature_store import open_array

    # run_class: the driver's AuditRun class, pickled by reference (this module never imports the runner)
    run_class, config, out_dir, cache_dir, threads, max_ram_mb, setup = pickle.loads(init_blob)
    if setup is not None:
        setup()
    if threads:
        torch.set_num_threads(threads)
    run = run_class(config, out_dir, cache_dir=cache_dir)
    states: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "stop":
            return
        if kind == "task":
            _, key, blob = message
            states[key] = pickle.loads(blob)
            while len(states) > 2:
                states.popitem(last=False)
            continue
        _, job_id, job = message
        results: list[CellResult] = []
        try:
            features = {part: open_array(Path(path), max_ram_mb) for part, path in job.features.items()}
            run_job(run, states[job.task_key], job, features.__getitem__, results.append)
            reply = ("done", job_id, results)
        except Exception as err:  # noqa: BLE001 - a broken group must not take the worker down
            done = {r.cell.id for r in results}
            reply = ("done", job_id, results + [
                r for r in failed_results(run, job, f"worker failed: {type(err).__name__}: {err}")
                if r.cell.id not in done
            ])
            log.debug("%s", traceback.format_exc())
        try:
            conn.send_bytes(pickle.dumps(reply))
        except (BrokenPipeError, OSError):
            return


def worker_context():
    """``forkserver`` with the engine preloaded: the first pool pays for importing torch and
    Lightning once; every later worker (a respawn, the next audit's pool) forks from the
    preloaded, single-threaded server in milliseconds. ``spawn`` where forkserver is missing."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not Linux/macOS
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["audit.runner", "audit.executors", "audit.core.feature_store"])
    return ctx


class _Worker:
    def __init__(self, ctx, init_blob: bytes):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_pool_worker, args=(child, init_blob), daemon=True)
        self.process.start()
        child.close()
        self.tasks: list[str] = []  # task keys this worker holds (most recent last)
        self.job: tuple[int, GroupJob] | None = None


class ProcessExecutor(Executor):
    """``workers`` local worker processes; one group in flight per worker.

    Each worker runs its cells with ``threads`` torch threads (default: the
    machine's cores divided by the workers). A background thread in the driver
    feeds the workers, so they keep working while the driver trains the next
    task model or extracts features.
    """

    def __init__(self, workers: int, threads: int | None = None, worker_setup: Callable[[], None] | None = None):
        super().__init__(threads, worker_setup)
        if workers < 1:
            raise AuditInputError(f"--workers must be at least 1, got {workers}")
        self.workers = workers

    def cell_threads(self) -> int:
        return self.threads or max(1, default_workers() // self.workers)

    def describe(self):
        return {"name": "local", "workers": self.workers, "threads": self.cell_threads()}

    def open(self, run, on_result):
        super().open(run, on_result)
        try:
            self._init_blob = pickle.dumps((type(run), run.config, run.out_dir, run.cache_dir, self.cell_threads(),
                                            run.features.max_ram_mb, self.worker_setup))
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise AuditInputError(f"the audit cannot be sent to worker processes ({err}); run with --workers 1") from None
        self._ctx = worker_context()
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        self._pending: collections.deque[tuple[int, GroupJob]] = collections.deque()
        self._results: queue.Queue = queue.Queue()
        self._cells_submitted = self._delivered = 0
        self._next_id = 0
        self._finished_tasks: set[str] = set()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._pool = [_Worker(self._ctx, self._init_blob) for _ in range(self.workers)]
        self._thread = threading.Thread(target=self._dispatch, name="splitaudit-dispatch", daemon=True)
        self._thread.start()

    def add_task(self, state):
        try:
            blob = pickle.dumps(state)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise AuditInputError(
                f"task {state.key} cannot be sent to worker processes ({err}); run with --workers 1"
            ) from None
        with self._lock:
            self._blobs[state.key] = blob

    def submit(self, job):
        with self._lock:
            self._pending.append((self._next_id, job))
            self._next_id += 1
            self._cells_submitted += len(job.cells)

    def task_done(self, key):
        with self._lock:
            self._finished_tasks.add(key)

    # -- the dispatch thread owns the pipes and processes
    def _dispatch(self) -> None:
        try:
            while not self._stop.is_set():
                self._assign()
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    time.sleep(0.02)
                    continue
                ready = wait_ready([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.1)
                for w in busy:
                    if w.conn in ready:
                        try:
                            _, job_id, results = pickle.loads(w.conn.recv_bytes())
                        except (EOFError, OSError):
                            self._worker_died(w)
                            continue
                        w.job = None
                        for r in results:
                            self._results.put(r)
                    elif w.process.sentinel in ready:
                        self._worker_died(w)
        except BaseException as err:  # pragma: no cover - surfaced in the main thread
            self._error = err
            self._results.put(None)

    def _assign(self) -> None:
        for w in self._pool:
            if w.job is not None:
                continue
            with self._lock:
                if not self._pending:
                    return
                job_id, job = self._pending.popleft()
                blob = None if job.task_key in w.tasks else self._blobs[job.task_key]
                self._free_blobs()
            try:
                if blob is not None:
                    w.conn.send_bytes(pickle.dumps(("task", job.task_key, blob)))
                    w.tasks = (w.tasks + [job.task_key])[-2:]
                w.conn.send_bytes(pickle.dumps(("job", job_id, job)))
                w.job = (job_id, job)
            except (BrokenPipeError, OSError):
                w.job = (job_id, job)
                self._worker_died(w)

    def _free_blobs(self) -> None:
        """Drop a task's pickled state once every group of it has gone to a worker (lock held)."""
        queued = {job.task_key for _, job in self._pending}
        for key in list(self._finished_tasks):
            if key not in queued:
                self._blobs.pop(key, None)
                self._finished_tasks.discard(key)

    def _worker_died(self, w: _Worker) -> None:
        w.process.join(timeout=1)
        code = w.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if w.job is not None:
            _, job = w.job
            error = (f"worker process died ({how}) while running this group; "
                     "out of memory or a crash in native code? Rerun to retry.")
            log.warning("%s: %s", self.run.describe(job.cells[0]), error)
            for r in failed_results(self.run, job, error):
                self._results.put(r)
        index = self._pool.index(w)
        w.conn.close()
        self._pool[index] = _Worker(self._ctx, self._init_blob)

    # -- main thread
    def _deliver(self, block: bool) -> None:
        while True:
            try:
                r = self._results.get(timeout=0.2) if block else self._results.get_nowait()
            except queue.Empty:
                if self._error is not None:
                    raise RuntimeError(f"the dispatch thread failed: {self._error}") from self._error
                return
            if r is None:
                raise RuntimeError(f"the dispatch thread failed: {self._error}") from self._error
            self._delivered += 1
            self.on_result(r)
            block = False

    def poll(self):
        self._deliver(block=False)

    def join(self):
        while self._delivered < self._cells_submitted:
            self._deliver(block=True)

    def close(self):
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=5)
        for w in getattr(self, "_pool", []):
            try:
                w.conn.send_bytes(pickle.dumps(("stop",)))
            except (BrokenPipeError, OSError):
                pass
        for w in getattr(self, "_pool", []):
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
        self._pool = []


# ------------------------------------------------------------------------------------------------- Ray
_RAY_WORKER: dict[str, Any] = {"runs": {}, "states": collections.OrderedDict(), "setup": False}


def _ray_group(init: tuple, state_ref: list, job: GroupJob, features: dict[str, Any]) -> list[CellResult]:
    """Body of a Ray task: run one group; artifacts come back as bytes (no shared filesystem needed).

    ``state_ref`` is the (task, seed)'s object ref wrapped in a list so that Ray
    does not fetch it for every task: a worker process fetches each task state
    once and keeps the last two. ``features`` maps each split to the object ref of its
    edge features (a numpy array).
    """
    import ray

    from audit.core.feature_store import map_batches

    run_class, config, cache_dir, threads, max_ram_mb, setup = init
    if setup is not None and not _RAY_WORKER["setup"]:
        setup()
        _RAY_WORKER["setup"] = True
    if threads:
        torch.set_num_threads(threads)
    states = _RAY_WORKER["states"]
    ref = state_ref[0]
    if ref.hex() not in states:
        states[ref.hex()] = ray.get(ref)
        while len(states) > 2:
            states.popitem(last=False)
    state = states[ref.hex()]
    scratch = Path(tempfile.mkdtemp(prefix="splitaudit-ray-"))
    try:
        run = run_class(config, scratch, cache_dir=cache_dir)  # artifacts and scratch files under it
        # private, writable copies of the object store's read-only arrays (memory-mapped from scratch when large)
        arrays = dict(zip(features, ray.get(list(features.values()))))
        tensors = {part: map_batches(lambda a, b, arr=arr: torch.from_numpy(arr[a:b].copy()), arr.shape[0],
                                     scratch / "scratch", max_ram_mb) for part, arr in arrays.items()}
        del arrays
        results: list[CellResult] = []
        try:
            run_job(run, state, job, tensors.__getitem__, results.append)
        except Exception as err:  # noqa: BLE001
            done = {r.cell.id for r in results}
            results += [r for r in failed_results(run, job, f"worker failed: {type(err).__name__}: {err}")
                        if r.cell.id not in done]
        for r in results:
            folder = scratch / "artifacts" / r.cell.id
            if folder.is_dir():
                r.artifacts = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


class RayExecutor(Executor):
    """Groups as Ray tasks on an existing cluster (``address``; None: ``RAY_ADDRESS``, a running
    local cluster, or a new local instance), ``cpus_per_task`` CPUs each (and the trainer's GPUs
    when the config asks for a GPU accelerator). A task whose worker dies is retried
    ``max_retries`` times (Ray's own retry), then its cells are recorded as failed."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_task: float = 1, threads: int | None = None,
                 worker_setup: Callable[[], None] | None = None, max_retries: int = 1):
        super().__init__(threads, worker_setup)
        self.address, self.cpus_per_task, self.max_retries = address, cpus_per_task, max_retries

    def cell_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_task))

    def describe(self):
        return {"name": "ray", "address": self.address, "cpus_per_task": self.cpus_per_task,
                "threads": self.cell_threads()}

    def gpus_per_task(self, run: "AuditRun") -> float:
        t = run.config.trainer
        if t.accelerator not in ("gpu", "cuda"):
            return 0
        if isinstance(t.devices, list):
            return len(t.devices)
        return float(t.devices) if isinstance(t.devices, int) else 1

    def open(self, run, on_result):
        super().open(run, on_result)
        try:
            import ray
        except ImportError:
            raise AuditInputError("--executor ray needs Ray: pip install 'splitaudit[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise AuditInputError(f"cannot connect to the Ray cluster at {self.address or 'auto'}: {err}") from None
        self._remote = ray.remote(_ray_group).options(
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task(run), max_retries=self.max_retries,
        )
        self._init = (type(run), run.config, str(run.cache_dir), self.cell_threads(), run.features.max_ram_mb,
                      self.worker_setup)
        self._states: dict[str, Any] = {}
        self._features: dict[tuple[str, str], dict[str, Any]] = {}
        self._inflight: dict[Any, GroupJob] = {}

    def add_task(self, state):
        self._states[state.key] = self.ray.put(state)

    def add_features(self, key, cut, paths):
        import numpy as np

        self._features[(key, cut)] = {part: self.ray.put(np.load(path, mmap_mode="r", allow_pickle=False))
                                      for part, path in paths.items()}

    def submit(self, job):
        ref = self._remote.remote(self._init, [self._states[job.task_key]], job, self._features[(job.task_key, job.cut)])
        self._inflight[ref] = job

    def task_done(self, key):
        # the driver's refs go; Ray frees the objects once the tasks using them finish
        self._states.pop(key, None)

    def release_features(self, key, cut):
        self._features.pop((key, cut), None)

    def _collect(self, timeout: float) -> None:
        if not self._inflight:
            return
        ready, _ = self.ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=timeout)
        for ref in ready:
            job = self._inflight.pop(ref)
            try:
                results = self.ray.get(ref)
            except Exception as err:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, OutOfMemoryError...
                cause = getattr(err, "cause", None) or err
                log.debug("Ray task of %s failed: %s", self.run.describe(job.cells[0]), err)
                results = failed_results(self.run, job, f"Ray task failed: {type(cause).__name__}: {_first_line(cause)}")
            for r in results:
                self.on_result(r)

    def poll(self):
        self._collect(timeout=0)

    def join(self):
        while self._inflight:
            self._collect(timeout=1.0)

    def close(self):
        for ref in list(getattr(self, "_inflight", {})):
            self.ray.cancel(ref, force=True)
        self._inflight = {}


def make_executor(name: str = "local", workers: int = 1, address: str | None = None, threads: int | None = None,
                  worker_setup: Callable[[], None] | None = None, cpus_per_task: float = 1) -> Executor:
    """The executor for ``--executor NAME [--workers N] [--address ADDR] [--threads T]``."""
    if name == "local":
        if workers == 1:
            return SequentialExecutor(threads, worker_setup)
        return ProcessExecutor(workers, threads, worker_setup)
    if name == "ray":
        return RayExecutor(address, cpus_per_task, threads, worker_setup)
    raise AuditInputError(f"unknown executor {name!r}; known executors: local, ray")
