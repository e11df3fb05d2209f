"""The Python API; the CLI uses it too.

    from audit import Audit, load_config
    report = Audit(load_config("configs/utkface.yaml")).run("audit_out")
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from audit.config import AuditConfig, build_config
from audit.runner import AuditRun, RunCallback

if TYPE_CHECKING:  # pragma: no cover
    from audit.executors import Executor


def default_callbacks(config: AuditConfig, callbacks: Iterable[RunCallback] | None = None) -> list[RunCallback]:
    """``callbacks`` (default: a progress bar / progress lines with time left), plus the W&B
    tracker when ``config.tracking`` asks for one."""
    from audit.progress import Progress
    from audit.tracking import WandbTracker, tracker_for

    out = [Progress()] if callbacks is None else list(callbacks)
    tracker = tracker_for(config)
    if tracker is not None and not any(isinstance(cb, WandbTracker) for cb in out):
        out.append(tracker)
    return out


class Audit:
    """An audit defined by a config (an :class:`AuditConfig` or a plain mapping)."""

    def __init__(self, config: AuditConfig | dict[str, Any], cache_dir: str | Path | None = None):
        self.config = config if isinstance(config, AuditConfig) else build_config(config, "<dict>")
        self.cache_dir = cache_dir

    def run(
        self,
        out: str | Path = "audit_out",
        callbacks: Iterable[RunCallback] | None = None,
        executor: "Executor | None" = None,
        shard: tuple[int, int] | None = None,
        resume: bool | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) the audit into ``out``; returns the report (as in report.json, next to
        results.csv and report.html). ``callbacks``: progress output (default: :class:`audit.progress.Progress`);
        the W&B tracker is added when the config's ``tracking`` asks for it. ``executor``:
        :func:`audit.executors.make_executor` (default: in this process); ``shard``: (i, n) runs
        shard i of n; ``resume``: see :class:`audit.store.ResultStore`."""
        callbacks = default_callbacks(self.config, callbacks)
        try:
            return AuditRun(self.config, out, callbacks, self.cache_dir, executor=executor, shard=shard,
                            resume=resume).run()
        finally:
            for cb in callbacks:
                close = getattr(cb, "close", None)
                if callable(close):
                    close()
