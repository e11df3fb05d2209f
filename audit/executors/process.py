"""Local worker processes: ``--executor local --workers N`` (:class:`ProcessExecutor`)."""
from __future__ import annotations

import collections
import logging
import multiprocessing
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from audit.core.errors import AuditInputError
from audit.executors.base import CellResult, Executor, GroupJob, default_workers, failed_results, run_job

if TYPE_CHECKING:  # pragma: no cover
    from audit.tasks import TaskState

log = logging.getLogger("splitaudit")


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the driver dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass


class _PipeLog(logging.Handler):
    """In a worker: the ``splitaudit`` logger's lines (a defense's fine-tuning epoch by epoch, warnings) go to
    the driver through the worker's pipe, which logs them where the run's own lines go."""

    def __init__(self, conn, level: int):
        super().__init__(level)
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.conn.send_bytes(pickle.dumps(("log", record.levelno, record.getMessage())))
        except Exception:  # noqa: BLE001 - a lost line must not fail the cell (a closed pipe, an odd argument)
            pass


def _pool_worker(conn, init_blob: bytes) -> None:
    """Body of a local worker process: receive task states and groups, send back finished cells."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it ends the workers
    from audit.core.feature_store import open_array
    from audit.core.heap import allow_reuse

    # run_class: the driver's AuditRun class, pickled by reference (this module never imports the runner)
    run_class, config, out_dir, cache_dir, threads, max_ram_mb, setup, log_level = pickle.loads(init_blob)
    log.addHandler(_PipeLog(conn, log_level))
    log.setLevel(log_level)
    log.propagate = False
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
            with allow_reuse(config.memory.heap_reuse_mb):  # hot loops reuse heap blocks (audit.core.heap)
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
    ctx.set_forkserver_preload(["audit.runner", "audit.executors.process", "audit.core.feature_store"])
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

    def __init__(self, workers: int, threads: int | None = None, worker_setup: Callable[[], None] | None = None,
                 cells_per_job: int | None = None):
        super().__init__(threads, worker_setup, cells_per_job)
        if workers < 1:
            raise AuditInputError(f"--workers must be at least 1, got {workers}")
        self.workers = workers

    def cell_threads(self) -> int:
        return self.threads or max(1, default_workers() // self.workers)

    def settings(self):
        return {"name": "local", "workers": self.workers, "threads": self.cell_threads(), **self.split_settings()}

    def open(self, run, on_result):
        super().open(run, on_result)
        try:
            self._init_blob = pickle.dumps((type(run), run.config, run.out_dir, run.cache_dir, self.cell_threads(),
                                            run.features.max_ram_mb, self.worker_setup, log.getEffectiveLevel()))
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
                            message = pickle.loads(w.conn.recv_bytes())
                        except (EOFError, OSError):
                            self._worker_died(w)
                            continue
                        if message[0] == "log":  # a line the worker logged (_PipeLog)
                            log.log(message[1], "%s", message[2])
                            continue
                        _, job_id, results = message
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
            log.warning("%s: %s", self.run.cell_name(job.cells[0]), error)
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
