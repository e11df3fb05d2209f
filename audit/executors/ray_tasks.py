"""Ray tasks on a cluster or a local instance: ``--executor ray [--address ADDR]`` (:class:`RayExecutor`)."""
from __future__ import annotations

import collections
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from audit.core.errors import AuditInputError
from audit.core.feature_store import map_batches, open_array
from audit.executors.base import CellResult, Executor, GroupJob, failed_results, run_job

if TYPE_CHECKING:  # pragma: no cover
    from audit.runner import AuditRun

log = logging.getLogger("splitaudit")

_RAY_WORKER: dict[str, Any] = {"runs": {}, "states": collections.OrderedDict(), "setup": False}


def _ray_group(init: tuple, state_ref: list, job: GroupJob, features: dict[str, Any]) -> list[CellResult]:
    """Body of a Ray task: run one group; artifacts come back as bytes (no shared filesystem needed on a cluster).

    ``state_ref`` is the (task, seed)'s object ref wrapped in a list so that Ray
    does not fetch it for every task: a worker process fetches each task state
    once and keeps the last two. ``features`` maps each split to its edge features: the driver's
    file on a one-node instance, else the object ref of a numpy array (:func:`_features`).
    """
    import ray

    from audit.core.heap import allow_reuse

    run_class, config, cache_dir, threads, max_ram_mb, setup, log_level = init
    # the worker's lines (a defense's fine-tuning epoch by epoch, warnings) on its stderr, at this run's level:
    # Ray shows them in the driver's output, prefixed '(_ray_group pid=...)', when the driver has log_to_driver
    log.setLevel(log_level)
    if not _RAY_WORKER["setup"]:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
        if setup is not None:
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
        tensors = {part: _features(shipped, scratch / "scratch", max_ram_mb) for part, shipped in features.items()}
        results: list[CellResult] = []
        try:
            with allow_reuse(config.memory.heap_reuse_mb):
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


def _features(shipped: Any, scratch: Path, max_ram_mb: float) -> torch.Tensor:
    """A split's edge features in a Ray task. ``shipped``: the driver's ``.npy`` file (a one-node instance:
    opened as local workers open it, memory-mapped copy-on-write when large), or an object ref (a cluster:
    a private, writable copy of the object store's read-only array, memory-mapped from scratch when large;
    the object's pages leave the worker once copied)."""
    if isinstance(shipped, str):
        if not Path(shipped).is_file():
            raise AuditInputError(f"feature file {shipped} is missing on this Ray node: the driver took the Ray "
                                  "instance for this one machine, whose tasks read the driver's feature files")
        return open_array(Path(shipped), max_ram_mb)
    import ray

    array = ray.get(shipped)
    return map_batches(lambda a, b: torch.from_numpy(array[a:b].copy()), array.shape[0], scratch, max_ram_mb)


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
                 worker_setup: Callable[[], None] | None = None, max_retries: int = 1, cells_per_job: int | None = None):
        super().__init__(threads, worker_setup, cells_per_job)
        self.address, self.cpus_per_task, self.max_retries = address, cpus_per_task, max_retries
        self._cluster: dict[str, float | int] = {}  # nodes, cluster_cpus, workers: set by open()

    def cell_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_task))

    def settings(self):
        """Besides the options: the cluster as the run found it (``nodes``, ``cluster_cpus``) and how many
        tasks it could run at once (``workers``: its CPUs // ``cpus_per_task``), once connected."""
        return {"name": "ray", "address": self.address, "cpus_per_task": self.cpus_per_task, **self._cluster,
                "threads": self.cell_threads(), **self.split_settings()}

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
        # a Ray instance of this machine alone: features travel as file paths, not through the object store (two
        # UTKFace conv1 tasks each touched the cut's 6.7 GB there while copying it, 7.65 and 7.00 GB per worker,
        # and Ray's memory monitor killed one on a 24 GB machine)
        # (this process on that node, by address too: a Ray Client driver elsewhere sees the cluster's own node id)
        here, address = ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
        alive = [n for n in ray.nodes() if n.get("Alive")]
        self._one_node = all(n["NodeID"] == here and n.get("NodeManagerAddress") == address for n in alive)
        cpus = float(ray.cluster_resources().get("CPU", 0))
        self._cluster = {"nodes": len(alive), "cluster_cpus": cpus, "workers": max(1, int(cpus // self.cpus_per_task))}
        self._remote = ray.remote(_ray_group).options(
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task(run), max_retries=self.max_retries,
        )
        self._init = (type(run), run.config, str(run.cache_dir), self.cell_threads(), run.features.max_ram_mb,
                      self.worker_setup, log.getEffectiveLevel())
        self._states: dict[str, Any] = {}
        self._features: dict[tuple[str, str], dict[str, Any]] = {}
        self._inflight: dict[Any, GroupJob] = {}

    def add_task(self, state):
        self._states[state.key] = self.ray.put(state)

    def add_features(self, key, cut, paths):
        import numpy as np

        if self._one_node:  # the tasks run here: they open the files (no copy of a cut's 6.7 GB in the object store)
            self._features[(key, cut)] = dict(paths)
            return
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
                log.debug("Ray task of %s failed: %s", self.run.cell_name(job.cells[0]), err)
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
