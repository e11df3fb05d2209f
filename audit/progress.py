"""Progress over the audit's cells with an estimate of the time left.

On a terminal or in a Jupyter notebook: a tqdm bar (``tqdm.auto``: a widget in a notebook; cells
done / total, elapsed, time left) with one line per finished cell printed above it. Elsewhere (CI
logs, files): one line per finished cell ending in the time left. Both go to the ``splitaudit``
logger's level: ``--quiet`` (WARNING) silences them; the Python API sets the logger up as the CLI
does (``audit.api.api_logging``). Lightning's own bars stay off inside cells
(``trainer.progress_bar: false``, the default).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from audit.runner import RunCallback, summarize

if TYPE_CHECKING:  # pragma: no cover
    from audit.plan import Cell
    from audit.runner import AuditRun

log = logging.getLogger("splitaudit")


def eta_text(seconds: float) -> str:
    """``1:02:03`` / ``4:05`` for a duration in seconds."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


BATCH_SECONDS = 1.0  # cells that end this close to the session's first one came with it (one group's commit)


def time_left(since_first: float, done_since: int, remaining: int) -> float | None:
    """Wall time left if the remaining cells finish at the rate of the ``done_since`` cells this session
    finished after its first batch (``since_first`` seconds ago; the task training, defense fits and
    feature extraction between cells included); None before one has. The wait for the first batch (task
    training, worker start-up) is not a rate: counted in, it put the default audit's first estimate at
    52 minutes for a run of 97 seconds. Nor are the cells of the first batch: a worker commits a group's
    cells together, and counting its second cell put configs/utkface_defenses.yaml at "~0:00 left" with
    54 of 56 cells to go."""
    if done_since < 1 or since_first <= 0:
        return None
    return since_first / done_since * remaining


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), where stderr is no terminal but a bar shows."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class Progress(RunCallback):
    """Cell progress with time left (see the module doc). ``bar``: force the tqdm bar on or off
    (default: on when stderr is a terminal or in a notebook)."""

    def __init__(self, bar: bool | None = None):
        self.bar_wanted = bar
        self.bar: Any = None
        self._redirect: Any = None

    def on_plan(self, run: "AuditRun", cells: list["Cell"], pending: list["Cell"]) -> None:
        self.total, self.done = len(cells), len(cells) - len(pending)
        self.done_here, self.start = 0, time.perf_counter()
        self.first_done = self.start  # when this session's first cell finished
        self.first_batch = 0  # cells that finished with it
        skipped = f", {self.done} already done in {run.out_dir}" if self.done else ""
        log.info("audit %r: %d cells%s", run.config.name, len(cells), skipped)
        show = self.bar_wanted if self.bar_wanted is not None else (sys.stderr.isatty() or in_notebook())
        if show and log.isEnabledFor(logging.INFO) and pending:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=self.total, initial=self.done, unit="cell", desc=run.config.name,
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.2)
            self._redirect = logging_redirect_tqdm([log], tqdm_class=tqdm)
            self._redirect.__enter__()  # log lines print above the bar until on_finish

    def on_cell_end(self, run: "AuditRun", cell: "Cell", records: list[dict[str, Any]], seconds: float) -> None:
        self.done += 1
        self.done_here += 1
        width = len(str(self.total))
        line = f"[{self.done:>{width}}/{self.total}] {run.cell_name(cell)}: {summarize(records)} ({seconds:.1f}s"
        now = time.perf_counter()
        if self.done_here == 1:
            self.first_done, self.first_batch = now, 1
        elif self.first_batch == self.done_here - 1 and now - self.first_done < BATCH_SECONDS:
            self.first_batch += 1  # committed with the first
        left = time_left(now - self.first_done, self.done_here - self.first_batch, self.total - self.done)
        if self.bar is not None:
            log.info("%s)", line)
            self.bar.update(1)
        else:
            log.info("%s%s)", line, f", ~{eta_text(left)} left" if left is not None and self.done < self.total else "")

    def on_finish(self, run: "AuditRun", report: dict[str, Any]) -> None:
        self.close()
        log.info("audit %r finished: %d cells (%d run now) in %s", run.config.name, self.total, self.done_here,
                 eta_text(time.perf_counter() - self.start))

    def close(self) -> None:
        """Remove the bar and the log redirection (also when the run stops early)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
