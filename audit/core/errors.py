"""Errors that end a run with a clear one-line message and a distinct exit code (not a bug).

Exit codes of the ``splitaudit`` command (see the README's table):

====  ====================================================================
0     success
1     the audit ran but some cells failed (or a check found a violation)
2     bad input (config, file, report, ``--out``), nothing written to OUT
3     I/O error: a full disk, a read-only or vanished folder; finished cells are kept
130   interrupted (SIGINT, Ctrl-C); finished cells are kept, a rerun resumes
143   terminated (SIGTERM); finished cells are kept, a rerun resumes
====  ====================================================================
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Iterator

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_IO = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143: the shell's convention


class AuditInputError(ValueError):
    """Bad input: a malformed config, a missing file, an unusable dataset.

    The message names the problem (the key, the file, the value) and how to fix it.
    """


class AuditInterrupted(BaseException):
    """The run received SIGINT or SIGTERM; raised in the main thread by :func:`interruptible`.

    A ``BaseException`` like ``KeyboardInterrupt`` (so no ``except Exception`` records it as a failed
    cell), but not one: Lightning turns a ``KeyboardInterrupt`` during training into ``sys.exit(1)``."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise AuditInterrupted(signum)


@contextlib.contextmanager
def interruptible(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`AuditInterrupted` in the main thread (the
    previous handlers are restored afterwards). Elsewhere than the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def with_detail(err: BaseException, detail: str) -> BaseException:
    """``err`` carrying the one line the CLI prints for it (``splitaudit_detail``) instead of the default."""
    err.splitaudit_detail = detail  # type: ignore[attr-defined]
    return err


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: what failed, on which path, e.g.
    ``No space left on device (ENOSPC): '/out/cells/x.json'``."""
    code = errno.errorcode.get(err.errno or 0)
    what = err.strerror or str(err) or type(err).__name__
    text = f"{what} ({code})" if code else what
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    if paths:
        text += ": " + " -> ".join(repr(os.fsdecode(p)) for p in paths)
    return text


def reserve_file_space(path: str | os.PathLike, size: int | None = None) -> None:
    """Allocate the disk blocks of ``path`` (its current size, or ``size`` bytes) before it is
    memory-mapped and written. A write through a mapping into a sparse file on a full disk kills
    the process with SIGBUS; allocated up front, a full disk is an ``OSError`` (ENOSPC) naming the file.
    Filesystems without ``fallocate`` support are left as they are."""
    fd = os.open(path, os.O_RDWR)
    try:
        length = os.fstat(fd).st_size if size is None else int(size)
        if length > 0:
            try:
                os.posix_fallocate(fd, 0, length)
            except OSError as err:
                if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return
                raise OSError(err.errno, os.strerror(err.errno), os.fspath(path)) from None
    finally:
        os.close(fd)
