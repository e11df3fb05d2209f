"""A test-only attack that is inside a Lightning ``Trainer.fit`` when a test signals the run.

While ``SPLITAUDIT_TEST_MARK`` names a file, the attack touches it at its first training batch and
keeps training (a short sleep per batch, for up to ten minutes), so the test's signal lands inside
Lightning's loop, where Lightning itself handles KeyboardInterrupt (``sys.exit(1)``) and SIGTERM.
Without it, one epoch. Registered by :func:`register`, never at import time.
"""
from __future__ import annotations

import os
import time

import lightning as L
from torch import nn

from attacks import ATTACKS, Attack, Score
from audit.core.training import ClassifierModule, make_trainer, tensor_loader

MARK_ENV = "SPLITAUDIT_TEST_MARK"


class _Mark(L.Callback):
    def __init__(self, path: str):
        self.path, self.started = path, time.monotonic()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not os.path.exists(self.path):
            open(self.path, "w").close()
        time.sleep(0.01)
        if time.monotonic() - self.started > 600:  # never signalled: end rather than hang
            trainer.should_stop = True


class SlowFit(Attack):
    """Trains a linear head on the released features with Lightning (see the module docstring)."""

    def fit(self, ctx):
        z = ctx.aux.z.float().flatten(1)
        mark = os.environ.get(MARK_ENV)
        net = nn.Linear(z.shape[1], ctx.num_classes[ctx.primary])
        trainer = make_trainer(ctx.settings, max_epochs=10**6 if mark else 1, callbacks=[_Mark(mark)] if mark else [])
        trainer.fit(ClassifierModule(net, ctx.num_classes[ctx.primary]),
                    tensor_loader(z, ctx.aux.y, batch_size=16, shuffle=True))

    def score(self, ctx):
        return [Score("primary", "dummy", 0.5, (0.5, 0.5), None, len(ctx.test))]


def register() -> None:
    ATTACKS.register("test_slow_fit")(SlowFit)
