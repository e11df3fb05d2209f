"""The audit runner: plan -> submit -> commit -> report.

The plan is a grid of cells (task x seed x cut point x defense x attack, :mod:`audit.plan`).
Work is shared where it can be: per (task, seed) the data is split and the task model trained
once (:mod:`audit.tasks`, cached on disk by a hash of what determines it); per cut point the edge
features are extracted once (into ``OUT/features``, memory-mapped when large, see
:mod:`audit.core.feature_store`); per (cut point, defense) *group* the defense is fitted and the
aux/test features released once, then every attack runs on them (:mod:`audit.pipeline`). The
driver does the shared steps and hands groups to an executor (:mod:`audit.executors`: in the
driver, local worker processes, or Ray); finished cells come back to the driver, which commits
each to the results store, so a rerun skips it. Every stage is seeded from the audit seed and the
stage's own identity (initial weights, training, defense fit, attack), so a cell's values do not
depend on which other cells ran before it, in which process, or in which order.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from attacks import Score
from audit import pipeline
from audit.config import AuditConfig
from audit.core.data.feature_dump import model_free_measures, model_free_split
from audit.core.errors import interruptible
from audit.core.feature_store import FeatureStore, free_memory, rss_grew
from audit.core.heap import allow_reuse
from audit.core.profile import report_timings, timed
from audit.core.records import AuditRecord
from audit.core.store import ResultStore
from audit.core.training import inference_device, predict
from audit.decision import fresh_verdicts
from audit.plan import Cell, plan_cells, shard_cells
from audit.preflight import check_run
from audit.report import SCHEMA_VERSION, environment, splits_used, write_report
from audit.tasks import TaskState, attacker_splits, default_cache_dir, extract_features, prepare_task, task_key
from defenses import SplitPoint

if TYPE_CHECKING:  # pragma: no cover
    from audit.executors import CellResult, Executor

log = logging.getLogger("splitaudit")


class RunCallback:
    """Hooks for progress output and trackers; every method is optional."""

    def on_plan(self, run: "AuditRun", cells: list[Cell], pending: list[Cell]) -> None: ...
    def on_cell_end(self, run: "AuditRun", cell: Cell, records: list[dict[str, Any]], seconds: float) -> None: ...
    def on_finish(self, run: "AuditRun", report: dict[str, Any]) -> None: ...


def summarize(records: list[dict[str, Any]]) -> str:
    """The headline figure per target (first metric reported for it), or the error."""
    if any(r["status"] != "ok" for r in records):
        return f"FAILED: {records[0]['error'].splitlines()[0] if records[0].get('error') else '?'}"
    seen, parts = set(), []
    for r in records:
        if r["target"] in seen:
            continue
        seen.add(r["target"])
        lo, hi = r["ci95"]
        chance = f" chance {r['chance']:.3g}" if r["chance"] is not None else ""
        parts.append(f"{r['target']} {r['metric']} {r['value']:.3f} [{lo:.3f}, {hi:.3f}]{chance}")
    return "; ".join(parts)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch intra-op threads (None: leave as is); restored after."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class AuditRun:
    """Runs one audit into ``out_dir``; ``run()`` returns the report (also written to disk).

    ``executor``: where groups of cells run (default: in this process, see
    :mod:`audit.executors`); ``shard``: (i, n) to run only shard i of n;
    ``resume``: None resumes a folder of the same audit and starts fresh otherwise,
    True requires a folder to resume, False requires a fresh one (see :class:`ResultStore`).
    """

    def __init__(
        self,
        config: AuditConfig,
        out_dir: str | Path,
        callbacks: Iterable[RunCallback] = (),
        cache_dir: str | Path | None = None,
        objects: dict[int, dict[str, Any]] | None = None,
        executor: "Executor | None" = None,
        shard: tuple[int, int] | None = None,
        resume: bool | None = None,
    ):
        self.config = config
        # task index -> {"dataset": obj with .load(cache_dir), "model": obj with .build(shape, classes)}:
        # Python objects standing in for a task's plugins (the Python API, audit/api.py)
        self.objects = objects or {}
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        self.cache_dir = Path(cache_dir or config.cache_dir or default_cache_dir()).expanduser()
        self.device = inference_device(config.trainer)
        # as JSON (the records' defense_params / attack_params, and the stage seeds' identity)
        self.defense_params = [config.defense_params(d).model_dump(mode="json") for d in range(len(config.defenses))]
        self.attack_params = {a: config.attack_params(a).model_dump(mode="json") for a in config.attacks}
        self.executor = executor
        self.shard = shard
        self.resume = resume
        self.features = FeatureStore(self.out_dir / "features", config.memory.feature_ram_mb)
        self.driver_timings: dict[str, float] = {}  # data / task model / features seconds of this run (audit.core.profile)
        self._started: float | None = None  # perf_counter() when run() began (the report's wall time)

    # ----------------------------------------------------------------- naming
    def cell_name(self, cell: Cell) -> str:
        return (
            f"{self.config.tasks[cell.task].title} seed={cell.seed} cut={cell.cut_point} "
            f"defense={self.config.defenses[cell.defense].title()} attack={cell.attack}"
        )

    def _emit(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, method)(self, *args)

    # --------------------------------------------------------------------- task
    def prepare_task(self, t: int, seed: int) -> TaskState:
        """Task ``t`` at ``seed`` ready for its cells (:func:`audit.tasks.prepare_task`)."""
        return prepare_task(self.config, t, seed, self.cache_dir, self.device, self.objects.get(t), self.driver_timings)

    def extract_features(self, state: TaskState, cut: str) -> dict[str, str]:
        """Edge features of every data split at ``cut`` into this run's feature store; split -> path."""
        free_memory(full=rss_grew())  # the previous cut's groups: out of the RSS before this cut's features come in
        with timed(self.driver_timings, "features_seconds"):
            return extract_features(self.features, state, cut, self.device)

    # -------------------------------------------------------------------- group
    def stage_seeds(self, cell: Cell, seed_key: str | None = None) -> dict[str, int]:
        """The seeds of the stages behind a cell: defense fit and attack. ``seed_key``: the task
        identity they derive from (default: the cell's task key; a feature dump replays its task's)."""
        key = seed_key or task_key(self.config.tasks[cell.task], cell.seed)
        return pipeline.cell_seeds(cell.seed, key, cell.cut_point, self.config.defenses[cell.defense].name,
                                   self.defense_params[cell.defense], cell.attack)

    def run_group(
        self,
        state: TaskState,
        cut: str,
        d: int,
        cells: list[Cell],
        features: Callable[[str], torch.Tensor] | None = None,
        emit: Callable[[Cell, list[dict[str, Any]], float], None] | None = None,
    ) -> None:
        """Fit defense ``d`` at ``cut`` and run every attack cell of the group.

        ``features(split)`` gives the edge features of a split (default: computed
        here); ``emit(cell, records, seconds)`` receives each finished cell
        (default: commit it to this run's store).
        """
        emit = emit or self._commit
        spec = self.config.defenses[d]
        seed = cells[0].seed
        edge, cloud = state.model.split(cut) if state.model is not None else model_free_split(cut)
        data = state.data
        compute = features or (lambda part: predict(edge, data.part(part).x, device=self.device))
        split = SplitPoint(cut, state.model, edge, cloud, compute_features=compute)
        scratch, max_ram = self.features.scratch(), self.features.max_ram_mb
        task = self.config.tasks[cells[0].task].title
        where = f"{task} {spec.title()} at {cut} (seed {seed})"  # 'utkface/small_cnn noise at conv1 (seed 0)'
        group_timings: dict[str, float] = {}
        free_memory(full=rss_grew())  # what the previous group left in reference cycles (its released views)
        try:
            with timed(group_timings, "defense_fit_seconds"):
                defense = pipeline.fit_defense(
                    spec.name, self.config.defense_params(d), split, data.part("train"), data.num_classes(data.primary),
                    self.config.trainer, self.stage_seeds(cells[0], state.seed_key)["defense"], audit_seed=seed,
                    task=task)
            with timed(group_timings, "release_seconds"):
                aux, test = pipeline.release_views(
                    defense, split, data, attacker_splits(self.config.tasks[cells[0].task]),
                    scratch_dir=scratch, max_ram_mb=max_ram, title=where)
            with timed(group_timings, "utility_cost_seconds"):
                if state.model is None:  # no cloud to measure utility with, no edge to time
                    utility, cost = model_free_measures(defense, test.z)
                else:
                    utility = pipeline.measure_utility(defense, split, data.part("test"),
                                                       state.summary["primary_accuracy"], seed, title=where)
                    cost = defense.cost(test.x[:32], state.full_flops)
        except Exception as err:  # noqa: BLE001 - a failing defense fails its cells, the rest go on
            error = f"defense {spec.title()} failed: {type(err).__name__}: {err}"
            log.debug("%s", traceback.format_exc())
            for cell in cells:
                emit(cell, [self.failed_record(cell, error, state.seed_key)], 0.0)
            return
        free_memory(full=False)  # what the defense's fit and the release read of mapped features: out of the RSS
        inputs = pipeline.AttackInputs(
            aux, test, {name: data.num_classes(name) for name in [data.primary, *data.private]}, data.primary, split,
            self.config.trainer.for_attacks(), self.config.n_boot, scratch, max_ram)
        for cell in cells:
            start = time.perf_counter()
            timings = {k: round(v, 3) for k, v in group_timings.items()}
            try:
                scores = pipeline.run_attack(cell.attack, self.config.attack_params(cell.attack), inputs, defense,
                                             self.stage_seeds(cell, state.seed_key)["attack"],
                                             artifact_dir=self.out_dir / "artifacts" / cell.id, timings=timings)
                timings = {k: round(v, 3) for k, v in timings.items()}
                records = [dict(self._record(cell, s, utility, cost, state.seed_key), timings=timings) for s in scores]
            except Exception as err:  # noqa: BLE001
                log.debug("%s", traceback.format_exc())
                records = [self.failed_record(cell, f"attack {cell.attack} failed: {type(err).__name__}: {err}",
                                        state.seed_key)]
            free_memory(full=False)
            emit(cell, records, time.perf_counter() - start)

    def _base_record(self, cell: Cell, seed_key: str | None = None) -> dict[str, Any]:
        task = self.config.tasks[cell.task]
        spec = self.config.defenses[cell.defense]
        return {
            "dataset": task.display_name, "model": task.model_name, "cut_point": cell.cut_point,
            "defense": spec.name, "defense_params": self.defense_params[cell.defense],
            "utility": {}, "cost": {},
            "attack": cell.attack, "attack_params": self.attack_params[cell.attack],
            "target": None, "metric": None, "value": None, "ci95": None, "chance": None, "advantage": None,
            "seed": cell.seed, "n_eval": None, "status": "ok", "error": None, "extra": {}, "cell_id": cell.id,
            "stage_seeds": self.stage_seeds(cell, seed_key),
        }

    def _record(self, cell: Cell, score: Score, utility: dict, cost: dict, seed_key: str | None = None) -> dict[str, Any]:
        rec = self._base_record(cell, seed_key)
        rec.update(
            utility=utility, cost={k: _finite(v) for k, v in cost.items()},
            target=score.target, metric=score.metric, value=_finite(float(score.value)),
            ci95=[_finite(float(score.ci95[0])), _finite(float(score.ci95[1]))],
            chance=_finite(score.chance), advantage=_finite(score.advantage),
            n_eval=score.n_eval, extra=score.extra,
        )
        return rec

    def failed_record(self, cell: Cell, error: str, seed_key: str | None = None) -> dict[str, Any]:
        """The record of a cell that failed with ``error`` (status "failed", no figures)."""
        rec = self._base_record(cell, seed_key)
        rec.update(status="failed", error=error)
        return rec

    def _commit(self, cell: Cell, records: list[dict[str, Any]], seconds: float) -> None:
        for record in records:  # the schema of report.json's results (a plugin's Score cannot break it)
            AuditRecord.model_validate(record)
        self.store.commit(cell.id, records)
        self._emit("on_cell_end", cell, records, seconds)

    def _deliver(self, result: "CellResult") -> None:
        """A finished cell from the executor (driver, main thread): artifacts, commit, callbacks."""
        if result.artifacts:
            folder = (self.out_dir / "artifacts" / result.cell.id).resolve()
            for rel, data in result.artifacts.items():
                target = (folder / rel).resolve()
                if folder not in target.parents:
                    raise RuntimeError(f"artifact path {rel!r} of cell {result.cell.id} leaves its folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        self._commit(result.cell, result.records, result.seconds)
        key = (task_key(self.config.tasks[result.cell.task], result.cell.seed), result.cell.cut_point)
        if key in self._cells_left:
            self._cells_left[key] -= 1
            if self._cells_left[key] == 0:  # every group of this cut point is done: free its features
                del self._cells_left[key]
                self.executor_in_use.release_features(*key)
                if not self.config.memory.keep_features:
                    self.features.remove(*key)

    # ---------------------------------------------------------------------- run
    def planned_cells(self) -> list[Cell]:
        """The cells this run is responsible for (its shard of the grid)."""
        cells = plan_cells(self.config)
        return shard_cells(cells, *self.shard) if self.shard else cells

    def run(self) -> dict[str, Any]:
        from audit.executors import GroupJob, SequentialExecutor

        config = self.config
        self._started = time.perf_counter()
        cells = self.planned_cells()
        check_run(self)  # before the store: a run that fails validation leaves OUT as it was
        executor = self.executor or SequentialExecutor()
        # SIGINT / SIGTERM raise AuditInterrupted: finished cells stay committed, the lock is released
        with interruptible(), ResultStore(self.out_dir, config.config_hash(), config.model_dump(mode="json"),
                                          resume=self.resume, shard=self.shard) as store, \
                torch_threads(executor.threads), allow_reuse(config.memory.heap_reuse_mb):
            self.store = store
            shutil.rmtree(self.features.scratch(), ignore_errors=True)  # left by a killed run
            pending = [c for c in cells if not store.done(c.id)]
            self._emit("on_plan", cells, pending)
            groups: dict[tuple[int, int, str, int], list[Cell]] = {}
            for cell in pending:
                groups.setdefault(cell.group, []).append(cell)
            by_task: dict[tuple[int, int], dict[str, list[int]]] = {}
            for t, seed, cut, d in groups:
                by_task.setdefault((t, seed), {}).setdefault(cut, []).append(d)
            self._cells_left: dict[tuple[str, str], int] = {}
            for cell in pending:
                key = (task_key(config.tasks[cell.task], cell.seed), cell.cut_point)
                self._cells_left[key] = self._cells_left.get(key, 0) + 1
            self.executor_in_use = executor
            executor.open(self, self._deliver)
            try:
                for (t, seed), cuts in by_task.items():
                    state = self.prepare_task(t, seed)
                    store.put_task(state.key, state.summary)
                    executor.add_task(state)
                    for cut, defenses in cuts.items():
                        paths = self.extract_features(state, cut)
                        executor.add_features(state.key, cut, paths)
                        for d in defenses:
                            for job in executor.jobs(GroupJob(t, seed, cut, d, state.key,
                                                              tuple(groups[(t, seed, cut, d)]), paths)):
                                executor.submit(job)
                                executor.poll()
                    executor.task_done(state.key)
                    del state
                executor.join()
            finally:
                executor.close()
            report = self.build_report(cells, executor)
            write_report(self.out_dir, report)
            if not config.memory.keep_features:
                shutil.rmtree(self.features.root, ignore_errors=True)
        self._emit("on_finish", report)
        return report

    def build_report(self, cells: list[Cell], executor: "Executor | None" = None) -> dict[str, Any]:
        records = [r for c in cells for r in (self.store.load(c.id) or [])]
        keys = dict.fromkeys(task_key(self.config.tasks[c.task], c.seed) for c in cells)
        env = environment(self.config.seeds, str(self.device))
        trainer = self.config.trainer
        env["training_precision"] = {"task_model_and_defenses": trainer.precision_used(),
                                     "attacks": trainer.for_attacks().precision_used()}
        if executor is not None:
            env["executor"] = executor.settings()
            env["torch_threads"] = executor.cell_threads()
        env["shard"] = list(self.shard) if self.shard else None
        tasks = [t for t in (self.store.task(k) for k in keys) if t is not None]
        report = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": splits_used(self.config.model_dump(mode="json"), tasks),
            "environment": env,
            "tasks": tasks,
            "results": records,
            "timings": report_timings(records, self.driver_timings,
                                      None if self._started is None else time.perf_counter() - self._started),
        }
        report["verdicts"] = fresh_verdicts(report)  # audit.verdicts: leaks / no_evidence / inconclusive
        return report
