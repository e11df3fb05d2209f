"""The executor contract, the unit of work (a group of cells) and the in-driver executor."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import torch

from audit.core.errors import AuditInputError

if TYPE_CHECKING:  # pragma: no cover
    from audit.plan import Cell
    from audit.runner import AuditRun
    from audit.tasks import TaskState

log = logging.getLogger("splitaudit")


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
    return [CellResult(cell, [run.failed_record(cell, error)], 0.0) for cell in job.cells]


class Executor:
    """Base class. The driver calls ``open``, then ``add_task`` / ``add_features`` / ``submit``
    as work becomes ready, ``poll`` between its own steps and ``join`` at the end; finished
    cells reach ``on_result`` in the driver's main thread."""

    name = "local"

    def __init__(self, threads: int | None = None, worker_setup: Callable[[], None] | None = None,
                 cells_per_job: int | None = None):
        if cells_per_job is not None and cells_per_job < 1:
            raise AuditInputError(f"--cells-per-job must be at least 1, got {cells_per_job}")
        self.threads = threads
        self.worker_setup = worker_setup
        self.cells_per_job = cells_per_job

    def settings(self) -> dict[str, Any]:
        """What the report records of this executor (environment.executor): name, workers, threads."""
        return {"name": self.name, "workers": 1, "threads": self.cell_threads()}

    def split_settings(self) -> dict[str, Any]:
        """``cells_per_job`` for the report, when groups are split."""
        return {"cells_per_job": self.cells_per_job} if self.cells_per_job else {}

    def jobs(self, group: GroupJob) -> list[GroupJob]:
        """The jobs ``group`` is handed out as: the whole group, or with ``cells_per_job`` parts of that
        many cells, each fitting the group's defense and releasing its views again (the same seeds, so
        the same figures) and free to run on another worker: more parallel work for audits with few,
        long groups, at the price of repeated defense fits."""
        n = self.cells_per_job or len(group.cells)
        return [replace(group, cells=group.cells[i:i + n]) for i in range(0, len(group.cells), n)]

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
