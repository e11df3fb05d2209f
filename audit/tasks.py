"""Tasks: a (task, seed) made ready for its cells, and the on-disk cache of trained task models.

Per (task, seed) the data is loaded and split once and the task model trained once; the model is
cached under ``CACHE/task_models/KEY.pt`` (``KEY``: :func:`task_key`, a hash of what determines the
training) beside ``KEY.json``, a record of how it was trained. A cached file is loaded with
``weights_only=True``: a tampered or foreign file is refused, never unpickled. Per cut point the
edge features of every data split go once into the run's feature store (:func:`extract_features`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from audit.config import AuditConfig, TaskConfig
from audit.core.data import DATASETS, AuditData, audit_data
from audit.core.data.feature_dump import model_free_summary, precomputed_features
from audit.core.errors import AuditInputError
from audit.core.feature_store import FeatureStore
from audit.core.models import MODELS, SplitModel, flops_per_sample
from audit.core.profile import add_seconds
from audit.core.seeds import stable_hash, stage_seed
from audit.core.stats import mean_ci
from audit.core.store import atomic_write, write_json_atomic
from audit.core.training import fit_classifier, predict

log = logging.getLogger("splitaudit")

CACHE_VERSION = 1  # bump when task training changes in a way that invalidates cached models


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPLITAUDIT_CACHE", Path.home() / ".cache" / "splitaudit"))


def training_record(path: Path) -> dict[str, Any]:
    """What the run that trained a cached task model recorded beside it (``KEY.json``): when, how
    long, torch version, thread count, device and training precision; empty for a model cached before
    such records existed. (The cache key leaves the precision out, so a report must say it.)"""
    record = path.with_suffix(".json")
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("training record %s unreadable (%s); the report will not say how the task model was trained",
                    record, err)
        return {}
    keep = ("trained_at", "seconds", "torch", "torch_threads", "device", "precision", "data_fingerprint")
    return {k: data[k] for k in keep if k in data} if isinstance(data, dict) else {}


def task_key(task: TaskConfig, seed: int) -> str:
    """Identity of a trained task model: dataset (a data file by its contents, and the plugin's
    ``data_version``), model (a weights file by its contents), training, splits and seed."""
    what = task.model_dump(mode="json", exclude={"label", "cut_points", "attacks", "attacker_data"})
    dataset = DATASETS.get(task.dataset.name)
    what["dataset"] = dataset.key_params(what["dataset"])
    if task.model is not None:  # e.g. a weights file by its contents
        what["model"] = MODELS.get(task.model.name).key_params(what["model"])
    data_version = dataset.data_version
    return stable_hash(CACHE_VERSION, what, seed, *([data_version] if data_version else []))


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


def attacker_splits(task: TaskConfig) -> tuple[str, ...]:
    """The splits the attacks train on (``attacker_data``), rows in this order."""
    return ("train", "aux") if task.attacker_data == "train+aux" else ("aux",)



def prepare_task(config: AuditConfig, t: int, seed: int, cache_dir: Path, device: torch.device,
                 given: dict[str, Any] | None = None, timings: dict[str, float] | None = None) -> TaskState:
    """Task ``t`` of ``config`` at ``seed``, ready for its cells: the data loaded and split, the task model
    built, loaded from ``cache_dir/task_models`` or trained into it, and evaluated on the test split.

    ``given``: Python objects standing in for the task's plugins (``{"dataset": obj with .load(cache_dir),
    "model": obj with .build(shape, classes)}``, the Python API); ``timings``: where the data and task-model
    seconds accumulate (:func:`audit.core.profile.add_seconds`).
    """
    timings = {} if timings is None else timings
    task = config.tasks[t]
    key = task_key(task, seed)
    given = given or {}
    started = time.perf_counter()
    dataset = given.get("dataset") or DATASETS.from_params(
        task.dataset.name, config.plugin_params("tasks", t, "dataset"))
    loaded = dataset.load(cache_dir)
    fingerprint = loaded.fingerprint()
    # a dataset may bring its own split (a LightningDataModule's train/val/test, a dump's)
    data = audit_data(task.display_name, loaded, task.splits.model_dump(), seed)
    loaded, splits = data.loaded, data.splits
    features = precomputed_features(loaded, task.cut_points, with_model=task.model is not None)
    add_seconds(timings, "data_seconds", started)
    started = time.perf_counter()
    attacker = {"attacker_data": task.attacker_data,
                "n_attacker": sum(len(splits[p]) for p in attacker_splits(task))}
    if task.model is None:  # saved features audited without a model (audit/core/data/feature_dump.py)
        summary = {**model_free_summary(task, seed, key, data), **attacker, "data_fingerprint": fingerprint}
        return TaskState(key, data, None, None, summary, features)
    factory = given.get("model") or MODELS.from_params(task.model.name, config.plugin_params("tasks", t, "model"))
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(stage_seed(seed, key, "init"))
        model = factory.build(data.input_shape, data.num_classes(data.primary))
    for cut in task.cut_points:
        model.split(cut)  # raises naming the model's cut points on a typo
    path = cache_dir / "task_models" / f"{key}.pt"
    train = data.part("train")
    if task.training.epochs == 0:
        log.info("%s seed=%d: model audited as given (training.epochs: 0)", task.title, seed)
        provenance = {"source": "given"}
    elif path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # noqa: BLE001 - a tampered or foreign file: never unpickle it unsafely
            raise AuditInputError(
                f"cached task model {path} cannot be loaded safely ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); delete it to retrain"
            ) from None
        log.info("%s seed=%d: task model from cache %s", task.title, seed, path)
        provenance = {"source": "cache", "path": str(path), **training_record(path)}
        trained_on = provenance.get("data_fingerprint")
        if trained_on not in (None, fingerprint):
            raise AuditInputError(
                f"cached task model {path} was trained on other data than {task.title} loads now (data "
                f"fingerprint {trained_on}, now {fingerprint}): the data changed under the same parameters (e.g. "
                "UTKFace images edited in place while this process ran, files replaced under a torchvision set's root; a "
                "dataset that draws random transforms as it loads changes on every load: make its loading deterministic); "
                "delete the file to retrain, or restore the data")
    else:
        log.info(
            "%s seed=%d: training the task model (%d samples, %d epochs)",
            task.title, seed, len(train), task.training.epochs,
        )
        tr = task.training
        started = time.perf_counter()
        fit_classifier(
            model, train.x, train.y, data.num_classes(data.primary), settings=config.trainer,
            epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr, weight_decay=tr.weight_decay,
            seed=stage_seed(seed, key, "task"), hflip=tr.hflip,
            log_epochs=f"{task.title} seed={seed} task training",
        )
        # how it was trained: a cached model's accuracy depends on the torch version and thread count
        record = {
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 2), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device.type,
            "precision": config.trainer.precision_used(), "data_fingerprint": fingerprint,
        }
        with atomic_write(path) as tmp:
            torch.save(model.state_dict(), tmp)
        write_json_atomic(path.with_suffix(".json"), record)
        provenance = {"source": "trained", "path": str(path), **record}
    model.eval()
    test = data.part("test")
    correct = (predict(model, test.x, device=device).argmax(1) == test.y).float()
    full_flops = flops_per_sample(model, test.x[:1])
    summary = {
        "dataset": task.display_name, "model": task.model_name, "seed": seed,
        "primary": data.primary, "private": data.private,
        "classes": {name: loaded.classes[name] for name in [data.primary, *data.private]},
        "n": {name: len(idx) for name, idx in splits.items()}, **data.split_info, **attacker,
        "primary_accuracy": float(correct.mean()), "primary_accuracy_ci95": list(mean_ci(correct, seed=seed)),
        "full_flops": full_flops, "cut_points": task.cut_points, "task_key": key,
        "stage_seeds": {"init": stage_seed(seed, key, "init"), "task": stage_seed(seed, key, "task")},
        "task_model": provenance, "data_fingerprint": fingerprint,
    }
    log.info("%s seed=%d: primary accuracy %.3f on %d test samples",
             task.title, seed, summary["primary_accuracy"], len(test))
    add_seconds(timings, "task_model_seconds", started)
    return TaskState(key, data, model, full_flops, summary, features)


def extract_features(store: FeatureStore, state: TaskState, cut: str, device: torch.device) -> dict[str, str]:
    """Edge features of every data split at cut point ``cut`` into ``store`` (once); split -> file path.
    A feature dump's saved rows are used as they are."""
    if state.features is not None:
        saved = state.features[cut]
        return {
            part: str(store.put(state.key, cut, part, saved[state.data.splits[part]]))
            for part in ("train", "aux", "test")
        }
    edge, _ = state.model.split(cut)
    return {
        part: str(store.extract(state.key, cut, part, edge, state.data.part(part).x, device))
        for part in ("train", "aux", "test")
    }
