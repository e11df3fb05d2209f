"""The audit runner: a grid of cells (task x seed x cut point x defense x attack).

Work is shared where it can be: per (task, seed) the data is split and the
task model trained once (cached on disk by a hash of what determines it); per
cut point the edge features are extracted once; per (cut point, defense) the
defense is fitted and the aux/test features released once, then every attack
runs on them. Every finished cell is committed to the results store, so a
rerun skips it. Every stage is seeded from the audit seed and the stage's own
identity, so a cell's values do not depend on which other cells ran before it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch

from attacks import ATTACKS, AttackContext, AttackView, Score
from audit.config import AuditConfig, PluginSpec, TaskConfig
from audit.data import DATASETS, AuditData, split_indices
from audit.data.features import model_free_measures, model_free_split, model_free_summary, precomputed_features
from audit.errors import AuditInputError
from audit.models import MODELS, SplitModel, flops_per_sample
from audit.report import SCHEMA_VERSION, environment, write_report
from audit.stats import mean_ci
from audit.store import ResultStore
from audit.training import fit_classifier, inference_device, predict
from defenses import DEFENSES, Defense, FitContext, SplitPoint

log = logging.getLogger("splitaudit")

CACHE_VERSION = 1  # bump when task training changes in a way that invalidates cached models


def stable_hash(*parts: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def stage_seed(seed: int, *identity: Any) -> int:
    """A seed for one stage, derived from the audit seed and what the stage is."""
    return int(stable_hash(seed, *identity, length=8), 16) % (2**31 - 1)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPLITAUDIT_CACHE", Path.home() / ".cache" / "splitaudit"))


@dataclass(frozen=True)
class Cell:
    """One unit of the grid; ``id`` hashes everything that determines its results."""

    task: int
    seed: int
    cut_point: str
    defense: int  # index into config.defenses
    attack: str
    id: str

    @property
    def group(self) -> tuple[int, int, str, int]:
        return (self.task, self.seed, self.cut_point, self.defense)


def _validated(registry, spec_name: str, params: dict[str, Any]) -> dict[str, Any]:
    return registry.validate_params(spec_name, params).model_dump(mode="json")


def task_key(task: TaskConfig, seed: int) -> str:
    """Identity of a trained task model: dataset, model, training, splits and seed."""
    return stable_hash(CACHE_VERSION, task.model_dump(mode="json", exclude={"label", "cut_points"}), seed)


def plan_cells(config: AuditConfig) -> list[Cell]:
    """Every cell of the audit, in execution order."""
    defense_params = [_validated(DEFENSES, d.name, d.params) for d in config.defenses]
    attack_params = {a: _validated(ATTACKS, a, p) for a, p in config.attacks.items()}
    cells = []
    for t, task in enumerate(config.tasks):
        for seed in config.seeds:
            for cut in task.cut_points:
                for d, spec in enumerate(config.defenses):
                    for attack in config.attacks:
                        cid = stable_hash(
                            task_key(task, seed), cut, spec.name, defense_params[d],
                            attack, attack_params[attack], config.n_boot,
                        )
                        cells.append(Cell(t, seed, cut, d, attack, cid))
    return cells


@dataclass
class TaskState:
    """A (task, seed) ready for cells: data split, trained model, summary figures."""

    key: str
    data: AuditData
    model: SplitModel | None  # None: saved features audited without a model
    full_flops: int | None
    summary: dict[str, Any]
    features: dict[str, torch.Tensor] | None = None  # saved edge features per cut point (N, ...), all rows
    seed_key: str | None = None  # identity the defense / attack seeds derive from (default: key)

    def __post_init__(self) -> None:
        # a feature dump names the task it was taken from: its cells replay that task's seeds
        self.seed_key = self.seed_key or self.data.loaded.meta.get("seed_key") or self.key


class RunCallback:
    """Hooks for progress output and trackers; every method is optional."""

    def on_plan(self, run: "AuditRun", cells: list[Cell], pending: list[Cell]) -> None: ...
    def on_cell_end(self, run: "AuditRun", cell: Cell, records: list[dict[str, Any]], seconds: float) -> None: ...
    def on_finish(self, run: "AuditRun", report: dict[str, Any]) -> None: ...


class LineProgress(RunCallback):
    """One progress line per finished cell (to the ``splitaudit`` logger)."""

    def on_plan(self, run, cells, pending):
        self.total, self.done = len(cells), len(cells) - len(pending)
        skipped = f", {self.done} already done in {run.out_dir}" if self.done else ""
        log.info("audit %r: %d cells%s", run.config.name, len(cells), skipped)

    def on_cell_end(self, run, cell, records, seconds):
        self.done += 1
        width = len(str(self.total))
        head = f"[{self.done:>{width}}/{self.total}] {run.describe(cell)}"
        log.info("%s: %s (%.1fs)", head, summarize(records), seconds)


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


def _batched(fn, x: torch.Tensor, features: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch_size], features[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def release_all(defense: Defense, x: torch.Tensor, features: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``defense.release`` over a whole split, in batches."""
    return _batched(defense.release, x, features, batch_size)


def predict_all(defense: Defense, x: torch.Tensor, features: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``defense.predict`` (primary logits through the defended pipeline) over a whole split, in batches."""
    return _batched(defense.predict, x, features, batch_size)


class AuditRun:
    """Runs one audit into ``out_dir``; ``run()`` returns the report (also written to disk)."""

    def __init__(
        self,
        config: AuditConfig,
        out_dir: str | Path,
        callbacks: Iterable[RunCallback] = (),
        cache_dir: str | Path | None = None,
        objects: dict[int, dict[str, Any]] | None = None,
    ):
        self.config = config
        # task index -> {"dataset": obj with .load(cache_dir), "model": obj with .build(shape, classes)}:
        # Python objects standing in for a task's plugins (the Python API, audit/api.py)
        self.objects = objects or {}
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        self.cache_dir = Path(cache_dir or config.cache_dir or default_cache_dir()).expanduser()
        self.device = inference_device(config.trainer)
        self.defense_params = [_validated(DEFENSES, d.name, d.params) for d in config.defenses]
        self.attack_params = {a: _validated(ATTACKS, a, p) for a, p in config.attacks.items()}

    # ----------------------------------------------------------------- describe
    def describe(self, cell: Cell) -> str:
        task = self.config.tasks[cell.task]
        return (
            f"{task.display_name}/{task.model_name} seed={cell.seed} cut={cell.cut_point} "
            f"defense={self.config.defenses[cell.defense].label()} attack={cell.attack}"
        )

    def _emit(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, method)(self, *args)

    # --------------------------------------------------------------------- task
    def prepare_task(self, t: int, seed: int) -> TaskState:
        task = self.config.tasks[t]
        key = task_key(task, seed)
        given = self.objects.get(t, {})
        dataset = given.get("dataset") or DATASETS.create(task.dataset.name, **task.dataset.params)
        loaded = dataset.load(self.cache_dir)
        # a dataset may bring its own split (a LightningDataModule's train/val/test)
        splits = getattr(loaded, "splits", None) or split_indices(loaded.x.shape[0], task.splits.model_dump(), seed)
        data = AuditData(task.display_name, loaded, splits)
        features = precomputed_features(loaded, task.cut_points, with_model=task.model is not None)
        if task.model is None:  # saved features audited without a model (audit/data/features.py)
            return TaskState(key, data, None, None, model_free_summary(task, seed, key, data), features)
        factory = given.get("model") or MODELS.create(task.model.name, **task.model.params)
        model = factory.build(data.input_shape, data.num_classes(data.primary))
        for cut in task.cut_points:
            model.split(cut)  # raises naming the model's cut points on a typo
        path = self.cache_dir / "task_models" / f"{key}.pt"
        train = data.part("train")
        if task.training.epochs == 0:
            log.info("%s/%s seed=%d: model audited as given (training.epochs: 0)", task.display_name, task.model_name, seed)
        elif path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log.info("%s/%s seed=%d: task model from cache %s", task.display_name, task.model_name, seed, path)
        else:
            log.info(
                "%s/%s seed=%d: training the task model (%d samples, %d epochs)",
                task.display_name, task.model_name, seed, len(train), task.training.epochs,
            )
            tr = task.training
            fit_classifier(
                model, train.x, train.y, data.num_classes(data.primary), settings=self.config.trainer,
                epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr, weight_decay=tr.weight_decay,
                seed=stage_seed(seed, key, "task"), hflip=tr.hflip,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
        model.eval()
        test = data.part("test")
        correct = (predict(model, test.x, device=self.device).argmax(1) == test.y).float()
        full_flops = flops_per_sample(model, test.x[:1])
        summary = {
            "dataset": task.display_name, "model": task.model_name, "seed": seed,
            "primary": data.primary, "private": data.private,
            "classes": {name: loaded.classes[name] for name in [data.primary, *data.private]},
            "n": {name: len(idx) for name, idx in splits.items()},
            "primary_accuracy": float(correct.mean()), "primary_accuracy_ci95": list(mean_ci(correct, seed=seed)),
            "full_flops": full_flops, "cut_points": task.cut_points, "task_key": key,
        }
        log.info("%s/%s seed=%d: primary accuracy %.3f on %d test samples",
                 task.display_name, task.model_name, seed, summary["primary_accuracy"], len(test))
        return TaskState(key, data, model, full_flops, summary, features)

    # -------------------------------------------------------------------- group
    def run_group(self, state: TaskState, cut: str, d: int, cells: list[Cell]) -> None:
        """Fit defense ``d`` at ``cut`` and run every attack cell of the group."""
        spec = self.config.defenses[d]
        seed = cells[0].seed
        edge, cloud = state.model.split(cut) if state.model is not None else model_free_split(cut)
        data = state.data
        if state.features is not None:  # saved features (a features dataset)
            compute = lambda part: state.features[cut][data.splits[part]]  # noqa: E731
        else:
            compute = lambda part: predict(edge, data.part(part).x, device=self.device)  # noqa: E731
        split = SplitPoint(cut, state.model, edge, cloud, compute_features=compute)
        try:
            fit_seed = stage_seed(seed, state.seed_key, cut, spec.name, self.defense_params[d])
            L.seed_everything(fit_seed, verbose=False)
            defense = DEFENSES.create(spec.name, **spec.params)
            train = data.part("train")
            defense.fit(FitContext(split, train, data.num_classes(data.primary), self.config.trainer, fit_seed))
            aux, test = data.part("aux"), data.part("test")
            z_aux = release_all(defense, aux.x, split.features("aux"))
            z_test = release_all(defense, test.x, split.features("test"))
            for name, z in (("aux", z_aux), ("test", z_test)):
                if z.is_floating_point() and not torch.isfinite(z).all():
                    raise ValueError(f"defense {spec.label()} released NaN/inf features for the {name} split at {cut}")
            if state.model is None:  # no cloud to measure utility with, no edge to time
                utility, cost = model_free_measures(defense, z_test)
            else:
                correct = (predict_all(defense, test.x, split.features("test")).argmax(1) == test.y).float()
                utility = {
                    "primary_accuracy": float(correct.mean()),
                    "primary_accuracy_ci95": list(mean_ci(correct, seed=seed)),
                    "task_accuracy": state.summary["primary_accuracy"],
                    "n_eval": len(test),
                }
                cost = defense.cost(test.x[:32], state.full_flops)
        except Exception as err:  # noqa: BLE001 - a failing defense fails its cells, the rest go on
            error = f"defense {spec.label()} failed: {type(err).__name__}: {err}"
            log.debug("%s", traceback.format_exc())
            for cell in cells:
                self._commit(cell, [self._failed(cell, error)], 0.0)
            return
        num_classes = {name: data.num_classes(name) for name in [data.primary, *data.private]}
        context = dict(
            aux=AttackView(z_aux, aux.x, aux.y, aux.private),
            test=AttackView(z_test, test.x, test.y, test.private),
            num_classes=num_classes, primary=data.primary, defense=defense, split=split,
            settings=self.config.trainer, n_boot=self.config.n_boot,
        )
        for cell in cells:
            start = time.perf_counter()
            try:
                attack_seed = stage_seed(seed, state.seed_key, cut, spec.name, self.defense_params[d], cell.attack)
                L.seed_everything(attack_seed, verbose=False)
                ctx = AttackContext(**context, seed=attack_seed,
                                    artifact_dir=self.out_dir / "artifacts" / cell.id)
                attack = ATTACKS.create(cell.attack, **self.config.attacks[cell.attack])
                attack.fit(ctx)
                scores = attack.score(ctx)
                records = [self._record(cell, s, utility, cost) for s in scores]
            except Exception as err:  # noqa: BLE001
                log.debug("%s", traceback.format_exc())
                records = [self._failed(cell, f"attack {cell.attack} failed: {type(err).__name__}: {err}")]
            self._commit(cell, records, time.perf_counter() - start)

    def _base_record(self, cell: Cell) -> dict[str, Any]:
        task = self.config.tasks[cell.task]
        spec = self.config.defenses[cell.defense]
        return {
            "dataset": task.display_name, "model": task.model_name, "cut_point": cell.cut_point,
            "defense": spec.name, "defense_params": self.defense_params[cell.defense],
            "utility": {}, "cost": {},
            "attack": cell.attack, "attack_params": self.attack_params[cell.attack],
            "target": None, "metric": None, "value": None, "ci95": None, "chance": None, "advantage": None,
            "seed": cell.seed, "n_eval": None, "status": "ok", "error": None, "extra": {}, "cell_id": cell.id,
        }

    def _record(self, cell: Cell, score: Score, utility: dict, cost: dict) -> dict[str, Any]:
        rec = self._base_record(cell)
        rec.update(
            utility=utility, cost={k: _finite(v) for k, v in cost.items()},
            target=score.target, metric=score.metric, value=_finite(float(score.value)),
            ci95=[_finite(float(score.ci95[0])), _finite(float(score.ci95[1]))],
            chance=_finite(score.chance), advantage=_finite(score.advantage),
            n_eval=score.n_eval, extra=score.extra,
        )
        return rec

    def _failed(self, cell: Cell, error: str) -> dict[str, Any]:
        rec = self._base_record(cell)
        rec.update(status="failed", error=error)
        return rec

    def _commit(self, cell: Cell, records: list[dict[str, Any]], seconds: float) -> None:
        self.store.commit(cell.id, records)
        self._emit("on_cell_end", cell, records, seconds)

    # ---------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        config = self.config
        cells = plan_cells(config)
        self.store = ResultStore(self.out_dir, config.config_hash(), config.model_dump(mode="json"))
        pending = [c for c in cells if not self.store.done(c.id)]
        self._emit("on_plan", cells, pending)
        groups: dict[tuple[int, int, str, int], list[Cell]] = {}
        for cell in pending:
            groups.setdefault(cell.group, []).append(cell)
        by_task: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for t, seed, cut, d in groups:
            by_task.setdefault((t, seed), []).append((cut, d))
        for (t, seed), group_keys in by_task.items():
            state = self.prepare_task(t, seed)
            self.store.put_task(state.key, state.summary)
            for cut, d in group_keys:
                self.run_group(state, cut, d, groups[(t, seed, cut, d)])
        report = self.build_report(cells)
        write_report(self.out_dir, report)
        self._emit("on_finish", report)
        return report

    def build_report(self, cells: list[Cell]) -> dict[str, Any]:
        records = [r for c in cells for r in (self.store.load(c.id) or [])]
        keys = dict.fromkeys(task_key(self.config.tasks[c.task], c.seed) for c in cells)
        return {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": self.config.model_dump(mode="json"),
            "environment": environment(self.config.seeds, str(self.device)),
            "tasks": [t for t in (self.store.task(k) for k in keys) if t is not None],
            "results": records,
        }
