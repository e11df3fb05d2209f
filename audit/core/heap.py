"""How the C heap hands out large blocks in an audit's hot loops (glibc; a no-op elsewhere).

glibc serves every block above its mmap threshold (128 KiB, raised on the fly to at most 32 MiB) with a
fresh ``mmap`` and gives it back with ``munmap`` when freed. A training step of an attack on UTKFace
conv1 features allocates and frees activations of 100+ MB each step, so each step maps fresh pages and
the kernel zero-fills them on first touch: 284,624 page faults per step of the ``cnn`` attribute head on
a (128, 64, 64, 64) batch, 699 ms a step; served from the heap and kept there between steps, the same
step took 459 ms with one fault. The arithmetic is unchanged: only where the bytes live.

:func:`reusing` raises both thresholds around a hot loop (every Lightning training, the rMLE
optimisation) when the run allows it (:func:`allow_reuse`, ``memory.heap_reuse_mb``, off by default) and
hands the free heap back when the loop ends. Measured on UTKFace's conv1 ``none`` group (benchmarks/
RESULTS.md, "C heap"): 1.29x faster with the same records and a peak RSS 0.5 GB higher (3.12 -> 3.63 GB);
raised for a whole run instead, 1.47x faster and 4.34 GB: free blocks of one stage's sizes stayed resident
while the next stage grew the heap for its own (each aligned request is a little larger than the block
freed before it, so the heap grows for several steps before it settles).
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT = 128 * 1024  # both thresholds' documented defaults, bytes
MB = 1 << 20


def _mallopt():
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def set_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes); False where there is no ``mallopt`` or it refused."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_bytes))) & bool(
        mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_bytes)))


def trim() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim(0)``: the free top and the free
    pages inside it); a no-op elsewhere. Also called by :func:`audit.core.feature_store.free_memory` between stages."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_LIMIT_MB = [0]  # set for the length of a run by allow_reuse (memory.heap_reuse_mb)
_ACTIVE = [False]


@contextmanager
def allow_reuse(limit_mb: int) -> Iterator[None]:
    """For the block (a run), let :func:`reusing` loops keep blocks under ``limit_mb`` MB on the heap
    (0: they leave glibc as it is)."""
    before = _LIMIT_MB[0]
    _LIMIT_MB[0] = limit_mb
    try:
        yield
    finally:
        _LIMIT_MB[0] = before


@contextmanager
def reusing() -> Iterator[bool]:
    """Around a hot loop (a training run, an optimisation): blocks under the run's limit come from the heap
    and freed ones are kept for the next step instead of being unmapped; yields whether the setting took.
    Afterwards both thresholds go back to glibc's 128 KiB defaults (fixed: glibc's on-the-fly raising of the
    mmap threshold stays off for the process) and the heap's free pages are handed back (:func:`trim`), so
    the loop's free blocks do not stay resident into the next stage. Nested uses are the outer one's."""
    limit = _LIMIT_MB[0] * MB
    took = limit > 0 and not _ACTIVE[0] and set_thresholds(limit, limit)
    if took:
        _ACTIVE[0] = True
    try:
        yield took
    finally:
        if took:
            _ACTIVE[0] = False
            set_thresholds(GLIBC_DEFAULT, GLIBC_DEFAULT)
            trim()


# Transparent huge pages for the C heap's large blocks (glibc >= 2.35, Linux THP in "madvise" or "always").
# With the tunable glibc.malloc.hugetlb=1, glibc marks its mmap-served blocks (and the heap it grows with
# sbrk) MADV_HUGEPAGE: a 100 MB activation is then faulted in 2 MiB at a time instead of 4 KiB. One training
# step of the cnn attribute head on a (128, 64, 64, 64) conv1 batch: ~1,000 -> ~650 ms and 274,000 -> 6,200
# page faults, at the same peak memory (benchmarks/RESULTS.md, "Huge pages"). glibc reads tunables only when a
# process starts, so the command line restarts itself once with the tunable set (:func:`huge_page_environment`).
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
# The restart pays off for large inputs only: configs/utkface.yaml (3 x 64 x 64 = 12,288 elements) ran 1.11x
# faster with huge pages; the embedded default (16 x 16 synthetic images, 8 x 8 digits) ran 1.11-1.15x slower
# with them (96 s against 85 s, every stage a little slower, importing torch and lightning 1.5 s longer).
HUGE_PAGES_MIN_INPUT = 4096
HUGE_PAGES_OPT_OUT = "SPLITAUDIT_HUGE_PAGES"  # "0": leave glibc as it is
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"); None where unknown (not Linux)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[") and word.endswith("]")]
    return chosen[0] if chosen else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, _, number = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
        major, minor = number.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (ValueError, OSError, AttributeError):
        return None


def glibc_tunables(environ) -> dict[str, str]:
    """``environ``'s GLIBC_TUNABLES as {name: value}."""
    return dict(entry.partition("=")[::2] for entry in (environ.get("GLIBC_TUNABLES") or "").split(":") if entry)


def huge_pages_possible(mode: str | None = None, glibc: tuple[int, int] | None = None) -> bool:
    """Whether glibc has the tunable (>= 2.35) and the kernel's THP mode is "madvise" or "always"; ``mode`` /
    ``glibc``: this machine's (:func:`thp_mode`, :func:`glibc_version`) unless given."""
    mode = thp_mode() if mode is None else mode
    glibc = glibc_version() if glibc is None else glibc
    return mode in ("always", "madvise") and glibc is not None and glibc >= (2, 35)


def huge_page_environment(environ, *, mode: str | None = None, glibc: tuple[int, int] | None = None) -> dict | None:
    """The environment to restart this process with so that glibc backs large blocks with huge pages:
    ``environ`` plus ``glibc.malloc.hugetlb=1`` in GLIBC_TUNABLES. None when there is nothing to do: the
    tunable is already there, ``SPLITAUDIT_HUGE_PAGES=0``, glibc older than 2.35 or absent, or the kernel's
    THP mode is "never" or unknown (:func:`huge_pages_possible`)."""
    if environ.get(HUGE_PAGES_OPT_OUT, "1") == "0" or HUGE_PAGES_TUNABLE in glibc_tunables(environ):
        return None
    if not huge_pages_possible(mode, glibc):
        return None
    tunables = [t for t in (environ.get("GLIBC_TUNABLES") or "").split(":") if t]
    return {**environ, "GLIBC_TUNABLES": ":".join(tunables + [f"{HUGE_PAGES_TUNABLE}=1"])}


def huge_pages_pay_off(input_numels: list[int | None]) -> bool:
    """Whether a run with inputs of these sizes (elements per sample, one per task; None: unknown before
    loading) gains from huge pages: some task's input has at least :data:`HUGE_PAGES_MIN_INPUT` elements.
    Unknown sizes (tables, saved features, user data) count as small: set ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
    yourself to have them."""
    return any(n is not None and n >= HUGE_PAGES_MIN_INPUT for n in input_numels)


def huge_pages_in_use(environ=None) -> bool:
    """Whether this process's large C-heap blocks are backed by huge pages: it started with
    glibc.malloc.hugetlb=1 on glibc >= 2.35, and the kernel's THP mode allows it (the report's
    ``environment.huge_pages``)."""
    environ = os.environ if environ is None else environ
    return glibc_tunables(environ).get(HUGE_PAGES_TUNABLE) == "1" and huge_pages_possible()
