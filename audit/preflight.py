"""Checks a run makes before it writes anything into its output folder.

A run that fails here leaves ``--out`` as it was (no ``audit.json``), so the corrected rerun
into the same folder is a new audit, not "another audit". Checked: the output folder (not a
dangling link, not a file, writable, not on a read-only filesystem), and every task: its
dataset loads (root, files, labels), the model builds, and each cut point exists in it; the
trainer settings (accelerator, devices, precision) can run on this machine.
(Plugin parameters are checked when the config is loaded, :mod:`audit.config`.)
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from audit.core.errors import AuditInputError, with_detail


def check_out_dir(out: str | Path) -> None:
    """Raise :class:`AuditInputError` for an ``--out`` that can never be a folder (a dangling link, a
    file), ``OSError`` (exit code 3) for one that cannot be written (read-only, no permission)."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise AuditInputError(f"--out {str(out)!r} is a symbolic link to {os.readlink(out)!r}, which does not "
                              "exist; create that folder or pass another --out")
    if out.exists() and not out.is_dir():
        return  # the results store refuses it ("is a file, not a folder")
    existing = out.absolute()
    while not existing.exists():  # the folder OUT will be created in
        existing = existing.parent
    if not existing.is_dir():
        raise AuditInputError(f"--out {str(out)!r}: {str(existing)!r} is a file, not a folder; pass another --out")
    code = None
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        code = errno.EROFS
    elif not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EACCES
    if code is not None:
        err = OSError(code, os.strerror(code), str(existing))
        raise with_detail(err, f"--out {str(out)!r} cannot be written: {os.strerror(code)} ({str(existing)!r}); "
                               "pass another --out")


def check_tasks(config: Any, objects: dict[int, dict[str, Any]], cache_dir: Path) -> None:
    """Load each task's dataset and build its model (one task at a time, then dropped): a missing
    dataset root, unusable files or a cut point the model lacks raise :class:`AuditInputError` naming it."""
    import torch

    from audit.core.data import DATASETS, audit_data
    from audit.core.data.feature_dump import precomputed_features
    from audit.core.models import MODELS

    for t, task in enumerate(config.tasks):
        given = objects.get(t, {})
        dataset = given.get("dataset") or DATASETS.from_params(task.dataset.name, config.plugin_params("tasks", t, "dataset"))
        loaded = dataset.load(cache_dir)
        precomputed_features(loaded, task.cut_points, with_model=task.model is not None)
        if task.model is None:
            continue
        factory = given.get("model") or MODELS.from_params(task.model.name, config.plugin_params("tasks", t, "model"))
        # the inputs' shape once split (a table's encoded columns come from its train split)
        shape = audit_data(task.display_name, loaded, task.splits.model_dump(), config.seeds[0]).input_shape
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the global RNG as it was
            model = factory.build(shape, len(loaded.classes[loaded.primary]))
        for cut in task.cut_points:
            model.split(cut)  # raises naming the model's cut points on a typo (as the runner would, later)
        del loaded, model


def check_trainer(settings: Any) -> None:
    """Build a Lightning trainer from the config's ``trainer`` settings: an accelerator this machine lacks
    (``gpu`` with no CUDA) or a misspelt one raises :class:`AuditInputError` now, not after the data
    and the first training; the audit never falls back to the CPU on its own."""
    from audit.core.training import make_trainer

    try:
        make_trainer(settings, 1)
    except Exception as err:  # noqa: BLE001 - Lightning raises ValueError or MisconfigurationException
        raise AuditInputError(
            f"trainer: accelerator {settings.accelerator!r}, devices {settings.devices!r}, strategy {settings.strategy!r}, "
            f"precision {settings.precision!r} cannot run on this machine: {err} (use trainer.accelerator: cpu or auto, "
            "or --set trainer.accelerator=cpu)") from None


def check_run(run: Any) -> None:
    """Everything :class:`audit.runner.AuditRun` checks before it creates its results store."""
    check_out_dir(run.out_dir)
    check_trainer(run.config.trainer)
    check_tasks(run.config, run.objects, run.cache_dir)
