"""Test-only plugins for executor, failure and resume tests.

They are registered by calling :func:`register` (in a fixture, and in worker
processes as the executor's ``worker_setup``), never at import time, so the
plugin contract test does not pick them up.
"""
from __future__ import annotations

import os
import signal

import torch

from attacks import ATTACKS, Attack, Score
from audit.core.feature_store import is_mapped
from defenses import DEFENSES, Defense

DRIVER_PID_ENV = "SPLITAUDIT_TEST_DRIVER_PID"


class Probe(Attack):
    """Reports what the worker saw: a deterministic figure of the released features, the trainer
    settings and torch threads; writes an artifact file with the figure, the process id and whether
    the released and edge features it got were memory-mapped."""

    def score(self, ctx):
        z = ctx.test.z.float().flatten(1)
        value = float(z.double().mean())
        if ctx.artifact_dir is not None:
            ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
            mapped = is_mapped(ctx.test.z) and is_mapped(ctx.split.features("train"))
            (ctx.artifact_dir / "probe.txt").write_text(f"{value!r}\n{os.getpid()}\n{mapped}\n")
        extra = {"settings": ctx.settings.model_dump(mode="json"), "threads": torch.get_num_threads(),
                 "n_aux": len(ctx.aux), "aux_z_mean": float(ctx.aux.z.double().mean()),
                 "aux_y_sum": int(ctx.aux.y.sum())}
        return [Score("secret", "feature_mean", value, (value, value), None, len(ctx.test), extra=extra)]


class ReleasesNaN(Defense):
    """Releases NaN features."""

    def release(self, x, features=None):
        z = features if features is not None else self.edge(x)
        return torch.full_like(z, float("nan"))


class OutOfMemory(Defense):
    """Asks for a 2**50-element tensor in fit (the allocator refuses: a real out-of-memory error)."""

    def fit(self, ctx):
        super().fit(ctx)
        torch.empty(2**50, dtype=torch.float32)


class KillsWorker(Defense):
    """SIGKILLs the process that fits it, unless that is the test's driver process."""

    def fit(self, ctx):
        super().fit(ctx)
        if str(os.getpid()) != os.environ.get(DRIVER_PID_ENV):
            os.kill(os.getpid(), signal.SIGKILL)


PLUGINS = [
    (ATTACKS, "test_probe", Probe),
    (DEFENSES, "test_nan", ReleasesNaN),
    (DEFENSES, "test_oom", OutOfMemory),
    (DEFENSES, "test_kill_worker", KillsWorker),
]


def register() -> None:
    """Register the test plugins (idempotent)."""
    for registry, name, cls in PLUGINS:
        registry.register(name)(cls)


def probe_file(out, record):
    """(value, process id, features were mapped) from the artifact a ``test_probe`` cell wrote."""
    value, pid, mapped = (out / "artifacts" / record["cell_id"] / "probe.txt").read_text().split()
    return value, int(pid), mapped == "True"
