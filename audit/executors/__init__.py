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

from typing import Callable

from audit.core.errors import AuditInputError
from audit.executors.base import CellResult, Executor, GroupJob, SequentialExecutor, default_workers, failed_results, run_job
from audit.executors.process import ProcessExecutor
from audit.executors.ray_tasks import RayExecutor

__all__ = ["CellResult", "Executor", "GroupJob", "ProcessExecutor", "RayExecutor", "SequentialExecutor", "default_workers",
           "failed_results", "make_executor", "run_job"]


def make_executor(name: str = "local", workers: int = 1, address: str | None = None, threads: int | None = None,
                  worker_setup: Callable[[], None] | None = None, cpus_per_task: float = 1,
                  cells_per_job: int | None = None) -> Executor:
    """The executor for ``--executor NAME [--workers N] [--address ADDR] [--threads T] [--cells-per-job C]``."""
    if name == "local":
        if workers == 1:
            if cells_per_job is not None:
                raise AuditInputError("--cells-per-job splits groups between workers; with one worker it would "
                                      "only fit each defense again: add --workers N or --executor ray")
            return SequentialExecutor(threads, worker_setup)
        return ProcessExecutor(workers, threads, worker_setup, cells_per_job)
    if name == "ray":
        return RayExecutor(address, cpus_per_task, threads, worker_setup, cells_per_job=cells_per_job)
    raise AuditInputError(f"unknown executor {name!r}; known executors: local, ray")
