"""Shared fixtures: a private cache folder and tiny audit configs (seconds, not minutes)."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
UTKFACE = SHARED / "data" / "utkface" / "crop_part1"

TINY = {
    "name": "tiny",
    "seeds": [0],
    "n_boot": 100,
    "dataset": {"name": "synthetic", "n": 400, "image_size": 8, "strength": 0.3},
    "model": {"name": "small_cnn", "widths": [8], "fc": [16]},
    "cut_points": ["conv1", "fc1"],
    "training": {"epochs": 2},
    "defenses": ["none", {"name": "noise", "scale": 1.0, "finetune_epochs": 1}],
    "attacks": {"attribute": {"epochs": 3}},
}


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test (module fixtures included) caches task models and data in a private folder."""
    cache = tmp_path_factory.getbasetemp() / "splitaudit-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPLITAUDIT_CACHE", str(cache))
        mp.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
        yield cache


@pytest.fixture
def tiny_config() -> dict:
    """A fresh copy of the tiny one-task audit config (mutable)."""
    return copy.deepcopy(TINY)


def requires_utkface():
    return pytest.mark.skipif(not UTKFACE.is_dir(), reason=f"UTKFace development split not found at {UTKFACE}")


# A tiny grid of 8 cells (2 cut points x 2 defenses x 2 attacks) for executor, shard and resume tests.
# Explicit trainer settings (the defaults' values) let tests see that workers receive them.
GRID = {**TINY, "attacks": {"attribute": {"epochs": 3}, "test_probe": {}},
        "trainer": {"accelerator": "cpu", "precision": "32-true"}}


@pytest.fixture(scope="session")
def grid_reference(tmp_path_factory, _private_cache):
    """GRID run once in this process, cells with 1 torch thread: (out folder, report)."""
    from audit import Audit, build_config
    from audit.executors import SequentialExecutor
    from tests.worker_plugins import register

    register()
    out = tmp_path_factory.mktemp("grid-reference")
    report = Audit(build_config(GRID)).run(out, callbacks=[], executor=SequentialExecutor(threads=1))
    return out, report
